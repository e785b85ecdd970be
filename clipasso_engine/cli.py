"""The `clipasso` command.

    clipasso sketch photo.jpg -o photo.svg [--strokes 16] [--preset fast] ...   progress bar on stderr
    clipasso sketch a.jpg b.png --strokes 8,16 -o sketches/                      4 jobs, one run
    clipasso sketch photo.jpg -o photo.svg --progress jsonl                      the extension's wire
    clipasso download-models                                                     fetch the weights once
    clipasso models                                                              which weights are here

All images and all stroke counts of one command go to ONE sketcher.sketch_many call: the models are
loaded once and every (image, strokes) job is optimised in the same batch.

With `--progress jsonl` stdout carries one JSON object per line (the events of clipasso_engine.wire:
start, status, notice, progress, preview, result per job, done, error) and nothing else; logs go to
stderr. When stdin is a pipe it carries commands: {"command": "finish"} keeps the best so far,
{"command": "cancel"} or end of file cancels.

Ctrl-C: while the models load, it cancels; during the optimisation the first one finishes early
(the best strokes so far are written, as normal results) and the second one cancels. SIGINT only sets
a flag: a KeyboardInterrupt raised inside a weights reader would look like a broken file.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from . import __version__, batch, wire
from .config import PRESETS, make_config
from .errors import Cancelled, EngineError
from .runs import (DEFAULT_PRESET, CancelWatch, HelpWithDefaults, Reporter, by_preset, cannot_write, check_device,
                   check_parent, check_writable, plan_message, why_not_writable)

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = wire.EXIT_OK, wire.EXIT_ERROR, wire.EXIT_CANCELLED


# --- arguments --------------------------------------------------------------------------------------

def _strokes_list(text: str) -> list[int]:
    try:
        levels = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected stroke counts like 16 or 8,16 (got {text!r})") from None
    if not levels or any(n < 0 for n in levels):   # 0: only refine the strokes of --start-from
        raise argparse.ArgumentTypeError(f"stroke counts must be whole numbers of 1 or more, or 0 with --start-from (got {text!r})")
    return list(dict.fromkeys(levels))  # each level once, in the order given


def _crop(text: str):
    if text.strip() == "-":
        return None
    parts = text.split(",")
    try:
        box = tuple(float(v) for v in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"a crop is left,top,right,bottom in pixels, or - (got {text!r})")
    return box


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpWithDefaults
    parser = argparse.ArgumentParser(prog="clipasso", description="Abstract line sketches from photos (CLIPasso).",
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"clipasso {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sketch", help="draw images as N editable cubic Bezier strokes (SVG)", formatter_class=fmt)
    s.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, WebP, TIFF, GIF or BMP files")
    s.add_argument("-o", "--output", default=None,
                   help="one image at one stroke count: the SVG file to write (default <image name>_sketch.svg "
                        "here); several jobs: a folder (created if missing; default here) receiving "
                        "<image name>-<strokes>.svg")
    s.add_argument("--strokes", type=_strokes_list, default=None,
                   help=f"stroke counts (abstraction levels), comma-separated, e.g. 8,16 (default: {by_preset('num_strokes')})")
    s.add_argument("--name", action="append", default=[],
                   help="display name of an image in messages (repeat, in image order; default: the file name)")
    s.add_argument("--crop", action="append", type=_crop, default=[],
                   help="sketch only this rectangle L,T,R,B of an image's pixels, '-' for the whole image "
                        "(repeat, in image order); strokes keep their place on the whole image (default: the whole image)")
    s.add_argument("--start-from", action="append", default=[], metavar="STROKES.svg",
                   help="start from these strokes (repeat, in image order; '-' for none): a sketch written by -o "
                        "or --image-svg, or any SVG of that size; each path segment becomes one stroke. "
                        "--strokes then counts the strokes ADDED to them (default 0: only refine them)")
    s.add_argument("--keep-start", action="store_true",
                   help="keep the --start-from strokes as they are and draw the added strokes around them "
                        "(default: off, they are refined too)")
    s.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="; ".join(f"{k}: {v['doc']}" for k, v in PRESETS.items()))
    s.add_argument("--iterations", type=int, default=os.environ.get("CLIPASSO_ITERATIONS") or None,
                   help=f"optimisation steps (default: $CLIPASSO_ITERATIONS if set, else {by_preset('num_iterations')})")
    s.add_argument("--seeds", type=int, help=f"how many seeds to draw at once, the best is kept (default: {by_preset('num_seeds')})")
    s.add_argument("--seed", type=int, help=f"first seed; the others are +1000, +2000, ... (default: {make_config().seed})")
    s.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps; auto uses a GPU when there is one, else the CPU "
                        "(with a notice); an explicit device that is missing is an error (device_unavailable)")
    s.add_argument("--backend", default="auto", choices=["auto", "torch", "diffvg"], help="rasterizer")
    s.add_argument("--mask-background", action="store_true", help="remove the background with U^2-Net first (default: off)")
    s.add_argument("--stretch", action="store_true",
                   help="stretch non-square images to a square like the reference (default: off, pad with white)")
    s.add_argument("--models-dir", default=os.environ.get("CLIPASSO_MODELS_DIR"),
                   help="folder of local weights files ($CLIPASSO_MODELS_DIR sets the default; none: the "
                        "download cache)")
    s.add_argument("--image-svg", help="also write the strokes in the input image's pixel space to this SVG "
                                       "(several jobs: to this folder; default: none)")
    s.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice, one per core)")
    s.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"], help="how to report progress")
    s.add_argument("--debug", action="store_true", help="print the full traceback on unexpected errors (default: off)")

    d = sub.add_parser("download-models", help="download the model weights into the cache (or --models-dir)",
                       formatter_class=fmt)
    d.add_argument("--models-dir", default=os.environ.get("CLIPASSO_MODELS_DIR"),
                   help="download into this folder instead of the cache ($CLIPASSO_MODELS_DIR sets the default)")
    m = sub.add_parser("models", help="show which model weights are available, without any network access",
                       formatter_class=fmt)
    m.add_argument("--models-dir", default=os.environ.get("CLIPASSO_MODELS_DIR"),
                   help="look in this folder first, as `sketch --models-dir` does ($CLIPASSO_MODELS_DIR sets "
                        "the default)")
    batch.add_parser(sub)
    return parser


# --- outputs -----------------------------------------------------------------------------------------

def output_paths(images, levels, output, what: str = "-o") -> list[Path]:
    """One path per job (job = image * len(levels) + level), checked to be writable BEFORE the run.

    One image and one level: `output` is the SVG file. Several jobs: `output` is a folder (created),
    files <image stem>-<strokes>.svg; images sharing a stem get _2, _3, ... after it."""
    if len(images) * len(levels) == 1:
        path = Path(output or f"{Path(images[0]).stem}_sketch.svg").expanduser().resolve()
        if path.is_dir():
            raise EngineError("bad_argument", f"{what} {path} is an existing folder; give a file name such as "
                                              f"{path / (Path(images[0]).stem + '.svg')}.")
        check_writable(path, what)
        return [path]
    folder = Path(output or ".").expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise EngineError("bad_argument", f"{what} {folder} is a file; with several images or stroke counts "
                                          f"{what} names a folder.")
    check_parent(folder, what)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise EngineError("bad_argument", f"Cannot create the output folder {folder} ({why_not_writable(exc)}). "
                                          f"Choose another place with {what}.") from None
    stems, seen = [], {}
    for image in images:
        stem = Path(image).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    paths = [folder / f"{stem}-{n}.svg" for stem in stems for n in levels]
    check_writable(paths[0], what)
    for path in paths[1:]:
        if path.is_dir():
            raise EngineError("bad_argument", f"Cannot write {path}: a folder of that name exists.")
    return paths


# --- commands ----------------------------------------------------------------------------------------

def _per_image(values, images, option: str):
    if len(values) > len(images):
        raise EngineError("bad_argument", f"{len(values)} {option} values for {len(images)} image(s); give at "
                                          f"most one per image, in image order.")
    return list(values) + [None] * (len(images) - len(values))


def read_inputs(images, names, crops, config, report) -> list:
    """Every image read onto the canvas before torch and the models load: a bad file is answered in a
    fraction of a second with its own code (bad_image, or bad_argument for a crop outside it)."""
    from . import imageio
    report(wire.event(wire.STATUS, phase="image", message="Reading the image" if len(images) == 1
                      else f"Reading {len(images)} images"))
    return [imageio.load_image(path, config, name=name, crop=crop) for path, name, crop in zip(images, names, crops)]


def read_start_files(paths, loaded, config) -> list:
    """Each image's --start-from strokes in canvas px (None for '-' or none), before any model loads."""
    from . import svgpaths
    return [None if path in (None, "-") else
            svgpaths.read_start_file(path, config.canvas_size, image.image_size, image.canvas_to_image)
            for path, image in zip(paths, loaded)]


