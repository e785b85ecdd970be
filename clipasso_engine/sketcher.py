"""The CLIPasso optimisation: images in, cubic strokes out, read top to bottom as six steps.

    read_images   each image onto the canvas, before any model loads (a bad file is answered at once)
    prepare       device, rasterizer and models, resolved once (a Runtime; reusable across runs)
    load_targets  background removal when asked
    init_points   per level, per image, per seed: saliency-sampled start strokes
    optimise      Adam on all control points at once: render -> CLIP loss -> step; every `eval_every`
                  iterations the clean-view loss goes to a BestOfSeeds tracker (and a preview goes out)
    finish        per job (image x level): the best seed, strokes ordered by importance -> Sketch

One run optimises every image x level x seed in ONE batch: per level a points tensor of shape
(images * seeds, strokes, 4, 2); the levels render to the same canvas, so one CLIP call per
iteration serves them all. Each sketch still is its own CLIPasso optimisation: its own start strokes,
its own Adam moments, its own loss against its own image; the augmentations are drawn once per
iteration and shared, so a sketch comes out the same batched or alone (up to float rounding).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import clip, imageio, models, raster, saliency, strokes, svg, wire
from .config import Config, check_knobs, make_config
from .errors import Cancelled, EngineError
from .losses import CLIPLoss

ProgressCallback = Callable[[dict], object]   # may return "finish" to keep the best so far


@dataclass
class Sketch:
    """One job's result: control points in canvas pixels (most important stroke first) and how to place them."""

    points: np.ndarray                  # (N, 4, 2) float, canvas px, x right, y down
    stroke_width: float                 # full line width in canvas px (3.0 for CLIPasso's half-width 1.5)
    canvas_size: int                    # 224
    image_size: tuple                   # (width, height) of the input image in pixels
    canvas_to_image: tuple              # (a, b, c, d, e, f): x' = a x + c y + e, y' = b x + d y + f
    loss: float                         # best clean-view loss of the chosen seed
    seed: int                           # the seed whose drawing this is
    seed_losses: dict = field(default_factory=dict)    # seed -> its best clean-view loss
    best_iteration: int = 0             # iteration at which the chosen seed was at its best
    importance: list = field(default_factory=list)     # clean-loss rise without each stroke, same order
    loss_history: list = field(default_factory=list)   # training loss per iteration (mean over this job's seeds)
    eval_history: list = field(default_factory=list)   # (iteration, [clean loss per seed])
    timings: dict = field(default_factory=dict)        # phase -> seconds (shared by the jobs of one run)
    device: str = "cpu"
    backend: str = "torch"
    config: Config | None = None
    name: str = "image"                 # the image's display name
    iterations: int = 0                 # optimiser steps done (fewer than asked when finished early)
    finished_early: bool = False        # "Keep current": the best so far, before the last iteration
    reseeded: int = 0                   # collapsed strokes started again during the run (all jobs of the run)
    short_strokes: int = 0              # strokes shorter than 5 canvas px in the result (dots)
    frame_strokes: int = 0              # strokes lying along the photo's boundary with its padding
    kept: list = field(default_factory=list)           # indices (into points) of given strokes kept fixed

    @property
    def num_strokes(self) -> int:
        return len(self.points)

    def image_points(self) -> np.ndarray:
        """Control points in the input image's pixel space (cubic Beziers are affine-invariant)."""
        return imageio.canvas_to_image_points(self.points, self.canvas_to_image)

    @property
    def image_stroke_width(self) -> float:
        a, b, c, d, _, _ = self.canvas_to_image
        return self.stroke_width * abs(a * d - b * c) ** 0.5

    def to_svg(self, space: str = "canvas") -> str:
        if space == "canvas":
            return svg.strokes_to_svg(self.points, self.stroke_width, (self.canvas_size, self.canvas_size))
        if space == "image":
            return svg.strokes_to_svg(self.image_points(), self.image_stroke_width, self.image_size)
        raise EngineError("bad_argument", f"space must be 'canvas' or 'image' (got {space!r}).")

    def save(self, path, space: str = "canvas") -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_svg(space))


# --- callbacks --------------------------------------------------------------------------------------

