"""Stroke geometry the loop and the quality measures share: where a cubic goes, how long it is, whether it
has collapsed to a dot or lies along the frame between the photo and its padding, and how much of it
lies on the photo's edges.

A designer deletes two kinds of stroke by hand: dots (a cubic collapsed to a point, drawn as a blob) and
frame lines (a straight stroke along the boundary between a non-square photo and its white padding).
The loop re-seeds the first (sketcher.reseed_collapsed), the framing and the start strokes avoid the
second (imageio soft padding, saliency frame margin); these functions measure both, for the result and
the benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt, gaussian_gradient_magnitude

CURVE_SAMPLES = 32   # points per cubic for lengths and distances: < 0.1 px error on CLIPasso's strokes


def curve_points(points, samples: int = CURVE_SAMPLES):
    """(..., 4, 2) control points -> (..., samples, 2) points along each cubic (numpy or torch)."""
    lib = torch if isinstance(points, torch.Tensor) else np
    t = lib.linspace(0.0, 1.0, samples)
    if lib is torch:
        t = t.to(points)
    t = t[:, None]
    p0, p1, p2, p3 = (points[..., k, None, :] for k in range(4))
    u = 1 - t
    return u ** 3 * p0 + 3 * u ** 2 * t * p1 + 3 * u * t ** 2 * p2 + t ** 3 * p3


def stroke_lengths(points):
    """(..., 4, 2) -> (...) arc length of each cubic in the points' units (a 32-segment polyline)."""
    curve = curve_points(points)
    steps = curve[..., 1:, :] - curve[..., :-1, :]
    if isinstance(steps, torch.Tensor):
        return steps.norm(dim=-1).sum(dim=-1)
    return np.linalg.norm(steps, axis=-1).sum(axis=-1)


def padded_sides(photo_box, canvas_size: int) -> tuple[bool, bool, bool, bool]:
    """(left, top, right, bottom): whether padding lies beyond that side of the photo (the one place this
    is decided, for the frame test, the edge map and the start strokes' margin)."""
    edges = (0, 0, canvas_size, canvas_size)
    return tuple(abs(position - edge) > 0.5 for position, edge in zip(photo_box, edges))


def frame_lines(photo_box, canvas_size: int) -> list:
    """The boundaries between the photo and the padding, as (axis, position): axis 0 = a vertical line at
    x = position, 1 = a horizontal line at y = position. Empty when the photo fills the canvas."""
    axes = (0, 1, 0, 1)   # left and right are vertical lines, top and bottom horizontal
    return [(axis, float(position)) for axis, position, padded
            in zip(axes, photo_box, padded_sides(photo_box, canvas_size)) if padded]


def on_frame(points, photo_box, canvas_size: int, distance: float = 3.0, share: float = 0.5) -> np.ndarray:
    """(N, 4, 2) canvas px -> (N,) bool: at least `share` of the stroke's curve lies within `distance` px
    of one boundary between the photo and its padding."""
    curve = curve_points(np.asarray(points, dtype=np.float64))
    flags = np.zeros(curve.shape[0], dtype=bool)
    for axis, position in frame_lines(photo_box, canvas_size):
        near = np.abs(curve[..., axis] - position) <= distance
        flags |= near.mean(axis=-1) >= share
    return flags


def edge_map(target: torch.Tensor, photo_box, sigma: float = 1.0, top_share: float = 0.1) -> np.ndarray:
    """The photo's edges on the canvas (S, S) bool: the `top_share` strongest grey-level gradients
    (Gaussian derivative, sigma px) inside the photo, at least 3 px away from its frame (the boundary to the
    padding is not an edge of the photo)."""
    grey = target[0].detach().float().cpu().numpy().mean(axis=0)
    magnitude = gaussian_gradient_magnitude(grey, sigma)
    inside = np.zeros_like(magnitude, dtype=bool)
    left, top, right, bottom = photo_box
    pad = [3 if padded else 0 for padded in padded_sides(photo_box, grey.shape[-1])]
    inside[int(np.ceil(top)) + pad[1]:int(np.floor(bottom)) - pad[3],
           int(np.ceil(left)) + pad[0]:int(np.floor(right)) - pad[2]] = True
    threshold = np.quantile(magnitude[inside], 1 - top_share)
    return inside & (magnitude >= threshold)


def edge_alignment(points, edges: np.ndarray, distance: float = 3.0) -> float:
    """Share of the strokes' total length lying within `distance` px of an edge pixel (0..1)."""
    curve = curve_points(np.asarray(points, dtype=np.float64))               # (N, K, 2)
    to_edge = distance_transform_edt(~edges)                                  # px to the nearest edge
    mid = (curve[:, 1:] + curve[:, :-1]) / 2
    seg = np.linalg.norm(curve[:, 1:] - curve[:, :-1], axis=-1)
    cols = np.clip(np.round(mid[..., 0] - 0.5).astype(int), 0, edges.shape[1] - 1)
    rows = np.clip(np.round(mid[..., 1] - 0.5).astype(int), 0, edges.shape[0] - 1)
    inside = (mid[..., 0] >= 0) & (mid[..., 0] < edges.shape[1]) & (mid[..., 1] >= 0) & (mid[..., 1] < edges.shape[0])
    near = inside & (to_edge[rows, cols] <= distance)
    return float((seg * near).sum() / max(seg.sum(), 1e-9))
