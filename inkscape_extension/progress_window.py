"""The extension's own progress window (GTK 3 through gi): a bar, the iteration, the loss, the
time left and a Cancel that works. Inkscape's own "working" dialog cannot cancel (INKSCAPE.md),
and its UI is frozen while the script runs, so this window is the only way to stop a long run.

One engine process serves one Apply (every image and stroke count); a GLib timeout drains its
event queue ten times a second. The window is as large as its content and stays centred on the
screen: the drawings (square) shrink, and go into more columns, until the whole window fits the
monitor's work area (at any GDK_SCALE); past the smallest size the drawings scroll. Cancel, or
closing the window, stops the engine (stdin, SIGTERM, SIGKILL: EngineProcess.stop); Keep current
sketch sends the wire's finish command, after which the engine returns normal results holding its
best strokes so far.
"""

import os
import sys

import batch_mode
import engine_run
from engine_run import wire

POLL_MS = 100
THUMB_PX = 150      # one square drawing per job (image x stroke count), at most this large ...
MIN_THUMB_PX = 64   # ... and at least this (smaller says nothing): then the drawings scroll
SPACING = 8         # between drawings
SCREEN_SHARE = 0.9  # the window takes at most this share of the work area (room for a title bar)
TEXT_CHARS = 48     # labels wrap at about this many characters: the text never widens the window
PHOTO_ALPHA = 0.35  # the photo faded, so the black strokes read clearly over it


