"""Weights loading: models folder, Hugging Face cache, downloads (mocked), and every failure mode.

No network and nothing under ~/.cache: every test points HF_HOME / HF_HUB_CACHE / CLIPASSO_CACHE at
its own tmp folder, and any attempt to reach a host fails the test.
"""

import io
import shutil
import time
from pathlib import Path

import pytest
import torch

from clipasso_engine import models
from clipasso_engine.config import make_config
from clipasso_engine.errors import Cancelled, EngineError
from clipasso_engine.wire import CALLER_ENV, CALLER_INKSCAPE
from fake_weights import install_in_hf_cache, make_test_weights

CLIP_NAMES = ("RN101", "ViT-B-32")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Empty caches in tmp, offline, no models folder, and a tripwire on any network probe."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("CLIPASSO_CACHE", str(tmp_path / "clipasso-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CALLER_ENV, raising=False)
    monkeypatch.delenv("CLIPASSO_MODELS_DIR", raising=False)

    def no_network(url):
        raise AssertionError(f"tried to reach {url}")
    monkeypatch.setattr(models, "_reachable", no_network)
    return tmp_path


def go_online(monkeypatch, reachable=True):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_reachable", lambda url: reachable)


@pytest.fixture(scope="module")
def u2net_file(tmp_path_factory):
    return make_test_weights(tmp_path_factory.mktemp("u2net"), names=("u2net",))["u2net"]


def folder_with(tmp_path, files: dict) -> Path:
    """A fresh models folder: {file name in the folder: source path or bytes}."""
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    for name, source in files.items():
        if isinstance(source, bytes):
            (folder / name).write_bytes(source)
        else:
            shutil.copyfile(source, folder / name)
    return folder


def assert_frozen_eval_fp32(module):
    assert not module.training and not any(m.training for m in module.modules())
    params = list(module.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert all(t.dtype == torch.float32 for t in module.state_dict().values() if t.is_floating_point())


def check_clip_visual(name, visual, weights_file):
    from safetensors.torch import load_file
    assert_frozen_eval_fp32(visual)
    stored = load_file(str(weights_file))
    # a weight no folding touches (RN101's convolutions hold their BatchNorm once loaded), upcast
    key = "attnpool.c_proj.weight" if name == "RN101" else "conv1.weight"
    assert torch.equal(visual.state_dict()[key], stored["visual." + key].float())
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if name == "RN101":
            x = visual.stem(images)
            x = visual.layer1(x)
            layer2 = visual.layer2(x)
            layer3 = visual.layer3(layer2)
            embedding = visual.attnpool(visual.layer4(layer3))
            assert layer2.shape == (2, 512, 28, 28)
            assert layer3.shape == (2, 1024, 14, 14)
            for features in (layer3, embedding):   # random weights, but alive: finite, varying, not tiny
                assert torch.isfinite(features).all()
                assert features.std() > 0.1
            assert layer3.std(dim=(2, 3)).mean() > 0.1
        else:
            embedding = visual(images)
    assert embedding.shape == (2, 512)
    assert torch.isfinite(embedding).all()
    assert not torch.allclose(embedding[0], embedding[1])


# --- loading ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLIP_NAMES)
def test_load_clip_from_models_folder(name, models_dir):
    config = make_config("fast", models_dir=str(models_dir))
    assert models.find_weights(name, config) == models_dir / f"{name}.safetensors"
    visual = models.load_clip(name, config, "cpu")
    assert type(visual).__name__ == ("ModifiedResNet" if name == "RN101" else "VisionTransformer")
    check_clip_visual(name, visual, models_dir / f"{name}.safetensors")


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_load_clip_from_hf_cache_where_open_clip_looks(name, models_dir, isolated, monkeypatch):
    hub = isolated / "hf" / "hub"
    snapshot = install_in_hf_cache(hub, name, models_dir / f"{name}.safetensors")
    config = make_config("fast")
    assert models.models_status(config)[name] == snapshot
    check_clip_visual(name, models.load_clip(name, config, "cpu"), models_dir / f"{name}.safetensors")

    # open_clip's own `pretrained="openai"` resolution finds this very file (offline, so no HEAD request)
    import huggingface_hub.constants
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = get_pretrained_cfg(models.CLIP_REPOS[name].architecture, "openai")
    assert Path(download_pretrained(cfg, cache_dir=str(hub))) == snapshot


def test_models_folder_wins_over_cache(models_dir, isolated, tmp_path):
    install_in_hf_cache(isolated / "hf" / "hub", "RN101", models_dir / "RN101.safetensors")
    folder = folder_with(tmp_path, {"RN101.pt": b"x"})
    status = models.models_status(make_config("fast", models_dir=str(folder)))
    assert status["RN101"] == folder / "RN101.pt"
    assert status["ViT-B-32"] is None and status["u2net"] is None


def test_models_dir_from_environment(models_dir, monkeypatch):
    monkeypatch.setenv("CLIPASSO_MODELS_DIR", str(models_dir))
    assert models.models_status(make_config("fast"))["ViT-B-32"] == models_dir / "ViT-B-32.safetensors"


def test_clip_pickle_format_loads_too(models_dir, tmp_path):
    from safetensors.torch import load_file
    state = load_file(str(models_dir / "ViT-B-32.safetensors"))
    buffer = io.BytesIO()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, buffer)   # training-checkpoint style
    folder = folder_with(tmp_path, {"ViT-B-32.pt": buffer.getvalue()})
    visual = models.load_clip("ViT-B-32", make_config("fast", models_dir=str(folder)), "cpu")
    assert torch.equal(visual.proj, state["visual.proj"].float())


