"""The CLIPasso optimisation loop: image in, N cubic strokes out.

    load image -> (mask background) -> saliency init per seed -> Adam on control points:
        render all seeds at once -> CLIP loss over seeds x views -> step
        every `eval_every` iterations: clean-view loss per seed, keep each seed's best iterate
    -> best seed -> strokes ordered by importance -> Sketch

All seeds are one batch of shape (seeds, strokes, 4, 2): one render call and one CLIP call per iteration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import imageio, models, raster, saliency, svg
from .config import Config, make_config
from .errors import Cancelled, EngineError
from .losses import CLIPLoss

ProgressCallback = Callable[[dict], None]


@dataclass
class Sketch:
    """The result: control points in canvas pixels (most important stroke first) and how to place them."""

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
    loss_history: list = field(default_factory=list)   # training loss per iteration (mean over seeds)
    eval_history: list = field(default_factory=list)   # (iteration, [clean loss per seed])
    timings: dict = field(default_factory=dict)        # phase -> seconds
    device: str = "cpu"
    backend: str = "torch"
    config: Config | None = None

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


# --- devices ----------------------------------------------------------------------------------------

def pick_device(requested: str, notify: ProgressCallback | None = None) -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU. An unavailable GPU falls back to the CPU with a notice."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        _emit(notify, {"event": "notice", "message": "No CUDA GPU is available here; running on the CPU instead (much slower)."})
        return torch.device("cpu")
    if requested == "mps" and not has_mps:
        _emit(notify, {"event": "notice", "message": "Apple GPU (MPS) is not available here; running on the CPU instead."})
        return torch.device("cpu")
    return torch.device(requested)


def _emit(callback: ProgressCallback | None, event: dict) -> None:
    if callback is not None:
        callback(event)


# --- phases -----------------------------------------------------------------------------------------

def background_mask(u2net, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """U^2-Net as the reference uses it: CLIP-normalised input at 320 px, side output d1, min-max, > 0.5.

    Deviation: it runs on the canvas image (upscaled to 320) instead of the full-size photo; the padding
    is white either way. Returns a 1x1xSxS mask, 1 = object.
    """
    size = target.shape[-1]
    x = torch.nn.functional.interpolate(target, size=(320, 320), mode="bicubic", align_corners=False)
    with torch.no_grad():
        d1 = u2net(imageio.clip_normalize(x))[0][:, :1]
    d1 = (d1 - d1.min()) / (d1.max() - d1.min()).clamp_min(1e-12)
    d1 = torch.nn.functional.interpolate(d1, size=(size, size), mode="bilinear", align_corners=False)
    return (d1 >= threshold).to(target.dtype)


def initial_strokes(distribution: np.ndarray, config: Config) -> torch.Tensor:
    """(seeds, N, 4, 2): each seed draws its own start points from the same distribution."""
    return torch.stack([saliency.init_strokes(distribution, config.num_strokes, config, np.random.default_rng(seed))
                        for seed in config.seeds])


def stroke_importance(points: torch.Tensor, full_loss: float, loss: CLIPLoss, half_width: float, backend: str,
                      chunk: int = 8) -> torch.Tensor:
    """How much the clean-view loss rises when each stroke is left out (N,), for one sketch (N, 4, 2)
    whose clean-view loss with all strokes is `full_loss` (already known from its evaluation)."""
    n = points.shape[0]
    if n == 1:
        return torch.zeros(1)
    keep = torch.tensor([[j for j in range(n) if j != k] for k in range(n)], device=points.device)
    without = points[keep]                                         # (N, N-1, 4, 2)
    rises = [loss.clean(raster.render_strokes(without[i:i + chunk], half_width, loss.target.shape[-1], backend)) - full_loss
             for i in range(0, n, chunk)]
    return torch.cat(rises)


# --- the loop ---------------------------------------------------------------------------------------

def sketch(image, config: Config | None = None, *, on_progress: ProgressCallback | None = None,
           should_stop: Callable[[], bool] | None = None, loaded_models: dict | None = None,
           **overrides) -> Sketch:
    """Draw `image` (path, bytes, PIL image or array) as config.num_strokes cubic strokes.

    on_progress receives dicts: {"event": "status"|"notice"|"progress", ...} (see DESIGN.md's wire).
    should_stop() is polled between iterations; when it returns True the run raises Cancelled.
    loaded_models: {"RN101": visual, "ViT-B-32": visual, "u2net": net} to reuse models across calls.
    Overrides are Config fields (e.g. num_strokes=8), applied on top of `config` or the paper preset.
    """
    config = (config or make_config()).replace(**{k: v for k, v in overrides.items() if v is not None}).validate()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def check_cancel():
        if should_stop is not None and should_stop():
            raise Cancelled()

    def phase(name: str, message: str):
        check_cancel()
        _emit(on_progress, {"event": "status", "phase": name, "message": message})
        return time.perf_counter()

    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device, on_progress)
    backend = raster.resolve_backend(config.backend)

    t = phase("image", "Reading the image")
    loaded = imageio.load_image(image, config)
    timings["image"] = time.perf_counter() - t

    t = phase("models", "Loading models")
    cache = {} if loaded_models is None else loaded_models
    names = ["RN101", "ViT-B-32"] + (["u2net"] if config.mask_background else [])
    for name in names:
        if name not in cache:
            check_cancel()
            cache[name] = models.load_u2net(config, device) if name == "u2net" else models.load_clip(name, config, device)
    rn101, vit = cache["RN101"], cache["ViT-B-32"]
    if config.channels_last:
        rn101 = rn101.to(memory_format=torch.channels_last)
    timings["models"] = time.perf_counter() - t

    target = loaded.target.to(device)
    if config.mask_background:
        t = phase("mask", "Removing the background")
        loaded = imageio.apply_mask(loaded, background_mask(cache["u2net"], target, config.mask_threshold).cpu())
        target = loaded.target.to(device)
        timings["mask"] = time.perf_counter() - t

    t = phase("init", "Placing the first strokes")
    distribution, _, _ = saliency.saliency_map(vit, target, config)
    points = initial_strokes(distribution, config).to(device)
    if loaded_models is None:  # the ViT (~350 MB) and U^2-Net are done: free them before the loop
        del vit, cache["ViT-B-32"]
        cache.pop("u2net", None)
    timings["init"] = time.perf_counter() - t

    t = phase("optimise", "Drawing")
    loss_fn = CLIPLoss(rn101, target, config)
    points.requires_grad_(True)
    optimizer = torch.optim.Adam([points], lr=config.lr, betas=tuple(config.adam_betas), eps=config.adam_eps)
    generator = torch.Generator().manual_seed(config.seed)  # augmentations: drawn on the CPU, same on any device
    num_seeds = points.shape[0]
    best_loss = torch.full((num_seeds,), float("inf"))
    best_points = points.detach().clone()
    best_iteration = torch.zeros(num_seeds, dtype=torch.long)
    active = torch.ones(num_seeds, dtype=torch.bool)        # early stop (original code) freezes a seed
    near_best_once = torch.zeros(num_seeds, dtype=torch.bool)
    loss_history, eval_history = [], []
    t_loop = time.perf_counter()

    def evaluate(iteration: int, sketches: torch.Tensor, current: torch.Tensor):
        clean = loss_fn.clean(sketches.detach()).cpu()
        eval_history.append((iteration, clean.tolist()))
        near = (clean - best_loss).abs() <= config.early_stop_tolerance
        better = clean < best_loss
        on_device = better.to(current.device)
        best_points[on_device] = current.detach()[on_device]
        best_iteration[better] = iteration
        best_loss[better] = clean[better]
        if config.early_stop:  # original code: the 2nd eval within tolerance of the best, no real gain between
            active[near & near_best_once] = False
            near_best_once[near] = True
            near_best_once[better & ~near] = False

    iteration = 0
    for iteration in range(config.num_iterations):
        check_cancel()
        sketches = raster.render_strokes(points, config.stroke_half_width, config.canvas_size, backend)
        if iteration % config.eval_every == 0:
            evaluate(iteration, sketches, points)
            if not active.any():
                break
        per_seed = loss_fn(sketches, generator)
        optimizer.zero_grad(set_to_none=True)
        per_seed.sum().backward()                               # seeds are independent: sum = separate grads
        if not active.all():
            points.grad[~active.to(points.device)] = 0
        optimizer.step()
        loss_history.append(float(per_seed.detach().mean()))
        elapsed = time.perf_counter() - t_loop
        done = iteration + 1
        _emit(on_progress, {"event": "progress", "iteration": done, "total": config.num_iterations,
                            "loss": loss_history[-1], "best_loss": float(best_loss.min()),
                            "elapsed": elapsed, "eta": elapsed / done * (config.num_iterations - done)})
    else:
        with torch.no_grad():   # the final iterate gets its evaluation too (the reference's iteration 2000)
            evaluate(config.num_iterations,
                     raster.render_strokes(points, config.stroke_half_width, config.canvas_size, backend), points)
    timings["optimise"] = time.perf_counter() - t
    timings["per_iteration"] = timings["optimise"] / max(1, len(loss_history))

    t = phase("order", "Ordering strokes by importance")
    winner = int(torch.argmin(best_loss))
    chosen = best_points[winner]
    with torch.no_grad():
        importance = stroke_importance(chosen, float(best_loss[winner]), loss_fn, config.stroke_half_width,
                                       backend).cpu()
    order = torch.argsort(importance, descending=True, stable=True)
    timings["order"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    return Sketch(
        points=chosen.cpu()[order].numpy().astype(np.float64),
        stroke_width=config.stroke_width,
        canvas_size=config.canvas_size,
        image_size=tuple(loaded.image_size),
        canvas_to_image=tuple(float(v) for v in loaded.canvas_to_image),
        loss=float(best_loss[winner]),
        seed=config.seeds[winner],
        seed_losses={s: float(v) for s, v in zip(config.seeds, best_loss)},
        best_iteration=int(best_iteration[winner]),
        importance=importance[order].tolist(),
        loss_history=loss_history,
        eval_history=eval_history,
        timings=timings,
        device=str(device),
        backend=backend,
        config=config,
    )