def run_sketch(args, report: Reporter) -> int:
    images = [str(p) for p in args.images]
    names = _per_image(args.name, images, "--name")
    crops = _per_image(args.crop, images, "--crop")
    start_files = _per_image(args.start_from, images, "--start-from")
    if args.keep_start and not args.start_from:
        raise EngineError("bad_argument", "--keep-start keeps the strokes of --start-from: give --start-from "
                                          "STROKES.svg too.")
    if args.start_from and not args.strokes:   # start strokes given: --strokes counts added ones
        args.strokes = [0]
    config = make_config(args.preset, num_iterations=args.iterations, num_seeds=args.seeds, seed=args.seed,
                         backend=args.backend, mask_background=args.mask_background or None,
                         pad_to_square=not args.stretch, models_dir=args.models_dir, threads=args.threads,
                         device=args.device,
                         num_strokes=args.strokes[0] if args.strokes and len(args.strokes) == 1 else None)
    levels = args.strokes or [config.num_strokes]
    for n in levels:
        config.replace(num_strokes=n).validate()
    outputs = output_paths(images, levels, args.output)
    image_outputs = output_paths(images, levels, args.image_svg, "--image-svg") if args.image_svg else None
    jobs = [{"job": i * len(levels) + j, "image": i, "name": names[i] or Path(images[i]).name, "strokes": n}
            for i in range(len(images)) for j, n in enumerate(levels)]
    loaded = read_inputs(images, names, crops, config, report)
    start_strokes = read_start_files(start_files, loaded, config) if args.start_from else None

    from . import models, sketcher   # torch from here on
    start = sketcher.start_strokes_per_image(start_strokes, args.keep_start, len(images))
    sketcher.check_stroke_counts(tuple(levels), start, [job["name"] for job in jobs[::len(levels)]], config)
    models.interrupt_pending.clear()
    watch = CancelWatch(report)
    try:
        device_type = check_device(config.device)
        report(wire.event(wire.STATUS, phase="plan",
                          message=plan_message(config, len(jobs), device_type, len(images))))
        runtime = sketcher.prepare(config, on_progress=report, should_stop=watch.cancelled.is_set, single_use=True)
        if watch.cancelled.is_set():
            raise Cancelled(watch.reason)
        config = runtime.config
        report(wire.event(wire.START, version=__version__, device=str(runtime.device), backend=runtime.backend,
                          preset=config.preset, iterations=config.num_iterations, seeds=config.num_seeds,
                          models={k: (str(v) if v else None) for k, v in models.models_status(config).items()},
                          jobs=jobs))

        def on_event(event: dict):
            if event.get("event") == wire.PROGRESS:
                watch.optimising.set()
            report(event)

        results = sketcher.sketch_many(loaded, config, levels, runtime=runtime, names=names,
                                       on_progress=on_event, should_stop=watch.cancelled.is_set,
                                       should_finish=watch.finish_requested.is_set, start_strokes=start_strokes,
                                       keep_start=args.keep_start)
        if watch.cancelled.is_set():
            raise Cancelled(watch.reason)
        report.close()
        finished_early = False
        for job in jobs:
            result = results[job["image"]][levels.index(job["strokes"])]
            svg_path = outputs[job["job"]]
            with cannot_write(svg_path):
                result.save(svg_path)
            finished_early |= result.finished_early
            event = wire.event(
                wire.RESULT, **job, svg=str(svg_path), canvas=[result.canvas_size] * 2,
                image_size=list(result.image_size), canvas_to_image=list(result.canvas_to_image),
                stroke_width=result.stroke_width, seed=result.seed, loss=result.loss,
                points=result.points.round(4).tolist(), importance=list(result.importance),
                iteration=result.iterations,
                finished_early=result.finished_early, timings=result.timings,
                reseeded=result.reseeded, short_strokes=result.short_strokes, frame_strokes=result.frame_strokes,
                kept=list(result.kept))
            if image_outputs:
                with cannot_write(image_outputs[job["job"]], "--image-svg"):
                    result.save(image_outputs[job["job"]], space="image")
                event["image_svg"] = str(image_outputs[job["job"]])
            report(event)
            if report.mode != "jsonl":   # every file written, by its full path (jsonl: in the result event)
                early = " (finished early)" if event["finished_early"] else ""
                print(f"Wrote {svg_path} ({job['strokes']} strokes, loss {result.loss:.4f}, seed {result.seed}, "
                      f"{result.timings.get('total', 0):.0f} s on {result.device}){early}")
                if image_outputs:
                    print(f"Wrote {image_outputs[job['job']]} (the same strokes in the photo's pixels)")
        report(wire.event(wire.DONE, results=len(jobs), finished_early=finished_early))
        return EXIT_OK
    except Cancelled as exc:
        raise Cancelled(watch.reason if watch.cancelled.is_set() else exc.message) from exc
    finally:
        watch.close()


