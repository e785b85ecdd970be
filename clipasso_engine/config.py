"""Every knob of the engine, with the reference's default and a one-line reason.

Defaults are CLIPasso's released code (see docs/ALGORITHM.md). Deliberate deviations are collected in
DEVIATIONS below and repeated in the README; everything else is the reference, number for number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .errors import EngineError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# What we do differently from the reference, on purpose. Each entry: (name, what and why). The name is the Config
# field that switches it, except for the FIXED ones: what they change is no number of the drawing (the same
# gradients, the order strokes are written in) or is the project's own way of doing what the reference leaves to
# chance, so there is nothing to switch back to. The README and docs/ALGORITHM.md list them by these names.
DEVIATIONS = [
    ("pad_to_square", "non-square images are padded instead of stretched, so the sketch keeps the photo's "
                      "proportions; the canvas -> image map stays exact (False, --stretch: the reference)"),
    ("num_iterations", "2000 optimiser steps (the reference's loop is range(2001)); evals at 0, 10, ..., 2000 "
                       "are the same"),
    ("preset", "fast and balanced trade the reference's 2000 steps x 3 seeds x 4 views for fewer, measured on a "
               "trained network; they also never stop early and take any decrease as a new best "
               "(early_stop=False, best_min_improvement=0); paper is the reference"),
    ("batched_sketches", "FIXED: seeds, stroke counts (levels) and images are optimised together in one batch "
                         "instead of one after another; each sketch keeps its own start strokes, Adam moments and "
                         "target, the augmentations are drawn once per iteration and shared by all (the loss is a "
                         "sum of independent terms: each sketch's gradient is its own)"),
    ("seed_streams", "FIXED: each sketch draws its start strokes from its own generator default_rng(seed), not "
                     "from the reference's global numpy state: the same seed number gives other start strokes "
                     "than the reference, drawn from the same distribution"),
    ("best_iterate", "FIXED: the saved best strokes are exactly the evaluated ones (the reference saves them one "
                     "optimiser step later, an off-by-one)"),
    ("frozen_clip", "FIXED: CLIP is frozen in eval mode, the clean target view is computed once and target views "
                    "never build a graph: identical gradients, a fraction of the work"),
    ("stroke_order", "FIXED: strokes are written most important first (by how much the clean-view loss rises "
                     "without each); the reference writes them in sampling order"),
    ("mask_on_canvas", "FIXED: background removal (mask_background, off) runs U^2-Net on the canvas image "
                       "upscaled to 320 px rather than on the full-size photo"),
    ("augment_pool", "fast and balanced presets: each iteration's augmentations are drawn from a pool of 32 "
                     "transforms drawn once, whose target views are computed once (~1.3x faster per iteration "
                     "on the CPU); 0 (paper) draws fresh ones every iteration, as the reference"),
    ("fold_batchnorm", "RN101's BatchNorms are folded into its convolutions at load time: the same function "
                       "to float32 rounding, faster and with fewer saved activations (False: as loaded)"),
    ("channels_last", "RN101 runs in channels-last memory layout: ~1.1x faster on the CPU, the same function, "
                      "other float32 rounding (False: the default layout)"),
    ("clip_chunk", "views go through CLIP's forward and backward a few images at a time (4 on the CPU): less "
                   "memory, the same function, other float32 rounding (a large number: all at once)"),
    ("precision", "on CUDA CLIP runs under fp16 autocast (the reference runs CLIP in fp16 on a GPU); fp32 on the "
                  "CPU; 'fp32' everywhere is selectable"),
    ("fp16_loss_scale", "under fp16 autocast the backward runs on the loss x 1024 and the gradient is divided "
                        "back, so gradients under fp16's ~6e-8 survive (the reference's fp16 CLIP has no scaling; "
                        "1 = none)"),
    ("soft_padding", "the padding continues the photo's blurred border and fades to white (12 px), instead of "
                     "plain white: the boundary between photo and padding is then no edge for CLIP to draw as a "
                     "straight line across the sketch (0 restores white padding)"),
    ("frame_margin", "start strokes are sampled only inside the photo, 6 px away from its boundary with the "
                     "padding (the reference samples the whole canvas; with padding its frame is an edge; 0: "
                     "the whole photo)"),
    ("min_stroke_length", "fast and balanced: a stroke that collapses below 5 px (a dot) is re-seeded where the "
                          "drawing still misses the picture, during the first 85 % of the run (0 = never, paper)"),
    ("reseed_frame_strokes", "fast and balanced: a stroke lying along the photo's boundary with its padding (half "
                             "its curve within 3 px of it) is re-seeded like a dot; the soft padding and the start "
                             "strokes' margin leave few, this takes the last ones (False keeps them)"),
    ("backend", "a pure-PyTorch analytic-coverage rasterizer instead of diffvg's 2x2 stratified samples "
                "(closer to diffvg's own 16x16 render and gradient than diffvg at 2x2); diffvg is used when "
                "pydiffvg imports and backend='diffvg' or 'auto'"),
]
FIXED_DEVIATIONS = {name for name, why in DEVIATIONS if why.startswith("FIXED: ")}


@dataclass(frozen=True)
class Config:
    # --- the drawing ---------------------------------------------------------------------------
    num_strokes: int = 16            # the abstraction level (reference 16; its README suggests 4/8/16/32)
    canvas_size: int = 224           # CLIP's input size; the reference canvas
    stroke_half_width: float = 1.5   # diffvg's half-width: 3-px lines, stroke-width="3.0" in the SVG
    control_points: int = 4          # one cubic Bezier segment per stroke

    # --- preprocessing -------------------------------------------------------------------------
    pad_to_square: bool = True       # DEVIATION: pad with white; False = stretch like the reference
    soft_padding: float = 12.0       # DEVIATION: the padding continues the photo's blurred border and fades to
                                     #   white over ~12 px, so the photo/padding boundary is no edge (0 = white)
    fix_scale: bool = False          # reference option: centre on a white square of side max(h, w) + 20
    mask_background: bool = False    # U^2-Net background removal (reference `mask_object`, off)
    mask_threshold: float = 0.5      # reference: U^2-Net d1, min-max normalised, > 0.5 is object

    # --- stroke initialisation (saliency) --------------------------------------------------------
    saliency_temperature: float = 0.3  # softmax tau over the positive entries of saliency x ink mask
    random_walk_step: float = 0.025    # each control point moves uniform +-0.025 x canvas (5.6 px) per axis
    xdog_sigma: float = 0.8            # XDoG, on the CLIP-normalised grey image (reference quirk)
    xdog_k: float = 10.0
    xdog_gamma: float = 0.98
    xdog_phi: float = 200.0
    xdog_epsilon: float = -0.1

    frame_margin: float = 6.0        # DEVIATION: no start stroke within 6 px (one random-walk step) of the
                                     #   photo's boundary with its padding: that edge is the framing's

    # --- optimisation ---------------------------------------------------------------------------
    num_iterations: int = 2000       # reference 2001 loop steps; quality is visible after ~100
    num_seeds: int = 3               # reference runs seeds 0, 1000, 2000 and keeps the best
    seed: int = 0                    # first seed; the others are seed + 1000 k, as the reference
    seed_stride: int = 1000
    lr: float = 1.0                  # Adam on control points, in canvas pixels, no schedule
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    eval_every: int = 10             # clean-view loss without grad; keep the best iterate per seed
    early_stop: bool = True          # the original code's rule: stop at the 2nd evaluation since the last new best
                                     #   within 1e-5 of it (fast/balanced: never, DEVIATION; SVGRender never stops)
    early_stop_tolerance: float = 1e-5   # the original's min_delta: an evaluation this close to the best is settled
    best_min_improvement: float = 1e-5   # the original's min_delta: a new best must be lower by more than this
                                         #   (fast/balanced 0, DEVIATION: any decrease is a new best)
    min_stroke_length: float = 0.0   # fast/balanced 5 (DEVIATION): a stroke shorter than this (canvas px) has
                                     #   collapsed to a dot: re-seed it where the drawing misses the picture
                                     #   (0 = never, the reference)
    new_stroke_clearance: float = 4.0  # re-seeded strokes, and strokes added to given ones, start at least this far
                                       #   (px) from the sketch's other strokes: where the drawing misses the picture
    reseed_frame_strokes: bool = True  # DEVIATION (when re-seeding): a stroke lying along the photo's boundary with
                                       #   its padding draws the framing, not the picture: re-seed it too
    reseed_until: float = 0.85       # re-seed only in the first 85 % of the iterations, so the last ones settle

    # --- loss -----------------------------------------------------------------------------------
    num_augs: int = 4                # joint augmentations per iteration, plus the clean view
    perspective_distortion: float = 0.5  # RandomPerspective(0.5, p=1, fill 0)
    crop_scale: float = 0.8          # RandomResizedCrop(224, scale (0.8, 0.8), ratio (1, 1)): 200-px square
    conv_layer_weights: tuple = (0.0, 0.0, 1.0, 1.0, 0.0)  # stem, layer1..4: layer2 + layer3
    fc_loss_weight: float = 0.1      # weight of mean (1 - cos) of the attention-pool embeddings
    augment_pool: int = 0            # 0 = fresh transforms every iteration (reference); P = draw from P fixed
                                     #   ones whose target views are computed once (DEVIATION, fast/balanced)

    # --- runtime --------------------------------------------------------------------------------
    device: str = "auto"             # auto = cuda, then mps, then cpu
    backend: str = "auto"            # rasterizer: auto = diffvg when pydiffvg imports, else torch
    threads: int = 0                 # CPU threads for torch; 0 = torch's default
    fold_batchnorm: bool = True      # DEVIATION: RN101's BatchNorms folded into its convolutions at load: the same
                                     #   function to float32 rounding (1e-5 relative), faster, fewer saved activations
    channels_last: bool = True       # DEVIATION: ~1.1x faster RN101 on CPU; the same function, float32 rounding
                                     #   changes (~1e-6 in the loss)
    clip_chunk: int = 0              # DEVIATION: images per CLIP forward+backward; fewer = less memory, the same
                                     #   function to float32 rounding; 0 picks by device (sketcher.default_clip_chunk:
                                     #   4 on the CPU, all views at once on a GPU)
    precision: str = "auto"          # CLIP's precision: auto = fp16 autocast on CUDA (as the reference), fp32 on CPU
    fp16_loss_scale: float = 1024.0  # DEVIATION: under fp16 autocast the backward runs on loss x this and the
                                     #   gradient is divided back: fp16 loses gradients under ~6e-8 (the reference's
                                     #   fp16 CLIP has no scaling)
    models_dir: str | None = None    # folder of local weights files (air-gapped studios); None = cache

    preset: str = "paper"

    def replace(self, **changes) -> "Config":
        return replace(self, **changes)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + self.seed_stride * k for k in range(self.num_seeds)]

    @property
    def stroke_width(self) -> float:
        """Full line width in canvas pixels, as written in the SVG."""
        return 2.0 * self.stroke_half_width

    def validate(self) -> "Config":
        def bad(msg):
            raise EngineError("bad_argument", msg)
        if not 0 <= self.num_strokes <= 1024:   # 0: only refine given start strokes (sketch_many checks there are)
            bad(f"Number of strokes must be between 1 and 1024, or 0 to only refine start strokes "
                f"(got {self.num_strokes}).")
        if self.num_iterations < 0:
            bad(f"Iterations must be 0 or more (got {self.num_iterations}).")
        if not 1 <= self.num_seeds <= 64:
            bad(f"Seeds must be between 1 and 64 (got {self.num_seeds}).")
        if self.eval_every < 1:
            bad("eval_every must be at least 1.")
        if self.num_augs < 0:
            bad("num_augs must be 0 or more.")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            bad(f"Device must be auto, cpu, cuda or mps (got {self.device!r}).")
        if self.control_points != 4:
            bad(f"Only cubic strokes (control_points = 4) are supported (got {self.control_points}).")
        if len(self.conv_layer_weights) != 5 or any(self.conv_layer_weights[i] for i in (0, 1, 4)):
            bad("conv_layer_weights must be 5 numbers (stem, layer1..4) with only layer2 and layer3 non-zero, "
                f"as the reference (got {tuple(self.conv_layer_weights)}).")
        if self.threads < 0:
            bad(f"Threads must be 0 (one per core) or more (got {self.threads}).")
        if min(self.soft_padding, self.frame_margin, self.min_stroke_length, self.new_stroke_clearance) < 0:
            bad("soft_padding, frame_margin, min_stroke_length and new_stroke_clearance must be 0 or more.")
        if not 0 <= self.reseed_until <= 1:
            bad(f"reseed_until must be between 0 and 1 (got {self.reseed_until}).")
        if self.augment_pool < 0 or self.clip_chunk < 0:
            bad("augment_pool and clip_chunk must be 0 or more.")
        if min(self.early_stop_tolerance, self.best_min_improvement) < 0 or self.fp16_loss_scale <= 0:
            bad("early_stop_tolerance and best_min_improvement must be 0 or more, fp16_loss_scale more than 0.")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            bad(f"Precision must be auto, fp32, fp16 or bf16 (got {self.precision!r}).")
        if self.backend not in ("auto", "torch", "diffvg"):
            bad(f"Rasterizer backend must be auto, torch or diffvg (got {self.backend!r}).")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# Named presets: what each trades, in one line. `paper` is the reference.
PRESETS = {
    "paper": dict(
        doc="the reference: 2000 iterations x 3 seeds, best seed kept, early stop as the original code (slowest, best loss)",
    ),
    # fast and balanced were chosen by measured time-to-quality on a trained network (benchmarks/bench_quality.py,
    # README "Drawing quality"): more steps through fewer views beat more views per step, one seed run longer beats
    # several seeds run shorter, and re-seeding collapsed strokes both removes the dots and lowers the loss
    "balanced": dict(
        doc="1 seed, 1000 iterations, 2 augmented views, dots re-seeded: close to the paper in a tenth of its time",
        num_iterations=1000, num_seeds=1, num_augs=2, augment_pool=32, min_stroke_length=5.0,
        early_stop=False, best_min_improvement=0.0,
    ),
    "fast": dict(
        doc="1 seed, 250 iterations, 1 augmented view, dots re-seeded: a formed drawing in 1-2 minutes on a 2-core CPU",
        num_iterations=250, num_seeds=1, num_augs=1, augment_pool=32, min_stroke_length=5.0,
        early_stop=False, best_min_improvement=0.0,
    ),
}


def make_config(preset: str = "paper", **overrides) -> Config:
    """Config for a preset, with explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise EngineError("bad_argument", f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    knobs = {k: v for k, v in PRESETS[preset].items() if k != "doc"}
    knobs.update({k: v for k, v in overrides.items() if v is not None})
    check_knobs(knobs)
    return Config(preset=preset, **knobs).validate()


def check_knobs(names) -> None:
    """bad_argument for any name that is not a Config field (API overrides, make_config)."""
    unknown = set(names) - {f.name for f in fields(Config)}
    if unknown:
        raise EngineError("bad_argument", f"Unknown option(s): {', '.join(sorted(unknown))}.")
