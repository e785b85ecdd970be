"""The extension's own progress window (GTK 3 through gi): a bar, the iteration, the loss, the
time left and a Cancel that works. Inkscape's own "working" dialog cannot cancel (INKSCAPE.md),
and its UI is frozen while the script runs, so this window is the only way to stop a long run.

One engine process serves one Apply (every image and stroke count); a GLib timeout drains its
event queue ten times a second. Cancel, or closing the window, stops the engine (stdin, SIGTERM,
SIGKILL: EngineProcess.stop); Keep current sketch sends the wire's finish command, after which the
engine returns normal results holding its best strokes so far.
"""

import os
import sys

import engine_run
from engine_run import wire

POLL_MS = 100


def available():
    """True when a window can be shown: a display (on Linux) and GTK 3 through gi."""
    if os.environ.get("CLIPASSO_NO_WINDOW"):
        return False
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        import gi
        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk  # noqa: F401
        return Gtk.init_check(sys.argv[:1])[0]
    except Exception:  # ImportError, ValueError (no Gtk 3), RuntimeError: no window, run blocking
        return False


def run_with_window(title, command, start, log_path, stall_timeout_s=engine_run.STALL_TIMEOUT_S, on_shown=None):
    """One engine run (every image and stroke count of one Apply); start(command) -> EngineProcess.
    Returns the result events in job order, or raises EngineFailed / EngineCancelled.
    Keep current sketch asks the engine to finish now: its results are then the best so far.
    on_shown(window, cancel_button, keep_button) is called once the window is up (tests drive it)."""
    import gi
    gi.require_version("Gtk", "3.0")
    from gi.repository import GLib, Gtk

    state = {"engine": None, "results": None, "failure": None, "kept": False}

    window = Gtk.Window(title="CLIPasso Sketch")
    window.set_default_size(440, -1)
    window.set_border_width(14)
    window.set_keep_above(True)
    window.set_position(Gtk.WindowPosition.CENTER)
    box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
    window.add(box)
    heading = Gtk.Label(xalign=0.0)
    heading.set_markup(f"<b>{GLib.markup_escape_text(title)}</b>")
    status = Gtk.Label(label="Starting the engine\u2026", xalign=0.0)
    bar = Gtk.ProgressBar(show_text=True)
    detail = Gtk.Label(label=" ", xalign=0.0)
    notice = Gtk.Label(xalign=0.0, wrap=True)  # what the engine wants the designer to know (no GPU ...)
    notice.set_no_show_all(True)
    buttons = Gtk.Box(spacing=6)
    cancel = Gtk.Button(label="Cancel")
    keep = Gtk.Button(label="Keep current sketch")
    keep.set_sensitive(False)  # nothing to keep before the first preview
    buttons.pack_end(keep, False, False, 0)
    buttons.pack_end(cancel, False, False, 0)
    for widget in (heading, status, bar, detail, notice, buttons):
        box.pack_start(widget, False, False, 0)

    def finish(failure=None):
        if failure is not None and state["failure"] is None:
            state["failure"] = failure
        if state["engine"] is not None:
            state["engine"].stop()
            state["engine"] = None
        Gtk.main_quit()
        return False

    def on_cancel(*_):
        status.set_text("Cancelling\u2026")
        cancel.set_sensitive(False)
        keep.set_sensitive(False)
        while Gtk.events_pending():  # show that before stopping the engine (up to a few seconds)
            Gtk.main_iteration()
        finish(engine_run.EngineCancelled("Cancelled: the document was not changed."))
        return True  # for delete-event: we close the window ourselves

    def on_keep(*_):
        status.set_text("Keeping the current sketch\u2026")
        keep.set_sensitive(False)
        state["kept"] = True
        if state["engine"] is not None:
            state["engine"].finish_early()

    def tick():
        engine = state["engine"]
        if engine is None:
            return False
        for event in engine.drain():
            kind = event["event"]
            if kind == wire.STATUS:
                status.set_text(str(event.get("message", "")))
            elif kind == wire.NOTICE:  # issue 8 item 7: shown, not dropped
                notice.set_markup(f"<i>{GLib.markup_escape_text(str(event.get('message', '')))}</i>")
                notice.show()
            elif kind == wire.START:
                status.set_text(f"Running on {event.get('device', '?')}, preset {event.get('preset', '?')}")
            elif kind == wire.PROGRESS:
                fraction, text = engine_run.describe_progress(event)
                bar.set_fraction(fraction)
                bar.set_text(f"{int(round(100 * fraction))} %")
                status.set_text("Drawing")
                detail.set_text(text)
            elif kind == wire.PREVIEW and not state["kept"]:
                keep.set_sensitive(True)
        if engine.stalled(stall_timeout_s):
            return finish(engine_run.EngineFailed(
                f"The CLIPasso engine gave no sign of progress for "
                f"{engine_run.format_duration(stall_timeout_s)} and was stopped; the details are in {log_path}"))
        if not engine.finished:
            return True
        try:
            state["results"] = engine.outcome(log_path)
        except engine_run.EngineFailed as failure:
            return finish(failure)
        return finish()

    cancel.connect("clicked", on_cancel)
    keep.connect("clicked", on_keep)
    window.connect("delete-event", on_cancel)
    try:
        state["engine"] = start(command)
    except engine_run.EngineFailed:
        window.destroy()
        raise
    window.show_all()
    GLib.timeout_add(POLL_MS, tick)
    if on_shown is not None:
        on_shown(window, cancel, keep)
    try:
        Gtk.main()
    finally:
        if state["engine"] is not None:
            state["engine"].stop()
        window.destroy()
        while Gtk.events_pending():
            Gtk.main_iteration()
    if state["failure"] is not None:
        raise state["failure"]
    return state["results"]
