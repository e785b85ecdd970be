#!/usr/bin/env python3
"""Install CLIPasso Sketch: the engine's virtual environment, PyTorch, the engine, the Inkscape extension.

    python3 install.py                      # install or upgrade, everything in the usual places
    python3 install.py --download-models    # ... and fetch the model weights (see WEIGHTS_SIZE)
    python3 install.py --dry-run            # print the plan, change nothing
    python3 install.py --uninstall          # remove what install.py installed

Standard library only, Python >= 3.10, any OS. Steps, each safe to repeat:
  1. the engine's virtual environment (created unless it exists; --venv chooses where)
  2. PyTorch suited to this machine: a torch already in the environment is kept; otherwise the CUDA
     build where an NVIDIA driver answers, PyTorch's CPU wheels elsewhere (plain PyPI on macOS).
     An index configured for pip (PIP_INDEX_URL, pip.conf's index-url) is used instead of PyTorch's;
     when PyTorch's index cannot be reached, torch + torchvision come from the default index instead
  3. the engine (pip install of this folder), with torch and torchvision pinned by a constraints file
     so that no dependency can swap the torch build afterwards
  4. the extension (clipasso.inx + inkscape_extension/) copied to <Inkscape extensions>/clipasso/,
     with clipasso_engine.json naming the engine's interpreter and install_manifest.json saying what
     was installed (read by --uninstall)
  5. with --download-models: `<engine python> -m clipasso_engine download-models`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent
ENGINE_DIST = "clipasso-engine"
EXTENSION_FOLDER = "clipasso"                 # <extensions dir>/clipasso/
EXTENSION_FILES = ("clipasso.inx", "inkscape_extension")
WIRE_SOURCE = "clipasso_engine/wire.py"       # copied as inkscape_extension/clipasso_wire.py
CONFIG_NAME = "clipasso_engine.json"          # read by the extension: which interpreter runs the engine
MANIFEST_NAME = "install_manifest.json"       # read by --uninstall: what this script put where
VENV_MARKER = "clipasso_install.json"         # in the venv: did install.py create it?
CONSTRAINTS_NAME = "clipasso_constraints.txt"  # in the venv: torch/torchvision pins for every pip call
LOG_NAME = "clipasso_install.log"             # in the venv: pip's full output

# PyTorch's wheel indexes; CLIPASSO_PYTORCH_INDEX points at a mirror of download.pytorch.org/whl.
PYTORCH_INDEX = (os.environ.get("CLIPASSO_PYTORCH_INDEX") or "https://download.pytorch.org/whl").rstrip("/")
CPU_INDEX = f"{PYTORCH_INDEX}/cpu"
# NVIDIA driver (major, minor) -> the newest CUDA wheels it runs. PyPI's default Linux torch is built
# for the newest CUDA (13.x needs driver >= 580); older drivers need an older CUDA build of torch.
CUDA_INDEXES = [
    ((580, 0), f"{PYTORCH_INDEX}/cu130"),
    ((525, 60), f"{PYTORCH_INDEX}/cu126"),
    ((450, 80), f"{PYTORCH_INDEX}/cu118"),
]
PYPI_CUDA_MIN_DRIVER = (580, 0)
# Download sizes, one place for each number. Weights: fp32 CLIP RN101 (480 MB) + ViT-B/32 (605 MB)
# + U^2-Net (176 MB, clipasso_engine/models.py).
WEIGHTS_SIZE = "about 1.3 GB"
TORCH_CPU_SIZE = "about 0.3 GB"
TORCH_PYPI_SIZE = "about 3 GB on Linux, with NVIDIA's CUDA libraries"


class InstallError(Exception):
    """A failure the user can act on: what went wrong, and what to do about it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


# ----------------------------------------------------------------------------------------------------
# Where things go (pure functions of the platform, so tests can ask about any OS)

def default_data_dir(system: str | None = None, env=None, home: Path | None = None) -> Path:
    system = system or platform.system()
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    if system == "Windows":
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "clipasso"
    if system == "Darwin":
        return home / "Library" / "Application Support" / "clipasso"
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "clipasso"


def default_venv_dir(system=None, env=None, home=None) -> Path:
    return default_data_dir(system, env, home) / "venv"


def default_extensions_dir(system: str | None = None, env=None, home: Path | None = None) -> Path:
    """Inkscape's user extensions folder when Inkscape itself cannot be asked."""
    system = system or platform.system()
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    if env.get("INKSCAPE_PROFILE_DIR"):
        return Path(env["INKSCAPE_PROFILE_DIR"]) / "extensions"
    if system == "Windows":
        return Path(env.get("APPDATA") or home / "AppData" / "Roaming") / "inkscape" / "extensions"
    if system == "Darwin":
        return home / "Library" / "Application Support" / "org.inkscape.Inkscape" / "config" / "inkscape" / "extensions"
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "inkscape" / "extensions"


def venv_python(venv: Path, system: str | None = None) -> Path:
    system = system or platform.system()
    return venv / "Scripts" / "python.exe" if system == "Windows" else venv / "bin" / "python"


