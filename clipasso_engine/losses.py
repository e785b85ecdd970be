"""CLIPasso's perceptual loss: CLIP RN101 layer2 + layer3 MSE + 0.1 x (1 - cos) of the embedding.

Per iteration the reference builds 1 clean + `num_augs` jointly augmented (sketch, target) pairs:
RandomPerspective(0.5, p=1, fill 0) then RandomResizedCrop(224, scale (0.8, 0.8), ratio (1, 1)), then
CLIP normalisation; each loss term is a mean over all its views. What we do differently (same
gradients, less work): CLIP is frozen, the clean target view is computed once, target views never build
a graph, and all seeds x views go through CLIP in one batch. The seeds of one batch share the same
augmentations, so each iteration runs the target branch once, not once per seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .config import Config
from .imageio import clip_normalize


def resnet_features(visual, x: torch.Tensor, need_embedding: bool = True):
    """CLIP ModifiedResNet forward returning (layer2, layer3, attention-pool embedding or None).

    Written out rather than hooked so that nothing past layer3 runs when the embedding is not needed.
    """
    x = visual.stem(x.to(visual.conv1.weight.dtype))
    x = visual.layer1(x)
    layer2 = visual.layer2(x)
    layer3 = visual.layer3(layer2)
    embedding = visual.attnpool(visual.layer4(layer3)) if need_embedding else None
    return layer2, layer3, embedding


# --- joint augmentation ---------------------------------------------------------------------------

def _randint(low: int, high: int, generator: torch.Generator) -> int:
    return int(torch.randint(low, high, (1,), generator=generator))


def perspective_endpoints(size: int, distortion: float, generator: torch.Generator):
    """torchvision's RandomPerspective.get_params, drawing from our generator (for determinism)."""
    half = size // 2
    bound = int(distortion * half) + 1
    topleft = [_randint(0, bound, generator), _randint(0, bound, generator)]
    topright = [_randint(size - bound, size, generator), _randint(0, bound, generator)]
    botright = [_randint(size - bound, size, generator), _randint(size - bound, size, generator)]
    botleft = [_randint(0, bound, generator), _randint(size - bound, size, generator)]
    start = [[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]]
    return start, [topleft, topright, botright, botleft]


def crop_box(size: int, scale: float, generator: torch.Generator):
    """RandomResizedCrop.get_params for scale (s, s) and ratio (1, 1): a fixed-size square, random offset."""
    side = int(round(math.sqrt(scale * size * size)))
    top = _randint(0, size - side + 1, generator)
    left = _randint(0, size - side + 1, generator)
    return top, left, side


def augment(images: torch.Tensor, config: Config, generator: torch.Generator) -> torch.Tensor:
    """One random perspective + crop, the same for every image of the batch (the 'joint' in joint)."""
    size = images.shape[-1]
    start, end = perspective_endpoints(size, config.perspective_distortion, generator)
    images = TF.perspective(images, start, end, interpolation=InterpolationMode.BILINEAR, fill=0)
    top, left, side = crop_box(size, config.crop_scale, generator)
    return TF.resized_crop(images, top, left, side, side, [size, size],
                           interpolation=InterpolationMode.BILINEAR, antialias=True)


# --- the loss -------------------------------------------------------------------------------------

class CLIPLoss:
    """loss(sketches (B,3,S,S) in [0,1]) -> per-sketch loss (B,), each sketch against the one target."""

    def __init__(self, visual, target: torch.Tensor, config: Config):
        self.visual = visual
        self.config = config
        w = config.conv_layer_weights
        if any(w[i] for i in (0, 1, 4)):
            raise NotImplementedError("only layer2/layer3 conv weights are supported (the reference's)")
        self.w2, self.w3 = float(w[2]), float(w[3])
        self.fc_weight = float(config.fc_loss_weight)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.target = target
        with torch.no_grad():
            self.clean_target = self._features(target)

    def _features(self, images: torch.Tensor):
        x = clip_normalize(images).contiguous(memory_format=self.memory_format)
        return resnet_features(self.visual, x, need_embedding=self.fc_weight != 0)

    def _per_sketch(self, sketch_feats, target_feats, views: int) -> torch.Tensor:
        """Sketch features are view-major (view v, sketch b at v*B + b); targets have one row per view."""
        s2, s3, se = sketch_feats
        t2, t3, te = target_feats
        batch = s2.shape[0] // views

        def mse(s, t):
            diff = s.reshape(views, batch, -1) - t.reshape(views, 1, -1)
            return diff.square().mean(dim=(0, 2))

        loss = self.w2 * mse(s2, t2) + self.w3 * mse(s3, t3)
        if self.fc_weight:
            cos = F.cosine_similarity(se.reshape(views, batch, -1), te.reshape(views, 1, -1), dim=2)
            loss = loss + self.fc_weight * (1 - cos).mean(dim=0)
        return loss

    def __call__(self, sketches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training loss: clean view + num_augs joint augmentations, mean over views."""
        batch = sketches.shape[0]
        sketch_views, target_views = [sketches], []
        for _ in range(self.config.num_augs):
            pair = augment(torch.cat([sketches, self.target.detach()]), self.config, generator)
            sketch_views.append(pair[:batch])
            target_views.append(pair[batch:].detach())
        views = 1 + len(target_views)
        sketch_feats = self._features(torch.cat(sketch_views))
        if target_views:
            with torch.no_grad():
                aug = self._features(torch.cat(target_views))
            target_feats = tuple(None if c is None else torch.cat([c, a]) for c, a in zip(self.clean_target, aug))
        else:
            target_feats = self.clean_target
        return self._per_sketch(sketch_feats, target_feats, views)

    @torch.no_grad()
    def clean(self, sketches: torch.Tensor) -> torch.Tensor:
        """Evaluation loss: the clean view only (the reference's mode='eval')."""
        return self._per_sketch(self._features(sketches), self.clean_target, 1)
