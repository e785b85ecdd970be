"""`clipasso batch`: many images, one or more abstraction levels, resumable, on one machine or a Ray cluster.

Outputs, all in OUTDIR:
  <name>-<N>.svg            the sketch of image <name> with N strokes (canvas space)
  <name>-<N>.image.svg      the same strokes in the image's pixel space (with --image-svg)
  manifest.jsonl            one row per (image, level) finished or failed, appended in order:
      {"name", "input", "strokes", "status": "ok"|"error", "svg", "image_svg", "loss", "seed",
       "iterations", "seconds", "device", "finished_early", "error": null | {"code", "message"}}

Resuming: a (name, N) with a row in the manifest is done and skipped (rows with status "error" too,
unless --retry-failed). Each SVG is written to a temporary file and renamed, and only then is its row
appended, so a killed batch loses at most the images in flight, never leaves half a file behind and
never records a sketch it has not written. Names are the file stems; when two inputs share a stem
(two cat.jpg in different folders) each gets a suffix made from its resolved path, stable across reruns.

Before anything is created or loaded, the options, the output folder and every image are checked (an
unreadable image gets its error row at once, before the models load), and the plan is announced:
images x levels x preset, device, and the expected time from the estimates `sketch` and the extension use.

Batch events (jsonl mode, besides the engine's status/notice/progress/error from clipasso_engine.wire):
  batch_start   total, pending, skipped, batch_images, device, output, estimated_seconds, message
                (the plan, before the models load; device and batch_images are null when nothing is left)
  batch_item    the manifest row (one per (image, level)), plus done, failed, total, eta (seconds left)
  batch_done    done, failed, total, seconds, output
Engine progress events inside a chunk carry "chunk": the names being drawn together.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from . import runs, wire
from .config import PRESETS, make_config
from .errors import Cancelled, EngineError
from .runs import (DEFAULT_PRESET, CancelWatch, HelpWithDefaults, Reporter, by_preset, cannot_write, check_device,
                   check_writable, duration_text, expected_time, why_not_writable)

BATCH_START = "batch_start"
BATCH_ITEM = "batch_item"
BATCH_DONE = "batch_done"
MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".gif", ".bmp"}

# --batch-images auto. On a CPU: 1. A CPU is saturated by one image's views (bench_batch.py: 7.6, 7.5, 7.3
# sketches per minute for K = 1, 2, 4), so larger batches only delay the first results and put more work
# at risk of a kill. On a GPU: memory decides. One image, one seed, 5 views (1 clean + 4 augmented) peaks at
# about 1.8 GB with all views through CLIP at once in fp32 (bench_iteration.py, before BatchNorm folding),
# growing about linearly with images x seeds x views; K = 80 % of free GPU memory / that (fp16 autocast
# roughly halves activations: the fp32 figure keeps a margin). At most 16, at least 1; out-of-memory
# halves it at run time.
PEAK_GB_PER_IMAGE_SEED_5VIEWS = 1.8
MAX_AUTO_BATCH = 16


def add_parser(subparsers):
    b = subparsers.add_parser("batch", help="sketch many images (files, folders, globs, lists) into a folder, "
                                            "resumable", formatter_class=HelpWithDefaults)
    b.add_argument("inputs", nargs="+", help="image files, folders, glob patterns, or .txt/.csv lists of paths")
    b.add_argument("-o", "--output", required=True, help="output folder (required; created if missing)")
    b.add_argument("--strokes", default=None,
                   help=f"abstraction level(s), comma separated, e.g. 8,16 (default: {by_preset('num_strokes')})")
    b.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="; ".join(f"{k}: {v['doc']}" for k, v in PRESETS.items()))
    b.add_argument("--iterations", type=int, default=os.environ.get("CLIPASSO_ITERATIONS") or None,
                   help=f"optimisation steps (default: $CLIPASSO_ITERATIONS if set, else {by_preset('num_iterations')})")
    b.add_argument("--seeds", type=int,
                   help=f"seeds drawn at once per image, the best is kept (default: {by_preset('num_seeds')})")
    b.add_argument("--seed", type=int, help=f"first seed; the others are +1000, +2000, ... (default: {make_config().seed})")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps; auto uses a GPU when there is "
                                                   "one, else the CPU")
    b.add_argument("--mask-background", action="store_true",
                   help="remove the background with U^2-Net first (default: off)")
    b.add_argument("--stretch", action="store_true",
                   help="stretch non-square images like the reference (default: off, pad with white)")
    b.add_argument("--models-dir", default=os.environ.get("CLIPASSO_MODELS_DIR"),
                   help="folder of local weights files (default: $CLIPASSO_MODELS_DIR, else the download cache)")
    b.add_argument("--image-svg", action="store_true",
                   help="also write <name>-<N>.image.svg in image pixels (default: off)")
    b.add_argument("--batch-images", default="auto",
                   help="images optimised together in one batch: a number, or auto (1 on a CPU, from free "
                        "memory on a GPU)")
    b.add_argument("--retry-failed", action="store_true", help="retry images recorded as errors (default: off)")
    b.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster at ADDRESS, or a local/auto-detected one without it "
                        "(default: no Ray, this process)")
    b.add_argument("--threads", type=int,
                   help="CPU threads for PyTorch, Ray workers included (default: PyTorch's choice, one per core)")
    b.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"], help="how to report progress")
    b.add_argument("--debug", action="store_true", help="print the full traceback on unexpected errors (default: off)")
    return b


# --- inputs and names -------------------------------------------------------------------------------

def collect_inputs(inputs) -> list[Path]:
    """Files, folders (their images, sorted), globs and .txt/.csv lists -> resolved paths, first seen kept."""
    found: list[Path] = []

    def add(path: Path):
        found.append(path.resolve())

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    add(child)
        elif path.is_file() and path.suffix.lower() in (".txt", ".csv"):
            for entry in _read_list(path):
                entry_path = Path(entry)
                add(entry_path if entry_path.is_absolute() else path.parent / entry_path)
        elif path.exists():
            add(path)  # any other file: an image, or a bad one recorded as such
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise EngineError("bad_argument", f"No file matches {item!r}.")
            for match in matches:
                if Path(match).is_file():
                    add(Path(match))
    unique = list(dict.fromkeys(found))
    if not unique:
        raise EngineError("bad_argument", "No input images found.")
    return unique


def _read_list(path: Path) -> list[str]:
    """A .txt list has one path a line (# comments); a .csv list has the path in its first column
    (or in a column named path/file/image when there is such a header)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    rows = [row for row in csv.reader(text.splitlines()) if row and row[0].strip()]
    column = 0
    if rows and any(h.strip().lower() in ("path", "file", "image") for h in rows[0]):
        column = [h.strip().lower() for h in rows[0]].index(
            next(h.strip().lower() for h in rows[0] if h.strip().lower() in ("path", "file", "image")))
        rows = rows[1:]
    return [row[column].strip() for row in rows if len(row) > column]


def unique_names(paths) -> list[str]:
    """File stems; a stem shared by several inputs gets a suffix from its resolved path's hash, so each
    name is stable whatever else is in the batch and whatever order the inputs come in."""
    stems = [p.stem for p in paths]
    counts = {s: stems.count(s) for s in stems}
    return [s if counts[s] == 1 else f"{s}_{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
            for s, p in zip(stems, paths)]


def parse_levels(text, config=None) -> list[int]:
    """--strokes -> the levels, each checked as sketch checks it (before anything is read or loaded)."""
    config = config or make_config()
    if text in (None, ""):
        return [config.num_strokes]
    try:
        levels = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise EngineError("bad_argument", f"--strokes takes numbers separated by commas (got {text!r}).") from None
    if not levels:
        raise EngineError("bad_argument", "--strokes needs at least one number.")
    if min(levels) < 1:   # 0 means "only refine the start strokes" to sketch, and a batch has none
        raise EngineError("bad_argument", f"--strokes takes numbers from 1 to 1024 (got {text!r}).")
    for n in levels:
        config.replace(num_strokes=n).validate()
    return list(dict.fromkeys(levels))


def parse_batch_images(text) -> int | None:
    """--batch-images: None for auto, else a whole number of 1 or more."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        k = int(text)
    except (TypeError, ValueError):
        k = 0
    if k < 1:
        raise EngineError("bad_argument", f"--batch-images takes auto or a whole number of 1 or more (got {text!r}).")
    return k


# --- manifest and atomic files ----------------------------------------------------------------------

def read_manifest(outdir: Path) -> dict:
    """(name, strokes) -> last row. A line cut short by a kill is not JSON and is ignored."""
    rows = {}
    path = outdir / MANIFEST
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                rows[(row["name"], int(row["strokes"]))] = row
            except (ValueError, KeyError, TypeError):
                continue
    return rows


def append_row(outdir: Path, row: dict) -> None:
    path = outdir / MANIFEST
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:  # a kill may have left a line without its newline: start a fresh line
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(row, allow_nan=False, default=float) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- batch size -------------------------------------------------------------------------------------

def auto_batch_images(device, config) -> int:
    """The rule in the comment at the top: 1 on a CPU; on a GPU free memory / per-image peak, 1 to 16."""
    if not str(device).startswith("cuda"):
        return 1
    import torch
    per_image = PEAK_GB_PER_IMAGE_SEED_5VIEWS * config.num_seeds * (config.num_augs + 1) / 5 * 1e9
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return max(1, min(MAX_AUTO_BATCH, int(0.8 * free // per_image)))


# --- drawing one chunk ------------------------------------------------------------------------------

def _prepare(config, notify):
    """Models loaded once per worker (and again on the CPU after a CUDA out-of-memory); only its
    notices reach the batch's own reporting (its status lines would come before batch_start)."""
    from . import sketcher
    return sketcher.prepare(config, on_progress=lambda event: notify(event) if event["event"] == wire.NOTICE else None)


def draw_items(items, config, levels, runtime, notify, should_stop=None, on_progress=None):
    """Sketch `items` ([(path, name)], one chunk) at `levels`; returns [(name, level, sketch|None, row)].

    Each image is loaded first so that a bad file becomes an error row without spoiling its chunk.
    Out of memory halves the chunk; a single image out of memory on CUDA moves the runtime to the CPU
    (with a notice). `runtime` is a one-element list so that the CPU fallback sticks for later chunks.
    """
    from . import imageio
    out, good = [], []
    for path, name in items:
        try:
            good.append((path, name, imageio.load_image(str(path), config, name=name)))
        except EngineError as exc:
            out += [(name, lv, None, _error_row(name, path, lv, exc)) for lv in levels]
    if not good:
        return out
    return out + _draw_loaded(good, config, levels, runtime, notify, should_stop, on_progress)


def _draw_loaded(good, config, levels, runtime, notify, should_stop, on_progress):
    from . import sketcher
    t0 = time.perf_counter()
    names = [n for _, n, _ in good]
    try:
        results = sketcher.sketch_many(   # result[i][j] for images i x levels j, in one batch
            [g[2] for g in good], config, levels, runtime=runtime[0], names=names,
            on_progress=on_progress, should_stop=should_stop)
    except Cancelled:
        raise
    except BaseException as exc:  # noqa: BLE001  KeyboardInterrupt is re-raised below
        if isinstance(exc, KeyboardInterrupt):
            raise
        if sketcher.is_out_of_memory(exc):
            if len(good) > 1:
                half = len(good) // 2
                notify({"event": wire.NOTICE, "message": f"Out of memory with {len(good)} images at once: "
                                                         f"trying {half} and {len(good) - half}."})
                return (_draw_loaded(good[:half], config, levels, runtime, notify, should_stop, on_progress)
                        + _draw_loaded(good[half:], config, levels, runtime, notify, should_stop, on_progress))
            if runtime[0].device.type == "cuda":
                notify({"event": wire.NOTICE, "message": "Out of GPU memory with one image: "
                                                         "continuing on the CPU (slower)."})
                _free_cuda()
                runtime[0] = _prepare(config.replace(device="cpu"), notify)
                return _draw_loaded(good, config, levels, runtime, notify, should_stop, on_progress)
        if len(good) > 1:  # one image spoils the chunk: draw each alone so that only it fails
            rows = []
            for g in good:
                rows += _draw_loaded([g], config, levels, runtime, notify, should_stop, on_progress)
            return rows
        path, name, _ = good[0]
        error = exc if isinstance(exc, EngineError) else EngineError(
            "out_of_memory" if sketcher.is_out_of_memory(exc) else "internal", f"{type(exc).__name__}: {exc}")
        return [(name, lv, None, _error_row(name, path, lv, error)) for lv in levels]
    seconds = (time.perf_counter() - t0) / (len(good) * len(levels))
    out = []
    for (path, name, _), per_level in zip(good, results):
        for level, result in zip(levels, per_level):
            out.append((name, level, result, {
                "name": name, "input": str(path), "strokes": level, "status": "ok",
                "loss": float(result.loss), "seed": int(result.seed),
                "iterations": int(result.iterations),
                "seconds": round(seconds, 3), "device": str(result.device),
                "finished_early": bool(result.finished_early), "error": None}))
    return out


def _free_cuda():
    try:
        import torch
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def _error_row(name, path, level, exc: EngineError) -> dict:
    return {"name": name, "input": str(path), "strokes": level, "status": "error", "loss": None, "seed": None,
            "iterations": 0, "seconds": 0.0, "device": None, "finished_early": False,
            "error": {"code": exc.code, "message": exc.message}}


def _svg_texts(result, image_svg: bool):
    return result.to_svg("canvas"), (result.to_svg("image") if image_svg else None)


def record(outdir: Path, name, level, svg_text, image_svg_text, row) -> dict:
    """SVG(s) first, atomically; then the manifest row: a row always means its files are complete."""
    row = dict(row)
    row["svg"] = row["image_svg"] = None
    with cannot_write(outdir):   # a disk that fills up mid-batch: one sentence, not a traceback
        if svg_text is not None:
            svg = outdir / f"{name}-{level}.svg"
            write_atomic(svg, svg_text)
            row["svg"] = svg.name
            if image_svg_text is not None:
                image = outdir / f"{name}-{level}.image.svg"
                write_atomic(image, image_svg_text)
                row["image_svg"] = image.name
        append_row(outdir, row)
    return row


# --- the command ------------------------------------------------------------------------------------

def build_config(args):
    return make_config(args.preset, num_iterations=args.iterations, num_seeds=args.seeds, seed=args.seed,
                       mask_background=args.mask_background or None, pad_to_square=not args.stretch,
                       models_dir=args.models_dir, threads=args.threads, device=args.device)


def check_output_folder(outdir: Path) -> None:
    """-o can be written, checked without creating anything: a refused batch leaves nothing behind."""
    if outdir.exists():
        if not outdir.is_dir():
            raise EngineError("bad_argument", f"-o {outdir} is a file; batch writes into a folder. Give a folder "
                                              "name (it is created if missing).")
        check_writable(outdir / MANIFEST, "-o")
        return
    ancestor = next(a for a in outdir.parents if a.exists())
    if not ancestor.is_dir():
        raise EngineError("bad_argument", f"Cannot create the output folder {outdir}: {ancestor} is a file, not a "
                                          "folder. Choose another place with -o.")
    try:   # a folder made and removed at once: the only sure test (a read-only or virtual file system)
        os.rmdir(tempfile.mkdtemp(prefix=".clipasso-probe-", dir=ancestor))
    except OSError as exc:
        raise EngineError("bad_argument", f"Cannot create the output folder {outdir}: {ancestor} does not accept "
                                          f"new folders ({why_not_writable(exc)}). Choose another place with -o.") from None


def create_output_folder(outdir: Path) -> None:
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError("bad_argument", f"Cannot create the output folder {outdir} ({why_not_writable(exc)}). "
                                          "Choose another place with -o.") from None


def plan(outdir: Path, levels, paths, retry_failed: bool):
    """-> (pending [(path, name, [levels])], total jobs, skipped, of which failed)."""
    names = unique_names(paths)
    done = read_manifest(outdir)
    pending, skipped, failed = [], 0, 0
    for path, name in zip(paths, names):
        todo = []
        for level in levels:
            row = done.get((name, level))
            if row is not None and (row["status"] == "ok" or not retry_failed):
                skipped += 1
                failed += row["status"] != "ok"
            else:
                todo.append(level)
        if todo:
            pending.append((path, name, todo))
    return pending, len(paths) * len(levels), skipped, failed


def check_images(pending, config, report=None):
    """Every pending image read (decoded to the canvas, then dropped) before any model loads.
    -> (the readable pending items, error rows for the others). Each image is decoded again before its
    chunk (a file may change meanwhile); the first read costs ~0.1-0.3 s a photo, next to minutes a sketch."""
    from . import imageio
    if report is not None and pending:
        report(wire.event(wire.STATUS, phase="image", message=f"Reading {len(pending)} image"
                          f"{'s' if len(pending) != 1 else ''} before loading the models"))
    good, bad = [], []
    for path, name, todo in pending:
        try:
            imageio.load_image(str(path), config, name=name)
            good.append((path, name, todo))
        except EngineError as exc:
            bad += [(name, level, _error_row(name, path, level, exc)) for level in todo]
    return good, bad


def chunks(pending, k):
    """Images with the same pending levels, k at a time (sketch_many draws every image at every level)."""
    groups: dict[tuple, list] = {}
    for path, name, todo in pending:
        groups.setdefault(tuple(todo), []).append((path, name))
    for todo, items in groups.items():
        for i in range(0, len(items), k):
            yield items[i:i + k], list(todo)


def estimated_seconds(config, chunk_list) -> float:
    """The optimisation time on a CPU like the benchmark machine's: the extension's and sketch's estimate
    (runs.estimated_seconds), chunk by chunk."""
    return sum(runs.estimated_seconds(config, len(items) * len(todo), len(items)) for items, todo in chunk_list)


def plan_message(config, levels, pending, skipped, bad_images, device, device_type, seconds, k, workers=1) -> str:
    """What the batch will do and how long it should take, before anything is loaded."""
    images, jobs = len(pending), sum(len(todo) for *_, todo in pending)

    def n(count, word, plural=None):
        return f"{count} {word if count == 1 else plural or word + 's'}"
    parts = [f"{n(images, 'image')} x {n(len(levels), 'level')} ({','.join(map(str, levels))}) = "
             f"{n(jobs, 'sketch', 'sketches')}, {config.preset} preset ({n(config.num_iterations, 'iteration')} "
             f"x {n(config.num_seeds, 'seed')}) on {device}, {k} image{'s' if k != 1 else ''} at a time"]
    if skipped:
        parts.append(f"{skipped} already in the manifest, skipped")
    if bad_images:
        parts.append(f"{n(bad_images, 'unreadable file')} recorded as error{'s' if bad_images != 1 else ''}")
    parts.append(expected_time(seconds / workers, device_type) + ("" if workers == 1 else f" with {workers} workers"))
    return "; ".join(parts) + "."


class Progress:
    """One overall bar (sketches done, failures, time left) or batch events, through the CLI's reporter.

    Time left: the engine's own estimate for the chunk being drawn, plus the sketches after it at the
    measured seconds per sketch (the CPU estimate until a chunk has finished)."""

    def __init__(self, report, total, skipped, outdir: Path, jobs: int = 0, seconds_per_job: float | None = None,
                 workers: int = 1):
        self.report, self.total, self.done, self.failed = report, total, skipped, 0
        self.outdir, self.jobs_left, self.per_job, self.workers = outdir, jobs, seconds_per_job, workers
        self.chunk_jobs, self.chunk_eta, self.chunk_t0, self.step = 0, None, None, None
        self.t_start, self.drawn, self.drawing_seconds = time.perf_counter(), 0, 0.0
        self.bar = None
        if report.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=skipped, unit="sketch", dynamic_ncols=True, file=report.err,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} sketches{postfix}")
            self._refresh()

    def time_left(self) -> float | None:
        if not self.jobs_left and not self.chunk_jobs:
            return 0.0
        if self.per_job is None:
            return None
        if self.chunk_jobs:   # a chunk is being drawn in this process
            now = self.chunk_eta if self.chunk_eta is not None else self.per_job * self.chunk_jobs
            return now + max(0, self.jobs_left - self.chunk_jobs) * self.per_job
        return self.jobs_left * self.per_job / self.workers

    def chunk_started(self, jobs: int) -> None:
        self.chunk_jobs, self.chunk_eta, self.chunk_t0 = jobs, None, time.perf_counter()

    def chunk_finished(self, drawn: int) -> None:
        """A chunk's rows are recorded: the seconds per sketch are measured from now on."""
        self.drawn += drawn
        if self.chunk_t0 is not None:   # drawn here: its own time
            self.drawing_seconds += time.perf_counter() - self.chunk_t0
            self.per_job = self.drawing_seconds / max(1, self.drawn)
        elif self.drawn:                # by Ray workers, side by side
            self.per_job = (time.perf_counter() - self.t_start) * self.workers / self.drawn
        self.chunk_jobs, self.chunk_eta, self.step = 0, None, None
        self._refresh()

    def engine_event(self, event, chunk_names):
        kind = event.get("event")
        if kind == wire.PROGRESS:
            self.chunk_eta, self.step = event.get("eta"), f"{event.get('iteration')}/{event.get('total')}"
            if self.report.mode == "jsonl":
                self.report(dict(event, chunk=chunk_names))
            self._refresh()
        elif kind == wire.NOTICE:
            self.notice(event)

    def notice(self, event):
        if self.bar is not None:
            self.bar.write(f"clipasso: {event.get('message', '')}")
        elif self.report.mode == "jsonl":
            self.report(event)

    def item(self, row, drawn: bool = True):
        """drawn: the row is a sketch's (or its failure's) that was part of the work left."""
        self.done += 1
        self.failed += row["status"] != "ok"
        if drawn:
            self.jobs_left = max(0, self.jobs_left - 1)
        if self.report.mode == "jsonl":
            left = self.time_left()
            self.report(dict(row, event=BATCH_ITEM, done=self.done, failed=self.failed, total=self.total,
                             eta=None if left is None else round(left, 1)))
        elif self.bar is not None:
            if row["status"] != "ok":
                self.bar.write(f"clipasso: {row['name']} ({row['strokes']} strokes): {row['error']['message']}")
            for key in ("svg", "image_svg"):   # every file written, by its full path
                if row.get(key):
                    self.bar.write(f"Wrote {self.outdir / row[key]}")
            self.bar.update(1)
            self._refresh()

    def _refresh(self):
        if self.bar is None:
            return
        left = self.time_left()
        parts = [f"step {self.step}"] if self.step else []
        if left is None or left > 0:
            parts.append(f"{duration_text(left)} left" if left is not None else "time left unknown")
        if self.failed:
            parts.append(f"{self.failed} failed")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args, report) -> int:
    """Every option, the output folder and every image are checked before anything is created or loaded;
    then the plan and its expected time are printed, then the models load and the sketches are drawn."""
    config = build_config(args)
    levels = parse_levels(args.strokes, config)
    k = parse_batch_images(args.batch_images)
    ray = import_ray() if args.ray else None
    outdir = Path(args.output).expanduser().resolve()
    check_output_folder(outdir)
    pending, total, skipped, failed_before = plan(outdir, levels, collect_inputs(args.inputs), args.retry_failed)
    pending, bad_rows = check_images(pending, config, report)
    where = choose_where(ray, args, config, pending, k) if pending else None
    create_output_folder(outdir)
    t0 = time.perf_counter()
    watch = CancelWatch(report)
    progress = None
    try:
        chunk_list = list(chunks(pending, where["k"])) if pending else []
        seconds = estimated_seconds(config, chunk_list)
        jobs = sum(len(todo) for *_, todo in pending)
        progress = Progress(report, total, skipped, outdir, jobs, seconds / jobs if jobs else None,
                            where["workers"] if where else 1)
        progress.failed = failed_before  # the exit status says whether the whole batch is good, reruns included
        announce(report, progress, config, levels, pending, skipped, bad_rows, where, seconds)
        for name, level, row in bad_rows:   # unreadable files: recorded before any model loads
            progress.item(record(outdir, name, level, None, None, row), drawn=False)
        if where and where["cluster"] is not None:
            run_ray(where["cluster"], outdir, chunk_list, progress)
        elif where:
            run_local(args, config, outdir, chunk_list, progress, watch)
    except Cancelled as exc:
        raise Cancelled(watch.reason) from exc
    finally:
        watch.finished.set()
        if progress is not None:
            progress.close()
    seconds = time.perf_counter() - t0
    if report.mode == "jsonl":
        report({"event": BATCH_DONE, "done": progress.done, "failed": progress.failed, "total": total,
                "seconds": round(seconds, 1), "output": str(outdir)})
    if report.mode == "bar":
        print(f"{progress.done - progress.failed} of {total} sketches in {outdir} "
              f"({progress.failed} failed; manifest {outdir / MANIFEST}), {seconds:.0f} s")
    return 1 if progress.failed else 0