def find_inkscape(which=shutil.which, system: str | None = None, env=None) -> str | None:
    system = system or platform.system()
    env = os.environ if env is None else env
    found = which("inkscape")
    if found:
        return found
    candidates = []
    if system == "Darwin":
        candidates.append("/Applications/Inkscape.app/Contents/MacOS/inkscape")
    if system == "Windows":
        for root in (env.get("ProgramFiles"), env.get("ProgramFiles(x86)")):
            if root:
                candidates += [os.path.join(root, "Inkscape", "bin", "inkscape.com"),
                               os.path.join(root, "Inkscape", "bin", "inkscape.exe")]
    return next((c for c in candidates if os.path.isfile(c)), None)


def locate_extensions_dir(explicit=None, which=shutil.which, run=subprocess.run, system=None, env=None,
                          home=None) -> tuple[Path, str, bool]:
    """(folder, how it was found, whether Inkscape answered). Inkscape knows best: it honours
    INKSCAPE_PROFILE_DIR and its own platform conventions, so ask it first."""
    if explicit:
        return Path(explicit).expanduser().resolve(), "given with --extensions-dir", True
    exe = find_inkscape(which, system, env)
    if exe:
        try:
            out = run([exe, "--user-data-directory"], capture_output=True, text=True, timeout=120)
            lines = [line.strip() for line in (out.stdout or "").splitlines() if line.strip()]
            if out.returncode == 0 and lines:
                return Path(lines[-1]) / "extensions", f"from `{exe} --user-data-directory`", True
        except (OSError, subprocess.SubprocessError):
            pass
    return default_extensions_dir(system, env, home), "Inkscape was not found: the platform's default", False


# ----------------------------------------------------------------------------------------------------
# Which PyTorch (pure functions: the machine's facts in, a decision out)

@dataclass
class Nvidia:
    name: str
    driver: tuple  # (major, minor), (0, 0) when unknown


def parse_driver_version(text: str) -> tuple:
    m = re.search(r"(\d{3,})\.(\d+)", text or "")  # driver majors have 3 digits; skips dates, "x86_64"
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def detect_nvidia(run=subprocess.run, which=shutil.which,
                  proc_version: str = "/proc/driver/nvidia/version") -> Nvidia | None:
    """An NVIDIA GPU with a working driver: nvidia-smi answers, or the Linux driver is loaded."""
    smi = which("nvidia-smi")
    if smi:
        try:
            out = run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                      capture_output=True, text=True, timeout=30)
            first = (out.stdout or "").strip().splitlines()
            if out.returncode == 0 and first:
                name, _, driver = first[0].rpartition(",")
                return Nvidia(name.strip() or "NVIDIA GPU", parse_driver_version(driver))
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open(proc_version) as f:
            return Nvidia("NVIDIA GPU", parse_driver_version(f.readline()))
    except OSError:
        return None


def cuda_index_for(system: str, driver: tuple) -> str | None | bool:
    """Index URL for a CUDA torch this driver runs; None = plain PyPI; False = driver too old."""
    if driver == (0, 0):  # unknown: assume a current driver
        driver = PYPI_CUDA_MIN_DRIVER
    if system == "Linux" and driver >= PYPI_CUDA_MIN_DRIVER:
        return None  # PyPI's Linux wheels are the CUDA build
    for min_driver, url in CUDA_INDEXES:
        if driver >= min_driver:
            return url
    return False


@dataclass
class TorchPlan:
    action: str                          # keep | install | replace | skip
    pip_args: list = field(default_factory=list)  # after `pip install`
    reason: str = ""


def choose_torch(request: str, system: str, nvidia: Nvidia | None, existing: dict) -> TorchPlan:
    """request: auto | cpu | cuda | skip | a pip spec ("torch==2.4.1 torchvision==0.19.1 --index-url ...").
    existing: the probe of the venv ("torch", "torchvision", "torch_cuda")."""
    have = existing.get("torch")
    have_cuda = existing.get("torch_cuda")
    have_text = f"torch {have} ({'CUDA ' + have_cuda if have_cuda else 'CPU/MPS build'})" if have else ""
    if request == "skip":
        return TorchPlan("skip", reason="left as it is (--torch skip)" + (f": {have_text}" if have else ": none installed"))
    if request not in ("auto", "cpu", "cuda"):
        return TorchPlan("install", shlex.split(request), f"as requested: {request}")

    build = existing.get("torchvision_build") or ""
    if have and request == "auto" and (build == "cpu" and have_cuda or build.startswith("cu") and not have_cuda):
        # e.g. a CPU torch with PyPI's CUDA torchvision: `import torchvision` fails (docs/STACK.md)
        request = "cuda" if have_cuda else "cpu"
        mismatch = f"torchvision {existing.get('torchvision')} ({build}) does not match {have_text}"
        plan = choose_torch(request, system, nvidia, {})
        return TorchPlan("replace", plan.pip_args, f"{mismatch}: reinstalling both as the {plan.reason}")

    if request == "auto":
        if have:
            hint = ""
            if nvidia and not have_cuda and system != "Darwin":
                hint = f"; an NVIDIA GPU is present: `--torch cuda` switches to the CUDA build"
            return TorchPlan("keep", reason=f"keeping {have_text} already in the environment{hint}")
        want = "cuda" if (nvidia and system != "Darwin") else "cpu"
    else:
        want = request

    if want == "cuda":
        if system == "Darwin":
            raise InstallError("There is no CUDA build of PyTorch for macOS.",
                               "Use --torch auto (Apple GPUs run through MPS with the default build).")
        driver = nvidia.driver if nvidia else (0, 0)
        index = cuda_index_for(system, driver)
        if index is False:
            raise InstallError(f"The NVIDIA driver {driver[0]}.{driver[1]} is too old for current PyTorch CUDA builds.",
                               "Update the driver (https://www.nvidia.com/drivers), or install the CPU build with --torch cpu.")
        if system == "Windows" and index is None:
            index = CUDA_INDEXES[0][1]   # PyPI's Windows wheels are CPU-only
        pip_args = ["torch", "torchvision"] + (["--index-url", index] if index else [])
        gpu = f" for {nvidia.name} (driver {nvidia.driver[0]}.{nvidia.driver[1]})" if nvidia else ""
        reason = f"CUDA build{gpu}"
    else:
        pip_args = ["torch", "torchvision"] + ([] if system == "Darwin" else ["--index-url", CPU_INDEX])
        reason = "CPU build" + (" (MPS on Apple silicon)" if system == "Darwin" else ", no NVIDIA GPU found" if request == "auto" else "")

    if have:
        if (want == "cuda") == bool(have_cuda) or system == "Darwin":
            return TorchPlan("keep", reason=f"keeping {have_text}: it already is the {want.upper()} build")
        return TorchPlan("replace", pip_args, f"replacing {have_text} with the {reason}")
    return TorchPlan("install", pip_args, reason)


