"""Weights for the three networks: CLIP RN101 (the loss), CLIP ViT-B/32 (saliency), U^2-Net (masking).

Where weights come from, first match wins:

1. a models folder: `config.models_dir` (the CLI's --models-dir, or $CLIPASSO_MODELS_DIR), holding

       RN101.safetensors     (or RN101.pt / RN101.bin)
       ViT-B-32.safetensors  (or ViT-B-32.pt / ViT-B-32.bin)
       u2net.pth

   The CLIP files are open_clip state dicts exactly as the Hugging Face hub serves them for the
   `openai` tag (`open_clip_model.safetensors` / `open_clip_pytorch_model.bin` of the repos named in
   CLIP_REPOS, just renamed); a state dict holding only the `visual.*` tensors is accepted too, since
   only the image tower is used. `u2net.pth` is the public U^2-Net state dict (torch.save of a plain
   dict). `clipasso download-models --models-dir DIR` fills such a folder, to copy to an air-gapped
   machine.
2. the caches: CLIP in the Hugging Face hub cache, at the very place open_clip's
   `create_model(..., pretrained="openai")` looks (so either can use what the other downloaded);
   U^2-Net in $CLIPASSO_CACHE, else the platform cache folder (~/.cache/clipasso on Linux).
3. a download (with a progress bar), unless HF_HUB_OFFLINE=1 or the host cannot be reached; when
   that fails too: EngineError("weights_missing") with a sentence saying how to fix it, at once.

Loading never unpickles arbitrary objects: safetensors, or torch.load(weights_only=True). OpenAI's
original TorchScript archives (RN101.pt from openaipublic) are not loaded, because that would run
the archive's code; the hub files hold the same tensors. A file that cannot be read or does not hold
the expected architecture -> EngineError("weights_invalid").

`import open_clip` costs seconds, so it happens inside the functions that need it.
"""

from __future__ import annotations

import inspect
import os
import shlex
import shutil
import socket
import sys
import threading
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import Cancelled, EngineError
from .wire import CALLER_ENV, CALLER_INKSCAPE

CLIP_NAMES = ("RN101", "ViT-B-32")
MODEL_NAMES = CLIP_NAMES + ("u2net",)


@dataclass(frozen=True)
class ClipSource:
    architecture: str   # open_clip model config; OpenAI's weights were trained with QuickGELU
    repo: str           # hub repo of open_clip's `openai` tag (open_clip/pretrained.py)


CLIP_REPOS = {
    "RN101": ClipSource("RN101-quickgelu", "timm/resnet101_clip.openai"),
    "ViT-B-32": ClipSource("ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.openai"),
}
# The file names open_clip asks the hub for, in its order (safetensors first).
HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLIP_LOCAL_SUFFIXES = (".safetensors", ".pt", ".bin")

U2NET_FILE = "u2net.pth"
# Public mirrors of the U^2-Net authors' u2net.pth (the original is on Google Drive, which needs a
# confirmation page). No published checksum that we could verify: a download is checked by its
# Content-Length and by loading it strictly into the architecture before it is kept.
U2NET_URLS = (
    "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.pth",
    "https://github.com/OPHoperHPO/image-background-remove-tool/releases/download/3.2/u2net.pth",
)
U2NET_MIN_BYTES = 1_000_000     # the real file is 176 MB; a few kB is an HTML error page
PROBE_TIMEOUT_S = 3.0           # without it, huggingface_hub retries ~23 s per file with no network


# --- where things are --------------------------------------------------------------------------------

def local_file_names(name: str) -> list[str]:
    """The file names a models folder may hold for `name`, in order of preference."""
    if name == "u2net":
        return [U2NET_FILE]
    _check_clip_name(name)
    return [name + suffix for suffix in CLIP_LOCAL_SUFFIXES]


def models_dir(config) -> Path | None:
    folder = getattr(config, "models_dir", None) or os.environ.get("CLIPASSO_MODELS_DIR")
    return Path(folder).expanduser() if folder else None


