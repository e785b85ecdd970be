"""The `clipasso` command.

    clipasso sketch photo.jpg -o photo.svg [--strokes 16] [--preset fast] ...   progress bar on stderr
    clipasso sketch photo.jpg -o photo.svg --progress jsonl                      the extension's wire
    clipasso download-models                                                     fetch the weights once

With `--progress jsonl` stdout carries one JSON object per line (start, status, notice, progress,
result, error; see DESIGN.md) and nothing else; logs go to stderr. The run stops promptly when stdin
closes (when stdin is a pipe), when the parent process goes away, on SIGTERM or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import threading
import time
import traceback
from pathlib import Path

from . import __version__
from .config import PRESETS, make_config
from .errors import Cancelled, EngineError

EXIT_ERROR, EXIT_CANCELLED = 1, 130
CANCEL_GRACE_S = 5.0  # after a cancel request, exit hard if the run has not unwound by then


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipasso", description="Abstract line sketches from photos (CLIPasso).")
    parser.add_argument("--version", action="version", version=f"clipasso {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sketch", help="draw an image as N editable cubic Bezier strokes (SVG)")
    s.add_argument("image", help="PNG, JPEG, WebP, TIFF, GIF or BMP file")
    s.add_argument("-o", "--output", help="SVG to write (default: <image name>_sketch.svg here)")
    s.add_argument("--strokes", type=int, help="number of strokes: the abstraction level (default 16)")
    s.add_argument("--preset", default="paper", choices=list(PRESETS),
                   help="; ".join(f"{k}: {v['doc']}" for k, v in PRESETS.items()))
    s.add_argument("--iterations", type=int, default=os.environ.get("CLIPASSO_ITERATIONS") or None,
                   help="optimisation steps (overrides the preset; default $CLIPASSO_ITERATIONS if set)")
    s.add_argument("--seeds", type=int, help="how many seeds to draw at once, the best is kept (overrides the preset)")
    s.add_argument("--seed", type=int, help="first seed (the others are +1000, +2000, ...)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (auto: GPU when there is one)")
    s.add_argument("--backend", default="auto", choices=["auto", "torch", "diffvg"], help="rasterizer")
    s.add_argument("--mask-background", action="store_true", help="remove the background with U^2-Net first")
    s.add_argument("--stretch", action="store_true",
                   help="stretch non-square images to a square like the reference (default: pad with white)")
    s.add_argument("--models-dir", default=os.environ.get("CLIPASSO_MODELS_DIR"),
                   help="folder of local weights files (default: $CLIPASSO_MODELS_DIR, else the download cache)")
    s.add_argument("--image-svg", help="also write the strokes in the input image's pixel space to this SVG")
    s.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    s.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"], help="how to report progress")
    s.add_argument("--debug", action="store_true", help="print the full traceback on unexpected errors")

    d = sub.add_parser("download-models", help="download the model weights into the cache (or --models-dir)")
    d.add_argument("--models-dir", default=os.environ.get("CLIPASSO_MODELS_DIR"),
                   help="download into this folder instead of the cache")
    sub.add_parser("models", help="show which model weights are available, without any network access")
    return parser


# --- reporting ---------------------------------------------------------------------------------------

class Reporter:
    """Turns engine events into JSON lines on stdout, or a progress bar and sentences on stderr."""

    def __init__(self, mode: str):
        self.mode = mode
        self.lock = threading.Lock()
        self.bar = None
        self.out = sys.stdout

    def __call__(self, event: dict) -> None:
        with self.lock:
            if self.mode == "jsonl":
                self.out.write(json.dumps(event, allow_nan=False, default=float) + "\n")
                self.out.flush()
            elif self.mode == "bar":
                self._human(event)

    def _human(self, event: dict) -> None:
        kind = event["event"]
        if kind == "progress":
            if self.bar is None:
                from tqdm import tqdm
                self.bar = tqdm(total=event["total"], unit="it", dynamic_ncols=True, file=sys.stderr)
            self.bar.n = event["iteration"]
            self.bar.set_postfix(loss=f"{event['loss']:.4f}", best=f"{event['best_loss']:.4f}", refresh=False)
            self.bar.refresh()
        elif kind in ("status", "notice"):
            self.close()
            print(f"clipasso: {event['message']}", file=sys.stderr, flush=True)
        elif kind == "error":
            self.close()
            print(f"clipasso: error: {event['message']}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- cancellation ------------------------------------------------------------------------------------

class CancelWatch:
    """Sets `cancelled` on SIGTERM, on stdin EOF (only when stdin is a pipe) or when the parent dies.

    The run polls it between iterations; if it has not unwound CANCEL_GRACE_S later (stuck in a long
    load), the process reports and exits on its own so that no orphan keeps a GPU busy.
    """

    def __init__(self, report: Reporter):
        self.report = report
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.reason = "Cancelled."
        self.parent = os.getppid()
        signal.signal(signal.SIGTERM, lambda *_: self.cancel("Cancelled (SIGTERM)."))
        if _stdin_is_pipe():
            threading.Thread(target=self._watch_stdin, daemon=True).start()
        threading.Thread(target=self._watch_parent, daemon=True).start()

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()
            threading.Thread(target=self._hard_exit_later, daemon=True).start()

    def _watch_stdin(self) -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):  # b"" = EOF: the caller closed its end
                pass
        except (OSError, ValueError):
            pass
        self.cancel("Cancelled (the caller closed the engine's input).")

    def _watch_parent(self) -> None:
        while not self.finished.is_set():
            if os.getppid() != self.parent:
                self.cancel("Cancelled (the calling process went away).")
                return
            time.sleep(0.5)

    def _hard_exit_later(self) -> None:
        if self.finished.wait(CANCEL_GRACE_S):
            return
        try:
            self.report(Cancelled(self.reason).to_event())
        finally:
            os._exit(EXIT_CANCELLED)


def _stdin_is_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


# --- commands ----------------------------------------------------------------------------------------

def run_sketch(args, report: Reporter) -> int:
    from . import models
    from .sketcher import pick_device, sketch

    config = make_config(args.preset, num_strokes=args.strokes, num_iterations=args.iterations,
                         num_seeds=args.seeds, seed=args.seed, backend=args.backend,
                         mask_background=args.mask_background or None, pad_to_square=not args.stretch,
                         models_dir=args.models_dir, threads=args.threads, device=args.device)
    output = Path(args.output or f"{Path(args.image).stem}_sketch.svg").resolve()
    if not output.parent.is_dir():
        raise EngineError("bad_argument", f"The output folder {output.parent} does not exist.")
    watch = CancelWatch(report)
    try:
        import torch  # noqa: F401  (imported here so that the start event reports a real device)
        from . import raster
        device = pick_device(config.device, report)
        config = config.replace(device=str(device))
        report({"event": "start", "version": __version__, "device": str(device),
                "backend": raster.resolve_backend(config.backend), "preset": config.preset,
                "strokes": config.num_strokes, "iterations": config.num_iterations, "seeds": config.num_seeds,
                "models": {k: (str(v) if v else None) for k, v in models.models_status(config).items()}})
        result = sketch(args.image, config, on_progress=report, should_stop=watch.cancelled.is_set)
        result.save(output)
        event = {"event": "result", "svg": str(output), "canvas": [result.canvas_size] * 2,
                 "image_size": list(result.image_size), "canvas_to_image": list(result.canvas_to_image),
                 "stroke_width": result.stroke_width, "seed": result.seed, "loss": result.loss,
                 "strokes": result.points.round(4).tolist(), "importance": result.importance,
                 "timings": result.timings}
        if args.image_svg:
            image_svg = Path(args.image_svg).resolve()
            result.save(image_svg, space="image")
            event["image_svg"] = str(image_svg)
        report.close()
        report(event)
        if report.mode == "bar":
            print(f"Wrote {output} ({result.num_strokes} strokes, loss {result.loss:.4f}, seed {result.seed}, "
                  f"{result.timings['total']:.0f} s on {result.device})")
        return 0
    except Cancelled as exc:
        raise Cancelled(watch.reason) from exc
    finally:
        watch.finished.set()


def run_download(args, report: Reporter) -> int:
    from . import models
    config = make_config(models_dir=args.models_dir)
    paths = models.download_models(config, progress=True)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def run_status(args, report: Reporter) -> int:
    from . import models
    config = make_config(models_dir=os.environ.get("CLIPASSO_MODELS_DIR"))
    missing = False
    for name, path in models.models_status(config).items():
        print(f"{name}: {path or 'missing'}")
        missing |= path is None
    if missing:
        print("Run `clipasso download-models` to fetch the missing weights.")
    return 1 if missing else 0


def _as_engine_error(exc: BaseException) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Cancelled("Cancelled (Ctrl-C).")
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return EngineError("out_of_memory", "The device ran out of memory: try fewer seeds or strokes, "
                                            "or --device cpu.")
    return EngineError("internal", f"Unexpected error ({type(exc).__name__}: {exc}). This is a bug; "
                                   "the log holds the details.")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    mode = getattr(args, "progress", "bar")
    report = Reporter(mode)
    commands = {"sketch": run_sketch, "download-models": run_download, "models": run_status}
    try:
        return commands[args.command](args, report)
    except BaseException as exc:  # noqa: BLE001  every failure becomes one sentence or one error event
        if isinstance(exc, SystemExit):
            raise
        error = _as_engine_error(exc)
        if error.code == "internal" and (mode == "jsonl" or getattr(args, "debug", False)):
            traceback.print_exc(file=sys.stderr)  # in jsonl mode stderr is the extension's log file
        report.close()
        if mode == "none":
            print(f"clipasso: error: {error.message}", file=sys.stderr)
        else:
            report(error.to_event())
        return EXIT_CANCELLED if error.code == "cancelled" else EXIT_ERROR
