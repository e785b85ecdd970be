"""Running the engine process and reading its JSON lines: stdlib only, no GUI.

One `EngineProcess` per engine run. A reader thread turns the engine's stdout into parsed events
on a queue, so the same process object serves the blocking runner below and the GTK window (which
drains the queue from a GLib timeout) on every platform. The engine's stderr goes straight to the
log file. The engine is started in its own session / process group, so `stop()` can take down
everything it spawned: close stdin (the engine's polite stop signal), then SIGTERM, then SIGKILL.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

try:  # the installed extension: install.py copies clipasso_engine/wire.py beside this script
    import clipasso_wire as wire
except ImportError:  # a checkout: the repo root holds clipasso_engine (its __init__ is stdlib-only)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from clipasso_engine import wire

STOP_GRACE_S = 3.0        # after closing stdin, and again after SIGTERM
STALL_TIMEOUT_S = 1800.0  # no line from the engine for this long -> stop it (loading/downloading emit status)
# Memory, read here while the engine runs, since the wire carries no memory use: after a SIGKILL it
# says whether the system's out-of-memory killer is the likely cause (issue 18 item 3).
MEMORY_SAMPLE_S = 1.0     # at most one reading of /proc a second
# Short of memory: less left than this share of it, or less than the engine itself held (its next
# step may well ask for as much again before the next reading).
SHORT_OF_MEMORY_SHARE = 0.10


LIVE = set()  # engines not yet stopped, for stop_all() from a signal handler


class EngineFailed(Exception):
    """A run ended without a result; str() is one sentence for the designer."""


class EngineCancelled(EngineFailed):
    pass


def format_duration(seconds):
    """12 -> '12 s', 95 -> '1 min 35 s', 4000 -> '1 h 7 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_eta(seconds):
    if seconds is None:
        return "estimating time left"
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return "estimating time left"
    if seconds != seconds or seconds < 0:  # NaN or negative
        return "estimating time left"
    return f"about {format_duration(seconds)} left"


def describe_progress(event):
    """A progress event -> (fraction in [0, 1], one-line text) for the window or a log."""
    iteration, total = event.get("iteration", 0), event.get("total") or 0
    fraction = min(1.0, max(0.0, iteration / total)) if total else 0.0
    parts = [f"Iteration {iteration} of {total}"]
    if isinstance(event.get("loss"), (int, float)):
        parts.append(f"loss {event['loss']:.4f}")
    parts.append(format_eta(event.get("eta")))
    return fraction, " \u00b7 ".join(parts)


