"""Everything CLIP-specific the loop touches, in one place: the input normalisation, the ResNet's
intermediate features (the open_clip ModifiedResNet internals the loss reads) and the precision CLIP
runs in on each device.

The loss sees its network through one small seam, a *perceptual network*: any object with

    perceptual_features(images, need_embedding) -> (fine, coarse, embedding or None)

taking RGB images in [0, 1] (it does its own input normalisation) and returning two convolutional
feature maps (stride 8 and stride 16: RN101's layer2 and layer3) and a pooled embedding. CLIP RN101 is
the product's (ClipResNet below); the tests and benchmarks plug an ImageNet-trained stand-in into the
same seam (tests/standin_net.py), since CLIP's weights cannot be downloaded on the build machines.
"""

from __future__ import annotations

import contextlib

import torch

from .config import CLIP_MEAN, CLIP_STD


def clip_normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> CLIP's input normalisation (the one place it is written)."""
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def resnet_features(visual, x: torch.Tensor, need_embedding: bool = True):
    """CLIP ModifiedResNet forward returning (layer2, layer3, attention-pool embedding or None).

    Written out (open_clip's `stem`, `layer1..4`, `attnpool`) rather than hooked, so that nothing past
    layer3 runs when the embedding is not needed. open_clip 3.3's forward_intermediates has its
    stop_early flag inverted (docs/STACK.md), which is why it is not used.
    """
    x = visual.stem(x.to(visual.conv1.weight.dtype))
    x = visual.layer1(x)
    layer2 = visual.layer2(x)
    layer3 = visual.layer3(layer2)
    embedding = visual.attnpool(visual.layer4(layer3)) if need_embedding else None
    return layer2, layer3, embedding


class ClipResNet(torch.nn.Module):
    """CLIP RN101's image tower as a perceptual network: CLIP normalisation, then layer2, layer3 and the
    attention-pool embedding (what the reference's loss reads)."""

    def __init__(self, visual, channels_last: bool = True):
        super().__init__()
        self.visual = visual
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def perceptual_features(self, images: torch.Tensor, need_embedding: bool = True):
        return resnet_features(self.visual, clip_normalize(images).contiguous(memory_format=self.memory_format),
                               need_embedding)


def perceptual_net(model, channels_last: bool = True):
    """The loss's network: a model that already is a perceptual network (a stand-in) as it is, open_clip's
    ModifiedResNet wrapped as ClipResNet."""
    return model if hasattr(model, "perceptual_features") else ClipResNet(model, channels_last)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The reduced precision CLIP runs in, or None for fp32.

    auto: fp16 on CUDA (what the reference runs), bf16 on CUDA only when asked; fp32 on the CPU,
    where bf16 is 3-6x slower here (docs/STACK.md) and fp16 is not supported by autocast at all."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16


def autocast(device: torch.device, precision: str):
    """A context in which CLIP's forward runs at the device's chosen precision (no-op for fp32)."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d registered just before it (in place).

    conv -> BN(running stats) is one affine map per channel, so the conv's weight is scaled and it
    gets the shift as a bias: the same function up to float rounding, with one pass less per layer
    each way and one saved activation less for the backward (RN101: ~100 BatchNorms). Only for a
    frozen model in eval mode; the BN becomes an Identity."""
    for parent in module.modules():
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = torch.nn.Parameter(bias, requires_grad=False)
            setattr(parent, bn_name, torch.nn.Identity().train(bn.training))
    return module
