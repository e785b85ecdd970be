"""What the commands that run sketches share (`clipasso sketch` in cli.py, `clipasso batch` in batch.py):
the default preset and the time estimates, the --help format, reporting (JSON lines or a progress bar), stopping
(Ctrl-C, stdin commands, SIGTERM, the parent's death) and checking outputs before hours of work.

Both command modules import this one and not each other's internals, so imports flow one way:
runs <- batch <- cli.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import wire
from .config import PRESETS, make_config
from .errors import Cancelled, EngineError

EXIT_CANCELLED = wire.EXIT_CANCELLED

CANCEL_GRACE_S = 5.0  # after a cancel request, exit hard if the run has not unwound by then

# The CLI's default preset. `paper` takes about 1.5 hours on a laptop CPU; someone typing
# `clipasso sketch photo.jpg` expects a drawing in minutes, and the extension defaults to `fast` too.
# `--preset paper` is one option away for the reference's quality.
DEFAULT_PRESET = "fast"

FINISH_EARLY_MESSAGE = "Finishing early: keeping the best so far; press Ctrl-C again to cancel."

# --- expected time ---------------------------------------------------------------------------------
# The one table of time estimates: seconds per iteration measured on the benchmark machine (a 2-core
# CPU, 2 threads, 16 strokes; README "Benchmarks", bench_iteration.py): one sketch with a pool of views
# costs ~0.02 s plus ~0.16 s per view it sends through CLIP (clean view included): 0.50 s with 2
# augmented views (fast), 0.82 s with 4; fresh augmentations (paper) add ~0.07 s per augmented target
# view per image (1.11 s). Sketches batched together (seeds, levels, images) cost about the sum of their
# parts on a CPU (3 seeds: 2.35 s).
CPU_S_PER_SKETCH, CPU_S_PER_VIEW, CPU_S_PER_FRESH_TARGET_VIEW = 0.02, 0.16, 0.0725


def estimated_seconds(config, jobs: int = 1, images: int | None = None) -> float:
    """Expected optimisation time on a CPU like the benchmark machine's, for `jobs` (image, level) runs
    of `images` images (default: one image per job)."""
    sketches = config.num_seeds * jobs
    per_iteration = sketches * (CPU_S_PER_SKETCH + CPU_S_PER_VIEW * (config.num_augs + 1))
    if not config.augment_pool:
        per_iteration += (images or jobs) * CPU_S_PER_FRESH_TARGET_VIEW * config.num_augs
    return per_iteration * config.num_iterations


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def expected_time(seconds: float, device_type: str) -> str:
    """How long `seconds` of CPU estimate means on this device, in words (sketch's and batch's plans)."""
    if device_type == "cpu":
        cores = os.cpu_count() or 1
        return (f"expected time on this CPU about {duration_text(seconds)} (measured on 2 cores; this machine has "
                f"{cores}), plus loading the models")
    return f"on the GPU ({device_type}) this takes a fraction of the CPU time (about {duration_text(seconds)} on a 2-core CPU)"


def plan_message(config, jobs: int, device_type: str, images: int | None = None) -> str:
    """The first status line: what runs, and how long it should take on this device."""
    what = (f"{config.preset} preset: {config.num_iterations} iterations x {config.num_seeds} "
            f"seed{'s' if config.num_seeds != 1 else ''}, {jobs} job{'s' if jobs != 1 else ''}")
    return f"{what}; {expected_time(estimated_seconds(config, jobs, images), device_type)}."


# --- arguments ---------------------------------------------------------------------------------------

class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default; options whose default depends on the preset say so in their help."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def by_preset(field: str) -> str:
    return "the preset's: " + ", ".join(f"{k} {getattr(make_config(k), field)}" for k in PRESETS)


# --- reporting ---------------------------------------------------------------------------------------

class Reporter:
    """Turns events into JSON lines on stdout (jsonl), or a progress bar and sentences on stderr (bar).

    Any dict with an "event" key can be reported (batch.py adds its own events)."""

    def __init__(self, mode: str, out=None, err=None):
        self.mode = mode
        self.lock = threading.RLock()  # RLock: the Ctrl-C handler may speak while the main thread reports
        self.bar = None
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def __call__(self, event: dict) -> None:
        with self.lock:
            if self.mode == "jsonl":
                self.out.write(wire.encode(event) + "\n")
                self.out.flush()
            elif self.mode == "bar":
                self._human(event)

    def say(self, message: str) -> None:
        """A sentence for a person (bar mode only; jsonl's stdout is for the wire)."""
        if self.mode == "bar":
            with self.lock:
                self.close()
                print(f"clipasso: {message}", file=self.err, flush=True)

    def _human(self, event: dict) -> None:
        kind = event.get("event")
        if kind == wire.PROGRESS:
            self._progress(event)
        elif kind in (wire.STATUS, wire.NOTICE):
            self.close()
            print(f"clipasso: {event['message']}", file=self.err, flush=True)
        elif kind == wire.ERROR:
            self.close()
            print(f"clipasso: error: {event['message']}", file=self.err, flush=True)

    def _progress(self, event: dict) -> None:
        if self.bar is None:
            from tqdm import tqdm
            # Our own rate and time left (the engine's), not tqdm's: tqdm's first tick divides by the
            # microseconds since the bar appeared and reads thousands of it/s.
            self.bar = tqdm(total=event["total"], dynamic_ncols=True, file=self.err,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}{postfix}")  # postfix: ", ..."
        self.bar.n = event["iteration"]
        per_it, eta = event.get("per_iteration"), event.get("eta")
        timing = f"{per_it:.2f} s/it, {duration_text(eta)} left, " if per_it and eta is not None else ""
        # loss: the training loss of this step (augmented views, noisy); best: the lowest loss on the
        # clean view so far, which decides the drawing that is kept: that is the number that should fall.
        self.bar.set_postfix_str(f"{timing}train loss {event['loss']:.4f}, best clean-view loss "
                                 f"{event['best_loss']:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- stopping: Ctrl-C, stdin commands, SIGTERM, parent gone -------------------------------------------

class CancelWatch:
    """Sets `cancelled` or `finished_early` from signals, stdin commands and the parent's death.

    The run polls them between iterations; if a cancelled run has not unwound CANCEL_GRACE_S later (stuck
    in a long load), the process reports and exits on its own so that no orphan keeps a GPU busy.
    `optimising` is set by the caller once the optimisation runs: before it, Ctrl-C cancels; during it,
    the first Ctrl-C finishes early and the second cancels.
    """

    def __init__(self, report: Reporter, commands: bool | None = None):
        self.report = report
        self.cancelled = threading.Event()
        self.finish_requested = threading.Event()
        self.optimising = threading.Event()
        self.finished = threading.Event()  # the command is over: no hard exit any more
        self.reason = "Cancelled."
        self.parent = os.getppid()
        signal.signal(signal.SIGTERM, lambda *_: self.cancel("Cancelled (SIGTERM)."))
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda *_: self.interrupt())
        if commands is None:
            commands = report.mode == "jsonl" and _stdin_is_pipe()
        if commands:
            threading.Thread(target=self._read_commands, daemon=True).start()
        threading.Thread(target=self._watch_parent, daemon=True).start()

    def interrupt(self) -> None:
        """Ctrl-C."""
        if self.cancelled.is_set():  # a third Ctrl-C, the run is stuck: leave now
            self._exit_now()
        elif self.optimising.is_set() and not self.finish_requested.is_set():
            self.finish()
            self.report.say(FINISH_EARLY_MESSAGE)
        else:
            self.cancel("Cancelled (Ctrl-C).")

    def finish(self) -> None:
        self.finish_requested.set()

    def cancel(self, reason: str) -> None:
        if self.finished.is_set():  # the command is over (a late EOF, a late signal): nothing to stop
            return
        if not self.cancelled.is_set():
            from . import models
            models.interrupt_pending.set()  # a weights reader failing from now on failed because of this
            self.reason = reason
            self.cancelled.set()
            threading.Thread(target=self._hard_exit_later, daemon=True).start()

    def _read_commands(self) -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside the buffered reader
        # holds its lock, and interpreter shutdown then aborts ("_enter_buffered_busy", exit -6).
        pending = b""
        try:
            fd = sys.stdin.fileno()
            while chunk := os.read(fd, 4096):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._command(line)
            self._command(pending)   # a last line without its newline
        except (OSError, ValueError, AttributeError):
            pass
        self.cancel("Cancelled (the caller closed the engine's input).")  # EOF: the caller went away

    def _command(self, line: bytes) -> None:
        name = wire.parse_command(line)
        if name == wire.FINISH:
            self.finish()
        elif name == wire.CANCEL:
            self.cancel("Cancelled.")

    def _watch_parent(self) -> None:
        while not self.finished.is_set():
            if os.getppid() != self.parent:
                self.cancel("Cancelled (the calling process went away).")
                return
            time.sleep(0.5)

    def _hard_exit_later(self) -> None:
        if not self.finished.wait(CANCEL_GRACE_S):
            self._exit_now()

    def _exit_now(self) -> None:
        try:
            self.report.close()
            self.report(Cancelled(self.reason).to_event())
        finally:
            os._exit(EXIT_CANCELLED)

    def close(self) -> None:
        self.finished.set()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _stdin_is_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


# --- outputs -----------------------------------------------------------------------------------------

def check_parent(path: Path, what: str) -> None:
    parent = path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise EngineError("bad_argument", f"Cannot write {path}: {ancestor} is a file, not a folder.")
            break
    if not parent.is_dir():
        raise EngineError("bad_argument", f"Cannot write {path}: the folder {parent} does not exist.")


def why_not_writable(exc: OSError) -> str:
    """An OSError on writing, in a designer's words."""
    reasons = {errno.EROFS: "a read-only file system", errno.EACCES: "no permission to write there",
               errno.EPERM: "no permission to write there", errno.ENOSPC: "the disk is full",
               errno.EDQUOT: "the disk quota is used up",
               errno.ENOENT: "missing, or a virtual file system such as /proc"}
    return reasons.get(exc.errno, exc.strerror or str(exc))


@contextlib.contextmanager
def cannot_write(path, what: str = "-o"):
    """A write that fails late (disk full, the folder removed) is one sentence naming the path."""
    try:
        yield
    except OSError as exc:
        raise EngineError("bad_argument", f"Cannot write {getattr(exc, 'filename', None) or path} "
                                          f"({why_not_writable(exc)}). Choose another place with {what}.") from None


def check_writable(path: Path, what: str = "-o") -> None:
    """Create and remove a temporary file beside `path`: a bad output is found before hours of work."""
    check_parent(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise EngineError("bad_argument", f"Cannot write {path}: the file is read-only.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".clipasso-probe-", suffix=".svg", dir=path.parent)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise EngineError("bad_argument", f"Cannot write {path}: the folder {path.parent} does not accept new "
                                          f"files ({why_not_writable(exc)}). Choose another place with {what}.") from None


# --- devices -----------------------------------------------------------------------------------------

def check_device(requested: str) -> str:
    """The device the run will use (device_unavailable for an explicit one this machine lacks), known
    before any estimate is printed. Imports torch: call it once the inputs are known to be good."""
    from .sketcher import resolve_device
    return resolve_device(requested).type
