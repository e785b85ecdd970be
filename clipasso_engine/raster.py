"""Differentiable rendering of open cubic Bezier strokes: black lines over a white canvas.

The default backend is pure PyTorch and runs on any device. A pixel's value is what diffvg's box
filter gives: 1 minus the area of the pixel covered by the stroke (with 16x16 samples diffvg is close
to that exact area; CLIPasso's 2x2 samples are a noisy estimate of it). Strokes combine the way
diffvg composites opaque black over white, per pixel: image = prod_i (1 - alpha_i).

How a stroke's coverage is computed, and why it is cheap:
  1. Flatten each cubic into a polyline. Only *where* the vertices sit on the curve (parameters t)
     is chosen without gradient, spaced by arc length and curvature so the chord error stays under
     FLATTEN_TOLERANCE px; the vertices themselves are B(t) and carry the gradient.
  2. Each segment only touches the pixels of its small window (segment bbox + half-width + the
     filter's reach), gathered as fixed-size patches: the work grows with the total length of the
     strokes, never with pixels x strokes x segments.
  3. A pixel's coverage by a segment's capsule (thick segment, round caps) is the exact
     box-filtered coverage of a straight band of half-width w: the pixel square projected on the
     direction to the segment is a trapezoid, whose tail beyond w - d is the uncovered area. Exact
     along straight parts, close at caps and bends; its Jacobian is written out by hand, so only 4
     numbers per window pixel are kept for backward.
  4. A stroke is the union of its capsules: per (stroke, pixel) the max over its segments. The max
     is only exact where one capsule dominates the pixel, so coverage is computed on a 2x2 finer
     grid (SUBSAMPLES) and box-averaged back; this is what lets a stroke that folds back on itself
     (common in CLIPasso's random-walk starts) fill the gap between its two halves as the true
     union does. Strokes then combine per pixel as transmittance = prod_i (1 - alpha_i).
Against diffvg at 16x16 samples (shared/data/diffvg_reference.npz) this matches the image to ~0.001
mean abs and the gradient to cosine ~0.97, where diffvg's own 2x2-sample gradient reaches ~0.75.
Memory: ~70 bytes per window pixel; strokes are rendered in chunks of ENTRY_BUDGET window pixels,
each recomputed in backward (checkpointed) when there is more than one, so it stays bounded.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .errors import EngineError

FLATTEN_TOLERANCE = 0.01   # px: max distance between the cubic and its polyline
MAX_SEGMENT_LENGTH = 2.0   # px: long straight runs are cut too, so windows stay small
MAX_SEGMENTS = 512         # per stroke, whatever the curve (a cap for absurd inputs)
SUBSAMPLES = 2             # coverage on a 2x2 finer grid: unions of overlapping parts of a stroke
FINE_SAMPLES = 128         # samples of the curve used to place the polyline's vertices
ENTRY_BUDGET = 1 << 23     # window pixels per chunk of strokes (~30 bytes each kept for backward)
SLOT_BUDGET = 1 << 22      # canvas pixels of the (stroke, pixel) -> pair map (8 bytes each)
PIECE_BUDGET = 1 << 19     # window pixels computed at once (~30 temporaries each)
DIFFVG_SAMPLES = 2         # CLIPasso renders with 2x2 stratified samples per pixel...
DIFFVG_SEED = 0            # ...and sample seed 0

BACKENDS = ("auto", "torch", "diffvg")
_FILTER_REACH = math.sqrt(0.5)   # a unit pixel square reaches this far from its centre


# ------------------------------------------------------------------------------------------------
# backend selection


def _diffvg_available() -> bool:
    try:
        import pydiffvg  # noqa: F401
    except Exception:   # ImportError, or a broken build raising anything at import
        return False
    return True


def resolve_backend(name: str = "auto") -> str:
    """'auto' -> 'diffvg' iff pydiffvg imports, else 'torch'. 'diffvg' without pydiffvg is an error."""
    if name not in BACKENDS:
        raise EngineError("bad_argument",
                          f"Rasterizer backend must be auto, torch or diffvg (got {name!r}).")
    if name == "torch":
        return "torch"
    if _diffvg_available():
        return "diffvg"
    if name == "diffvg":
        raise EngineError("bad_argument", "The diffvg rasterizer was requested but pydiffvg cannot be "
                                          "imported; install diffvg or use --backend torch.")
    return "torch"


# ------------------------------------------------------------------------------------------------
# public entry point


def render_strokes(points: torch.Tensor, half_width: float = 1.5, canvas_size: int = 224,
                   backend: str = "torch") -> torch.Tensor:
    """Render B sketches of N open cubic strokes each.

    points: (B, N, 4, 2) control points in canvas pixels (x right, y down; (0, 0) is the top-left
    corner of the canvas), any float dtype and device, may require grad.
    Returns (B, 3, S, S) in [0, 1]: black strokes of half-width `half_width` (diffvg's convention:
    the line is 2 * half_width wide, round caps) over white, same dtype/device as `points`.
    backend: "torch" (default), "diffvg" or "auto" (see resolve_backend).
    """
    if points.dim() != 4 or points.shape[-2:] != (4, 2):
        raise ValueError(f"points must have shape (B, N, 4, 2), got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise ValueError("points must be a floating point tensor")
    if not half_width > 0:
        raise ValueError(f"half_width must be positive, got {half_width}")
    if resolve_backend(backend) == "diffvg":
        return _render_diffvg(points, half_width, canvas_size)
    batch, num_strokes = points.shape[:2]
    size = int(canvas_size)
    if batch * num_strokes == 0:
        return points.new_ones(batch, 3, size, size) + 0 * points.sum()   # keeps the graph connected
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points must be finite (got NaN or infinity)")
    # Where the polyline vertices go (no grad); the vertices B(t) carry the gradient.
    ts, counts = _vertex_params(points.detach().reshape(-1, 4, 2))
    vertices = _bezier(points.reshape(-1, 4, 2), ts).reshape(batch, num_strokes, -1, 2)
    image = _render_polylines(vertices, counts.reshape(batch, num_strokes), float(half_width), size)
    return image.expand(-1, 3, -1, -1).contiguous()


# ------------------------------------------------------------------------------------------------
# the PyTorch rasterizer


def _bezier(points: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cubic Bezier at parameters t: points (..., 4, 2), t (..., T) -> (..., T, 2)."""
    s = 1 - t
    basis = torch.stack([s * s * s, 3 * s * s * t, 3 * s * t * t, t * t * t], dim=-1)  # (..., T, 4)
    return basis @ points


