"""Random-initialised weights of the real architectures, written in the real formats.

The build machines cannot download CLIP or U^2-Net, so tests make stand-ins that the engine's real
loaders (clipasso_engine.models) read exactly as they read the published files:

  RN101.safetensors, ViT-B-32.safetensors  open_clip state dicts (`visual.*` keys, as in the hub's
                                           open_clip_model.safetensors; the text tower, unused by
                                           the engine, is left out to save ~250 MB per file)
  u2net.pth                                torch.save of a plain U^2-Net state dict

Tensors are stored in float16 (as OpenAI's own release) to halve the bytes written; the loaders
upcast to float32. Same seed, same files.

RN101: open_clip zero-initialises every bottleneck's last BatchNorm (bn3), which makes all residual
branches dead, and leaves the BatchNorm running statistics at mean 0 / var 1, which lets activations
shrink by ~2x per stage. The stand-in sets bn3's scale to 1 and the running statistics to those of one
forward pass over smooth random images (what a trained network's statistics are: the batch statistics
of its inputs), so every block contributes and layer2/layer3/attnpool activations are of order 1.
"""

import hashlib
import os
import shutil
from pathlib import Path

import torch

from clipasso_engine import models
from clipasso_engine.clip import clip_normalize
from clipasso_engine.u2net import U2NET

SEED = 0


def _smooth_noise_images(n: int, size: int = 224, generator=None) -> torch.Tensor:
    """Images-like inputs, CLIP-normalised scale: low-frequency noise plus a little pixel noise."""
    coarse = torch.rand(n, 3, 7, 7, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    images = (images + 0.1 * torch.rand(n, 3, size, size, generator=generator)).clamp(0, 1)
    return clip_normalize(images)


@torch.no_grad()
def _calibrate_batchnorm(net: torch.nn.Module, inputs: torch.Tensor):
    """Running statistics := the batch statistics of one forward pass (momentum None = plain average)."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    net(inputs)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    net.eval()


def fake_rn101_visual(generator_seed: int = SEED) -> torch.nn.Module:
    torch.manual_seed(generator_seed)
    visual = models.build_clip_visual("RN101")
    with torch.no_grad():
        for name, param in visual.named_parameters():
            if name.endswith("bn3.weight"):
                param.fill_(1.0)
    _calibrate_batchnorm(visual, _smooth_noise_images(4, generator=torch.Generator().manual_seed(generator_seed)))
    return visual


def fake_vit_visual(generator_seed: int = SEED) -> torch.nn.Module:
    torch.manual_seed(generator_seed)
    return models.build_clip_visual("ViT-B-32").eval()


def _half_state(module: torch.nn.Module, prefix: str = "") -> dict:
    return {prefix + k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()}


def make_test_weights(folder, names=("RN101", "ViT-B-32", "u2net")) -> dict:
    """Write stand-in weights for `names` into `folder` under the models-folder file names;
    returns name -> path. A few seconds and ~380 MB for all three."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        if name == "u2net":
            torch.manual_seed(SEED)
            path = folder / models.U2NET_FILE
            torch.save(_half_state(U2NET()), path)
        else:
            visual = fake_rn101_visual() if name == "RN101" else fake_vit_visual()
            path = folder / f"{name}.safetensors"
            save_file(_half_state(visual, prefix="visual."), str(path), metadata={"format": "pt"})
        paths[name] = path
    return paths


def install_in_hf_cache(hf_cache_dir, name: str, file) -> Path:
    """Place `file` in a Hugging Face hub cache folder exactly where huggingface_hub (and so open_clip's
    `pretrained="openai"`) looks for the weights of `name`:

        <hf_cache_dir>/models--timm--resnet101_clip.openai/
            refs/main                                  -> "<commit>"
            blobs/<sha256 of the file>                 (the content; a hard link to `file` when possible)
            snapshots/<commit>/open_clip_model.safetensors  -> ../../blobs/<sha256>   (symlink)

    A .safetensors file becomes open_clip_model.safetensors, anything else open_clip_pytorch_model.bin.
    Returns the snapshot path (what try_to_load_from_cache returns)."""
    file = Path(file)
    repo = models.CLIP_REPOS[name].repo
    file_name = models.HF_FILENAMES[0] if file.suffix == ".safetensors" else models.HF_FILENAMES[1]
    repo_dir = Path(hf_cache_dir) / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()   # any 40-hex name; the hub's is the git commit
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    blob = repo_dir / "blobs" / digest.hexdigest()
    snapshot = repo_dir / "snapshots" / commit / file_name
    blob.parent.mkdir(parents=True, exist_ok=True)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    if not blob.exists():
        try:
            os.link(file, blob)
        except OSError:
            shutil.copyfile(file, blob)
    if snapshot.exists() or snapshot.is_symlink():
        snapshot.unlink()
    try:
        snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    except OSError:   # no symlinks (Windows without developer mode): the hub then copies too
        shutil.copyfile(blob, snapshot)
    return snapshot
