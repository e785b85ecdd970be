"""The extension's own progress window (GTK 3 through gi): a bar, the iteration, the loss, the
time left and a Cancel that works. Inkscape's own "working" dialog cannot cancel (INKSCAPE.md),
and its UI is frozen while the script runs, so this window is the only way to stop a long run.

The window runs one GTK main loop over all the engine runs of one Apply (several images, several
stroke counts); a GLib timeout drains each EngineProcess's event queue ten times a second.
Cancel, or closing the window, stops the engine (stdin, SIGTERM, SIGKILL: EngineProcess.stop).
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


def run_with_window(jobs, start, log_path, stall_timeout_s=engine_run.STALL_TIMEOUT_S, on_shown=None):
    """jobs: list of (title, command); start(command) -> EngineProcess.
    Returns the result events in job order, or raises EngineFailed / EngineCancelled.
    on_shown(window, cancel_button) is called once the window is up (tests drive it with that)."""
    import gi
    gi.require_version("Gtk", "3.0")
    from gi.repository import GLib, Gtk

    state = {"index": 0, "engine": None, "results": [], "failure": None}

    window = Gtk.Window(title="CLIPasso Sketch")
    window.set_default_size(440, -1)
    window.set_border_width(14)
    window.set_keep_above(True)
    window.set_position(Gtk.WindowPosition.CENTER)
    box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
    window.add(box)
    heading = Gtk.Label(xalign=0.0)
    status = Gtk.Label(label="Starting the engine\u2026", xalign=0.0)
    bar = Gtk.ProgressBar(show_text=True)
    detail = Gtk.Label(label=" ", xalign=0.0)
    notice = Gtk.Label(xalign=0.0, wrap=True)  # what the engine wants the designer to know (no GPU ...)
    notice.set_no_show_all(True)
    buttons = Gtk.Box(spacing=6)
    cancel = Gtk.Button(label="Cancel")
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

    def start_next():
        title, command = jobs[state["index"]]
        heading.set_markup(f"<b>{GLib.markup_escape_text(title)}</b>  ({state['index'] + 1} of {len(jobs)})")
        status.set_text("Starting the engine\u2026")
        bar.set_fraction(0.0)
        bar.set_text("")
        detail.set_text(" ")
        state["engine"] = start(command)

    def on_cancel(*_):
        status.set_text("Cancelling\u2026")
        cancel.set_sensitive(False)
        while Gtk.events_pending():  # show that before stopping the engine (up to a few seconds)
            Gtk.main_iteration()
        finish(engine_run.EngineCancelled("Cancelled: the document was not changed."))
        return True  # for delete-event: we close the window ourselves

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
        if engine.stalled(stall_timeout_s):
            return finish(engine_run.EngineFailed(
                f"The CLIPasso engine gave no sign of progress for "
                f"{engine_run.format_duration(stall_timeout_s)} and was stopped; the details are in {log_path}"))
        if not engine.finished:
            return True
        try:
            state["results"].append(engine.outcome(log_path))
        except engine_run.EngineFailed as failure:
            return finish(failure)
        engine.stop()
        state["engine"] = None
        state["index"] += 1
        if state["index"] == len(jobs):
            return finish()
        try:
            start_next()
        except engine_run.EngineFailed as failure:
            return finish(failure)
        return True

    cancel.connect("clicked", on_cancel)
    window.connect("delete-event", on_cancel)
    try:
        start_next()
    except engine_run.EngineFailed:
        window.destroy()
        raise
    window.show_all()
    GLib.timeout_add(POLL_MS, tick)
    if on_shown is not None:
        on_shown(window, cancel)
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