def gallery_layout(jobs, width, height, caption_px):
    """-> (columns, side): the largest square drawings (side px, at most THUMB_PX, at least
    MIN_THUMB_PX) and the columns that lay `jobs` of them, each with a caption caption_px tall,
    into width x height px. Fewest rows among equals: screens are wider than tall."""
    jobs = max(1, jobs)
    best_columns, best_side = 1, 0
    for columns in range(1, jobs + 1):
        rows = -(-jobs // columns)
        side = int(min((width - (columns - 1) * SPACING) / columns,
                       (height - (rows - 1) * SPACING) / rows - caption_px, THUMB_PX))
        if side >= best_side:
            best_columns, best_side = columns, side
    if best_side >= MIN_THUMB_PX:
        return best_columns, best_side
    # too many to show at once: the smallest drawings, as many per row as fit; the rest scrolls
    return max(1, min(jobs, int((width + SPACING) // (MIN_THUMB_PX + SPACING)))), MIN_THUMB_PX


def available():
    """True when a window can be shown: a display (on Linux) and GTK 3 through gi, and someone to
    see it (not Inkscape's --batch-process, where a window would only wait: batch_mode.py)."""
    if os.environ.get("CLIPASSO_NO_WINDOW") or batch_mode.active():
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


def can_draw():
    """Drawing in a Gtk.DrawingArea needs pycairo (Debian: python3-gi-cairo, not pulled in by
    inkscape). Without it the window still works, without the drawings (a failing draw handler
    would print to stderr, which Inkscape shows as an error)."""
    try:
        import gi
        gi.require_foreign("cairo")
        return True
    except Exception:
        return False


def draw_sketch(cr, pixbuf, sketch, size):
    """A size x size drawing: the photo (faded) and, when there is a preview, its strokes mapped
    canvas px -> image px (the engine's canvas_to_image) -> the thumbnail, centred."""
    from gi.repository import Gdk
    cr.set_source_rgb(1, 1, 1)
    cr.paint()
    if sketch is not None:
        image_w, image_h = (float(v) for v in sketch["image_size"])
    elif pixbuf is not None:
        image_w, image_h = float(pixbuf.get_width()), float(pixbuf.get_height())
    else:
        return
    scale = size / max(image_w, image_h)
    left, top = (size - image_w * scale) / 2, (size - image_h * scale) / 2
    if pixbuf is not None:
        cr.save()
        cr.translate(left, top)
        cr.scale(image_w * scale / pixbuf.get_width(), image_h * scale / pixbuf.get_height())
        Gdk.cairo_set_source_pixbuf(cr, pixbuf, 0, 0)
        cr.paint_with_alpha(PHOTO_ALPHA)
        cr.restore()
    if sketch is None:
        return
    a, b, c, d, e, f = (float(v) for v in sketch["canvas_to_image"])

    def to_thumb(point):
        x, y = float(point[0]), float(point[1])
        return left + scale * (a * x + c * y + e), top + scale * (b * x + d * y + f)

    cr.set_source_rgb(0, 0, 0)
    cr.set_line_width(1.4)
    cr.set_line_cap(1)  # round
    for stroke in sketch.get("points") or ():
        p0, p1, p2, p3 = (to_thumb(point) for point in stroke)
        cr.move_to(*p0)
        cr.curve_to(*p1, *p2, *p3)
        cr.stroke()


def run_with_window(title, command, start, log_path, stall_timeout_s=engine_run.STALL_TIMEOUT_S, on_shown=None,
                    image_paths=()):
    """One engine run (every image and stroke count of one Apply); start(command) -> EngineProcess.
    Returns the result events in job order, or raises EngineFailed / EngineCancelled.
    Keep current sketch asks the engine to finish now: its results are then the best so far.
    image_paths[i]: the file of image i, for the drawings' faded background.
    on_shown(window, cancel_button, keep_button) is called once the window is up (tests drive it)."""
    import gi
    gi.require_version("Gtk", "3.0")
    gi.require_version("GdkPixbuf", "2.0")
    from gi.repository import GdkPixbuf, GLib, Gtk

    def load_thumbnail(path):
        try:
            return GdkPixbuf.Pixbuf.new_from_file_at_scale(path, THUMB_PX, THUMB_PX, True)
        except (GLib.Error, TypeError):  # a format GdkPixbuf lacks: strokes on white still show
            return None

    drawing = can_draw()
    pixbufs = {index: load_thumbnail(path) for index, path in enumerate(image_paths)} if drawing else {}
    previews = {}   # job -> its latest preview sketch
    drawings = {}   # job -> its Gtk.DrawingArea
    gallery = Gtk.FlowBox(selection_mode=Gtk.SelectionMode.NONE, max_children_per_line=4,
                          column_spacing=SPACING, row_spacing=SPACING, homogeneous=True)
    scroller = Gtk.ScrolledWindow(hscrollbar_policy=Gtk.PolicyType.NEVER,
                                  vscrollbar_policy=Gtk.PolicyType.AUTOMATIC)
    scroller.set_propagate_natural_width(True)   # as large as the drawings, up to the screen
    scroller.set_propagate_natural_height(True)
    scroller.add(gallery)
    layout = {"side": THUMB_PX}

    def work_area():
        """(width, height) the window may take, in GTK's (scaled) pixels."""
        display = window.get_display()
        monitor = (display.get_monitor_at_window(window.get_window()) if window.get_window() is not None
                   else None) or display.get_primary_monitor() or display.get_monitor(0)
        area = monitor.get_workarea()
        return area.width * SCREEN_SHARE, area.height * SCREEN_SHARE

    def plan_gallery(jobs):
        """Drawing size and columns for `jobs` drawings: what the screen leaves beside the rest."""
        width, height = work_area()
        border = 2 * window.get_border_width()
        # the natural height of everything else (the empty gallery's own height left out)
        rest = window.get_preferred_size()[1].height - scroller.get_preferred_size()[1].height
        notice_lines = 0 if notice.get_visible() else 2 * heading.get_preferred_height()[1]
        caption_px = heading.get_preferred_height()[1] + 2
        columns, side = gallery_layout(jobs, width - border, height - rest - notice_lines - SPACING, caption_px)
        layout["side"] = side
        gallery.set_min_children_per_line(columns)
        gallery.set_max_children_per_line(columns)
        scroller.set_max_content_height(max(side + caption_px, int(height - rest - notice_lines - SPACING)))

    def add_drawing(job):
        if not drawing:
            return
        side = layout["side"]
        area = Gtk.DrawingArea(halign=Gtk.Align.CENTER, valign=Gtk.Align.START)  # never stretched: square
        area.set_size_request(side, side)
        area.connect("draw", lambda widget, cr: draw_sketch(
            cr, pixbufs.get(job["image"]), previews.get(job["job"]),
            min(widget.get_allocated_width(), widget.get_allocated_height())))
        caption = Gtk.Label(label=f"{job.get('name') or ''}: {job.get('strokes', '?')} strokes", xalign=0.5)
        caption.set_ellipsize(3)  # end
        caption.set_max_width_chars(max(4, side // 9))   # no wider than the drawing, roughly
        cell = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
        cell.pack_start(area, False, False, 0)
        cell.pack_start(caption, False, False, 0)
        gallery.add(cell)
        cell.show_all()
        drawings[job["job"]] = area
        if not layout.get("fitting"):  # once per batch of new drawings, when GTK has measured them
            layout["fitting"] = GLib.idle_add(fit_to_content)

    def fit_to_content():
        """A shown GTK window grows only to its minimum size: take the natural one (the drawings
        whole, up to the scroller's limit), and CENTER_ALWAYS puts it back in the middle."""
        layout["fitting"] = None
        natural = window.get_preferred_size()[1]
        window.resize(natural.width, natural.height)
        return False

    state = {"engine": None, "results": None, "failure": None, "kept": False}

    window = Gtk.Window(title="CLIPasso Sketch")  # sized by its content (issue 16 item 4)
    window.set_border_width(14)
    window.set_keep_above(True)
    window.set_position(Gtk.WindowPosition.CENTER_ALWAYS)  # centred again when the drawings arrive
    box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
    window.add(box)
    heading = Gtk.Label(xalign=0.0, ellipsize=3, max_width_chars=TEXT_CHARS)
    heading.set_markup(f"<b>{GLib.markup_escape_text(title)}</b>")
    # the phase, then the iteration, loss and time left: one line, so the drawings get the room
    status = Gtk.Label(label="Starting the engine\u2026", xalign=0.0, wrap=True, max_width_chars=TEXT_CHARS)
    bar = Gtk.ProgressBar(show_text=True)
    # what the engine wants the designer to know (no GPU ...)
    notice = Gtk.Label(xalign=0.0, wrap=True, max_width_chars=TEXT_CHARS)
    notice.set_no_show_all(True)
    buttons = Gtk.Box(spacing=6)
    cancel = Gtk.Button(label="Cancel")
    keep = Gtk.Button(label="Keep current sketch")
    keep.set_sensitive(False)  # nothing to keep before the first preview
    buttons.pack_end(keep, False, False, 0)
    buttons.pack_end(cancel, False, False, 0)
    for widget in (heading, scroller, status, bar, notice, buttons):
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
                if not drawings:
                    plan_gallery(len(event.get("jobs") or ()))
                for job in event.get("jobs") or ():
                    if job.get("job") not in drawings:
                        add_drawing(job)
                status.set_text(f"Running on {event.get('device', '?')}, preset {event.get('preset', '?')}")
            elif kind == wire.PROGRESS:
                fraction, text = engine_run.describe_progress(event)
                bar.set_fraction(fraction)
                bar.set_text(f"{int(round(100 * fraction))} %")
                status.set_text(text)
            elif kind == wire.PREVIEW:
                for sketch in event.get("sketches") or ():
                    if sketch.get("job") not in drawings:
                        add_drawing(sketch)
                    previews[sketch["job"]] = sketch
                    if sketch["job"] in drawings:
                        drawings[sketch["job"]].queue_draw()
                if not state["kept"]:
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