def choose_where(ray, args, config, pending, k) -> dict:
    """Where the sketches are drawn: device (its label and kind), images per batch, workers, Ray's pool.
    An explicit device this machine lacks is device_unavailable here, before any estimate is printed."""
    if ray is not None:
        cluster = start_ray(ray, args, config, len(pending), k)
        return {"device": cluster["device"], "device_type": "cuda" if cluster["gpu"] else "cpu", "k": cluster["k"],
                "workers": cluster["workers"], "cluster": cluster}
    device = check_device(config.device)
    return {"device": device, "device_type": device, "k": k or auto_batch_images(device, config), "workers": 1,
            "cluster": None}


def announce(report, progress, config, levels, pending, skipped, bad_rows, where, seconds) -> None:
    """The plan, before any model loads: a batch_start event (jsonl), or a line above the bar."""
    message = None
    if where:
        message = plan_message(config, levels, pending, skipped, len({r["input"] for *_, r in bad_rows}),
                               where["device"], where["device_type"], seconds, where["k"], where["workers"])
    if report.mode == "jsonl":
        report({"event": BATCH_START, "total": progress.total, "pending": progress.jobs_left, "skipped": skipped,
                "batch_images": where and where["k"], "device": where and where["device"],
                "output": str(progress.outdir),
                "estimated_seconds": round(seconds / where["workers"], 1) if where else 0, "message": message})
    elif progress.bar is not None and message:
        progress.bar.write(f"clipasso: {message}")