def constraints_text(probe: dict) -> str:
    """Pins for every later pip call: open_clip & co. must not swap the torch build chosen above."""
    lines = [f"{name}=={probe[name]}" for name in ("torch", "torchvision") if probe.get(name)]
    return "".join(line + "\n" for line in lines)


def can_build_offline(probe: dict) -> bool:
    """Whether the venv's own setuptools can build the engine (no build isolation, so no download):
    setuptools >= 70.1 has bdist_wheel built in; from 64 on it needs the `wheel` package."""
    version = tuple(int(p) for p in re.findall(r"\d+", probe.get("setuptools") or "0")[:2])
    return version >= (70, 1) or (version >= (64,) and bool(probe.get("wheel")))


# ----------------------------------------------------------------------------------------------------
# Where PyTorch comes from: pip's own configuration first, PyTorch's index, the default index as fallback

def index_of(pip_args: list) -> str | None:
    return pip_args[pip_args.index("--index-url") + 1] if "--index-url" in pip_args[:-1] else None


def without_index(pip_args: list) -> list:
    i = pip_args.index("--index-url") if "--index-url" in pip_args[:-1] else None
    return pip_args if i is None else pip_args[:i] + pip_args[i + 2:]


def pip_config(python) -> dict:
    """`pip config list` as {"global.index-url": value, ":env:.proxy": value, ...} ({} when pip cannot say)."""
    try:
        out = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    config = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip().strip("'\"")
    return config


def configured_index(config: dict, env=None) -> str | None:
    """The package index the user chose for pip, if any. Only index-url (or no-index) is a choice of
    index: extra-index-url and find-links add sources beside the primary index and do not replace it,
    so PyTorch's index can still go first with them."""
    env = os.environ if env is None else env
    if env.get("PIP_INDEX_URL"):
        return env["PIP_INDEX_URL"]
    if env.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        return "no index (PIP_NO_INDEX)"
    for key, value in config.items():
        name = key.rpartition(".")[2]
        if name == "index-url" and value:
            return value
        if name == "no-index" and value.lower() in ("1", "true", "yes", "on"):
            return f"no index ({key})"
    return None


def index_problem(url: str, proxy: str | None = None, timeout: float = 10) -> str | None:
    """Why pip could not use this index (None when it answers). Asks for torch's page as pip would,
    through the proxy from the environment (https_proxy ...) or pip's configuration."""
    import urllib.error
    import urllib.request
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy})] if proxy else []
    try:
        with urllib.request.build_opener(*handlers).open(url.rstrip("/") + "/torch/", timeout=timeout) as answer:
            answer.read(1)
        return None
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (OSError, ValueError) as e:   # URLError, timeouts, refused connections, bad URLs
        reason = getattr(e, "reason", e)
        return str(reason) or type(reason).__name__


# pip's words for "the index could not be reached", as opposed to "no such version" or a full disk
NETWORK_FAILURES = ("NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ProxyError", "SSLError",
                    "Max retries exceeded", "connection broken by", "Connection refused", "Network is unreachable",
                    "Temporary failure in name resolution", "Name or service not known", "HTTP error 403",
                    "HTTP error 407", "403 Client Error", "407 Proxy")


def failed_for_the_network(pip_output: str) -> bool:
    return any(marker in pip_output for marker in NETWORK_FAILURES)


def fallback_note(system: str, pip_args: list) -> str:
    """What the default index's torch is, said in the one line that announces the fallback."""
    if "--index-url" in pip_args and index_of(pip_args).endswith("/cpu"):
        size = TORCH_PYPI_SIZE if system == "Linux" else "a larger download"
        return f"it runs on the CPU; the larger download, {size}"
    return (f"PyPI's build: CUDA on Linux with a driver >= {PYPI_CUDA_MIN_DRIVER[0]}, else it runs on the CPU; "
            f"{TORCH_PYPI_SIZE}")