@torch.no_grad()
def _vertex_params(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where to put the polyline vertices of M cubics (M, 4, 2): parameters t (M, K+1) and the
    number of segments of each stroke (M,); a stroke with fewer than K repeats t = 1 after its end.

    Segments per unit of t = max(speed / MAX_SEGMENT_LENGTH, sqrt(curvature / (8 tol)) * speed):
    the first keeps segments short, the second keeps the chord error kappa L^2 / 8 under tol.
    Each stroke gets its own count, so a stroke renders the same whatever it is batched with.
    """
    p = points.double()
    t = torch.linspace(0, 1, FINE_SAMPLES + 1, dtype=p.dtype, device=p.device)[:, None]
    s = 1 - t
    d01, d12, d23 = (p[:, 1] - p[:, 0])[:, None], (p[:, 2] - p[:, 1])[:, None], (p[:, 3] - p[:, 2])[:, None]
    first = 3 * (s * s * d01 + 2 * s * t * d12 + t * t * d23)            # B'(t)   (M, F+1, 2)
    second = 6 * (s * (d12 - d01) + t * (d23 - d12))                    # B''(t)
    speed = first.norm(dim=-1)
    cross = (first[..., 0] * second[..., 1] - first[..., 1] * second[..., 0]).abs()
    density = torch.maximum(speed / MAX_SEGMENT_LENGTH,
                            torch.sqrt(cross / (8 * FLATTEN_TOLERANCE * (speed + 1e-2))))
    density = density + 1e-6          # a point-like stroke still gets evenly spread parameters
    steps = 0.5 * (density[:, 1:] + density[:, :-1]) / FINE_SAMPLES
    cumulative = torch.cat([torch.zeros_like(steps[:, :1]), steps.cumsum(1)], dim=1)   # (M, F+1)
    total = cumulative[:, -1:]
    counts = total.ceil().clamp(1, MAX_SEGMENTS)                          # (M, 1)
    index = torch.arange(int(counts.max()) + 1, dtype=p.dtype, device=p.device)
    # Invert the cumulative count: equally spaced levels -> t, by linear interpolation.
    levels = total * (index / counts).clamp_max(1)
    hi = torch.searchsorted(cumulative.contiguous(), levels.contiguous()).clamp(1, FINE_SAMPLES)
    lo = hi - 1
    c_lo, c_hi = cumulative.gather(1, lo), cumulative.gather(1, hi)
    frac = ((levels - c_lo) / (c_hi - c_lo).clamp_min(1e-300)).clamp(0, 1)
    ts = (lo + frac) / FINE_SAMPLES
    ts[:, 0] = 0.0
    ts[index.expand_as(ts) >= counts] = 1.0
    return ts.to(points.dtype), counts[:, 0].long()


def _render_polylines(vertices: torch.Tensor, counts: torch.Tensor, half_width: float,
                      size: int) -> torch.Tensor:
    """(B, 1, S, S) image of B sketches of N polylines: vertices (B, N, K+1, 2) in canvas pixels,
    of which stroke (b, n) uses the first counts[b, n] + 1."""
    batch, num_strokes, num_vertices = vertices.shape[:3]
    # Coverage on a SUBSAMPLES x finer grid, box-averaged back at the end (see the module doc).
    vertices = vertices.reshape(-1, num_vertices, 2) * SUBSAMPLES
    half_width, size = half_width * SUBSAMPLES, size * SUBSAMPLES
    counts = counts.reshape(-1)
    used = torch.arange(num_vertices - 1, device=counts.device) < counts[:, None]   # (M, K)
    a, b = vertices[:, :-1][used], vertices[:, 1:][used]           # (total segments, 2), by stroke
    patch_h, patch_w = _patch_shape(a.detach(), b.detach(), half_width + _FILTER_REACH, size)

    # Chunks of whole strokes (all sketches together) of at most ENTRY_BUDGET window pixels; with
    # more than one chunk, each is recomputed in backward instead of kept.
    counts = counts.tolist()
    chunks = _chunks(counts, len(counts), max(1, ENTRY_BUDGET // (patch_h * patch_w)))
    checkpointed = len(chunks) > 1 and torch.is_grad_enabled() and a.requires_grad
    transmittance, start = None, 0
    for m0, m1 in chunks:
        stop = start + sum(counts[m0:m1])
        args = (a[start:stop], b[start:stop], counts[m0:m1], m0, batch, num_strokes, half_width, size,
                patch_h, patch_w)
        part = checkpoint(_transmittance, *args, use_reentrant=False) if checkpointed else _transmittance(*args)
        transmittance = part if transmittance is None else transmittance * part
        start = stop
    image = transmittance.reshape(batch, 1, size, size)
    return torch.nn.functional.avg_pool2d(image, SUBSAMPLES) if SUBSAMPLES > 1 else image


def _chunks(counts: list[int], max_strokes: int, max_segments: int) -> list[tuple[int, int]]:
    """Consecutive stroke ranges with at most max_strokes strokes and max_segments segments
    (a single stroke may exceed the latter)."""
    ranges, start, segments = [], 0, 0
    for m, count in enumerate(counts):
        if m > start and (m - start >= max_strokes or segments + count > max_segments):
            ranges.append((start, m))
            start, segments = m, 0
        segments += count
    ranges.append((start, len(counts)))
    return ranges


def _window_origin(lo: torch.Tensor, reach: float, size: int) -> torch.Tensor:
    """First pixel index whose centre (i + 0.5) lies at or after lo - reach, clipped to the canvas
    (an index of `size` or more: a window wholly outside it)."""
    return torch.ceil(lo - reach - 0.5).clamp(0, size)


@torch.no_grad()
def _patch_shape(a: torch.Tensor, b: torch.Tensor, reach: float, size: int) -> tuple[int, int]:
    """Rows and columns of the pixel window that every segment's capsule fits in (within canvas)."""
    if a.numel() == 0:
        return 1, 1
    first = _window_origin(torch.minimum(a, b), reach, size)
    last = torch.floor(torch.maximum(a, b) + reach - 0.5).clamp_max(size - 1)
    extent = (last - first + 1).clamp(1, size).amax(0)      # (2,): columns, rows
    return int(extent[1]), int(extent[0])


def _tail(v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, derivatives: bool = False):
    """Area of a unit pixel beyond distance v >= 0 from its centre, along a normal (cos, sin) whose
    absolute values are a >= b; with derivatives, also d/dv, d/da, d/db.

    The pixel square projected on the normal is a trapezoid (a box of width a convolved with one of
    width b): flat density 1/a for v < (a - b)/2, linear down to 0 at (a + b)/2. Written without
    branches, so it stays smooth and safe as b -> 0 (axis-aligned lines).
    """
    h_out, h_in = 0.5 * (a + b), 0.5 * (a - b)
    room = h_out - v
    k = torch.minimum(room.clamp_min(0), b)        # width of the triangle's part beyond v
    r = (h_in - v).clamp_min(0)                    # width of the flat part beyond v
    q = k / (a * b)
    tail = 0.5 * k * q + r / a
    if not derivatives:
        return tail
    capped = room >= b                             # v <= h_in: the whole triangle lies beyond v
    free = (room > 0) & ~capped
    flat = (r > 0).to(v.dtype) / a
    free_q = free * q
    d_v = -free_q - flat
    d_a = -0.5 * k * q / a + 0.5 * free_q - r / (a * a) + 0.5 * flat
    d_b = -0.5 * k * q / b + 0.5 * free_q + capped * q - 0.5 * flat
    return tail, d_v, d_a, d_b


def _capsule_coverage(a: torch.Tensor, b: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor,
                      half_width: float, jacobian: bool = False):
    """Box-filtered coverage of pixels by segment capsules (a thick segment with round caps).

    a, b: (..., 2) segment ends; cols (..., 1, W), rows (..., H, 1) pixel indices (centres at
    i + 0.5). Returns coverage (..., H, W) = F(w - d) - F(-w - d), d the distance from the pixel
    centre to the segment and F the CDF of the pixel square projected on the direction to the
    segment; with jacobian=True also d coverage / d (ax, ay, bx, by) as a (4, ..., H, W) tensor,
    written out by hand because autograd would keep ~30 tensors of this size alive for backward.
    """
    ax, ay = a[..., 0, None, None], a[..., 1, None, None]
    abx, aby = (b[..., 0] - a[..., 0])[..., None, None], (b[..., 1] - a[..., 1])[..., None, None]
    apx, apy = (cols + 0.5).to(a.dtype) - ax, (rows + 0.5).to(a.dtype) - ay
    length2 = abx * abx + aby * aby + 1e-12
    along = (apx * abx + apy * aby) / length2
    t = along.clamp(0, 1)                                   # nearest point a + t (b - a)
    dx, dy = apx - t * abx, apy - t * aby
    dist = torch.sqrt(dx * dx + dy * dy + 1e-12)
    adx, ady = dx.abs(), dy.abs()
    x_big = adx >= ady
    # |cos| >= |sin| of the direction to the segment: >= 0.707 for any real direction; a pixel
    # centre lying exactly on the segment (d = 0, no direction) is given the x axis.
    cos_big_raw = torch.where(x_big, adx, ady) / dist
    cos_big = torch.where(cos_big_raw > 0.5, cos_big_raw, 1.0)
    cos_small_raw = torch.where(x_big, ady, adx) / dist
    cos_small = cos_small_raw.clamp_min(1e-6)
    inner = half_width - dist
    side = torch.sign(inner)
    thin = half_width < _FILTER_REACH          # the band's far edge can cut the pixel too
    if not jacobian:
        coverage = 0.5 + side * (0.5 - _tail(inner.abs(), cos_big, cos_small))
        if thin:
            coverage = coverage - _tail(half_width + dist, cos_big, cos_small)
        return coverage

    tail, dv, dbig, dsmall = _tail(inner.abs(), cos_big, cos_small, derivatives=True)
    coverage = 0.5 + side * (0.5 - tail)
    g_dist, g_big, g_small = dv, -side * dbig, -side * dsmall   # d coverage / d (dist, cos_big, cos_small)
    if thin:
        tail, dv, dbig, dsmall = _tail(half_width + dist, cos_big, cos_small, derivatives=True)
        coverage = coverage - tail
        g_dist, g_big, g_small = g_dist - dv, g_big - dbig, g_small - dsmall
    g_big, g_small = g_big * (cos_big_raw > 0.5), g_small * (cos_small_raw > 1e-6)
    # cos_big = max(|dx|, |dy|) / dist, cos_small = min(|dx|, |dy|) / dist  ->  d / d(dx, dy)
    g_big, g_small = g_big / dist, g_small / dist
    g_radial = (g_dist - g_big * cos_big - g_small * cos_small_raw) / dist
    gx = g_radial * dx + torch.sign(dx) * torch.where(x_big, g_big, g_small)
    gy = g_radial * dy + torch.sign(dy) * torch.where(x_big, g_small, g_big)
    # (dx, dy) = p - (1 - t) a - t b, with t = <p - a, b - a> / |b - a|^2 where it is not clamped.
    s = (gx * abx + gy * aby) * ((along > 0) & (along < 1)) / length2
    st = s * t
    jac = torch.stack([-(1 - t) * gx - (2 * st - s) * abx + s * apx,
                       -(1 - t) * gy - (2 * st - s) * aby + s * apy,
                       -t * gx - s * apx + 2 * st * abx,
                       -t * gy - s * apy + 2 * st * aby])
    return coverage, jac


class _CapsuleCoverage(torch.autograd.Function):
    """_capsule_coverage with its hand-written Jacobian: backward is one product and a sum.

    Computed PIECE_BUDGET window pixels at a time, so the ~30 temporaries per pixel stay small;
    what is kept is the coverage and the 4 Jacobian entries per window pixel.
    """

    @staticmethod
    def forward(ctx, a, b, cols, rows, half_width):
        jacobian = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        shape = (a.shape[0], rows.shape[-2], cols.shape[-1])
        coverage = a.new_empty(shape)
        jac = a.new_empty((4,) + shape) if jacobian else None
        step = max(1, PIECE_BUDGET // (shape[1] * shape[2]))             # segments per piece
        for s in range(0, shape[0], step):
            part = slice(s, s + step)
            out = _capsule_coverage(a[part], b[part], cols[part], rows[part], half_width, jacobian)
            if jacobian:
                coverage[part], jac[:, part] = out
            else:
                coverage[part] = out
        if jacobian:
            ctx.save_for_backward(jac)
        return coverage

    @staticmethod
    def backward(ctx, grad):
        jac, = ctx.saved_tensors
        grad_ab = (jac * grad).sum(dim=(-2, -1))                  # (4, segments)
        return grad_ab[:2].T, grad_ab[2:].T, None, None, None


def _transmittance(a: torch.Tensor, b: torch.Tensor, counts: list[int], first_stroke: int,
                   batch: int, num_strokes: int, half_width: float, size: int,
                   patch_h: int, patch_w: int) -> torch.Tensor:
    """prod over strokes of (1 - coverage), (B * S * S,), for the segments a -> b (each (T, 2),
    canvas pixels) of strokes first_stroke, first_stroke + 1, ... having counts[i] segments each.
    Strokes are numbered sketch * N + n."""
    # Pixel windows: (T, 1, W) columns and (T, H, 1) rows of the canvas.
    with torch.no_grad():
        origin = _window_origin(torch.minimum(a, b), half_width + _FILTER_REACH, size).long()
    cols = origin[:, 0, None, None] + torch.arange(patch_w, device=a.device)
    rows = origin[:, 1, None, None] + torch.arange(patch_h, device=a.device)[:, None]
    coverage = _CapsuleCoverage.apply(a, b, cols, rows, half_width).reshape(-1)

    # A stroke covers the union of its capsules: per (stroke, pixel) the max over its segments.
    # Number the distinct (stroke, pixel) pairs without a canvas of floats per stroke: a slot map
    # over the canvas pixels of a few strokes at a time receives, at each window pixel's key, the
    # index of some window pixel with that key; those "first" ones get the pair numbers, which
    # all window pixels then read back from the map.
    with torch.no_grad():
        pixels, per_segment = size * size, patch_h * patch_w
        pair = torch.empty(coverage.shape, dtype=torch.long, device=a.device)
        sketch_pixel, num_pairs, start = [], 0, 0
        slot_strokes = max(1, SLOT_BUDGET // pixels)
        slots = torch.empty(min(slot_strokes, len(counts)) * pixels + 1, dtype=torch.long, device=a.device)
        dump = slots.numel() - 1                                   # where outside pixels write
        for m0, m1 in _chunks(counts, slot_strokes, max(1, PIECE_BUDGET // per_segment)):
            stop = start + sum(counts[m0:m1])
            local = torch.repeat_interleave(torch.arange(m1 - m0, device=a.device),
                                            torch.tensor(counts[m0:m1], device=a.device))
            c, r = cols[start:stop], rows[start:stop]
            inside = ((c < size) & (r < size)).reshape(-1)
            key = torch.where(inside, (local[:, None, None] * pixels + r * size + c).reshape(-1), dump)
            entry = torch.arange(start * per_segment, stop * per_segment, device=a.device)
            slots.scatter_(0, key, entry)
            first = (slots[key] == entry) & inside
            numbers = torch.cumsum(first, 0) + (num_pairs - 1)
            slots.scatter_(0, torch.where(first, key, dump), numbers)
            pair[start * per_segment:stop * per_segment] = torch.where(inside, slots[key], -1)
            first_keys = key[first]
            stroke = first_keys // pixels + first_stroke + m0            # = sketch * N + n
            sketch_pixel.append(stroke // num_strokes * pixels + first_keys % pixels)
            num_pairs += first_keys.numel()
            start = stop
        pair = torch.where(pair >= 0, pair, num_pairs)                 # outside the canvas: dropped
        sketch_pixel = torch.cat(sketch_pixel)
    stroke_alpha = coverage.new_zeros(num_pairs + 1).scatter_reduce(0, pair, coverage, "amax")

    # Strokes over white, per pixel: transmittance = prod over strokes (1 - alpha).
    transmittance = coverage.new_ones(batch * pixels)
    return transmittance.scatter_reduce(0, sketch_pixel, 1 - stroke_alpha[:-1], "prod")


# ------------------------------------------------------------------------------------------------
# diffvg (optional; the reference's rasterizer)


def _render_diffvg(points: torch.Tensor, half_width: float, canvas_size: int) -> torch.Tensor:
    """diffvg at 2x2 samples, sample seed 0, exactly as CLIPasso calls it; one scene per sketch."""
    import pydiffvg

    device = pydiffvg.get_device()
    size = int(canvas_size)
    images = []
    for sketch in points:
        pts = sketch.to(device=device, dtype=torch.float32)
        shapes, groups = [], []
        for i, stroke in enumerate(pts):
            shapes.append(pydiffvg.Path(num_control_points=torch.tensor([2], dtype=torch.int32),
                                        points=stroke,
                                        stroke_width=torch.tensor(float(half_width)),
                                        is_closed=False))
            groups.append(pydiffvg.ShapeGroup(shape_ids=torch.tensor([i]), fill_color=None,
                                              stroke_color=torch.tensor([0.0, 0.0, 0.0, 1.0])))
        if shapes:
            scene = pydiffvg.RenderFunction.serialize_scene(size, size, shapes, groups)
            rgba = pydiffvg.RenderFunction.apply(size, size, DIFFVG_SAMPLES, DIFFVG_SAMPLES,
                                                 DIFFVG_SEED, None, *scene)        # (S, S, 4)
            alpha = rgba[..., 3:4]
            rgb = alpha * rgba[..., :3] + (1 - alpha)            # composite over white
        else:
            rgb = pts.new_ones(size, size, 3) + 0 * pts.sum()
        images.append(rgb.permute(2, 0, 1).to(device=points.device, dtype=points.dtype))
    return torch.stack(images) if images else points.new_ones(0, 3, size, size)
