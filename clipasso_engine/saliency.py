"""Where the strokes start: CLIPasso's saliency initialisation, as the released code does it.

    target ─▶ CLIP-normalise ─┬▶ ViT-B/32 CLS attention (12 blocks x 12 heads averaged) ─▶ saliency in [0, 1]
                              └▶ XDoG edges, Otsu-binarised ─▶ ink mask in {0, 1} (1 on edges / dark areas)
    M = saliency x ink ─▶ softmax(M / 0.3) over M > 0 ─▶ N start pixels without replacement
    ─▶ each stroke: start point + a 3-step random walk of +-5.6 px per axis = 4 control points

Every number is the reference's (docs/ALGORITHM.md, "Stroke initialisation"). The few places where the
reference would crash or divide by zero (blank images, fewer ink pixels than strokes) have a documented
fallback instead; they never change the result of an image on which the reference works.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from .config import Config
from .clip import clip_normalize
from .strokes import padded_sides

GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray, as the reference uses
OTSU_BINS = 256                          # skimage.filters.threshold_otsu's default


# -----------------------------------------------------------------------------------------------
# saliency: CLS-token attention of CLIP ViT-B/32

def _attention_probabilities(attn: torch.nn.MultiheadAttention, x: torch.Tensor):
    """Self-attention of a stock nn.MultiheadAttention on x (B, T, D), computed by hand so that the
    softmaxed probabilities are available (open_clip calls the module with need_weights=False).
    Returns (output (B, T, D) identical to the module's, probabilities (B, heads, T, T))."""
    B, T, D = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, T, heads, D // heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d)
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // heads), dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(B, T, D)
    return attn.out_proj(out), probs


def vit_forward_with_attention(vit_visual, image_norm: torch.Tensor):
    """The forward of open_clip's VisionTransformer (`model.visual`), written out so that each
    block's attention probabilities can be read. Returns (image features (B, out_dim) equal to
    vit_visual(image_norm), list over blocks of (B, heads, T, T) probabilities), T = 1 + grid^2."""
    v = vit_visual
    x = v.conv1(image_norm)                                   # (B, width, grid, grid) patch embedding
    x = x.flatten(2).transpose(1, 2)                          # (B, grid^2, width)
    cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
    x = v.patch_dropout(x)                                    # identity in eval mode
    x = v.ln_pre(x)
    attentions = []
    for block in v.transformer.resblocks:
        attn_out, probs = _attention_probabilities(block.attn, block.ln_1(x))
        x = x + block.ls_1(attn_out)                          # ls_* are identity for CLIP (no layer scale)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        attentions.append(probs)
    pooled = v.ln_post(x)[:, 0]                               # ViT-B/32: CLS token, LayerNorm before pooling
    if v.proj is not None:
        pooled = pooled @ v.proj
    return pooled, attentions


@torch.no_grad()
def vit_attention_map(vit_visual, image_norm: torch.Tensor, size: int | None = None) -> np.ndarray:
    """Saliency the way the released CLIPasso code computes it (not the paper's relevancy map):
    per block the head-averaged attention of the CLS token to the patches, averaged over the blocks,
    bicubic-upsampled from the 7x7 grid to `size` (default: the input's side) and min-max normalised.

    image_norm: 1x3xSxS CLIP-normalised; resized bicubic to the ViT's input size if S differs.
    Returns float32 SxS in [0, 1]. A constant map (no preference anywhere; never seen on real
    weights) is returned as all ones, so that it leaves the ink mask alone downstream."""
    size = size or image_norm.shape[-1]
    vit_size = vit_visual.conv1.kernel_size[0] * vit_visual.grid_size[0]
    if image_norm.shape[-2:] != (vit_size, vit_size):
        image_norm = F.interpolate(image_norm, size=(vit_size, vit_size), mode="bicubic", align_corners=False)
    _, attentions = vit_forward_with_attention(vit_visual, image_norm[:1])
    cls_to_patches = torch.stack([a.mean(dim=1)[0, 0, 1:] for a in attentions]).mean(dim=0)  # (grid^2,)
    grid = vit_visual.grid_size[0]
    relevance = F.interpolate(cls_to_patches.reshape(1, 1, grid, grid).float(), size=(size, size),
                              mode="bicubic", align_corners=False)[0, 0].cpu().numpy().astype(np.float32)
    lo, hi = relevance.min(), relevance.max()
    if hi - lo <= 0:
        return np.ones_like(relevance)
    return (relevance - lo) / (hi - lo)


# -----------------------------------------------------------------------------------------------
# ink mask: XDoG edges

def otsu_threshold(values: np.ndarray, nbins: int = OTSU_BINS) -> float:
    """Otsu's threshold with skimage.filters.threshold_otsu's exact convention: a `nbins` histogram
    over [min, max], the threshold is the centre of the last bin of the lower class; a constant
    image returns its value."""
    values = np.asarray(values).ravel()
    if np.all(values == values[0]):
        return values[0]
    counts, edges = np.histogram(values, bins=nbins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight_low = np.cumsum(counts)                      # pixels at or below each bin
    weight_high = np.cumsum(counts[::-1])[::-1]         # pixels at or above each bin
    mean_low = np.cumsum(counts * centres) / weight_low
    mean_high = (np.cumsum((counts * centres)[::-1]) / weight_high[::-1])[::-1]
    # a split after bin i pairs the low class up to i with the high class from i + 1
    between_variance = weight_low[:-1] * weight_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    return centres[np.argmax(between_variance)]


def xdog_edges(image_norm: torch.Tensor, config: Config) -> np.ndarray:
    """The reference's XDoG image E in {0, 1} (1 = paper-white, 0 = ink), float32 SxS.
    Computed on the CLIP-normalised image, as the reference does (its grey values are then roughly in
    [-1.8, 2.1] rather than [0, 1]; the thresholds eps and phi were tuned on that)."""
    rgb = image_norm[0].detach().permute(1, 2, 0).cpu().numpy().astype(np.float32)   # HxWx3, like the reference
    grey = rgb @ np.asarray(GREY_WEIGHTS, dtype=np.float32)
    # scipy's defaults are the reference's: mode "reflect", truncate 4.0
    fine = gaussian_filter(grey, config.xdog_sigma, mode="reflect", truncate=4.0)
    coarse = gaussian_filter(grey, config.xdog_sigma * config.xdog_k, mode="reflect", truncate=4.0)
    dog = fine - config.xdog_gamma * coarse
    # the reference's expression promotes to float64 here
    edges = np.where(dog < config.xdog_epsilon, 1.0, 1.0 + np.tanh(config.xdog_phi * dog.astype(np.float64)))
    edges = edges - edges.min()
    if edges.max() <= 1e-6:
        # no structure at all (a blank or flat image): the reference divides by ~0 here and
        # binarises noise. Call it all paper, i.e. no ink; stroke_distribution then falls back.
        return np.ones_like(grey, dtype=np.float32)
    edges = edges / edges.max()
    return (edges >= otsu_threshold(edges)).astype(np.float32)


def xdog_ink_mask(image_norm: torch.Tensor, config: Config) -> np.ndarray:
    """The mask the reference multiplies the saliency with: 1 - XDoG, i.e. 1 on edges and dark
    regions, 0 on a white background. float32 SxS in {0, 1}."""
    return 1.0 - xdog_edges(image_norm, config)


# -----------------------------------------------------------------------------------------------
# where to start: the sampling distribution and the strokes

def _softmax_over_positive(values: np.ndarray, temperature: float) -> np.ndarray:
    out = np.zeros(values.shape, dtype=np.float64)
    positive = values > 0
    logits = values[positive].astype(np.float64) / temperature
    weights = np.exp(logits - logits.max())             # same as the reference's exp(x/tau)/sum, no overflow
    out[positive] = weights / weights.sum()
    return out


def stroke_distribution(saliency: np.ndarray, ink_mask: np.ndarray, temperature: float) -> np.ndarray:
    """Probability of each pixel to start a stroke: softmax(M / temperature) over the pixels where
    M = saliency x ink_mask is strictly positive; every other pixel has probability exactly 0.
    float64 SxS summing to 1.

    Fallbacks where the reference would crash (np.random.choice with p all NaN): if no pixel has
    both saliency and ink (e.g. a blank white image, whose ink mask is empty), use the saliency alone
    with the same softmax; if that is empty too, uniform over the canvas."""
    M = np.asarray(saliency, dtype=np.float64) * np.asarray(ink_mask, dtype=np.float64)
    for candidate in (M, np.asarray(saliency, dtype=np.float64)):
        if np.any(candidate > 0):
            return _softmax_over_positive(candidate, temperature)
    return np.full(M.shape, 1.0 / M.size)


def inside_photo(distribution: np.ndarray, photo_box, margin: float) -> np.ndarray:
    """The distribution with zero outside the photo and within `margin` px of its boundary with the padding
    (the frame between photo and padding is an edge of the framing, not of the picture), renormalised;
    unchanged when the photo fills the canvas, or when nothing would be left."""
    if photo_box is None:
        return distribution
    size = distribution.shape[-1]
    left, top, right, bottom = photo_box
    inset = [margin if padded else 0.0 for padded in padded_sides(photo_box, size)]
    centres = np.arange(size) + 0.5
    cols = (centres >= left + inset[0]) & (centres <= right - inset[2])
    rows = (centres >= top + inset[1]) & (centres <= bottom - inset[3])
    kept = distribution * (rows[:, None] & cols[None, :])
    return kept / kept.sum() if kept.sum() > 0 else distribution


def init_strokes(distribution: np.ndarray, num_strokes: int, config: Config,
                 generator: np.random.Generator | int | None = None) -> torch.Tensor:
    """N start pixels drawn without replacement from `distribution`, each grown into a cubic stroke:
    P0 = (column, row) of the pixel in canvas px (the pixel's index, as the reference, not its
    centre), then P_{k+1} = P_k + uniform(-s, s) per axis with s = random_walk_step x canvas side
    (0.025 x 224 = 5.6 px). Returns float32 (N, 4, 2) on the CPU.

    If fewer pixels than strokes have a positive probability (the reference raises there), every
    such pixel is taken once and the remaining strokes start at pixels drawn again, with
    replacement, from the same distribution: their random walks still make them distinct strokes."""
    rng = np.random.default_rng(generator)
    height, width = distribution.shape
    p = np.asarray(distribution, dtype=np.float64).ravel()
    p = p / p.sum()
    available = int(np.count_nonzero(p))
    first = min(num_strokes, available)
    picks = rng.choice(p.size, size=first, replace=False, p=p)
    if first < num_strokes:
        picks = np.concatenate([picks, rng.choice(p.size, size=num_strokes - first, replace=True, p=p)])
    rows, cols = np.unravel_index(picks, (height, width))
    start = np.stack([cols, rows], axis=-1).astype(np.float64)                     # (N, 2) x right, y down
    step = config.random_walk_step * np.array([width, height], dtype=np.float64)   # per axis, like the reference
    walk = rng.uniform(-1.0, 1.0, size=(num_strokes, config.control_points - 1, 2)) * step
    points = np.concatenate([start[:, None], start[:, None] + np.cumsum(walk, axis=1)], axis=1)
    return torch.from_numpy(points).to(torch.float32)


# -----------------------------------------------------------------------------------------------

def saliency_map(vit_visual, target: torch.Tensor, config: Config):
    """Everything above for one target (1x3xSxS in [0, 1], any device).
    Returns (distribution, saliency, ink) as SxS numpy arrays; sample strokes with init_strokes."""
    param = next(vit_visual.parameters())
    image_norm = clip_normalize(target[:1].to(device=param.device, dtype=param.dtype))
    if hasattr(vit_visual, "saliency"):   # a stand-in network's own saliency (tests/standin_net.py)
        saliency = vit_visual.saliency(target[:1].to(device=param.device, dtype=param.dtype), target.shape[-1])
    else:
        saliency = vit_attention_map(vit_visual, image_norm, size=target.shape[-1])
    ink = xdog_ink_mask(image_norm, config)
    distribution = stroke_distribution(saliency, ink, config.saliency_temperature)
    return distribution, saliency, ink