@dataclass
class TorchSource:
    pip_args: list                 # the first try
    fallback: list | None = None   # when the first try's index cannot be reached
    notes: list = field(default_factory=list)


def torch_source(plan_args: list, explicit: bool, config: dict, system: str, env=None,
                 problem=index_problem) -> TorchSource:
    """Where to take the planned torch from. An explicit SPEC is used as given; an index the user
    configured for pip wins over PyTorch's; PyTorch's index that does not answer is skipped now, one
    that fails during the download falls back then."""
    index = index_of(plan_args)
    if explicit or not index:
        return TorchSource(plan_args)
    default = without_index(plan_args)
    mine = configured_index(config, env)
    if mine:
        return TorchSource(default, notes=[f"using the package index configured for pip ({mine}), not {index}"])
    proxy = next((v for k, v in config.items() if k.rpartition(".")[2] == "proxy" and v), None)
    why = problem(index, proxy)
    if why:
        return TorchSource(default, notes=[f"{index} cannot be reached ({why}): installing torch + torchvision "
                                           f"from the default package index instead ({fallback_note(system, plan_args)})"])
    return TorchSource(plan_args, fallback=default)


# ----------------------------------------------------------------------------------------------------
# Running things

PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, re, sys
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
info = {name: version(dist) for name, dist in [("pip", "pip"), ("setuptools", "setuptools"), ("wheel", "wheel"),
        ("torch", "torch"), ("torchvision", "torchvision"), ("engine", "clipasso-engine")]}
info["python"] = list(sys.version_info[:3])
info["engine_in_venv"] = False
if info["engine"]:
    where = os.path.realpath(str(md.distribution("clipasso-engine").locate_file("")))
    info["engine_in_venv"] = where.startswith(os.path.realpath(sys.prefix) + os.sep)
def version_file_match(package, pattern):
    # a group of `pattern` in the package's version.py, found without importing it (seconds saved)
    spec = importlib.util.find_spec(package)
    if not (spec and spec.origin):
        return None
    try:
        text = open(os.path.join(os.path.dirname(spec.origin), "version.py")).read()
    except OSError:
        return None
    m = re.search(pattern, text, re.M)
    return m.group(1) if m else None
info["torch_cuda"] = version_file_match("torch", r"^cuda\b[^=\n]*=\s*'([^']+)'")
# the local label of torchvision's build: "cpu", "cu126", ...
info["torchvision_build"] = version_file_match("torchvision", r"^__version__\s*=\s*'[^'+]*\+([^']+)'")
print(json.dumps(info))
"""


def shell_join(cmd) -> str:
    cmd = [str(c) for c in cmd]
    return subprocess.list2cmdline(cmd) if platform.system() == "Windows" else shlex.join(cmd)


def probe_venv(python: Path) -> dict:
    try:
        out = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise InstallError(f"The environment's interpreter {python} does not start ({e}).",
                           "Remove that environment folder and run install.py again, or choose another --venv.")
    if out.returncode != 0:
        raise InstallError(f"The environment's interpreter {python} does not run: {out.stderr.strip()[-500:]}",
                           "Remove that environment folder and run install.py again, or choose another --venv.")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Pip:
    """Runs pip in the engine's venv: full output to the log, the lines that matter to the screen."""
    SHOWN = ("Downloading", "Successfully installed", "ERROR", "error:")

    def __init__(self, python: Path, log: Path, verbose: bool = False):
        self.python, self.log, self.verbose = python, log, verbose

    def command(self, args) -> list:
        return [str(self.python), "-m", "pip", *args]

    def __call__(self, args, what: str, show_all: bool = False, fail: bool = True) -> str:
        """Returns pip's output of this call. show_all: pip talks to the terminal itself (its download
        progress bar), the log gets pip's own --log record."""
        cmd = self.command(args)
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONIOENCODING="utf-8")
        if show_all:
            start = self.log.stat().st_size if self.log.exists() else 0
            rc = subprocess.run([*cmd[:3], "--log", str(self.log), *cmd[3:]], env=env).returncode
            with open(self.log, encoding="utf-8", errors="replace") as log:
                log.seek(start)
                output = log.read()
            if rc != 0 and fail:
                self.failed(what, rc, cmd)
            return output if rc == 0 else "FAILED\n" + output
        output = []
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"\n$ {shell_join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    encoding="utf-8", errors="replace", env=env)
            for line in proc.stdout:
                log.write(line)
                output.append(line)
                if self.verbose or line.lstrip().startswith(self.SHOWN):
                    print("    " + line.rstrip(), flush=True)
            rc = proc.wait()
        if rc != 0 and fail:
            self.failed(what, rc, cmd)
        return "".join(output) if rc == 0 else "FAILED\n" + "".join(output)

    def failed(self, what, rc, cmd):
        raise InstallError(f"{what} failed (pip exit status {rc}).",
                               f"The full log is {self.log}. After fixing the cause it names (often the network "
                               f"or disk space), retry with:\n    {shell_join(cmd)}\n  or run install.py again.")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict):
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def engine_version_in_source() -> str:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return m.group(1) if m else "unknown"


# ----------------------------------------------------------------------------------------------------
# Install