def run_local(args, config, outdir, chunk_list, progress, watch):
    runtime = [_prepare(config, progress.notice)]
    for items, todo in chunk_list:
        names = [n for _, n in items]
        progress.chunk_started(len(items) * len(todo))
        rows = draw_items(items, config, todo, runtime, progress.notice, should_stop=watch.cancelled.is_set,
                          on_progress=lambda e, names=names: progress.engine_event(e, names))
        for name, level, result, row in rows:
            svg, image_svg = _svg_texts(result, args.image_svg) if result is not None else (None, None)
            progress.item(record(outdir, name, level, svg, image_svg, row))
        progress.chunk_finished(len(rows))


# --- Ray ----------------------------------------------------------------------------------------------

def import_ray():
    """Ray, or one sentence naming the command that installs it into this engine's environment."""
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401
    except ImportError:
        install = f"{shlex.quote(sys.executable)} -m pip install 'ray>=2.9'"
        raise EngineError("bad_argument", f"--ray needs Ray, which is not installed in this engine's Python. "
                                          f"Install it with `{install}`, or leave out --ray.") from None
    return ray


def start_ray(ray, args, config, images: int, k):
    """A pool of actors, one per GPU (or per CPU slot when the cluster has no GPU), each preparing the
    models once. Every CPU worker runs with the thread count a local batch uses (--threads, else torch's
    default here): float sums depend on it, and the same images and seeds must give the same SVGs."""
    import logging
    import torch
    from ray.util import ActorPool
    address = None if args.ray == "auto" else args.ray
    if address is not None:
        check_reachable(address)
    if not ray.is_initialized():
        try:   # logging_level: Ray's own start-up lines (auth token, dashboard) are not the user's business
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.ERROR,
                     **({"num_cpus": int(os.environ["CLIPASSO_RAY_CPUS"])} if "CLIPASSO_RAY_CPUS" in os.environ
                        and address is None else {}))
        except Exception as exc:  # noqa: BLE001  Ray raises ConnectionError, RuntimeError, ValueError...
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise EngineError("bad_argument", f"Cannot start or reach {where} ({type(exc).__name__}: "
                                              f"{str(exc).splitlines()[0] if str(exc) else 'no details'}). Check the "
                                              "address that `ray start --head` printed, or leave out --ray.") from None
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    threads = config.threads or torch.get_num_threads()
    per_worker = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": threads}
    workers = gpus or max(1, int(resources.get("CPU", 1)) // threads)
    workers = min(workers, images)
    worker_config = config.replace(threads=threads)
    if not gpus and config.device == "auto":
        worker_config = worker_config.replace(device="cpu")
    Worker = ray.remote(**per_worker)(RayWorker)
    pool = ActorPool([Worker.remote(worker_config, args.image_svg) for _ in range(workers)])
    kind = "GPU" if gpus else "CPU"
    return {"pool": pool, "workers": workers, "k": k or 1, "device": f"Ray, {workers} {kind} worker"
            f"{'s' if workers != 1 else ''}", "gpu": bool(gpus)}


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A head that does not answer is one sentence in seconds (ray.init waits on it for minutes)."""
    import socket
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return   # not host:port: Ray's own forms (e.g. a cluster's name) are Ray's to judge
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise EngineError("bad_argument", f"The Ray cluster at {address} does not answer ({exc.strerror or exc}). "
                                          "Check the address that `ray start --head` printed, or leave out "
                                          "--ray.") from None


def run_ray(cluster, outdir, chunk_list, progress):
    """Actors return SVG texts and rows, the driver writes files and the manifest (so workers need no
    shared folder, and resuming works exactly as on one machine)."""
    work = [([(str(p), n) for p, n in items], todo) for items, todo in chunk_list]
    for rows in cluster["pool"].map_unordered(lambda actor, job: actor.draw.remote(*job), work):
        for name, level, svg, image_svg, row in rows:
            progress.item(record(outdir, name, level, svg, image_svg, row))
        progress.chunk_finished(len(rows))


class RayWorker:
    """One per GPU / CPU slot: models prepared once, then chunk after chunk."""

    def __init__(self, config, image_svg):
        if config.threads:
            import torch
            torch.set_num_threads(config.threads)
        self.config, self.image_svg = config, image_svg
        self.notices = []
        self.runtime = [_prepare(config, self.notices.append)]

    def draw(self, items, levels):
        rows = draw_items([(Path(p), n) for p, n in items], self.config, levels, self.runtime, self.notices.append)
        out = []
        for name, level, result, row in rows:
            svg, image_svg = _svg_texts(result, self.image_svg) if result is not None else (None, None)
            out.append((name, level, svg, image_svg, row))
        return out


def main(argv=None) -> int:
    """`python -m clipasso_engine.batch ...`: the same command without the rest of the CLI."""
    import argparse
    import sys
    parser = argparse.ArgumentParser(prog="clipasso")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["batch", *(sys.argv[1:] if argv is None else argv)])
    report = Reporter(args.progress)
    try:
        return run(args, report)
    except EngineError as exc:
        report.close()
        if args.progress == "jsonl":
            report({"event": wire.ERROR, "code": exc.code, "message": exc.message})
        else:
            print(f"clipasso: error: {exc.message}", file=sys.stderr)
        return 130 if exc.code == "cancelled" else 1


if __name__ == "__main__":
    raise SystemExit(main())