def run_download(args, report: Reporter) -> int:
    from . import models
    config = make_config(models_dir=args.models_dir)
    paths = models.download_models(config, progress=True)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return EXIT_OK


def run_status(args, report: Reporter) -> int:
    from . import models
    config = make_config(models_dir=args.models_dir)
    missing = False
    for name, path in models.models_status(config).items():
        print(f"{name}: {path or 'missing'}")
        missing |= path is None
    if missing:
        print(f"Run `{models.download_command(config)}` to fetch the missing weights"
              + (f" (or put them into {args.models_dir})." if args.models_dir else "."))
    return EXIT_ERROR if missing else EXIT_OK


def _as_engine_error(exc: BaseException, mode: str, debug: bool) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Cancelled("Cancelled (Ctrl-C).")
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return EngineError("out_of_memory", "The device ran out of memory: try fewer seeds or strokes, "
                                            "or --device cpu.")
    if mode == "jsonl":
        where = "the traceback is on the engine's stderr (the extension keeps it in its log)"
    elif debug:
        where = "the traceback is above"
    else:
        where = "run the same command with --debug to see the traceback"
    return EngineError("internal", f"Unexpected error ({type(exc).__name__}: {exc}). This is a bug; {where}.")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    mode = getattr(args, "progress", "bar")
    debug = getattr(args, "debug", False)
    report = Reporter(mode)
    commands = {"sketch": run_sketch, "download-models": run_download, "models": run_status, "batch": batch.run}
    try:
        return commands[args.command](args, report)
    except BaseException as exc:  # noqa: BLE001  every failure becomes one sentence or one error event
        if isinstance(exc, SystemExit):
            raise
        error = _as_engine_error(exc, mode, debug)
        if error.code == "internal" and (mode == "jsonl" or debug):
            traceback.print_exc(file=sys.stderr)  # in jsonl mode stderr is the extension's log file
        report.close()
        if mode == "none":
            print(f"clipasso: error: {error.message}", file=sys.stderr)
        else:
            report(error.to_event())
        return EXIT_CANCELLED if error.code == "cancelled" else EXIT_ERROR