class EngineProcess:
    """The engine, started at construction; events arrive on self.events."""

    def __init__(self, command, log_file, env=None):
        self.command = [str(part) for part in command]
        self.log_file = log_file          # an open binary file (the engine's stderr)
        self.events = queue.Queue()
        self.results = []                 # one result event per job, in arrival order
        self.done = None                  # the done event
        self.error = None                 # the engine's error event, if any
        self.last_progress = None
        self.last_memory = None           # read_memory() at the latest reading, None where unknown
        self._memory_read_at = None
        self.last_heard = time.monotonic()
        self._stdout_done = threading.Event()
        kwargs = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True   # own process group: stop() kills the whole tree
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | \
                getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                env=env, **kwargs)
        except OSError as error:
            raise EngineFailed(f"The CLIPasso engine could not be started ({error.strerror or error}): "
                               f"run install.py again.") from error
        LIVE.add(self)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self):
        try:
            for raw in iter(self.process.stdout.readline, b""):
                event = wire.parse_event(raw)
                if event is not None:
                    self.events.put(event)
                else:  # stray prints (a library chatting on stdout): keep them, in the log
                    self.log_file.write(b"[stdout] " + raw)
        except (OSError, ValueError):
            pass
        finally:
            self._stdout_done.set()

    def drain(self, timeout=0.0):
        """Events that arrived (waiting up to `timeout` for the first one); records result/error."""
        events = []
        try:
            events.append(self.events.get(timeout=timeout) if timeout else self.events.get_nowait())
            while True:
                events.append(self.events.get_nowait())
        except queue.Empty:
            pass
        self._read_memory()
        for event in events:
            self.last_heard = time.monotonic()
            kind = event["event"]
            if kind == wire.RESULT:
                self.results.append(event)
            elif kind == wire.DONE:
                self.done = event
            elif kind == wire.ERROR:
                self.error = event
                self._log_error(event)
            elif kind == wire.PROGRESS:
                self.last_progress = event
        return events

    def _log_error(self, event):
        """The engine's error event in the log, code and all: the sentence shown to the designer
        has no code, and a scripted run has only stderr and the log (issue 16 item 3)."""
        try:
            self.log_file.write(("== engine error " + json.dumps(event, sort_keys=True) + "\n").encode("utf-8"))
            self.log_file.flush()
        except (OSError, ValueError):
            pass

    def _read_memory(self):
        """One reading of the engine's and the machine's memory a second (the last one before a
        SIGKILL is what describe_kill weighs)."""
        now = time.monotonic()
        if self._memory_read_at is not None and now - self._memory_read_at < MEMORY_SAMPLE_S:
            return
        self._memory_read_at = now
        if self.process.poll() is None:  # a reading after the end would only show the memory freed
            self.last_memory = read_memory(self.process.pid) or self.last_memory

    @property
    def finished(self):
        """stdout closed, the process exited and every event has been drained."""
        return self._stdout_done.is_set() and self.process.poll() is not None and self.events.empty()

    def stalled(self, timeout_s):
        return timeout_s is not None and time.monotonic() - self.last_heard > timeout_s

    def finish_early(self):
        """Ask the engine to stop now and return its best strokes so far as normal results."""
        try:
            self.process.stdin.write(wire.command(wire.FINISH).encode("utf-8"))
            self.process.stdin.flush()
        except (OSError, ValueError):  # already gone: outcome() will say what happened
            pass

    def stop(self, grace_s=STOP_GRACE_S):
        """Close stdin, then SIGTERM, then SIGKILL the whole process group. Idempotent."""
        LIVE.discard(self)
        try:
            self.process.stdin.close()
        except (OSError, ValueError):
            pass
        if self._wait(grace_s) and os.name != "posix":
            return
        if os.name == "posix":
            if self.process.poll() is None:
                self._signal_group(signal.SIGTERM)
                self._wait(grace_s)
            # Always sweep the group: the engine may be gone but a child of it not.
            self._signal_group(signal.SIGKILL)
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        self._wait(grace_s)
        self._reader.join(timeout=1.0)

    def _signal_group(self, sig):
        try:
            os.killpg(self.process.pid, sig)  # pgid == pid: start_new_session made it leader
        except (ProcessLookupError, PermissionError):
            pass

    def _wait(self, timeout_s):
        try:
            self.process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def outcome(self, log_path):
        """The result events in job order, or EngineFailed with a sentence naming the log."""
        self.drain()
        code = self.process.returncode
        if self.results and self.done is not None and code == 0:
            return sorted(self.results, key=lambda result: result.get("job", 0))
        if self.error is not None:
            if self.error.get("code") == "cancelled":  # wire.ERROR_CODES
                raise EngineCancelled("Cancelled: the document was not changed.")
            message = str(self.error.get("message") or "unknown error").strip()
            raise EngineFailed(f"CLIPasso could not make the sketch: {message} (details in {log_path})")
        if code is not None and code < 0:  # killed by a signal: by whom, the memory readings suggest
            self._log_memory(-code)
            raise EngineFailed(describe_kill(-code, log_path, self.last_memory))
        raise EngineFailed(f"The CLIPasso engine stopped unexpectedly (exit status {code}) without "
                           f"a result; the details are in {log_path}")


    def _log_memory(self, signum):
        reading = self.last_memory
        text = "no memory reading" if reading is None else (
            f"last memory reading {time.monotonic() - reading['time']:.1f} s before: engine "
            f"{gigabytes(reading['engine'])} resident, {gigabytes(reading['available'])} of "
            f"{gigabytes(reading['total'])} available")
        try:
            self.log_file.write(f"== engine killed by signal {signum}; {text}\n".encode("utf-8"))
            self.log_file.flush()
        except (OSError, ValueError):
            pass


# --- memory, from /proc (Linux; elsewhere unknown) ---------------------------------------------------
def read_memory(pid, proc="/proc", cgroup_root="/sys/fs/cgroup"):
    """{'engine': resident bytes of pid (None if unreadable), 'available', 'total': bytes the
    machine, or the memory cgroup we run in when its limit is lower, has left and has, 'time'};
    None where /proc/meminfo cannot be read."""
    try:
        machine = _kib_fields(os.path.join(proc, "meminfo"))
        available, total = machine["MemAvailable"], machine["MemTotal"]
    except (OSError, KeyError, ValueError):
        return None
    try:
        engine = _kib_fields(os.path.join(proc, str(pid), "status"))["VmRSS"]
    except (OSError, KeyError, ValueError):
        engine = None
    limit = _cgroup_memory(proc, cgroup_root)
    if limit is not None:  # a container's limit is what its out-of-memory killer enforces
        total, available = min(total, limit[0]), min(available, max(0, limit[0] - limit[1]))
    return {"engine": engine, "available": available, "total": total, "time": time.monotonic()}