def test_u2net_forward(u2net_file, tmp_path):
    folder = folder_with(tmp_path, {"u2net.pth": u2net_file})
    net = models.load_u2net(make_config("fast", models_dir=str(folder)), "cpu")
    assert_frozen_eval_fp32(net)
    stored = torch.load(u2net_file, weights_only=True)
    assert torch.equal(net.side1.weight, stored["side1.weight"].float())
    with torch.no_grad():
        outputs = net(torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0)))
    assert len(outputs) == 7
    for d in outputs:
        assert d.shape == (1, 1, 320, 320)
        assert d.min() >= 0 and d.max() <= 1
    assert outputs[1].std() > 0   # d1, the map CLIPasso uses, is not constant


def test_u2net_architecture_matches_public_checkpoint_layout():
    from clipasso_engine.u2net import U2NET
    state = U2NET().state_dict()
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == 44_009_869
    for key in ("stage1.rebnconvin.conv_s1.weight", "stage1.rebnconv7.conv_s1.weight", "stage1.rebnconv6d.bn_s1.running_var",
                "stage5.rebnconv4.conv_s1.weight", "stage1d.rebnconv1d.conv_s1.weight", "side6.weight", "outconv.weight"):
        assert key in state
    assert state["stage1.rebnconv7.conv_s1.weight"].shape == (32, 32, 3, 3)
    assert state["outconv.weight"].shape == (1, 6, 1, 1)


# --- missing weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLIP_NAMES + ("u2net",))
def test_weights_missing_fails_at_once_with_a_fix(name):
    config = make_config("fast")
    start = time.perf_counter()
    with pytest.raises(EngineError) as caught:
        models.load_u2net(config, "cpu") if name == "u2net" else models.load_clip(name, config, "cpu")
    assert time.perf_counter() - start < 5
    error = caught.value
    assert error.code == "weights_missing"
    for words in ("clipasso download-models", "--models-dir", "CLIPASSO_MODELS_DIR", "RN101.safetensors",
                  "ViT-B-32.safetensors", "u2net.pth", name):
        assert words in error.message
    assert models.models_status(config) == {"RN101": None, "ViT-B-32": None, "u2net": None}


def test_weights_missing_under_inkscape_says_how_to_fix_it_there(monkeypatch):
    """Issue 8 item 4: an Inkscape user has no command line to pass --models-dir to."""
    monkeypatch.setenv(CALLER_ENV, CALLER_INKSCAPE)
    with pytest.raises(EngineError) as caught:
        models.load_clip("RN101", make_config("fast"), "cpu")
    message = caught.value.message
    assert caught.value.code == "weights_missing"
    assert "install.py --download-models" in message and "install.py --models-dir" in message
    assert "CLIPASSO_MODELS_DIR" not in message
    # issue 16: the engine's own command, by a path that runs as written (its `clipasso` is not on PATH)
    assert f"`{models.download_command(make_config('fast'))}`" in message


def test_weights_missing_names_the_empty_models_folder(tmp_path):
    folder = folder_with(tmp_path, {})
    with pytest.raises(EngineError) as caught:
        models.load_clip("RN101", make_config("fast", models_dir=str(folder)), "cpu")
    assert caught.value.code == "weights_missing" and str(folder) in caught.value.message


def test_unreachable_hub_fails_fast_without_retries(monkeypatch):
    go_online(monkeypatch, reachable=False)
    import huggingface_hub

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("hf_hub_download called although the hub is unreachable")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", must_not_be_called)
    start = time.perf_counter()
    with pytest.raises(EngineError) as caught:
        models.load_clip("ViT-B-32", make_config("fast"), "cpu")
    assert time.perf_counter() - start < 5
    assert caught.value.code == "weights_missing" and "cannot be reached" in caught.value.message