def _drawing_window_works() -> bool:
    """Whether the system Python (the one Inkscape runs extensions with on Linux) can draw in GTK with cairo."""
    # Inkscape runs `python3` with /usr/bin first on PATH (INKSCAPE.md)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
    if os.name == "nt" or sys.platform == "darwin" or not python:
        return True   # Inkscape brings its own Python and GTK there
    probe = "import gi; gi.require_version('Gtk', '3.0'); gi.require_foreign('cairo')"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return True   # cannot tell: say nothing


def say(step: str, text: str):
    print(f"{step:<12} {text}", flush=True)


def check_sources():
    missing = [name for name in ("pyproject.toml", *EXTENSION_FILES, WIRE_SOURCE) if not (REPO / name).exists()]
    if missing:
        raise InstallError(f"{REPO} is not a complete CLIPasso source folder (missing: {', '.join(missing)}).",
                           "Run install.py from a full checkout or release archive of the project.")


def prepare_venv(venv: Path, base_python: str, dry_run: bool) -> bool:
    """Create the venv unless it already is one. Returns whether install.py created it (now or before)."""
    python = venv_python(venv)
    if venv.exists() and not venv.is_dir():
        raise InstallError(f"--venv {venv} is a file, not a folder.",
                           "Give a folder for the engine's environment (new or an existing virtual environment).")
    if (venv / "pyvenv.cfg").is_file():
        if not python.exists():
            raise InstallError(f"{venv} looks like a virtual environment but has no {python.relative_to(venv)}.",
                               f"Remove {venv} and run install.py again, or choose another --venv.")
        created = bool(read_json(venv / VENV_MARKER).get("created_by_install_py"))
        say("environment", f"{venv} (exists{', created by install.py' if created else ''})")
        return created
    if venv.exists() and any(venv.iterdir()):
        raise InstallError(f"{venv} exists but is not a Python virtual environment.",
                           "Choose a new or empty folder with --venv (or an existing virtual environment).")
    cmd = [base_python, "-m", "venv", str(venv)]
    say("environment", f"creating {venv}")
    if dry_run:
        print(f"    would run: {shell_join(cmd)}")
        return True
    venv.parent.mkdir(parents=True, exist_ok=True)
    existed = venv.exists()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0 or not python.exists():
        if venv.exists() and not existed:
            shutil.rmtree(venv, ignore_errors=True)
        text = (out.stderr or out.stdout).strip()
        hint = f"Retry with: {shell_join(cmd)}"
        if "ensurepip" in text or "No module named venv" in text or "venv" in text and "apt" in text:
            major_minor = "" if base_python != sys.executable else f"{sys.version_info[0]}.{sys.version_info[1]}"
            hint = (f"This Python lacks the venv/ensurepip modules. On Debian/Ubuntu: "
                    f"sudo apt install python3-venv (or python{major_minor or '3.X'}-venv), then run install.py again.")
        raise InstallError(f"Could not create the virtual environment {venv}:\n    {text[-800:]}", hint)
    write_json(venv / VENV_MARKER, {"created_by_install_py": True, "engine_preinstalled": False})
    return True