def _kib_fields(path):
    """'Name:   123 kB' lines -> {name: bytes} (the lines without a kB value are left out)."""
    fields = {}
    with open(path, encoding="ascii", errors="replace") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            words = rest.split()
            if len(words) == 2 and words[1] == "kB" and words[0].isdigit():
                fields[name.strip()] = int(words[0]) * 1024
    return fields


def _cgroup_memory(proc, cgroup_root):
    """(limit, usage) in bytes of our cgroup v2 memory controller, or None (no limit, or v1)."""
    try:
        with open(os.path.join(proc, "self", "cgroup"), encoding="utf-8") as handle:
            paths = [line.strip()[3:] for line in handle if line.startswith("0::")]
        folder = os.path.join(cgroup_root, paths[0].lstrip("/")) if paths else None
        with open(os.path.join(folder, "memory.max"), encoding="ascii") as handle:
            limit = handle.read().strip()
        with open(os.path.join(folder, "memory.current"), encoding="ascii") as handle:
            usage = int(handle.read().strip())
    except (OSError, ValueError, TypeError):
        return None
    return None if limit == "max" else (int(limit), usage)


def short_of_memory(reading):
    """True when the reading makes running out of memory plausible, False when it does not,
    None when there is no reading."""
    if reading is None:
        return None
    needed = max(SHORT_OF_MEMORY_SHARE * reading["total"], reading.get("engine") or 0)
    return reading["available"] < needed


def gigabytes(count):
    return "?" if count is None else f"{count / 2**30:.1f} GB"


MEMORY_ADVICE = ("try fewer seeds, the Fast quality, fewer images or stroke counts at once, or the other "
                 "device (Run on: CPU or GPU)")


def describe_kill(signum, log_path, reading=None):
    """A sentence for an engine stopped by a signal (issue 8 item 6, issue 18 item 3): it says it was
    stopped, and names memory as the likely cause only when the last reading makes that plausible
    (the system's out-of-memory killer sends SIGKILL; a person or a process manager may too)."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    stopped = f"The CLIPasso engine was stopped from outside ({name}: by a person, a process manager or the system)"
    if signum != getattr(signal, "SIGKILL", 9):  # the out-of-memory killer sends only SIGKILL
        return f"{stopped}; run it again; the details are in {log_path}"
    short = short_of_memory(reading)
    if short:
        return (f"The CLIPasso engine was stopped by the system ({name}), most likely because the computer "
                f"ran out of memory (the engine held {gigabytes(reading['engine'])}, with "
                f"{gigabytes(reading['available'])} left, a moment before): {MEMORY_ADVICE}; the details "
                f"are in {log_path}")
    if short is None:  # no reading: memory can be neither named nor ruled out
        return (f"{stopped}; run it again, and if the computer was short of memory, {MEMORY_ADVICE}; "
                f"the details are in {log_path}")
    return (f"{stopped}, with {gigabytes(reading['available'])} of memory still free a moment before, "
            f"so not for lack of memory; run it again; the details are in {log_path}")


def stop_all(grace_s=STOP_GRACE_S):
    for engine in list(LIVE):
        engine.stop(grace_s)


def run_blocking(command, log_file, log_path, env=None, on_event=None, should_cancel=None,
                 stall_timeout_s=STALL_TIMEOUT_S, poll_s=0.2, stop_grace_s=STOP_GRACE_S):
    """Run the engine to the end without a window; returns the result events in job order.
    should_cancel() is polled every poll_s; True stops the engine and raises EngineCancelled."""
    engine = EngineProcess(command, log_file, env)
    try:
        while not engine.finished:
            for event in engine.drain(timeout=poll_s):
                if on_event is not None:
                    on_event(event)
            if should_cancel is not None and should_cancel():
                raise EngineCancelled("Cancelled: the document was not changed.")
            if engine.stalled(stall_timeout_s):
                raise EngineFailed(f"The CLIPasso engine gave no sign of progress for "
                                   f"{format_duration(stall_timeout_s)} and was stopped; the details "
                                   f"are in {log_path}")
        return engine.outcome(log_path)
    finally:
        engine.stop(stop_grace_s)