def cache_dir() -> Path:
    """U^2-Net's cache: $CLIPASSO_CACHE, else the platform's per-user cache folder + /clipasso."""
    if os.environ.get("CLIPASSO_CACHE"):
        return Path(os.environ["CLIPASSO_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "clipasso"


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub would use, read from the environment now (huggingface_hub reads
    it once at import, which would make HF_HOME / HF_HUB_CACHE set later, e.g. by tests, ignored)."""
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(hf_home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def is_offline() -> bool:
    """HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE / CLIPASSO_OFFLINE) means no download of anything.
    Read from the environment now; huggingface_hub's own flag is a snapshot taken at its import."""
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CLIPASSO_OFFLINE"))


def _in_folder(name: str, config) -> Path | None:
    folder = models_dir(config)
    if folder is not None:
        for file_name in local_file_names(name):
            if (folder / file_name).is_file():
                return folder / file_name
    return None


def _in_cache(name: str) -> Path | None:
    if name == "u2net":
        cached = cache_dir() / U2NET_FILE
        return cached if cached.is_file() else None
    from huggingface_hub import try_to_load_from_cache
    for file_name in HF_FILENAMES:
        cached = try_to_load_from_cache(CLIP_REPOS[name].repo, file_name, cache_dir=hf_cache_dir())
        if isinstance(cached, str) and os.path.isfile(cached):
            return Path(cached)
    return None


def find_weights(name: str, config) -> Path | None:
    """The weights file `name` would load from (models folder, then cache), without any network call;
    None if there is none."""
    if name != "u2net":
        _check_clip_name(name)
    return _in_folder(name, config) or _in_cache(name)


def models_status(config) -> dict:
    """name -> path of the weights that would be used, or None when missing. No network."""
    return {name: find_weights(name, config) for name in MODEL_NAMES}


def _check_clip_name(name):
    if name not in CLIP_REPOS:
        raise EngineError("bad_argument", f"Unknown CLIP model {name!r}; expected one of {', '.join(CLIP_REPOS)}.")


def engine_command(*args) -> str:
    """This engine's command with `args`, as it runs when pasted into a terminal.

    `install.py` puts the engine in its own environment, whose `clipasso` is not on the user's PATH:
    plain `clipasso` only when it is this very one, else the full path of this environment's script,
    else this Python with -m."""
    folder = Path(sys.executable).parent   # not resolved: a venv's python is a link to the base one
    script = next((folder / n for n in ("clipasso", "clipasso.exe") if (folder / n).is_file()), None)
    on_path = shutil.which("clipasso")
    if script is not None and on_path and Path(on_path).resolve() == script.resolve():
        base = ["clipasso"]
    elif script is not None:
        base = [str(script)]
    else:
        base = [sys.executable, "-m", "clipasso_engine"]
    return shlex.join([*base, *map(str, args)])


def download_command(config) -> str:
    """The command that fetches the weights to where this config looks for them."""
    folder = models_dir(config)
    return engine_command("download-models", *(["--models-dir", folder] if folder else []))


def _missing(name: str, config, why: str) -> EngineError:
    folder = models_dir(config)
    names = " / ".join(local_file_names(name))
    where = f"the models folder {folder} has no {names}" if folder else f"no models folder with {names} is given"
    files = "RN101.safetensors, ViT-B-32.safetensors and u2net.pth"
    if os.environ.get(CALLER_ENV) == CALLER_INKSCAPE:  # the extension runs us: say how to fix it there
        fix = (f"run `{download_command(config)}` once with network access (or `python3 install.py "
               f"--download-models` in the folder you installed the extension from), or run `python3 install.py "
               f"--models-dir DIR` with a folder holding {files}")
    else:
        fix = (f"run `{download_command(config)}` once with network access, or pass --models-dir (or set "
               f"CLIPASSO_MODELS_DIR) to a folder holding {files}")
    return EngineError("weights_missing", f"The {name} weights are not on this computer and cannot be downloaded "
                                          f"({why}); {where}. To fix it, {fix}.")


# --- interruption while loading --------------------------------------------------------------------------

# Set by the caller (the CLI's Ctrl-C / cancel handling) when the user asked to stop. A reader that fails
# while this is set failed because of the interruption, not because of the file: that is "cancelled",
# never "weights_invalid" (which would advise deleting good weights).
interrupt_pending = threading.Event()


def _cancelled_while_loading() -> Cancelled:
    return Cancelled("Cancelled while loading the models (the weights files were not changed).")


def _invalid(message: str) -> EngineError:
    """weights_invalid, unless an interruption is pending: then the failure is the interruption's."""
    if interrupt_pending.is_set():
        return _cancelled_while_loading()
    return EngineError("weights_invalid", message)


# --- downloading ---------------------------------------------------------------------------------------

def _reachable(url: str) -> bool:
    """A quick TCP connect, so that no network fails in seconds instead of after retries.
    Skipped (assumed reachable) behind a proxy, which a direct connect cannot judge."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _download_clip(name: str, config, progress: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    if is_offline():
        raise _missing(name, config, "HF_HUB_OFFLINE is set")
    if not _reachable(_hf_endpoint()):
        raise _missing(name, config, f"{urllib.parse.urlsplit(_hf_endpoint()).hostname} cannot be reached")
    repo = CLIP_REPOS[name].repo
    options = {}
    if not progress and "tqdm_class" in inspect.signature(hf_hub_download).parameters:
        options["tqdm_class"] = _silent_tqdm_class()
    error = None
    for file_name in HF_FILENAMES:   # like open_clip: safetensors if the repo has it, else the pickle
        try:
            return Path(hf_hub_download(repo, file_name, cache_dir=hf_cache_dir(), library_name="open_clip",
                                        **options))
        except LocalEntryNotFoundError as exc:   # a connection problem, not a missing file
            raise _missing(name, config, f"downloading {repo} failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - any failure here means "not downloadable"
            error = exc
    raise _missing(name, config, f"downloading {repo} failed: {error}") from error


def _download_u2net(destination: Path, config, progress: bool) -> Path:
    from tqdm.auto import tqdm
    if is_offline():
        raise _missing("u2net", config, "HF_HUB_OFFLINE is set")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    errors = []
    for url in U2NET_URLS:
        if not _reachable(url):
            errors.append(f"{url}: {urllib.parse.urlsplit(url).hostname} cannot be reached")
            continue
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
                expected = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=U2NET_FILE,
                          disable=not progress) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
            size = partial.stat().st_size
            if expected is not None and size != expected:
                raise OSError(f"got {size} of {expected} bytes")
            if size < U2NET_MIN_BYTES:
                raise OSError(f"only {size} bytes, not the 176 MB model")
            _load_u2net_file(partial)          # keep only a file that really is U^2-Net
            os.replace(partial, destination)
            return destination
        except (OSError, EngineError, ValueError) as exc:
            errors.append(f"{url}: {getattr(exc, 'message', exc)}")
        finally:
            partial.unlink(missing_ok=True)
    raise _missing("u2net", config, "; ".join(errors))


def download_models(config, names=None, progress: bool = True) -> dict:
    """Fetch the weights that are missing; name -> path. With a models folder (config.models_dir) the
    files go there under their folder names (RN101.safetensors, ...), so that the folder can be copied
    to an air-gapped machine; without one, into the caches."""
    import shutil
    folder = models_dir(config)
    paths = {}
    for name in names or MODEL_NAMES:
        found = find_weights(name, config) if folder is None else _in_folder(name, config)
        if found is not None:
            paths[name] = found
        elif name == "u2net":
            cached = _in_cache(name) if folder is not None else None
            if cached is not None:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cached, folder / U2NET_FILE)
                paths[name] = folder / U2NET_FILE
            else:
                paths[name] = _download_u2net((folder or cache_dir()) / U2NET_FILE, config, progress)
        else:
            downloaded = _in_cache(name) or _download_clip(name, config, progress)
            if folder is not None:   # copy out of the hub cache (whose file is a symlink into blobs/)
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / (name + (".safetensors" if downloaded.suffix == ".safetensors" else ".bin"))
                shutil.copyfile(downloaded, target)
                downloaded = target
            paths[name] = downloaded
    return paths


def _silent_tqdm_class():
    """A tqdm that shows nothing, for huggingface_hub's `tqdm_class` when progress=False."""
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
    return SilentTqdm


# --- loading ---------------------------------------------------------------------------------------------

def _resolve(name: str, config) -> Path:
    found = find_weights(name, config)
    if found is not None:
        return found
    if name == "u2net":
        return _download_u2net(cache_dir() / U2NET_FILE, config, progress=True)
    return _download_clip(name, config, progress=True)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_state_dict_file(path) -> dict:
    """A state dict from .safetensors, or a torch.save file via weights_only unpickling.
    Accepts {"state_dict": ...} wrappers and DataParallel's "module." prefixes."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            if _is_torchscript(path):
                raise _invalid((
                    f"{path} is a TorchScript archive (OpenAI's original CLIP download); it is not loaded "
                    f"because that would run code from the file. Use the Hugging Face hub file instead "
                    f"(`{engine_command('download-models')}` fetches it)."))
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except EngineError:
        raise
    except KeyboardInterrupt:
        raise _cancelled_while_loading() from None
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is not usable
        unsafe = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        reason = ("it contains Python objects besides tensors, which are not loaded for safety"
                  if unsafe else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}")
        raise _invalid(f"{path} is not a usable weights file ({reason}). Delete it and "
                                             f"run `{engine_command('download-models')}`, or replace it.") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _invalid(f"{path} does not hold a state dict of tensors. Delete it and run "
                                             f"`{engine_command('download-models')}`, or replace it.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _load_strict(module: torch.nn.Module, state: dict, path: Path, what: str):
    """load_state_dict(strict=True), turning a mismatch into one readable weights_invalid sentence."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                details.append(f"{len(keys)} {label}, e.g. {keys[0]}")
        raise _invalid(f"{path} does not hold {what} weights ({'; '.join(details)}). "
                                             f"Replace it with the right file or delete it and run "
                                             f"`{engine_command('download-models')}`.")
    module.load_state_dict(state, strict=True)


def _frozen(module: torch.nn.Module, device) -> torch.nn.Module:
    module = module.float().to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def build_clip_visual(name: str) -> torch.nn.Module:
    """A randomly initialised image tower of open_clip's architecture for `name` (QuickGELU)."""
    from open_clip.factory import get_model_config
    from open_clip.model import _build_vision_tower
    _check_clip_name(name)
    cfg = get_model_config(CLIP_REPOS[name].architecture)
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))


def load_clip(name: str, config, device="cpu") -> torch.nn.Module:
    """The image tower (`model.visual`) of open_clip's `name` with OpenAI's weights: eval mode,
    requires_grad False, float32, on `device`. RN101 -> ModifiedResNet, ViT-B-32 -> VisionTransformer."""
    _check_clip_name(name)
    path = _resolve(name, config)
    state = load_state_dict_file(path)
    if any(k.startswith("visual.") for k in state):   # a full CLIP state dict: keep the image tower
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    visual = build_clip_visual(name)
    _load_strict(visual, state, path, f"CLIP {name} image-tower")
    visual = _frozen(visual, device)
    if name == "RN101" and config.fold_batchnorm:   # the loss model: BatchNorm folded (faster, less memory)
        from .clip import fold_batchnorm
        fold_batchnorm(visual)
    return visual


def _load_u2net_file(path: Path) -> torch.nn.Module:
    from .u2net import U2NET
    net = U2NET()
    _load_strict(net, load_state_dict_file(path), path, "U^2-Net")
    return net


def load_u2net(config, device="cpu") -> torch.nn.Module:
    """U^2-Net with the public weights: eval mode, frozen, float32, on `device`."""
    return _frozen(_load_u2net_file(_resolve("u2net", config)), device)
