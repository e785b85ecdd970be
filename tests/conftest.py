"""Shared fixtures: offline, 2 CPU threads, randomly initialised CLIP models built once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never wait ~46 s for a hub that cannot be reached
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    try:
        import torch
    except ImportError:  # the extension's tests run without torch
        return
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def rn101_visual():
    """CLIP RN101's image tower, random weights, eval mode, frozen (what models.load_clip returns)."""
    import open_clip
    import torch
    torch.manual_seed(0)
    visual = open_clip.create_model("RN101-quickgelu", pretrained=None).visual.eval()
    return visual.requires_grad_(False)


@pytest.fixture(scope="session")
def vit_visual():
    import open_clip
    import torch
    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).visual.eval()
    return visual.requires_grad_(False)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models folder holding randomly initialised weights in the real formats (no network here)."""
    from fake_weights import make_test_weights
    folder = tmp_path_factory.mktemp("models")
    make_test_weights(folder, names=("RN101", "ViT-B-32"))
    return folder


@pytest.fixture(scope="session")
def chelsea_png(tmp_path_factory):
    """A real photograph no one here made (scikit-image's cat), 451 x 300: non-square on purpose."""
    from PIL import Image
    from skimage import data
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path