def test_failed_hub_download_becomes_weights_missing(monkeypatch):
    go_online(monkeypatch)
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    calls = []

    def failing_download(repo_id, filename, **kwargs):
        calls.append(filename)
        raise LocalEntryNotFoundError("connection reset")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_download)
    with pytest.raises(EngineError) as caught:
        models.load_clip("RN101", make_config("fast"), "cpu")
    assert caught.value.code == "weights_missing" and "connection reset" in caught.value.message
    assert calls == ["open_clip_model.safetensors"]   # a connection error is not retried with the .bin


# --- invalid weights -----------------------------------------------------------------------------------

def test_reader_failing_during_an_interruption_is_cancelled_not_invalid(models_dir, monkeypatch):
    """Issue 10 item 1: Ctrl-C while safetensors reads a good file made it raise a ValueError, reported
    as a broken file to delete. With an interruption pending, any reader failure is the interruption's."""
    import safetensors.torch

    def interrupted_read(*args, **kwargs):
        raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")
    monkeypatch.setattr(safetensors.torch, "load_file", interrupted_read)
    config = make_config("fast", models_dir=str(models_dir))
    with pytest.raises(EngineError) as caught:   # no interruption: the file is the culprit
        models.load_clip("ViT-B-32", config, "cpu")
    assert caught.value.code == "weights_invalid"
    monkeypatch.setattr(models.interrupt_pending, "is_set", lambda: True)
    with pytest.raises(Cancelled) as caught:
        models.load_clip("ViT-B-32", config, "cpu")
    assert caught.value.code == "cancelled" and "Delete" not in caught.value.message


def test_keyboard_interrupt_inside_a_reader_is_cancelled(models_dir, monkeypatch):
    import safetensors.torch

    def interrupted_read(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.torch, "load_file", interrupted_read)
    with pytest.raises(Cancelled):
        models.load_clip("RN101", make_config("fast", models_dir=str(models_dir)), "cpu")


@pytest.mark.parametrize("file_name", ["RN101.safetensors", "RN101.pt", "u2net.pth"])
def test_garbage_file_is_weights_invalid(file_name, tmp_path):
    folder = folder_with(tmp_path, {file_name: b"<html>404 Not Found</html>" * 10})
    config = make_config("fast", models_dir=str(folder))
    with pytest.raises(EngineError) as caught:
        models.load_u2net(config, "cpu") if file_name == "u2net.pth" else models.load_clip("RN101", config, "cpu")
    assert caught.value.code == "weights_invalid"
    assert str(folder / file_name) in caught.value.message and "clipasso download-models" in caught.value.message


