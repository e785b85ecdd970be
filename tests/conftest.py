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
def models_dir(tmp_path_factory):
    """A models folder holding randomly initialised weights in the real formats (no network here)."""
    from fake_weights import make_test_weights
    folder = tmp_path_factory.mktemp("models")
    make_test_weights(folder, names=("RN101", "ViT-B-32", "u2net"))
    return folder


def _load(name, models_dir):
    from clipasso_engine import models
    from clipasso_engine.config import make_config
    return models.load_clip(name, make_config("fast", models_dir=str(models_dir)), "cpu")


@pytest.fixture(scope="session")
def rn101_visual(models_dir):
    """CLIP RN101's image tower through the real loader: eval, frozen, fp32, live activations."""
    return _load("RN101", models_dir)


@pytest.fixture(scope="session")
def vit_visual(models_dir):
    return _load("ViT-B-32", models_dir)


@pytest.fixture(scope="session")
def chelsea_png(tmp_path_factory):
    """A real photograph no one here made (scikit-image's cat), 451 x 300: non-square on purpose."""
    from PIL import Image
    from skimage import data
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path
