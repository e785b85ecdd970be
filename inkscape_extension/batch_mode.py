"""Scripted Inkscape (`inkscape --batch-process --actions=...`): nobody is there to see a window.

After a script ends, Inkscape shows whatever it wrote on stderr in a modal dialog and waits for it
to be closed; in batch mode (on Xvfb, in CI, over ssh) nobody closes it, and the run never ends
(INKSCAPE.md). So in batch mode the extension opens no progress window, and what it would write on
stderr (the error sentence, a crash's traceback) goes to Inkscape's own stderr instead, where the
person scripting Inkscape reads it, and to the end of the log. The document is left as it was, and
Inkscape carries on with the remaining actions (export-do writes the unchanged document).

Inkscape does not tell a script that it runs in batch mode, and the script is double-forked (its
parent is init, not Inkscape). But Inkscape reads the script's stderr through a pipe: the process
that holds the other end of that pipe is Inkscape, and its command line says `--batch-process`.
That needs /proc (Linux); elsewhere, or when anything is unsure, the run counts as interactive, as before.
"""

import functools
import io
import os
import sys

BATCH_FLAG = "--batch-process"


def _arguments(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [word.decode("utf-8", "replace") for word in handle.read().split(b"\0")]
    except OSError:
        return []


def _holds(pid, target):
    """True when process pid has the pipe `target` ('pipe:[inode]') open."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # gone meanwhile, or not ours to look into
        return False


@functools.lru_cache(maxsize=None)
def inkscape_batch_pid():
    """The pid of the `inkscape --batch-process` reading our stderr, or None when not in batch mode.
    Only processes of our session whose command line says --batch-process have their files looked
    at, so an interactive run (the usual case) costs one read of each command line."""
    try:
        target = os.readlink("/proc/self/fd/2")
        me, session = os.getpid(), os.getsid(0)
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != me]
    except OSError:  # no /proc (Windows, macOS) or no stderr
        return None
    if not target.startswith("pipe:"):
        return None
    for pid in pids:
        try:
            if os.getsid(pid) != session:  # Inkscape starts us in its own session
                continue
        except OSError:
            continue
        if BATCH_FLAG in _arguments(pid) and _holds(pid, target):
            return pid
    return None


def active():
    """True when Inkscape runs this script from --batch-process: no window, no dialog."""
    return inkscape_batch_pid() is not None


class _InkscapeStderrAndLog(io.TextIOBase):
    """A text stream: each write goes to Inkscape's stderr and is appended to the log."""

    def __init__(self, stream, log_path, heading):
        super().__init__()
        self._stream, self._log_path, self._heading = stream, log_path, heading

    def writable(self):
        return True

    def write(self, text):
        if self._stream is not None:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):
                pass
        try:  # opened per write: the extension truncates the log when the engine starts
            with open(self._log_path, "a", encoding="utf-8") as log:
                log.write(self._heading + text)
            self._heading = ""
        except OSError:
            pass
        return len(text)


def route_stderr(log_path):
    """In batch mode, leave the pipe Inkscape reads empty: fd 2 (C libraries too) and sys.stderr
    (inkex's error sentence, tracebacks) go to Inkscape's own stderr, sys.stderr also to the log.
    Returns True in batch mode. Inkscape's stderr is opened for appending through /proc; when it
    cannot be (a socket, say), the words go to the log only: the run must end either way."""
    pid = inkscape_batch_pid()
    if pid is None:
        return False
    where = "Inkscape's stderr and here"
    try:
        fd = os.open(f"/proc/{pid}/fd/2", os.O_WRONLY | os.O_APPEND)
    except OSError:
        fd, where = os.open(os.devnull, os.O_WRONLY), "only here (Inkscape's stderr cannot be opened)"
    os.dup2(fd, 2)
    os.close(fd)
    stream = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace",
                              line_buffering=True)
    heading = f"== batch mode (inkscape {BATCH_FLAG}, pid {pid}): no progress window; stderr goes to {where}:\n"
    sys.stderr = _InkscapeStderrAndLog(stream, log_path, heading)
    return True