def test_wrong_architecture_is_weights_invalid(models_dir, u2net_file, tmp_path):
    folder = folder_with(tmp_path, {"RN101.safetensors": models_dir / "ViT-B-32.safetensors",
                                    "u2net.pth": u2net_file})
    config = make_config("fast", models_dir=str(folder))
    with pytest.raises(EngineError) as caught:
        models.load_clip("RN101", config, "cpu")
    assert caught.value.code == "weights_invalid" and "does not hold CLIP RN101" in caught.value.message

    # a U^2-Net state dict with one tensor of the wrong shape
    state = torch.load(u2net_file, weights_only=True)
    state["side1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save(state, folder / "u2net.pth")
    with pytest.raises(EngineError) as caught:
        models.load_u2net(config, "cpu")
    assert caught.value.code == "weights_invalid" and "side1.weight" in caught.value.message


class Payload:
    """Unpickling this creates a file: the proof that code from a weights file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_objects_is_refused_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"side1.weight": torch.zeros(1, 64, 3, 3), "payload": Payload(marker)}, buffer)
    folder = folder_with(tmp_path, {"u2net.pth": buffer.getvalue()})
    with pytest.raises(EngineError) as caught:
        models.load_u2net(make_config("fast", models_dir=str(folder)), "cpu")
    assert caught.value.code == "weights_invalid" and "Python objects" in caught.value.message
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path):
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    folder = folder_with(tmp_path, {"RN101.pt": buffer.getvalue()})
    with pytest.raises(EngineError) as caught:
        models.load_clip("RN101", make_config("fast", models_dir=str(folder)), "cpu")
    assert caught.value.code == "weights_invalid" and "TorchScript" in caught.value.message


# --- downloads (mocked; no network) -------------------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, length: int):
        super().__init__(body)
        self.headers = {"Content-Length": str(length)}


def serve(monkeypatch, responses: dict):
    """Mock urllib: url -> (body, Content-Length); records the URLs asked for."""
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        body, length = responses[url]
        return FakeResponse(body, length)
    monkeypatch.setattr(models.urllib.request, "urlopen", urlopen)
    return asked


def test_download_u2net_into_cache_with_progress_bar(u2net_file, isolated, monkeypatch, capsys):
    go_online(monkeypatch)
    body = u2net_file.read_bytes()
    first, second = models.U2NET_URLS[:2]
    asked = serve(monkeypatch, {first: (body[: len(body) // 2], len(body)),   # cut off mid-way
                                second: (body, len(body))})
    paths = models.download_models(make_config("fast"), names=["u2net"], progress=True)
    cached = isolated / "clipasso-cache" / "u2net.pth"
    assert paths == {"u2net": cached} and asked == [first, second]
    assert cached.read_bytes() == body
    assert sorted(p.name for p in cached.parent.iterdir()) == ["u2net.pth"]   # no .part left behind
    assert "u2net.pth" in capsys.readouterr().err   # tqdm's bar, on stderr
    assert models.models_status(make_config("fast"))["u2net"] == cached
    assert models.download_models(make_config("fast"), names=["u2net"]) == {"u2net": cached}
    assert len(asked) == 2   # already there: not fetched again


def test_download_u2net_that_is_not_u2net_is_not_kept(models_dir, isolated, monkeypatch):
    go_online(monkeypatch)
    html = b"<html>rate limited</html>"
    wrong = (models_dir / "RN101.safetensors").read_bytes()
    serve(monkeypatch, {models.U2NET_URLS[0]: (html, len(html)), models.U2NET_URLS[1]: (wrong, len(wrong))})
    with pytest.raises(EngineError) as caught:
        models.download_models(make_config("fast"), names=["u2net"], progress=False)
    assert caught.value.code == "weights_missing"
    assert not (isolated / "clipasso-cache" / "u2net.pth").exists()


def test_download_clip_into_hub_cache_and_models_folder(models_dir, isolated, monkeypatch, tmp_path):
    go_online(monkeypatch)
    import huggingface_hub
    hub = isolated / "hf" / "hub"
    calls = []

    def fake_hf_hub_download(repo_id, filename, cache_dir=None, tqdm_class=None, **kwargs):   # leaves what the real one does
        calls.append((repo_id, filename, Path(cache_dir), tqdm_class is not None))
        name = next(n for n, source in models.CLIP_REPOS.items() if source.repo == repo_id)
        return str(install_in_hf_cache(cache_dir, name, models_dir / f"{name}.safetensors"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)

    paths = models.download_models(make_config("fast"), names=["RN101"], progress=True)
    assert calls == [("timm/resnet101_clip.openai", "open_clip_model.safetensors", hub, False)]
    assert paths["RN101"] == models.models_status(make_config("fast"))["RN101"]
    assert str(paths["RN101"]).startswith(str(hub))

    # with a models folder: the files are copied there under the folder's names (cache reused for RN101)
    folder = tmp_path / "for-the-studio"
    config = make_config("fast", models_dir=str(folder))
    paths = models.download_models(config, names=CLIP_NAMES, progress=False)
    assert paths == {"RN101": folder / "RN101.safetensors", "ViT-B-32": folder / "ViT-B-32.safetensors"}
    assert calls[1:] == [("timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors", hub, True)]
    assert not paths["RN101"].is_symlink()
    assert paths["ViT-B-32"].read_bytes() == (models_dir / "ViT-B-32.safetensors").read_bytes()
    models.load_clip("RN101", config, "cpu")


def test_offline_download_models_is_weights_missing():
    with pytest.raises(EngineError) as caught:
        models.download_models(make_config("fast"), names=["ViT-B-32"])
    assert caught.value.code == "weights_missing" and "HF_HUB_OFFLINE" in caught.value.message


def test_rn101_is_loaded_with_batchnorm_folded_and_computes_the_same(models_dir):
    """load_clip folds RN101's ~100 BatchNorms into its convolutions: same features, fewer layers."""
    from clipasso_engine.clip import clip_normalize, resnet_features
    folded = models.load_clip("RN101", make_config(models_dir=str(models_dir)), "cpu")
    plain = models.build_clip_visual("RN101").eval()
    state = models.load_state_dict_file(models_dir / "RN101.safetensors")
    plain.load_state_dict({k[len("visual."):]: v.float() for k, v in state.items()})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) > 90
    x = clip_normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        for a, b in zip(resnet_features(folded, x), resnet_features(plain, x)):
            assert (a - b).norm() / b.norm() < 1e-5