class Control:
    """The caller's side of a run: events out, and the two ways to end it early.

    should_stop() -> True cancels (Cancelled); should_finish() -> True, or on_progress returning
    "finish", keeps the best so far as normal results."""

    def __init__(self, on_progress=None, should_stop=None, should_finish=None):
        self.on_progress, self.should_stop, self.should_finish = on_progress, should_stop, should_finish
        self.finish_asked = False

    def emit(self, event: dict) -> None:
        if self.on_progress is not None and self.on_progress(event) == wire.FINISH:
            self.finish_asked = True

    def status(self, phase: str, message: str) -> float:
        self.check_cancel()
        self.emit(wire.event(wire.STATUS, phase=phase, message=message))
        return time.perf_counter()

    def check_cancel(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled()

    def finish_requested(self) -> bool:
        return self.finish_asked or (self.should_finish is not None and bool(self.should_finish()))


# --- step 1: prepare --------------------------------------------------------------------------------

@dataclass
class Runtime:
    """What a run needs besides the images, resolved once: reuse it for many sketch_many calls."""

    device: torch.device
    backend: str                        # rasterizer: "torch" or "diffvg"
    models: dict                        # "RN101", "ViT-B-32" [, "u2net"] -> frozen module on `device`
    config: Config
    single_use: bool = False            # True: a run may free the ViT / U^2-Net once the strokes are placed

    def model(self, name: str, config: Config):
        """A loaded model, loading it now if this runtime does not hold it yet."""
        if name not in self.models:
            self.models[name] = (models.load_u2net(config, self.device) if name == "u2net"
                                 else models.load_clip(name, config, self.device))
        return self.models[name]


def _device_fix() -> str:
    """How to choose another device, in the caller's words (the dialog under Inkscape, else the CLI)."""
    if os.environ.get(wire.CALLER_ENV) == wire.CALLER_INKSCAPE:
        return "Choose Run on: Auto or CPU in the dialog."
    return "Use --device auto or cpu."


def resolve_device(requested: str) -> torch.device:
    """auto: CUDA, then Apple MPS, then the CPU. An explicit device this machine lacks is an error."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this PyTorch was built without CUDA" if torch.version.cuda is None
                   else "no NVIDIA GPU or driver is usable")
            raise EngineError("device_unavailable", f"No CUDA GPU here ({why}). {_device_fix()}")
        index = torch.device(requested).index
        if index is not None and index >= torch.cuda.device_count():
            raise EngineError("device_unavailable", f"There is no GPU {requested}: this machine has "
                                                    f"{torch.cuda.device_count()}. Use --device cuda.")
    if requested == "mps" and not has_mps:
        raise EngineError("device_unavailable", f"Apple's GPU (MPS) is not available here. {_device_fix()}")
    return torch.device(requested)


def prepare(config: Config, on_progress: ProgressCallback | None = None, loaded_models: dict | None = None,
            *, should_stop=None, single_use: bool = False) -> Runtime:
    """Device, rasterizer and models for `config` (RN101, ViT-B/32 and U^2-Net when masking).
    loaded_models: a dict of already loaded models to reuse (and fill)."""
    control = Control(on_progress, should_stop)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if config.device == "auto" and device.type == "cpu":   # worth knowing: a GPU would be many times faster
        control.emit(wire.event(wire.NOTICE, message="No GPU found: drawing on the CPU (slower)."))
    backend = raster.resolve_backend(config.backend)
    runtime = Runtime(device, backend, {} if loaded_models is None else loaded_models,
                      config.replace(device=str(device)), single_use)
    control.status("models", "Loading models")
    for name in ["RN101", "ViT-B-32"] + (["u2net"] if config.mask_background else []):
        control.check_cancel()
        runtime.model(name, config)
    if config.channels_last:   # also for a caller's own RN101: ~1.1x faster on the CPU, same numbers
        runtime.models["RN101"] = runtime.models["RN101"].to(memory_format=torch.channels_last)
    return runtime


CPU_CLIP_CHUNK = 4   # images per CLIP forward+backward on the CPU: one seed's 5 views as 4 + 1 peak at 1.45 GB
                     # instead of 1.58 for 5 % more time; 3 seeds a view (3 images) at a time: 1.44 GB instead
                     # of 2.40 (bench_iteration.py)


def default_clip_chunk(device: torch.device) -> int:
    """config.clip_chunk = 0: on the CPU at most CPU_CLIP_CHUNK images through CLIP at a time (memory is what a
    laptop lacks, and a CPU gains nothing from larger batches); on a GPU every view at once (0), which keeps
    it busy."""
    return CPU_CLIP_CHUNK if device.type == "cpu" else 0


# --- step 2: the images ----------------------------------------------------------------------------

def background_mask(u2net, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """U^2-Net as the reference uses it: CLIP-normalised input at 320 px, side output d1, min-max, > 0.5.

    Deviation: it runs on the canvas image (upscaled to 320) instead of the full-size photo; the padding
    is white either way. Returns a 1x1xSxS mask, 1 = object.
    """
    size = target.shape[-1]
    x = torch.nn.functional.interpolate(target, size=(320, 320), mode="bicubic", align_corners=False)
    with torch.no_grad():
        d1 = u2net(clip.clip_normalize(x))[0][:, :1]
    d1 = (d1 - d1.min()) / (d1.max() - d1.min()).clamp_min(1e-12)
    d1 = torch.nn.functional.interpolate(d1, size=(size, size), mode="bilinear", align_corners=False)
    return (d1 >= threshold).to(target.dtype)


def read_images(images, config: Config, names, crops, control: Control) -> list:
    """Each image as an imageio.LoadedImage on the canvas (already loaded ones pass through).

    Needs no model: it runs before prepare(), so a bad file is answered in a moment, not after the
    models load (or fail to)."""
    loaded = []
    for i, source in enumerate(images):
        control.check_cancel()
        loaded.append(source if isinstance(source, imageio.LoadedImage) else
                      imageio.load_image(source, config, name=names[i], crop=crops[i]))
    return loaded


def load_targets(loaded: list, config: Config, runtime: Runtime, control: Control) -> list:
    """The images as the optimisation compares with them: background removed when asked."""
    if not config.mask_background:
        return loaded
    masked = []
    for image in loaded:
        control.check_cancel()
        mask = background_mask(runtime.model("u2net", config), image.target.to(runtime.device), config.mask_threshold)
        masked.append(imageio.apply_mask(image, mask.cpu()))
    return masked


# --- step 3: start strokes -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where each sketch sits in the batch: level by level, then image, then seed.

    Batch row offset(j) + r is level j, image r // seeds, seed r % seeds. A job (wire.py) is one image at
    one level: job = image * levels + j. A sketch has levels[j] strokes, plus its image's `given` start
    strokes (the designer's, sketch_many(start_strokes=...)) first. The points are held in `blocks`: per
    level, one tensor for each run of consecutive images whose sketches have the same number of strokes
    (without given strokes: one tensor per level)."""

    num_images: int
    levels: tuple                   # strokes drawn per level (added to the given ones)
    num_seeds: int
    given: tuple = ()               # start strokes given per image (empty: none anywhere)

    def given_count(self, image: int) -> int:
        return self.given[image] if self.given else 0

    def strokes(self, level: int, image: int) -> int:
        """How many strokes the job's sketches have."""
        return self.given_count(image) + self.levels[level]

    @functools.cached_property
    def blocks(self) -> list:
        """(level, first image, end image) of each points tensor, in batch row order."""
        blocks = []
        for level in range(len(self.levels)):
            first = 0
            for image in range(1, self.num_images + 1):
                if image == self.num_images or self.strokes(level, image) != self.strokes(level, first):
                    blocks.append((level, first, image))
                    first = image
        return blocks

    def block_start(self, block: int) -> int:
        """The batch row of a block's first sketch."""
        level, first, _ = self.blocks[block]
        return level * self.rows_per_level + first * self.num_seeds

    def locate(self, row: int) -> tuple[int, int]:
        """Batch row -> (block, row within the block's tensor)."""
        for block in range(len(self.blocks) - 1, -1, -1):
            if row >= self.block_start(block):
                return block, row - self.block_start(block)
        raise IndexError(row)

    def where(self, row: int) -> tuple[int, int, int]:
        """Batch row -> (level, image, seed index)."""
        level, r = divmod(row, self.rows_per_level)
        return (level, *divmod(r, self.num_seeds))

    @property
    def rows_per_level(self) -> int:
        return self.num_images * self.num_seeds

    @property
    def num_rows(self) -> int:
        return self.rows_per_level * len(self.levels)

    def rows(self, level: int, image: int) -> slice:
        """The batch rows of one job's seeds."""
        start = level * self.rows_per_level + image * self.num_seeds
        return slice(start, start + self.num_seeds)

    def jobs(self):
        """(job, image, level index) in wire order."""
        for image in range(self.num_images):
            for level in range(len(self.levels)):
                yield image * len(self.levels) + level, image, level

    def target_index(self, device) -> torch.Tensor:
        """The image each batch row is compared with."""
        per_level = torch.arange(self.num_images).repeat_interleave(self.num_seeds)
        return per_level.repeat(len(self.levels)).to(device)


@dataclass
class StartStrokes:
    """The strokes a run starts from, besides the sampled ones: per image the given strokes in canvas px
    (K, 4, 2) float64 (K = 0: none) and which of them are kept fixed (K,) bool."""

    given: list
    keep: list

    @classmethod
    def none(cls, num_images: int) -> "StartStrokes":
        return cls([np.zeros((0, 4, 2))] * num_images, [np.zeros(0, dtype=bool)] * num_images)


@dataclass
class Initial:
    """Where the optimisation starts, per block of the layout (Layout.blocks)."""

    points: list            # (sketches, strokes, 4, 2) on the device: given strokes first, then sampled ones
    given: list             # (sketches, strokes) bool, CPU: the strokes given by the caller (never re-seeded)
    fixed: list             # (sketches, strokes) bool, CPU: given strokes kept as they are (never moved)
    reseed_from: list       # per image: where a collapsed stroke starts again (reseed_distribution)


def init_points(vit, targets: list, layout: Layout, config: Config, device, control: Control,
                start: StartStrokes, backend: str) -> Initial:
    """The start strokes of every sketch: the given ones (start), then sampled ones.

    Every (image, level, seed) samples from its image's distribution with its own generator
    default_rng(seed), so a sketch starts the same whatever else is batched (the project's own random stream:
    the reference draws from numpy's global state, so the same seed number gives other start strokes there;
    config.DEVIATIONS, seed_streams).
    The distribution is restricted to the photo, config.frame_margin px inside its boundary with the
    padding (DEVIATION: the boundary is an edge of the framing, not of the picture), and, for the strokes
    added to given ones, kept away from where those lie (the drawing there is the designer's)."""
    distributions = []
    for image in targets:
        control.check_cancel()
        distribution = saliency.saliency_map(vit, image.target.to(device), config)[0]
        distributions.append(saliency.inside_photo(distribution, image.photo_box, config.frame_margin))
    for_added = [away_from_strokes(dist, torch.from_numpy(given).float(), config, backend)
                 for dist, given in zip(distributions, start.given)]
    points, given_masks, fixed_masks = [], [], []
    for level, first, end in layout.blocks:
        rows, given_rows, fixed_rows = [], [], []
        for image in range(first, end):
            given = torch.from_numpy(start.given[image]).float()
            added = layout.levels[level]
            for seed in config.seeds:
                rows.append(torch.cat([given, saliency.init_strokes(for_added[image], added, config,
                                                                    np.random.default_rng(seed))]))
                given_rows.append(torch.cat([torch.ones(len(given), dtype=torch.bool), torch.zeros(added, dtype=torch.bool)]))
                fixed_rows.append(torch.cat([torch.from_numpy(start.keep[image]), torch.zeros(added, dtype=torch.bool)]))
        points.append(torch.stack(rows).to(device))
        given_masks.append(torch.stack(given_rows))
        fixed_masks.append(torch.stack(fixed_rows))
    return Initial(points, given_masks, fixed_masks,
                   [reseed_distribution(dist, image) for dist, image in zip(distributions, targets)])


def away_from_strokes(distribution: np.ndarray, drawn: torch.Tensor, config: Config, backend: str) -> np.ndarray:
    """The distribution with (almost) nothing within config.new_stroke_clearance px of the strokes `drawn`
    (K, 4, 2), renormalised: new strokes start where the drawing still misses the picture. Unchanged when
    K = 0, the clearance is 0, or nothing would be left."""
    reach = int(round(config.new_stroke_clearance))
    if len(drawn) == 0 or reach == 0:
        return distribution
    with torch.no_grad():
        ink = raster.render_strokes(drawn[None], config.stroke_half_width, config.canvas_size, backend)
        near = torch.nn.functional.max_pool2d(1 - ink[:, :1], 2 * reach + 1, stride=1, padding=reach)[0, 0]
    missing = distribution * (1 - near.clamp(0, 1).cpu().numpy().astype(np.float64))
    return missing / missing.sum() if missing.sum() > 0 else distribution


def reseed_distribution(distribution: np.ndarray, image) -> np.ndarray:
    """Where a collapsed stroke starts again: the start distribution on the photo's edges (strokes.edge_map).
    The ink mask also covers dark flat regions, and a stroke put there again tends to collapse again; on an
    edge it has a line to draw. The plain start distribution where no edge is salient."""
    on_edges = distribution * strokes.edge_map(image.target, image.photo_region)
    return on_edges / on_edges.sum() if on_edges.sum() > 0 else distribution


# --- step 4: optimise ------------------------------------------------------------------------------

def render_all(points: list, config: Config, backend: str) -> torch.Tensor:
    """Every level's sketches on the same canvas, concatenated in Layout order: (rows, 3, S, S)."""
    return torch.cat([raster.render_strokes(p, config.stroke_half_width, config.canvas_size, backend)
                      for p in points])


def optimise_step(points: list, sketches: torch.Tensor, optimizer, loss_fn: CLIPLoss, target_index: torch.Tensor,
                  generator: torch.Generator, held: list) -> torch.Tensor:
    """One Adam step on every sketch of the batch; returns the training loss per row (detached).

    The sketches are independent, so the sum's gradient is each sketch's own. `held`, per points tensor a
    (sketches, strokes) bool on the device, marks strokes that must not move (kept start strokes, sketches that
    stopped early): their gradient is zeroed, so no Adam moment builds up, and their points are put back
    after the step (a stopped sketch's momentum would move them even with a zero gradient). Masks, not
    boolean indexing: indexing by a mask waits for the GPU at every step."""
    per_row, sketch_grad = loss_fn.value_and_grad(sketches, generator, target_index)
    optimizer.zero_grad(set_to_none=True)
    sketches.backward(sketch_grad)          # through the rasterizer to the control points
    before = [p.detach().clone() for p in points]
    with torch.no_grad():
        for p, h in zip(points, held):
            p.grad.masked_fill_(h[..., None, None], 0)
    optimizer.step()
    with torch.no_grad():
        for p, h, b in zip(points, held, before):
            p.copy_(torch.where(h[..., None, None], b, p))
    return per_row


def wasted_strokes(p: torch.Tensor, photo_regions: list, config: Config) -> torch.Tensor:
    """(sketches, strokes) bool on the CPU for one points tensor: strokes a designer would delete by hand, i.e.
    collapsed ones (shorter than config.min_stroke_length: a dot) and, with config.reseed_frame_strokes, those
    lying along the photo's boundary with its padding (a straight line drawing the framing, not the picture).
    photo_regions: the photo's box on the canvas for each sketch of the tensor."""
    with torch.no_grad():
        wasted = (strokes.stroke_lengths(p.detach()) < config.min_stroke_length).cpu()
    if config.reseed_frame_strokes:
        curves = p.detach().cpu().numpy()
        for row, region in enumerate(photo_regions):
            wasted[row] |= torch.from_numpy(strokes.on_frame(curves[row], region, config.canvas_size))
    return wasted


def reseed_collapsed(points: list, given_masks: list, optimizer, distributions: list, layout: Layout, config: Config,
                     iteration: int, tracker: "BestOfSeeds", backend: str, photo_regions: list) -> int:
    """Strokes that collapsed (shorter than config.min_stroke_length: a dot a designer deletes by hand) or lie
    along the padding's frame (wasted_strokes) start again where the drawing still misses the picture, as
    vector-graphics optimisers re-initialise dead paths. Returns how many were re-seeded. Given strokes (the
    designer's, given_masks) are never moved elsewhere.

    The new start is drawn from the image's re-seeding distribution (its salient edges), away from where
    the sketch's other strokes already lie, with the generator default_rng((seed, iteration, strokes)):
    deterministic, and the same batched or alone. The stroke's Adam moments restart: no momentum, and the
    second moment of its sketch's other strokes (so its first steps are the size the others take now, not Adam's
    uncorrected early steps). A re-seeded sketch's best iterate starts anew at this iteration, so that
    the drawing returned is one without the dot."""
    reseeded = 0
    for block, (p, given) in enumerate(zip(points, given_masks)):
        first_row = layout.block_start(block)
        images = [layout.where(first_row + r)[1] for r in range(p.shape[0])]
        dead = wasted_strokes(p, [photo_regions[image] for image in images], config) & ~given
        state = optimizer.state.get(p, {})
        for row in dead.any(dim=1).nonzero().flatten().tolist():
            level, image, seed_index = layout.where(first_row + row)
            alive, gone = (~dead[row]).nonzero().flatten().to(p.device), dead[row].nonzero().flatten().to(p.device)
            where = away_from_strokes(distributions[image], p.detach()[row, alive], config, backend)
            rng = np.random.default_rng((config.seeds[seed_index], iteration, layout.levels[level]))
            fresh = saliency.init_strokes(where, len(gone), config, rng).to(p)
            with torch.no_grad():
                p[row, gone] = fresh
                if "exp_avg" in state:
                    state["exp_avg"][row, gone] = 0
                    typical = state["exp_avg_sq"][row, alive].mean(dim=0) if len(alive) else 0
                    state["exp_avg_sq"][row, gone] = typical
            tracker.restart(first_row + row)
            reseeded += len(gone)
    return reseeded


class BestOfSeeds:
    """Per batch row: the best clean-view loss so far, the points that gave it, when, and early stop.

    The original code's rules (painterly_rendering.py, min_delta 1e-5): an evaluation is a new best when it is
    lower than the best by more than config.best_min_improvement; with config.early_stop a row stops at the
    second evaluation since its last new best that lies within config.early_stop_tolerance of the best (not
    necessarily consecutive ones), and a stopped row is frozen."""

    def __init__(self, points: list, config: Config):
        rows = sum(p.shape[0] for p in points)
        self.config = config
        self.loss = torch.full((rows,), float("inf"), dtype=torch.float64)   # compared as the original's Python floats
        self.points = [p.detach().clone() for p in points]
        self.iteration = torch.zeros(rows, dtype=torch.long)
        self.active = torch.ones(rows, dtype=torch.bool)
        self.near_once = torch.zeros(rows, dtype=torch.bool)
        self.history = []                        # (iteration, clean loss per row)

    def update(self, iteration: int, clean: torch.Tensor, points: list) -> None:
        """clean: (rows,) clean-view loss of `points` at `iteration` (CPU)."""
        self.history.append((iteration, clean.tolist()))
        clean = clean.double()
        better = (clean < self.loss - self.config.best_min_improvement) & self.active
        near = ((clean - self.loss).abs() <= self.config.early_stop_tolerance) & self.active
        for best, current, take in zip(self.points, points, better.split([b.shape[0] for b in self.points])):
            take = take.to(best.device)
            best[take] = current.detach()[take]
        self.iteration[better] = iteration
        self.loss[better] = clean[better]
        if self.config.early_stop:
            self.active &= ~(near & self.near_once)
            self.near_once[near] = True
            self.near_once[better & ~near] = False

    def restart(self, row: int) -> None:
        """Forget a row's best (its strokes were re-seeded): the next evaluation is its new best."""
        self.loss[row] = float("inf")
        self.near_once[row] = False

    def leader(self, rows: slice) -> int:
        """The batch row of the seed with the lowest best loss among `rows` (a job's seeds)."""
        return rows.start + int(torch.argmin(self.loss[rows]))

    def best_points(self, layout: Layout, row: int) -> torch.Tensor:
        block, r = layout.locate(row)
        return self.points[block][r]


@dataclass
class Optimised:
    tracker: BestOfSeeds
    loss_log: torch.Tensor                # (iterations, rows) training loss
    iterations: int                       # steps done
    finished_early: bool
    reseeded: int = 0                     # collapsed strokes started again (all jobs)


def optimise(initial: Initial, loss_fn: CLIPLoss, layout: Layout, loaded: list, config: Config, runtime: Runtime,
             control: Control) -> Optimised:
    """Adam on every sketch at once until the last iteration, early stop of every row, or finish."""
    device, total, points = runtime.device, config.num_iterations, initial.points
    fixed = [f.to(device) for f in initial.fixed]
    target_index = layout.target_index(device)
    for p in points:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(points, lr=config.lr, betas=tuple(config.adam_betas), eps=config.adam_eps)
    generator = torch.Generator().manual_seed(config.seed)  # augmentations: drawn on the CPU, same on any device
    tracker = BestOfSeeds(points, config)
    loss_log, last_loss, last_preview = [], float("nan"), -float("inf")
    fetch_every_step = device.type == "cpu"   # on a GPU, reading a number waits for it: only at evaluations
    t_loop = time.perf_counter()

    def evaluate(iteration: int, sketches: torch.Tensor) -> None:
        nonlocal last_preview
        tracker.update(iteration, loss_fn.clean(sketches.detach(), target_index).float().cpu(), points)
        if time.perf_counter() - last_preview >= wire.PREVIEW_INTERVAL_S:
            last_preview = time.perf_counter()
            control.emit(preview_event(tracker, layout, loaded, config, iteration))

    finished_early, evaluated_at, reseeds = False, -1, 0
    for iteration in range(total):
        control.check_cancel()
        if control.finish_requested():
            finished_early = True
            break
        if (iteration % config.eval_every == 0 and 0 < iteration < config.reseed_until * total
                and config.min_stroke_length > 0):
            reseeds += reseed_collapsed(points, initial.given, optimizer, initial.reseed_from, layout, config,
                                        iteration, tracker, runtime.backend, [image.photo_region for image in loaded])
        sketches = render_all(points, config, runtime.backend)
        if iteration % config.eval_every == 0:   # iteration 0 too: `held` is set before the first step
            evaluate(iteration, sketches)
            evaluated_at = iteration
            if not tracker.active.any():
                break
            stopped = (~tracker.active).to(device).split([p.shape[0] for p in points])   # changes only here
            held = [f | s[:, None] for f, s in zip(fixed, stopped)]
        per_row = optimise_step(points, sketches, optimizer, loss_fn, target_index, generator, held)
        loss_log.append(per_row)
        if fetch_every_step or iteration == 0 or (iteration + 1) % config.eval_every == 0:
            last_loss = float(per_row.mean())
        done = iteration + 1
        elapsed = time.perf_counter() - t_loop
        control.emit(wire.event(wire.PROGRESS, iteration=done, total=total, loss=last_loss,
                                best_loss=job_best_mean(tracker, layout), elapsed=elapsed,
                                eta=elapsed / done * (total - done), per_iteration=elapsed / done))
    steps = len(loss_log)
    if evaluated_at != steps:     # the final iterate gets its evaluation too (the reference's iteration 2000)
        with torch.no_grad():
            evaluate(steps, render_all(points, config, runtime.backend))
    log = torch.stack(loss_log).float().cpu() if loss_log else torch.zeros(0, layout.num_rows)
    return Optimised(tracker, log, steps, finished_early, reseeds)


def job_best_mean(tracker: BestOfSeeds, layout: Layout) -> float:
    """The progress bar's 'best clean-view loss': each job's best seed, averaged over the jobs."""
    return float(np.mean([float(tracker.loss[layout.rows(level, image)].min()) for _, image, level in layout.jobs()]))


def preview_event(tracker: BestOfSeeds, layout: Layout, loaded: list, config: Config, iteration: int) -> dict:
    """Each job's leading seed: its best strokes so far in canvas px (sampling order, not importance)."""
    sketches = []
    for job, image, level in layout.jobs():
        row = tracker.leader(layout.rows(level, image))
        sketches.append(dict(job=job, image=image, strokes=layout.levels[level],
                             points=np.round(tracker.best_points(layout, row).cpu().numpy().astype(np.float64), 3).tolist(),
                             loss=float(tracker.loss[row]), canvas=[config.canvas_size] * 2,
                             image_size=list(loaded[image].image_size),
                             canvas_to_image=[float(v) for v in loaded[image].canvas_to_image]))
    return wire.event(wire.PREVIEW, iteration=iteration, total=config.num_iterations, sketches=sketches)


# --- step 5: the results ---------------------------------------------------------------------------

def stroke_importance(points: torch.Tensor, full_loss: float, loss_fn: CLIPLoss, image: int, config: Config,
                      backend: str, chunk: int = 8) -> torch.Tensor:
    """How much the clean-view loss rises when each stroke is left out (N,), for one sketch (N, 4, 2)
    of image `image` whose clean-view loss with all strokes is `full_loss` (known from its evaluation)."""
    n = points.shape[0]
    if n == 1:
        return torch.zeros(1)
    keep = torch.tensor([[j for j in range(n) if j != k] for k in range(n)], device=points.device)
    without = points[keep]                                         # (N, N-1, 4, 2)
    rises = []
    for i in range(0, n, chunk):
        rendered = raster.render_strokes(without[i:i + chunk], config.stroke_half_width, config.canvas_size, backend)
        index = torch.full((rendered.shape[0],), image, device=points.device)
        rises.append(loss_fn.clean(rendered, index).float().cpu() - full_loss)
    return torch.cat(rises)


DOT_LENGTH = 5.0   # canvas px: a stroke shorter than this reads as a dot, not a line (what Sketch counts)


def as_given(chosen: torch.Tensor, given: np.ndarray) -> np.ndarray:
    """The chosen strokes (N, 4, 2) in float64, where each given stroke that did not move (kept, or no step
    taken) is the caller's own float64 numbers: a round trip through the engine is exact."""
    points = chosen.cpu().numpy().astype(np.float64)
    unmoved = (chosen[:len(given)].cpu() == torch.from_numpy(given).float()).flatten(1).all(dim=1).numpy()
    points[:len(given)][unmoved] = given[unmoved]
    return points


def finish(run: Optimised, loss_fn: CLIPLoss, layout: Layout, loaded: list, config: Config, runtime: Runtime,
           start: StartStrokes) -> list:
    """result[image][level]: each job's best seed, strokes most important first."""
    tracker = run.tracker
    results = [[None] * len(layout.levels) for _ in range(layout.num_images)]
    for _, image, level in layout.jobs():
        rows = layout.rows(level, image)
        row = tracker.leader(rows)
        chosen = tracker.best_points(layout, row)
        with torch.no_grad():
            importance = stroke_importance(chosen, float(tracker.loss[row]), loss_fn, image, config, runtime.backend)
        order = torch.argsort(importance, descending=True, stable=True)
        keep = start.keep[image]
        results[image][level] = Sketch(
            points=as_given(chosen, start.given[image])[order.numpy()],
            stroke_width=config.stroke_width,
            canvas_size=config.canvas_size,
            image_size=tuple(loaded[image].image_size),
            canvas_to_image=tuple(float(v) for v in loaded[image].canvas_to_image),
            loss=float(tracker.loss[row]),
            seed=config.seeds[row - rows.start],
            seed_losses={s: float(v) for s, v in zip(config.seeds, tracker.loss[rows])},
            best_iteration=int(tracker.iteration[row]),
            importance=importance[order].tolist(),
            loss_history=run.loss_log[:, rows].mean(dim=1).tolist(),
            eval_history=[(it, clean[rows]) for it, clean in tracker.history],
            device=str(runtime.device),
            backend=runtime.backend,
            config=config.replace(num_strokes=layout.levels[level]),
            name=loaded[image].name,
            iterations=run.iterations,
            finished_early=run.finished_early,
            reseeded=run.reseeded,
            short_strokes=int((strokes.stroke_lengths(chosen) < DOT_LENGTH).sum()),
            frame_strokes=int(strokes.on_frame(chosen.cpu().numpy(), loaded[image].photo_region,
                                               config.canvas_size).sum()),
            kept=[i for i, k in enumerate(order.tolist()) if k < len(keep) and keep[k]],
        )
    return results


# --- the entry points ------------------------------------------------------------------------------

def sketch_many(images, config: Config | None = None, levels=None, *, runtime: Runtime | None = None,
                names=None, crops=None, on_progress: ProgressCallback | None = None,
                should_stop: Callable[[], bool] | None = None, should_finish: Callable[[], bool] | None = None,
                loaded_models: dict | None = None, start_strokes=None, keep_start=False) -> list:
    """Draw every image at every stroke count in `levels` in one batched run; returns result[i][j].

    images: paths, bytes, PIL images, arrays or imageio.LoadedImage. levels: stroke counts (default
    [config.num_strokes]). names / crops: per image, display name and (left, top, right, bottom)
    rectangle to draw (None = whole image). runtime: from prepare(), to reuse loaded models.
    on_progress receives wire events (status, notice, progress, preview) and may return "finish";
    should_stop() -> True raises Cancelled; should_finish() -> True keeps the best so far.
    start_strokes: per image None or (K, 4, 2) control points in canvas px to start from (svgpaths reads them
    from an SVG); the levels then count the strokes ADDED to them (0 = only refine them). keep_start: True
    keeps every given stroke as it is (rendered, never moved: the added strokes draw around it), or per
    image a bool or a (K,) bool mask; Sketch.kept says where the kept strokes are in the result.
    """
    config = (config or make_config()).validate()
    images = list(images)
    levels = tuple(int(n) for n in (levels or [config.num_strokes]))
    names = list(names or [None] * len(images))
    crops = list(crops or [None] * len(images))
    if len(names) != len(images) or len(crops) != len(images):
        raise EngineError("bad_argument", f"{len(images)} image(s) but {len(names)} name(s) and {len(crops)} "
                                          "crop(s): give one per image (None for the default).")
    start = start_strokes_per_image(start_strokes, keep_start, len(images))
    check_stroke_counts(levels, start, names, config)
    if not images:
        return []
    control = Control(on_progress, should_stop, should_finish)
    timings, t_start = {}, time.perf_counter()

    # Every input is read before any model loads: a bad file is answered at once, with its own code.
    t = time.perf_counter()
    if not all(isinstance(image, imageio.LoadedImage) for image in images):   # else the caller read them
        control.status("image", "Reading the image" if len(images) == 1 else f"Reading {len(images)} images")
    loaded = read_images(images, config, names, crops, control)
    timings["image"] = time.perf_counter() - t

    t = time.perf_counter()
    if runtime is None:
        runtime = prepare(config, on_progress, loaded_models, should_stop=should_stop,
                          single_use=loaded_models is None)
    config = config.replace(device=str(runtime.device), clip_chunk=config.clip_chunk or default_clip_chunk(runtime.device))
    timings["models"] = time.perf_counter() - t
    try:
        t = time.perf_counter()
        loaded = load_targets(loaded, config, runtime, control)
        timings["image"] += time.perf_counter() - t

        t = control.status("init", "Placing the first strokes")
        layout = Layout(len(loaded), levels, config.num_seeds, tuple(len(given) for given in start.given))
        initial = init_points(runtime.model("ViT-B-32", config), loaded, layout, config, runtime.device, control,
                              start, runtime.backend)
        if runtime.single_use:   # the ViT (~350 MB) and U^2-Net are done: free them before the loop
            runtime.models.pop("ViT-B-32", None)
            runtime.models.pop("u2net", None)
        timings["init"] = time.perf_counter() - t

        t = control.status("optimise", "Drawing")
        targets = torch.cat([image.target for image in loaded]).to(runtime.device)
        loss_fn = CLIPLoss(runtime.model("RN101", config), targets, config)
        run = optimise(initial, loss_fn, layout, loaded, config, runtime, control)
        timings["optimise"] = time.perf_counter() - t
        timings["per_iteration"] = timings["optimise"] / max(1, run.iterations)

        t = control.status("order", "Ordering strokes by importance")
        results = finish(run, loss_fn, layout, loaded, config, runtime, start)
        timings["order"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        for result in (r for row in results for r in row):
            result.timings = dict(timings)
        return results
    except Exception as exc:   # noqa: BLE001  out of memory gets its code; everything else passes through
        if is_out_of_memory(exc) and not isinstance(exc, EngineError):
            elsewhere = "" if runtime.device.type == "cpu" else ", or the CPU"
            raise EngineError("out_of_memory", f"The {runtime.device.type.upper()} ran out of memory drawing "
                                               f"{len(images)} image(s) x {len(levels)} level(s) x "
                                               f"{config.num_seeds} seed(s): use fewer seeds, levels or images "
                                               f"at once{elsewhere}.") from exc
        raise


def start_strokes_per_image(start_strokes, keep_start, num_images: int) -> StartStrokes:
    """sketch_many's start_strokes / keep_start, checked (bad_argument), as a StartStrokes."""
    if start_strokes is None:
        return StartStrokes.none(num_images)
    start_strokes = list(start_strokes)
    if len(start_strokes) != num_images:
        raise EngineError("bad_argument", f"{num_images} image(s) but {len(start_strokes)} start stroke sets: give "
                                          "one per image (None for none).")
    keeps = list(keep_start) if isinstance(keep_start, (list, tuple)) else [keep_start] * num_images
    if len(keeps) != num_images:
        raise EngineError("bad_argument", f"{num_images} image(s) but {len(keeps)} keep_start values.")
    given, keep = [], []
    for i, (points, kept) in enumerate(zip(start_strokes, keeps)):
        points = np.zeros((0, 4, 2)) if points is None else np.asarray(points, dtype=np.float64)
        if points.ndim != 3 or points.shape[1:] != (4, 2) or not np.isfinite(points).all():
            raise EngineError("bad_argument", f"Start strokes of image {i + 1} must be finite (K, 4, 2) control "
                                              f"points in canvas px (got shape {points.shape}).")
        mask = np.broadcast_to(np.asarray(bool(kept) if np.ndim(kept) == 0 else kept, dtype=bool), (len(points),))
        given.append(points)
        keep.append(np.array(mask))
    return StartStrokes(given, keep)


def check_stroke_counts(levels: tuple, start: StartStrokes, names: list, config: Config) -> None:
    """Every job draws 1 to 1024 strokes, of which at least one moves (bad_argument otherwise)."""
    for n in levels:
        config.replace(num_strokes=n).validate()
    for i, (given, keep) in enumerate(zip(start.given, start.keep)):
        name = names[i] or f"image {i + 1}"
        for n in levels:
            if len(given) + n > 1024:
                raise EngineError("bad_argument", f"{name}: {len(given)} start strokes + {n} new ones is more than "
                                                  "1024 strokes.")
            if n + int((~keep).sum()) == 0:
                raise EngineError("bad_argument", f"Nothing to draw for {name}: ask for 1 stroke or more"
                                                  + (" to add to the kept ones." if len(given) else "."))


def is_out_of_memory(exc: BaseException) -> bool:
    """A device or the host ran out of memory (torch's error, Python's, or the allocator's message)."""
    if isinstance(exc, EngineError):
        return exc.code == "out_of_memory"
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def sketch(image, config: Config | None = None, *, on_progress: ProgressCallback | None = None,
           should_stop: Callable[[], bool] | None = None, should_finish: Callable[[], bool] | None = None,
           loaded_models: dict | None = None, runtime: Runtime | None = None, name: str | None = None,
           crop=None, start_strokes=None, keep_start=False, **overrides) -> Sketch:
    """Draw one image (path, bytes, PIL image or array) as config.num_strokes cubic strokes (added to
    start_strokes, (K, 4, 2) canvas px, when given; keep_start: True or a (K,) mask keeps them fixed).

    Overrides are Config fields (e.g. num_strokes=8), applied on top of `config` or the paper preset;
    an unknown one is a bad_argument error. See sketch_many for the rest."""
    check_knobs(overrides)
    config = (config or make_config()).replace(**{k: v for k, v in overrides.items() if v is not None})
    return sketch_many([image], config, [config.num_strokes], runtime=runtime, names=[name], crops=[crop],
                       on_progress=on_progress, should_stop=should_stop, should_finish=should_finish,
                       loaded_models=loaded_models, start_strokes=None if start_strokes is None else [start_strokes],
                       keep_start=keep_start)[0][0]
