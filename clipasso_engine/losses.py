"""CLIPasso's perceptual loss: CLIP RN101 layer2 + layer3 MSE + 0.1 x (1 - cos) of the embedding.

Per iteration the reference builds 1 clean + `num_augs` jointly augmented (sketch, target) pairs:
RandomPerspective(0.5, p=1, fill 0) then RandomResizedCrop(224, scale (0.8, 0.8), ratio (1, 1)), then
CLIP normalisation; each loss term is a mean over all its views. What we do differently (same
gradients, less work): CLIP is frozen, the clean target view is computed once, target views never build
a graph, and all sketches x views go through CLIP in one batch. A batch may hold several targets (images
drawn together) and several sketches per target (seeds, stroke counts); all of them share the same
augmentations, so each iteration runs each target's branch once, not once per sketch, and a sketch's
loss is what it would be alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from . import clip
from .clip import clip_normalize, resnet_features  # noqa: F401  (re-exported for the benchmarks)
from .config import Config


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


def draw_transform(size: int, config: Config, generator: torch.Generator) -> tuple:
    """One augmentation's random parameters: perspective endpoints, then the crop (the reference's order)."""
    start, end = perspective_endpoints(size, config.perspective_distortion, generator)
    return start, end, crop_box(size, config.crop_scale, generator)


def apply_transform(images: torch.Tensor, transform: tuple) -> torch.Tensor:
    """RandomPerspective(fill 0) then RandomResizedCrop back to full size, with fixed parameters."""
    size = images.shape[-1]
    start, end, (top, left, side) = transform
    images = TF.perspective(images, start, end, interpolation=InterpolationMode.BILINEAR, fill=0)
    return TF.resized_crop(images, top, left, side, side, [size, size],
                           interpolation=InterpolationMode.BILINEAR, antialias=True)


def augment(images: torch.Tensor, config: Config, generator: torch.Generator) -> torch.Tensor:
    """One random perspective + crop, the same for every image of the batch (the 'joint' in joint)."""
    return apply_transform(images, draw_transform(images.shape[-1], config, generator))


# --- the loss -------------------------------------------------------------------------------------



class CLIPLoss:
    """loss(sketches (B,3,S,S) in [0,1], generator, target_index (B,)) -> per-sketch loss (B,).

    `targets` (T,3,S,S) are the images being drawn (several when images are batched together);
    sketch b is compared with targets[target_index[b]] (default: all with targets[0]). Every view's transform is shared by all
    sketches and targets of the batch, so a sketch's loss is the same as when it is run alone.
    """

    def __init__(self, net, targets: torch.Tensor, config: Config):
        self.net = clip.perceptual_net(net, config.channels_last)   # CLIP RN101 (or a stand-in: clip.py)
        self.config = config
        w = config.conv_layer_weights
        self.w2, self.w3 = float(w[2]), float(w[3])   # Config.validate allows only layer2/layer3
        self.fc_weight = float(config.fc_loss_weight)
        self.targets = targets
        self.device = targets.device
        with torch.no_grad():
            self.clean_targets = self._features(targets)
        self.pool = None
        if config.augment_pool and config.num_augs:
            # the same pool whatever num_iterations: a run stopped at k is the run of k iterations
            self._build_pool(max(config.num_augs, config.augment_pool))

    def _features(self, images: torch.Tensor):
        """CLIP features at the device's precision, returned in fp32 for the loss."""
        with clip.autocast(self.device, self.config.precision):
            feats = self.net.perceptual_features(images, need_embedding=self.fc_weight != 0)
        return tuple(None if f is None else f.float() for f in feats)

    def _per_sketch(self, sketch_feats, target_feats, views: int, target_index: torch.Tensor) -> torch.Tensor:
        """Sketch features are view-major (view v, sketch b at v*B + b); targets likewise, T per view."""
        s2, s3, se = sketch_feats
        t2, t3, te = target_feats
        batch = s2.shape[0] // views

        def per_view(features, count):
            return features.reshape(views, count, -1)

        def mse(s, t):
            paired = per_view(t, t.shape[0] // views)[:, target_index]     # (views, B, features)
            return (per_view(s, batch) - paired).square().mean(dim=(0, 2))

        loss = self.w2 * mse(s2, t2) + self.w3 * mse(s3, t3)
        if self.fc_weight:
            paired = per_view(te, te.shape[0] // views)[:, target_index]
            cos = F.cosine_similarity(per_view(se, batch), paired, dim=2)
            loss = loss + self.fc_weight * (1 - cos).mean(dim=0)
        return loss

    def _index(self, sketches: torch.Tensor, target_index: torch.Tensor | None) -> torch.Tensor:
        if target_index is None:
            return torch.zeros(sketches.shape[0], dtype=torch.long, device=self.device)
        return target_index

    # --- views: (transform or None for the clean view, the targets' features under it) -------------

    def _target_views(self, transforms: list) -> list:
        """Each transform's target features, (T rows each), computed without a graph."""
        if not transforms:
            return []
        with torch.no_grad():
            feats = self._features(torch.cat([apply_transform(self.targets, t) for t in transforms]))
        per_view = [f.split(self.targets.shape[0]) if f is not None else [None] * len(transforms) for f in feats]
        return list(zip(*per_view))

    def _build_pool(self, size: int) -> None:
        """config.augment_pool transforms drawn once (own generator, seeded by config.seed) and their
        target views computed once: each iteration then picks num_augs of them (a DEVIATION, off in
        the paper preset: the reference draws fresh transforms every iteration)."""
        generator = torch.Generator().manual_seed(self.config.seed)
        self.pool = [draw_transform(self.targets.shape[-1], self.config, generator) for _ in range(size)]
        self.pool_targets = []
        for i in range(0, size, 8):   # 8 views at a time: bounded memory
            self.pool_targets += self._target_views(self.pool[i:i + 8])

    def views(self, generator: torch.Generator) -> list:
        """This iteration's views: the clean one, then num_augs joint augmentations."""
        clean = [(None, self.clean_targets)]
        if not self.config.num_augs:
            return clean
        if self.pool is not None:
            picks = torch.randperm(len(self.pool), generator=generator)[:self.config.num_augs].tolist()
            return clean + [(self.pool[k], self.pool_targets[k]) for k in picks]
        transforms = [draw_transform(self.targets.shape[-1], self.config, generator) for _ in range(self.config.num_augs)]
        return clean + list(zip(transforms, self._target_views(transforms)))

    def _views_loss(self, sketches: torch.Tensor, views: list, total_views: int, target_index) -> torch.Tensor:
        """These views' share of the training loss (their sum / total_views), per sketch, with a graph."""
        sketch_views = torch.cat([sketches if t is None else apply_transform(sketches, t) for t, _ in views])
        target_feats = tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*(f for _, f in views)))
        loss = self._per_sketch(self._features(sketch_views), target_feats, len(views), target_index)
        return loss * (len(views) / total_views)

    # --- the two losses --------------------------------------------------------------------------

    def __call__(self, sketches: torch.Tensor, generator: torch.Generator,
                 target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss: clean view + num_augs joint augmentations, mean over views (differentiable)."""
        views = self.views(generator)
        return self._views_loss(sketches, views, len(views), self._index(sketches, target_index))

    def value_and_grad(self, sketches: torch.Tensor, generator: torch.Generator,
                       target_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss per sketch (B,) and its gradient with respect to `sketches`, CLIP's backward
        done a few views at a time (config.clip_chunk images) so that only those views' activations are
        alive at once: the same numbers as __call__ + backward, a fraction of the peak memory."""
        index = self._index(sketches, target_index)
        views = self.views(generator)
        leaf = sketches.detach().requires_grad_(True)
        chunk = self.config.clip_chunk or len(views) * leaf.shape[0]
        per_chunk = max(1, chunk // leaf.shape[0])
        # fp16's backward loses gradients under ~6e-8: scale the loss up, the gradient back down (exact in fp32)
        scale = self.config.fp16_loss_scale if clip.autocast_dtype(self.device, self.config.precision) == torch.float16 else 1.0
        total = torch.zeros(leaf.shape[0], device=leaf.device)
        for i in range(0, len(views), per_chunk):
            part = self._views_loss(leaf, views[i:i + per_chunk], len(views), index)
            (part.sum() * scale).backward()
            total += part.detach()
        return total, leaf.grad / scale if scale != 1.0 else leaf.grad

    @torch.no_grad()
    def clean(self, sketches: torch.Tensor, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation loss: the clean view only (the reference's mode='eval')."""
        return self._per_sketch(self._features(sketches), self.clean_targets, 1, self._index(sketches, target_index))