def check_base_python(base_python: str):
    try:
        out = subprocess.run([base_python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
                             capture_output=True, text=True, timeout=60)
        version = tuple(int(x) for x in out.stdout.split())
    except (OSError, ValueError, subprocess.SubprocessError):
        raise InstallError(f"--python {base_python} does not run.", "Give the path of a Python 3.10 or newer interpreter.")
    if version < (3, 10):
        raise InstallError(f"--python {base_python} is Python {version[0]}.{version[1]}; the engine needs 3.10 or newer.",
                           "Install a newer Python (python.org, your package manager) and pass it with --python.")


def install_extension(ext_dir: Path, python: Path, venv: Path, version: str, models_dir, manifest: dict,
                      dry_run: bool) -> Path:
    """Copy the extension into <ext_dir>/clipasso/ with its config and manifest, replacing an older copy
    in one rename, so Inkscape never sees half a folder."""
    target = ext_dir / EXTENSION_FOLDER
    if target.exists() and not ((target / MANIFEST_NAME).exists() or (target / "clipasso.inx").exists()):
        raise InstallError(f"{target} exists and was not made by install.py.",
                           "Move it away, or choose another folder with --extensions-dir.")
    say("extension", f"{target}")
    if dry_run:
        return target
    ext_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".clipasso-new-", dir=ext_dir))
    try:
        shutil.copy2(REPO / "clipasso.inx", staging / "clipasso.inx")
        shutil.copytree(REPO / "inkscape_extension", staging / "inkscape_extension",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.inx"))
        # the wire's one definition, importable by the extension as `clipasso_wire` (no engine import)
        shutil.copy2(REPO / WIRE_SOURCE, staging / "inkscape_extension" / "clipasso_wire.py")
        write_json(staging / CONFIG_NAME, {"python": str(python), "venv": str(venv), "version": version,
                                           "models_dir": str(models_dir) if models_dir else None})
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        write_json(staging / MANIFEST_NAME, dict(manifest, files=files + [MANIFEST_NAME]))
        old = None
        if target.exists():
            old = target.with_name(f".clipasso-old-{os.getpid()}")
            target.rename(old)
        staging.rename(target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    # Inkscape scans extension folders recursively: a second copy of our .inx elsewhere means two menu entries.
    for inx in ext_dir.rglob("*.inx"):
        if target not in inx.parents and "org.clipasso.clipasso_sketch" in inx.read_text(errors="replace"):
            print(f"    warning: another copy of the extension is at {inx}: remove it, or Inkscape shows it twice.")
    return target


def install(args) -> int:
    check_sources()
    system = platform.system()
    dry = args.dry_run
    base_python = args.python or sys.executable
    if args.python:
        check_base_python(base_python)
    venv = Path(args.venv).expanduser().resolve() if args.venv else default_venv_dir()
    python = venv_python(venv)
    ext_dir, ext_how, inkscape_found = locate_extensions_dir(args.extensions_dir)
    models_dir = Path(args.models_dir).expanduser().resolve() if args.models_dir else None
    if dry:
        print("Dry run: nothing is changed.")

    # 1. the environment
    created = prepare_venv(venv, base_python, dry)
    if dry and not python.exists():
        probe = {"python": list(sys.version_info[:3])}
    else:
        probe = probe_venv(python)
    if tuple(probe["python"][:2]) < (3, 10):
        raise InstallError(f"The environment {venv} runs Python {probe['python'][0]}.{probe['python'][1]}; the engine needs 3.10+.",
                           "Choose another --venv, or --python a newer interpreter for a new environment.")
    marker = read_json(venv / VENV_MARKER)
    if not dry and not marker:  # first time in a venv we did not create: remember what was there before us
        marker = {"created_by_install_py": False, "engine_preinstalled": bool(probe.get("engine_in_venv"))}
        write_json(venv / VENV_MARKER, marker)
    if not dry and not probe.get("pip"):
        subprocess.run([str(python), "-m", "ensurepip", "--upgrade"], capture_output=True)
        probe = probe_venv(python)
        if not probe.get("pip"):
            raise InstallError(f"The environment {venv} has no pip and ensurepip could not add it.",
                               "Choose another --venv, or let install.py create a fresh one (omit --venv).")
    pip = Pip(python, venv / LOG_NAME, args.verbose)

    # 2. PyTorch
    nvidia = detect_nvidia() if args.torch in ("auto", "cuda") else None
    plan = choose_torch(args.torch, system, nvidia, probe)
    source = None
    if plan.action in ("install", "replace"):
        explicit = args.torch not in ("auto", "cpu", "cuda")
        config = {} if explicit else pip_config(python if python.exists() else sys.executable)
        source = torch_source(plan.pip_args, explicit, config, system)
    say("pytorch", plan.reason)
    if source:
        for note in source.notes:
            print(f"    {note}")
        if plan.action == "replace":
            cmd = ["uninstall", "-y", "torch", "torchvision"]
            print(f"    {'would run' if dry else 'running'}: {shell_join(pip.command(cmd))}")
            if not dry:
                pip(cmd, "Removing the old PyTorch")
        size = TORCH_CPU_SIZE if index_of(source.pip_args) == CPU_INDEX else TORCH_PYPI_SIZE
        cmd = ["install", "--upgrade", *source.pip_args]
        print(f"    {'would run' if dry else 'running'}: {shell_join(pip.command(cmd))}"
              + ("" if dry else f"  (large download: {size}; minutes)"), flush=True)
        if source.fallback:
            fallback = ["install", "--upgrade", *source.fallback]
            print(f"    {'if' if dry else 'should'} {index_of(source.pip_args)} {'cannot' if dry else 'not'} be reached, "
                  f"{'would run' if dry else 'then'}: {shell_join(pip.command(fallback))} ({fallback_note(system, source.pip_args)})")
        if not dry:
            output = pip(cmd, "Installing PyTorch", show_all=True, fail=not source.fallback)
            if output.startswith("FAILED"):
                if not failed_for_the_network(output):
                    pip.failed("Installing PyTorch", 1, pip.command(cmd))
                print(f"    {index_of(source.pip_args)} could not be reached: installing torch + torchvision from the "
                      f"default package index instead ({fallback_note(system, source.pip_args)})", flush=True)
                pip(["install", "--upgrade", *source.fallback], "Installing PyTorch", show_all=True)
            probe = probe_venv(python)
    elif plan.action == "keep" and not probe.get("torchvision") and probe.get("torch"):
        # torch without torchvision: take torchvision from the same place torch came from
        index = [] if system == "Darwin" or probe.get("torch_cuda") else ["--index-url", CPU_INDEX]
        cmd = ["install", "torchvision", *index, "-c", str(venv / CONSTRAINTS_NAME)]
        print(f"    {'would run' if dry else 'running'}: {shell_join(pip.command(cmd))}")
        if not dry:
            (venv / CONSTRAINTS_NAME).write_text(constraints_text(probe), encoding="utf-8")
            pip(cmd, "Installing torchvision")
            probe = probe_venv(python)

    # 3. the engine, with torch pinned
    cmd = ["install"]
    if constraints_text(probe) or dry:
        cmd += ["-c", str(venv / CONSTRAINTS_NAME)]
    if args.no_deps:
        cmd.append("--no-deps")
    if can_build_offline(probe):
        cmd.append("--no-build-isolation")
    cmd += ["-e", str(REPO)] if args.editable else [str(REPO)]
    say("engine", f"{'editable install of' if args.editable else 'installing'} {REPO}")
    if dry:
        print(f"    would run: {shell_join(pip.command(cmd))}")
    else:
        (venv / CONSTRAINTS_NAME).write_text(constraints_text(probe), encoding="utf-8")
        pip(cmd, "Installing the engine")
        probe = probe_venv(python)
        if probe.get("torch") and not args.no_deps:
            check_engine(python, pip)
        elif not probe.get("torch"):
            print("    warning: no PyTorch in the environment: the engine cannot run until it has one "
                  "(run install.py again without --torch skip).")
    version = probe.get("engine") or engine_version_in_source()

    # 4. the extension, its config and the manifest
    manifest = {"installer": 1, "version": version, "venv": str(venv), "python": str(python),
                "venv_created": created, "engine_preinstalled": bool(marker.get("engine_preinstalled")),
                "extensions_dir": str(ext_dir), "models_dir": str(models_dir) if models_dir else None}
    previous = read_json(ext_dir / EXTENSION_FOLDER / MANIFEST_NAME)
    # an extensions folder we had to create goes again on uninstall (when empty)
    manifest["extensions_dir_created"] = previous.get("extensions_dir_created", False) if previous else not ext_dir.exists()
    target = install_extension(ext_dir, python, venv, version, models_dir, manifest, dry)
    print(f"    ({ext_how})")
    if previous.get("venv") and Path(previous["venv"]) != venv and previous.get("venv_created"):
        print(f"    note: the previous engine environment {previous['venv']} is no longer used; delete it to free the space.")
    if not inkscape_found:
        print(f"    note: Inkscape was not found, so the extension went to the default folder above. If your Inkscape "
              f"uses another one (Edit > Preferences > System > User extensions), run install.py again with "
              f"--extensions-dir THAT_FOLDER.")

    if inkscape_found and not _drawing_window_works():
        print("    note: the progress window will show the bar but not the drawing as it forms: the Python that "
              "Inkscape runs lacks cairo for GTK (Debian/Ubuntu: sudo apt install python3-gi-cairo).")

    # 5. the weights
    if args.download_models:
        cmd = [str(python), "-m", "clipasso_engine", "download-models"] + (["--models-dir", str(models_dir)] if models_dir else [])
        say("models", f"downloading the weights (CLIP RN101, ViT-B/32, U^2-Net; {WEIGHTS_SIZE})")
        if dry:
            print(f"    would run: {shell_join(cmd)}")
        elif subprocess.run(cmd).returncode != 0:
            raise InstallError("Downloading the model weights failed (see the message above).",
                               f"Everything else is installed. Check the network and retry with:\n    {shell_join(cmd)}")
    else:
        download = [python, "-m", "clipasso_engine", "download-models"] + (["--models-dir", models_dir] if models_dir else [])
        missing = None if dry else missing_weights(python, models_dir)
        if missing == []:   # a rerun, or weights put in --models-dir by hand: say they are there
            say("models", f"all weights found{f' in {models_dir}' if models_dir else ' (downloaded before)'}")
        else:
            absent = f"{', '.join(missing)} missing{f' from {models_dir}' if models_dir else ''}; " if missing else ""
            say("models", f"not downloaded now ({absent}first use downloads them; or run: {shell_join(download)})")

    if not dry:
        print(f"Done: CLIPasso Sketch {version}. Restart Inkscape, select an image, then "
              f"Extensions > Generate from Image > CLIPasso Sketch.")
        print(f"Uninstall with: {shell_join([Path(sys.executable).name, Path(__file__).name, '--uninstall'] + (['--extensions-dir', str(ext_dir)] if args.extensions_dir else []))}")
    return 0


def missing_weights(python: Path, models_dir) -> list | None:
    """The weights the engine would not find (its `models` command: no network), None if it cannot tell."""
    cmd = [str(python), "-m", "clipasso_engine", "models"] + (["--models-dir", str(models_dir)] if models_dir else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    except (OSError, subprocess.SubprocessError):
        return None
    status = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line and not line.startswith("Run "))
    return [name for name, where in status.items() if where == "missing"] if status else None


def check_engine(python: Path, pip: Pip):
    """Import what the engine needs, so a broken torch shows up now rather than inside Inkscape."""
    code = ("import json, torch, torchvision, open_clip, clipasso_engine; "
            "mps = getattr(torch.backends, 'mps', None); "
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), "
            "'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "
            "'mps': bool(mps and mps.is_available())}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        with open(pip.log, "a", encoding="utf-8") as log:
            log.write(f"\n$ engine check\n{out.stderr}\n")
        last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise InstallError(f"The engine does not import in {python}: {last}",
                           f"Often a torch/torchvision mismatch: run install.py again with --torch cpu (or --torch cuda) "
                           f"to reinstall both together. Log: {pip.log}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    device = f"CUDA ({info['gpu']})" if info["cuda"] else "MPS (Apple GPU)" if info["mps"] else "CPU"
    print(f"    engine ready: torch {info['torch']}, runs on {device}")


def print_torch_spec(args) -> int:
    """For scripts (tests/run.sh): the pip arguments that install this machine's torch into --venv,
    after the same choices as an install (nothing printed when the environment keeps its torch)."""
    system = platform.system()
    python = venv_python(Path(args.venv).expanduser().resolve() if args.venv else default_venv_dir())
    probe = probe_venv(python) if python.exists() else {}
    nvidia = detect_nvidia() if args.torch in ("auto", "cuda") else None
    plan = choose_torch(args.torch, system, nvidia, probe)
    if plan.action in ("install", "replace"):
        explicit = args.torch not in ("auto", "cpu", "cuda")
        config = {} if explicit else pip_config(python if python.exists() else sys.executable)
        source = torch_source(plan.pip_args, explicit, config, system)
        for note in source.notes:
            print(note, file=sys.stderr)
        print(shell_join(source.pip_args))
    return 0


# ----------------------------------------------------------------------------------------------------
# Uninstall

def uninstall(args) -> int:
    dry = args.dry_run
    ext_dir, ext_how, _ = locate_extensions_dir(args.extensions_dir)
    target = ext_dir / EXTENSION_FOLDER
    manifest = read_json(target / MANIFEST_NAME)
    if args.venv:
        venv = Path(args.venv).expanduser().resolve()
    elif manifest.get("venv"):
        venv = Path(manifest["venv"])
    else:
        venv = default_venv_dir()
    removed = 0

    if target.exists():
        if not (manifest or (target / "clipasso.inx").exists()):
            raise InstallError(f"{target} was not made by install.py; leaving it alone.",
                               "Remove it by hand if it is yours to remove.")
        say("extension", f"removing {target}")
        if not dry:
            shutil.rmtree(target)
            if manifest.get("extensions_dir_created"):
                try:
                    ext_dir.rmdir()
                except OSError:  # not empty: other extensions live there now
                    pass
        removed += 1
    else:
        say("extension", f"none at {target} ({ext_how})")

    marker = read_json(venv / VENV_MARKER)
    if marker.get("created_by_install_py") and (venv / "pyvenv.cfg").is_file():
        say("environment", f"removing {venv}")
        if not dry:
            shutil.rmtree(venv)
            try:  # the per-user data folder, when nothing else lives there
                venv.parent.rmdir() if venv.parent == default_data_dir() else None
            except OSError:
                pass
        removed += 1
    elif marker:
        # an environment we only installed into: take back the engine (unless it was there before) and our files
        python = venv_python(venv)
        if not marker.get("engine_preinstalled") and python.exists():
            cmd = [str(python), "-m", "pip", "uninstall", "-y", ENGINE_DIST]
            say("engine", f"removing {ENGINE_DIST} from {venv} (the environment itself was not made by install.py)")
            if not dry and subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
                print(f"    warning: could not remove the engine; retry with: {shell_join(cmd)}")
        else:
            say("environment", f"keeping {venv} and its engine (they were there before install.py)")
        if not dry:
            for name in (VENV_MARKER, CONSTRAINTS_NAME, LOG_NAME):
                (venv / name).unlink(missing_ok=True)
        removed += 1
    else:
        say("environment", f"nothing of install.py's at {venv}")
    print("Nothing to remove." if not removed else "Would remove the above." if dry else
          "Uninstalled. Downloaded model weights stay in their cache (e.g. ~/.cache/huggingface); delete them by hand to free the space.")
    return 0


# ----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Install (or --uninstall) CLIPasso Sketch: the engine and the Inkscape extension.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Re-running upgrades in place. Examples:\n"
                                       "  python3 install.py --download-models\n"
                                       "  python3 install.py --torch cpu --venv ~/clipasso-env\n"
                                       "  python3 install.py --uninstall")
    p.add_argument("--venv", metavar="DIR", help=f"the engine's virtual environment, new or existing (default: {default_venv_dir()})")
    p.add_argument("--python", metavar="EXE", help="Python (3.10+) to create the environment with (default: this one)")
    p.add_argument("--torch", default="auto", metavar="auto|cpu|cuda|skip|SPEC",
                   help="auto (default): keep an installed torch, else CUDA build if an NVIDIA GPU answers, else CPU; "
                        "skip: leave torch alone; SPEC: pip arguments, e.g. \"torch==2.4.1 torchvision==0.19.1 --index-url URL\"")
    p.add_argument("--editable", action="store_true", help="install the engine in editable mode (for development)")
    p.add_argument("--no-deps", action="store_true", help="install only the engine package, not its dependencies (environments you manage)")
    p.add_argument("--extensions-dir", metavar="DIR", help="Inkscape's user extensions folder (default: asked from inkscape --user-data-directory)")
    p.add_argument("--models-dir", metavar="DIR", help="folder of local weights files; written to the config so the extension passes it on")
    p.add_argument("--download-models", action="store_true", help=f"fetch the model weights now ({WEIGHTS_SIZE})")
    p.add_argument("--print-torch-spec", action="store_true",
                   help="print the pip arguments that would install PyTorch into --venv (nothing when it has torch) and exit")
    p.add_argument("--uninstall", action="store_true", help="remove the extension, its config and the environment install.py created")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="show pip's full output")
    return p.parse_args(argv)


def main(argv=None) -> int:
    if sys.version_info < (3, 10):
        print("install.py needs Python 3.10 or newer; run it with python3.10 (or newer).", file=sys.stderr)
        return 1
    args = parse_args(argv)
    try:
        if args.print_torch_spec:
            return print_torch_spec(args)
        return uninstall(args) if args.uninstall else install(args)
    except InstallError as e:
        print(f"\nFailed: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  What to do: {e.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted. Running install.py again finishes the job.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
