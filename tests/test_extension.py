"""The Inkscape extension, without Inkscape: golden files of the inserted layers (placement under
every kind of transform / preserveAspectRatio / units), the .inx, every error path, the engine
command, the placement arithmetic and the process handling (cancel leaves nothing behind).

The engine is tests/engine_double.py (known strokes, stdlib only) behind a wrapper script named by
CLIPASSO_ENGINE_PYTHON. Golden files: tests/data/extension/refs; regenerate with EXPORT_COMPARE=3.
"""

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
import unittest

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "inkscape_extension"))

import inkex  # noqa: E402
from inkex.tester import ComparisonMixin, TestCase  # noqa: E402
from inkex.tester.inx import InxMixin  # noqa: E402

import clipasso_sketch  # noqa: E402
import engine_run  # noqa: E402
import placement  # noqa: E402
import progress_window  # noqa: E402
import raster_size  # noqa: E402
from clipasso_sketch import ClipassoSketch  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="engine wrapper is a shell script")

DATA = os.path.join(REPO, "tests", "data", "extension")
DOUBLE = os.path.join(REPO, "tests", "engine_double.py")
ENV_KEYS = ("CLIPASSO_ENGINE_PYTHON", "CLIPASSO_NO_WINDOW", "ENGINE_DOUBLE_MODE", "ENGINE_DOUBLE_RECORD",
            "ENGINE_DOUBLE_PIDS", "CLIPASSO_STALL_TIMEOUT", "DOCUMENT_PATH", "PYTHONPATH")


def make_engine_wrapper(folder, python=sys.executable):
    """An 'engine python' that runs the engine double whatever the arguments."""
    path = os.path.join(folder, "engine-python")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f'#!/bin/sh\nexec "{python}" "{DOUBLE}" "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class DoubleEngineMixin:
    """Points the extension at the engine double, with no window and the log in a temp dir."""

    @classmethod
    def datadir(cls):
        return DATA

    def setUp(self):
        super().setUp()
        self._saved_env = {key: os.environ.get(key) for key in ENV_KEYS}
        self._saved_tempdir = tempfile.tempdir
        self._saved_config_path = clipasso_sketch.config_path
        for key in ENV_KEYS:
            os.environ.pop(key, None)
        os.environ["CLIPASSO_ENGINE_PYTHON"] = make_engine_wrapper(self.tempdir)
        os.environ["CLIPASSO_NO_WINDOW"] = "1"
        self.record = os.path.join(self.tempdir, "record.jsonl")
        os.environ["ENGINE_DOUBLE_RECORD"] = self.record
        tempfile.tempdir = self.tempdir
        self.log_path = os.path.join(self.tempdir, clipasso_sketch.LOG_NAME)
        # never pick up a clipasso_engine.json lying in the checkout
        clipasso_sketch.config_path = lambda: os.path.join(self.tempdir, "no-config", "clipasso_engine.json")

    def tearDown(self):
        clipasso_sketch.config_path = self._saved_config_path
        tempfile.tempdir = self._saved_tempdir
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        super().tearDown()

    def run_extension(self, *args, document="placement.svg"):
        """-> (exit status or None, stderr text, output bytes, input bytes)."""
        infile = os.path.join(DATA, document)
        output, errors = io.BytesIO(), io.StringIO()
        status = None
        with contextlib.redirect_stderr(errors):
            try:
                ClipassoSketch().run([infile, *args], output=output)
            except SystemExit as exit_:
                status = exit_.code
        with open(infile, "rb") as handle:
            original = handle.read()
        return status, errors.getvalue(), output.getvalue(), original

    def linked(self, href):
        """Run on a one-image document linking to href."""
        infile = os.path.join(self.tempdir, "sub", "linked.svg")
        os.makedirs(os.path.dirname(infile), exist_ok=True)
        with open(infile, "w", encoding="utf-8") as handle:
            handle.write('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                         'width="100" height="100"><image id="im" width="40" height="20" '
                         f'xlink:href="{href}"/></svg>')
        return self.run_extension("--id=im", "--strokes=1", document=infile)

    def recorded(self):
        with open(self.record, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


# --- golden files -----------------------------------------------------------------------------
class TestPlacementGolden(DoubleEngineMixin, ComparisonMixin, TestCase):
    """One run per placement case; the double's stroke 1 runs through the canvas corners."""
    effect_class = ClipassoSketch
    compare_file = "placement.svg"
    comparisons = [
        ("--id=plain", "--strokes=3"),
        ("--id=meet_mid", "--strokes=3"),
        ("--id=align_xMinYMax_meet", "--strokes=3"),
        ("--id=slice_xMaxYMin", "--strokes=3"),
        ("--id=stretch_none", "--strokes=3"),
        ("--id=rotated", "--strokes=3"),
        ("--id=skewed", "--strokes=3"),
        ("--id=autosize", "--strokes=3"),
        ("--id=units_mm", "--strokes=3"),
        ("--id=embedded", "--strokes=3"),
        ("--id=nested", "--strokes=3"),
        ("--id=toplevel", "--strokes=3"),
        ("--id=topgroup", "--strokes=3"),
        # several images x several levels, colour (red, half transparent) and layer name
        ("--id=plain", "--id=rect1", "--id=rotated", "--strokes=2, 4", "--stroke_color=4278190208",
         "--layer_name=Sketch"),
    ]


class TestVisibleGolden(DoubleEngineMixin, ComparisonMixin, TestCase):
    """Only the part that shows is sketched (--crop); the clipPaths' own attributes stay as written."""
    effect_class = ClipassoSketch
    compare_file = "visible.svg"
    comparisons = [("--id=slice_mid", "--strokes=3"), ("--id=in_clipped_group", "--strokes=3")]


class TestMillimetreGolden(DoubleEngineMixin, ComparisonMixin, TestCase):
    effect_class = ClipassoSketch
    compare_file = "mm.svg"
    comparisons = [("--id=photo", "--strokes=4")]


# --- the same bytes under Debian's inkex 1.2, run as Inkscape runs the script ----------------------
SYSTEM_PYTHON = "/usr/bin/python3"
INKSCAPE_EXTENSIONS = "/usr/share/inkscape/extensions"
HAVE_INKEX_12 = os.path.isfile(os.path.join(INKSCAPE_EXTENSIONS, "inkex", "__init__.py")) and \
    os.access(SYSTEM_PYTHON, os.X_OK)


@unittest.skipUnless(HAVE_INKEX_12, "needs Inkscape's own inkex (Debian: apt install inkscape)")
class TestInkex12(DoubleEngineMixin, TestCase):
    """The script as Inkscape starts it: its folder as cwd, Inkscape's extensions on PYTHONPATH,
    the document as the last argument, the new document on stdout. Output must equal the goldens
    written under inkex 1.4, byte for byte."""
    effect_class = ClipassoSketch  # names the golden files, as in the comparison tests
    CASES = [(("--id=rotated", "--strokes=3"), "placement.svg"),
             (("--id=skewed", "--strokes=3"), "placement.svg"),
             (("--id=nested", "--strokes=3"), "placement.svg"),
             (("--id=embedded", "--strokes=3"), "placement.svg"),
             (("--id=plain", "--id=rect1", "--id=rotated", "--strokes=2, 4", "--stroke_color=4278190208",
               "--layer_name=Sketch"), "placement.svg"),
             (("--id=photo", "--strokes=4"), "mm.svg"),
             (("--id=in_clipped_group", "--strokes=3"), "visible.svg")]  # clip bounds through inkex 1.2

    def run_script(self, args, document):
        import subprocess
        env = dict(os.environ, PYTHONPATH=INKSCAPE_EXTENSIONS,
                   CLIPASSO_ENGINE_PYTHON=make_engine_wrapper(self.tempdir, SYSTEM_PYTHON),
                   TMPDIR=self.tempdir)
        return subprocess.run([SYSTEM_PYTHON, "clipasso_sketch.py", *args, os.path.join(DATA, document)],
                              cwd=os.path.join(REPO, "inkscape_extension"), env=env,
                              capture_output=True, timeout=60)

    def test_id_with_double_quote_under_inkex_12(self):
        """Issue 8 item 14: inkex 1.2's own selection lookup fails on such an id; the image is still
        found and sketched."""
        infile = os.path.join(self.tempdir, "quote.svg")
        with open(infile, "w", encoding="utf-8") as handle:
            handle.write('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                         'width="100" height="100"><image id="my&quot;photo" width="40" height="20" '
                         f'xlink:href="{os.path.join(DATA, "photo_40x20.png")}"/></svg>')
        done = self.run_script(('--id=my"photo', "--strokes=2"), infile)
        self.assertEqual(done.stderr, b"")
        self.assertIn(b"clipasso-my_photo-2-stroke-2", done.stdout)

    def test_goldens_under_inkex_12(self):
        for args, document in self.CASES:
            with self.subTest(args=args):
                done = self.run_script(args, document)
                self.assertEqual(done.stderr, b"")
                self.assertEqual(done.returncode, 0)
                with open(ComparisonMixin.get_compare_cmpfile(self, args), "rb") as handle:
                    self.assertEqual(done.stdout, handle.read())

    def test_selected_paths_under_inkex_12(self):
        """Keep them and add strokes under inkex 1.2: the same start file (the paths' data made
        absolute, their transforms composed) and the same document as under inkex 1.4."""
        sketched = os.path.join(self.tempdir, "sketched.svg")
        done = self.run_script(("--id=photo", "--strokes=3"), "refine_mm.svg")
        with open(sketched, "wb") as handle:
            handle.write(done.stdout.replace(b'xlink:href="photo_40x20.png"',
                                             ('xlink:href="%s"' % os.path.join(DATA, "photo_40x20.png")).encode()))
        args = ("--id=photo", "--id=clipasso-layer-photo-3", "--id=hand", "--id=hand_clone", "--strokes=2",
                "--selected_paths=keep")
        done = self.run_script(args, sketched)
        self.assertEqual(done.stderr, b"")
        self.assertEqual(done.returncode, 0)
        status, errors, output, _ = self.run_extension(*args, document=sketched)
        self.assertIsNone(status, errors)
        self.assertEqual(done.stdout, output)
        first, second = [record["start_files"][0]["text"] for record in self.recorded()[-2:]]
        self.assertEqual(first, second)
        self.assertEqual(first.count("<path"), 5)

    def test_error_under_inkex_12(self):
        os.environ["ENGINE_DOUBLE_MODE"] = "crash"
        done = self.run_script(("--id=plain",), "placement.svg")
        self.assertEqual(done.stdout, b"")
        self.assertIn(b"stopped unexpectedly", done.stderr)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1)


# --- the GTK progress window, under Xvfb with the system Python's gi ------------------------------
WINDOW_SCRIPT = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import gi
gi.require_version("Gtk", "3.0")
import engine_run, progress_window
from gi.repository import GLib, Gtk
folder, double, photo, how = sys.argv[2:6]
log = open(os.path.join(folder, "log"), "wb")
def command(mode):
    return ["env", "ENGINE_DOUBLE_MODE=" + mode, sys.executable, double, "sketch", photo, photo,
            "-o", os.path.join(folder, "out"), "--strokes", "2,3"]
started = []
def start(cmd):
    started.append(engine_run.EngineProcess(cmd, log))
    return started[-1]
seen_texts = set()
keep_states = []
def visible_texts(widget):
    if isinstance(widget, Gtk.Label) and widget.get_visible():
        seen_texts.add(widget.get_text())
    if isinstance(widget, Gtk.Container):
        for child in widget.get_children():
            visible_texts(child)
dark_pixels = []
def drawings_dark_pixels(window):
    import cairo  # only the keep test needs it (skipped without python3-gi-cairo)
    # each DrawingArea rendered off-screen; black stroke pixels (the faded photo is never this dark)
    counts = []
    def walk(widget):
        if isinstance(widget, Gtk.DrawingArea):
            surface = cairo.ImageSurface(cairo.FORMAT_RGB24, progress_window.THUMB_PX, progress_window.THUMB_PX)
            widget.draw(cairo.Context(surface))
            data = bytes(surface.get_data())
            counts.append(sum(1 for i in range(0, len(data), 4) if data[i + 1] < 60))
            if how == "keep" and not os.path.exists(os.path.join(folder, "drawing.png")):
                surface.write_to_png(os.path.join(folder, "drawing.png"))
        if isinstance(widget, Gtk.Container):
            for child in widget.get_children():
                walk(child)
    walk(window)
    dark_pixels.append(counts)
def shown(window, cancel, keep):
    keep_states.append(keep.get_sensitive())
    if how == "keep":
        drawings_dark_pixels(window)
    def look():
        visible_texts(window)
        return True
    GLib.timeout_add(20, look)
    if how == "button":
        GLib.timeout_add(700, lambda: cancel.clicked() and False)
    elif how == "close":
        GLib.timeout_add(700, lambda: window.close() and False)
    elif how == "keep":
        def click():
            keep_states.append(keep.get_sensitive())
            drawings_dark_pixels(window)
            keep.clicked()
            return False
        GLib.timeout_add(700, click)
report = {"available": progress_window.available()}
try:
    results = progress_window.run_with_window("two images", command("ok" if how == "none" else "hang"),
                                              start, "LOG", on_shown=shown, image_paths=[photo, photo])
    report["results"] = [[r["image"], r["strokes"], r["finished_early"]] for r in results]
except engine_run.EngineFailed as failure:
    report["failure"] = type(failure).__name__
report["exit_codes"] = [e.process.poll() for e in started]
report["texts"] = sorted(seen_texts)
report["keep_states"] = keep_states
report["dark_pixels"] = dark_pixels
print(json.dumps(report))
"""


def system_gtk_available():
    import shutil
    import subprocess
    if not (shutil.which("xvfb-run") and os.access(SYSTEM_PYTHON, os.X_OK)):
        return False
    probe = "import gi; gi.require_version('Gtk', '3.0'); from gi.repository import Gtk"
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


@unittest.skipUnless(system_gtk_available(), "needs xvfb-run and GTK 3 for the system Python")
class TestProgressWindow(unittest.TestCase):
    def run_window(self, how):
        import subprocess
        import shutil
        folder = tempfile.mkdtemp(prefix="clipasso-window-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = os.path.join(folder, "window.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(WINDOW_SCRIPT)
        env = {k: v for k, v in os.environ.items() if k not in ("CLIPASSO_NO_WINDOW", "DISPLAY")}
        done = subprocess.run(["xvfb-run", "-a", SYSTEM_PYTHON, script, os.path.join(REPO, "inkscape_extension"),
                               folder, DOUBLE, os.path.join(DATA, "photo_40x20.png"), how],
                              capture_output=True, timeout=120, env=env)
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    def test_one_engine_for_every_job(self):
        report = self.run_window("none")
        self.assertTrue(report["available"])
        self.assertEqual(report["results"], [[0, 2, False], [0, 3, False], [1, 2, False], [1, 3, False]])
        self.assertEqual(report["exit_codes"], [0])

    def test_keep_returns_the_current_sketches(self):
        import subprocess
        if subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_foreign('cairo')"]).returncode:
            self.skipTest("drawing needs pycairo for the system Python (Debian: python3-gi-cairo)")
        report = self.run_window("keep")
        self.assertEqual(report["keep_states"], [False, True], "Keep waits for the first preview")
        # the window draws: before any preview no drawing (nor any stroke pixel), then one drawing per
        # job (2 images x 2 levels), each showing the previewed strokes
        before, during = report["dark_pixels"]
        self.assertEqual(sum(before), 0)
        self.assertEqual(len(during), 4)
        self.assertTrue(all(count > 20 for count in during), during)
        self.assertEqual(report["results"], [[0, 2, True], [0, 3, True], [1, 2, True], [1, 3, True]])
        self.assertEqual(report["exit_codes"], [0])
        # the engine's notice is shown to the designer (issue 8 item 7)
        self.assertIn("No GPU found: running on the CPU.", report["texts"])

    def test_cancel_button_stops_the_engine(self):
        report = self.run_window("button")
        self.assertEqual(report.get("failure"), "EngineCancelled")
        self.assertEqual(len(report["exit_codes"]), 1)
        self.assertIsNotNone(report["exit_codes"][0], "engine still running after Cancel")

    def test_closing_the_window_cancels(self):
        report = self.run_window("close")
        self.assertEqual(report.get("failure"), "EngineCancelled")
        self.assertIsNotNone(report["exit_codes"][0])


GEOMETRY_SCRIPT = r"""
import json, os, re, subprocess, sys
sys.path.insert(0, sys.argv[1])
import gi
gi.require_version("Gtk", "3.0")
import engine_run, progress_window
from gi.repository import GLib, Gtk
folder, double, photo, images, levels = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
log = open(os.path.join(folder, "log"), "wb")
command = ["env", "ENGINE_DOUBLE_MODE=hang", sys.executable, double, "sketch", *([photo] * images),
           "-o", os.path.join(folder, "out"), "--strokes", levels]
title = " + ".join(["a photo with a rather long file name.png"] * images) + ": " + levels + " strokes"
report = {}
def box(widget, window):
    x, y = widget.translate_coordinates(window, 0, 0)
    return [x, y, widget.get_allocated_width(), widget.get_allocated_height()]
def measure(window, cancel, keep):
    report["window"] = list(window.get_size())
    report["scale"] = window.get_scale_factor()
    report["buttons"] = [box(b, window) for b in (cancel, keep)]
    areas = []
    def walk(w):
        if isinstance(w, Gtk.DrawingArea):
            areas.append(box(w, window))
        if isinstance(w, Gtk.Container):
            for c in w.get_children():
                walk(c)
    walk(window)
    report["drawings"] = areas
    # what the X server says: the real window, in device pixels
    text = subprocess.run(["xwininfo", "-name", "CLIPasso Sketch"], capture_output=True, text=True).stdout
    report["x11"] = [int(re.search(k + r":\s+(-?\d+)", text).group(1)) for k in
                     ("Absolute upper-left X", "Absolute upper-left Y", "Width", "Height")]
    text = subprocess.run(["xwininfo", "-root"], capture_output=True, text=True).stdout
    report["screen"] = [int(re.search(k + r":\s+(\d+)", text).group(1)) for k in ("Width", "Height")]
    cancel.clicked()
    return False
shown = lambda window, cancel, keep: GLib.timeout_add(2500, lambda: measure(window, cancel, keep))
try:
    progress_window.run_with_window(title, command, lambda c: engine_run.EngineProcess(c, log), "LOG",
                                    on_shown=shown, image_paths=[photo] * images)
except engine_run.EngineCancelled:
    pass
print(json.dumps(report))
"""


def window_fits(test, report, jobs):
    """The real window (X11 geometry) lies on the screen, every button lies inside it, and there is
    one square drawing per job (issue 16 item 4)."""
    x, y, width, height = report["x11"]
    screen_w, screen_h = report["screen"]
    test.assertTrue(0 <= x and 0 <= y and x + width <= screen_w and y + height <= screen_h, report)
    scale = report["scale"]
    test.assertEqual([width, height], [scale * v for v in report["window"]], "GTK and X agree on the size")
    for bx, by, bw, bh in report["buttons"]:
        test.assertTrue(bw > 20 and bh > 10 and 0 <= bx and bx + bw <= report["window"][0]
                        and 0 <= by and by + bh <= report["window"][1], report)
    test.assertEqual(len(report["drawings"]), jobs)
    for _, _, dw, dh in report["drawings"]:
        test.assertEqual(dw, dh, report)
        test.assertGreaterEqual(dw, progress_window.MIN_THUMB_PX)


@unittest.skipUnless(system_gtk_available() and shutil.which("xwininfo"),
                     "needs xvfb-run, GTK 3 for the system Python and xwininfo (apt: x11-utils)")
class TestProgressWindowGeometry(unittest.TestCase):
    """The window on a 1024 x 768 screen, measured by the X server, at GDK_SCALE 1 and 2; with the
    old fixed layout 1 image x 3 levels (2x) and 2 x 3 (1x) ran off the bottom of the screen."""

    def measure(self, images, levels, scale):
        import subprocess
        folder = tempfile.mkdtemp(prefix="clipasso-geometry-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = os.path.join(folder, "geometry.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(GEOMETRY_SCRIPT)
        env = {k: v for k, v in os.environ.items() if k not in ("CLIPASSO_NO_WINDOW", "DISPLAY")}
        env["GDK_SCALE"] = str(scale)
        done = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1024x768x24", SYSTEM_PYTHON, script,
                               os.path.join(REPO, "inkscape_extension"), folder, DOUBLE,
                               os.path.join(DATA, "photo_40x20.png"), str(images), levels],
                              capture_output=True, timeout=120, env=env)
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    def test_fits_1024_by_768(self):
        for images, levels, scale in ((1, "16", 1), (1, "16", 2), (1, "8,16,32", 2), (2, "8,16,32", 1),
                                      (4, "4,8,16,32", 1), (4, "4,8,16,32", 2)):
            with self.subTest(images=images, levels=levels, scale=scale):
                report = self.measure(images, levels, scale)
                self.assertEqual(report["scale"], scale)
                window_fits(self, report, images * len(levels.split(",")))
                if images * len(levels.split(",")) <= 3 and scale == 1:  # room enough: full size
                    self.assertEqual(report["drawings"][0][2], progress_window.THUMB_PX)


class TestGalleryLayout(unittest.TestCase):
    def test_largest_square_that_fits(self):
        self.assertEqual(progress_window.gallery_layout(1, 900, 600, 20), (1, progress_window.THUMB_PX))
        # three across a wide, short space: side by side; and so where rows would fit too
        self.assertEqual(progress_window.gallery_layout(3, 900, 200, 20), (3, 150))
        self.assertEqual(progress_window.gallery_layout(3, 900, 600, 20), (3, 150))
        # five in a tall, narrow space: as many across as fit at full size
        self.assertEqual(progress_window.gallery_layout(5, 320, 900, 20), (2, 150))
        # six in 460 x 150 (a 1024 x 768 screen at 2x): one row of six, 70 px each
        columns, side = progress_window.gallery_layout(6, 460, 150, 20)
        self.assertEqual((columns, side), (6, int((460 - 5 * progress_window.SPACING) / 6)))

    def test_too_many_scroll_at_the_smallest_size(self):
        columns, side = progress_window.gallery_layout(100, 460, 150, 20)
        self.assertEqual(side, progress_window.MIN_THUMB_PX)
        self.assertLessEqual(columns * side + (columns - 1) * progress_window.SPACING, 460)


# --- inkscape --batch-process: no dialog, no window (issue 16 item 3) -----------------------------
FAKE_INKSCAPE = r"""
import json, subprocess, sys
# stands in for `inkscape --batch-process`: runs the script with its stderr on a pipe, as Inkscape does
child = subprocess.run(sys.argv[1:sys.argv.index("--batch-process")], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, cwd=sys.argv[-1])
print(json.dumps({"pipe": child.stderr.decode(), "stdout": len(child.stdout)}))
"""


class TestBatchMode(DoubleEngineMixin, TestCase):
    """The script run by a process whose command line says --batch-process and that reads its
    stderr through a pipe, as Inkscape does: the error sentence must reach that process's own
    stderr (the scripter's terminal) and the log, while the pipe, which Inkscape would show in a
    dialog nobody closes, stays empty; the document is not written."""

    def run_under(self, *args, mode="error"):
        import subprocess
        script = os.path.join(self.tempdir, "fake_inkscape.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(FAKE_INKSCAPE)
        env = dict(os.environ, ENGINE_DOUBLE_MODE=mode, TMPDIR=self.tempdir, PYTHONPATH="")
        env.pop("CLIPASSO_NO_WINDOW")
        effect = [sys.executable, os.path.join(REPO, "inkscape_extension", "clipasso_sketch.py"), "--id=plain",
                  *args, os.path.join(DATA, "placement.svg")]
        done = subprocess.run([sys.executable, script, *effect, "--batch-process",
                               os.path.join(REPO, "inkscape_extension")],
                              capture_output=True, env=env, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(self.log_path, encoding="utf-8") as handle:
            log = handle.read()
        return json.loads(done.stdout), done.stderr.decode(), log

    def test_error_goes_to_inkscapes_stderr_and_the_log(self):
        seen, inkscape_stderr, log = self.run_under()
        self.assertEqual(seen, {"pipe": "", "stdout": 0})
        self.assertIn("CLIPasso could not make the sketch: plain: not an image file", inkscape_stderr)
        self.assertEqual(len(inkscape_stderr.strip().splitlines()), 1, inkscape_stderr)
        self.assertIn('"code": "bad_image"', log)
        self.assertIn("== batch mode (inkscape --batch-process", log)
        self.assertIn("CLIPasso could not make the sketch: plain: not an image file", log.split("== batch mode")[1])

    def test_an_extension_error_too(self):
        seen, inkscape_stderr, log = self.run_under("--strokes=lots")
        self.assertEqual(seen["pipe"], "")
        self.assertIn("Number of strokes must be whole numbers", inkscape_stderr)
        self.assertIn("Number of strokes must be whole numbers", log)

    def test_success_says_nothing(self):
        seen, inkscape_stderr, _ = self.run_under(mode="ok")
        self.assertEqual(seen["pipe"], "")
        self.assertGreater(seen["stdout"], 0)
        self.assertEqual(inkscape_stderr, "")

    def test_interactive_inkscape_still_gets_the_sentence(self):
        """Without --batch-process (Inkscape's own window is there), stderr is Inkscape's dialog, as before."""
        import subprocess
        env = dict(os.environ, ENGINE_DOUBLE_MODE="error", TMPDIR=self.tempdir, PYTHONPATH="")
        done = subprocess.run([sys.executable, "clipasso_sketch.py", "--id=plain", os.path.join(DATA, "placement.svg")],
                              capture_output=True, env=env, timeout=60, cwd=os.path.join(REPO, "inkscape_extension"))
        self.assertIn(b"CLIPasso could not make the sketch: plain: not an image file", done.stderr)

    def test_no_progress_window_in_batch_mode(self):
        import batch_mode
        import progress_window
        os.environ.pop("CLIPASSO_NO_WINDOW")
        saved = batch_mode.inkscape_batch_pid
        batch_mode.inkscape_batch_pid = lambda: 12345
        try:
            self.assertFalse(progress_window.available())
        finally:
            batch_mode.inkscape_batch_pid = saved
        self.assertFalse(batch_mode.active(), "pytest is no inkscape --batch-process")


# --- the .inx ---------------------------------------------------------------------------------
class TestInx(InxMixin, TestCase):
    def test_inx_file(self):
        cwd = os.getcwd()
        os.chdir(REPO)  # the .inx names its script relative to its own folder
        try:
            self.assertInxIsGood("clipasso.inx")
        finally:
            os.chdir(cwd)

    def test_inx_contract(self):
        from lxml import etree
        ns = {"i": "http://www.inkscape.org/namespace/inkscape/extension"}
        inx = etree.parse(os.path.join(REPO, "clipasso.inx"))
        self.assertEqual(inx.findtext("i:id", namespaces=ns), "org.clipasso.clipasso_sketch")
        # issue 16 item 6: a translation domain only with a catalog Inkscape finds (none ships)
        self.assertEqual(inx.getroot().get("translationdomain"), "none")
        self.assertEqual(inx.find("i:effect", ns).get("needs-live-preview"), "false")
        self.assertEqual(inx.find("i:effect/i:effects-menu/i:submenu", ns).get("name"), "Generate from Image")
        self.assertEqual(inx.findtext("i:script/i:command", namespaces=ns), "inkscape_extension/clipasso_sketch.py")
        params = {p.get("name"): p for p in inx.iter("{%s}param" % ns["i"])}
        self.assertEqual(params["strokes"].text, "16")
        self.assertEqual(params["preset"].find("i:option", ns).get("value"), "fast")
        help_text = "".join(inx.find(".//i:page[@name='help']", ns).itertext())
        for word in ("Fast", "Balanced", "Paper", "Seeds", "background", "Cancel", "about 1.5 hours"):
            self.assertIn(word, help_text)

    def test_inx_gives_one_time_per_preset(self):
        """Issue 8 item 8: the option's label, the description and the Help tab agree, with the
        README's measured Presets table (fast ~1.5 min, balanced ~9 min, paper ~89 min = ~1.5 h)."""
        import re
        from lxml import etree
        ns = {"i": "http://www.inkscape.org/namespace/inkscape/extension"}
        inx = etree.parse(os.path.join(REPO, "clipasso.inx"))
        preset = inx.find(".//i:param[@name='preset']", ns)
        self.assertIsNone(re.search(r"minute|hour", preset.get("gui-description")), "times live in the labels")
        help_text = "".join(inx.find(".//i:page[@name='help']", ns).itertext())
        expected = {"fast": "1.5 minutes", "balanced": "9 minutes", "paper": "1.5 hours"}
        for option in preset.findall("i:option", ns):
            label = option.text
            self.assertEqual(re.findall(r"about ([\d.]+ \w+)", label), [expected[option.get("value")]], label)
            name = label.split()[0]
            sentence = re.search(name + r"[^;.]*?about ([\d.]+ \w+)", help_text)
            self.assertEqual(sentence.group(1), expected[option.get("value")], name)
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
            readme = handle.read()
        self.assertIn("**~1.5 min**", readme)
        self.assertIn("~9 min", readme)
        self.assertIn("~89 min", readme)


# --- errors: one sentence, document untouched ---------------------------------------------------
class TestErrors(DoubleEngineMixin, TestCase):
    def assertAborted(self, result, *phrases):
        status, errors, output, _ = result
        self.assertNotIn(status, (None, 0), errors)  # inkex.utils.ABORT_STATUS: 1 in 1.2, -5 in 1.4
        self.assertEqual(output, b"", "the document must not be written on failure")
        self.assertNotIn("Traceback", errors)
        self.assertEqual(len(errors.strip().splitlines()), 1, errors)
        for phrase in phrases:
            self.assertIn(phrase, errors)
        return errors

    def test_nothing_selected(self):
        self.assertAborted(self.run_extension(), "Select an image first")
        self.assertFalse(os.path.exists(self.record), "the engine must not run")

    def test_no_image_in_selection(self):
        self.assertAborted(self.run_extension("--id=rect1"), "no raster image")
        self.assertFalse(os.path.exists(self.record))

    def test_missing_linked_file(self):
        # the link as written in the document, and where that is (issue 8 item 5)
        self.assertAborted(self.run_extension("--id=broken_link"), "was not found",
                           "links to 'does_not_exist.png'", f"looked for in {DATA};", "relink or embed")

    def inkscape_copy(self, saved, href):
        """What Inkscape 1.2.2 hands the script for a saved document linking to href (measured:
        TestInkscapeRebasesLinks): a copy in another folder, the relative link rewritten to point
        from there. -> the copy's path; DOCUMENT_PATH names the saved document."""
        copy = os.path.join(self.tempdir, "inkscape-copy", "ink_ext_XXXXXX.svgAB12CD")
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        import urllib.parse
        target = os.path.join(os.path.dirname(saved), urllib.parse.unquote(href))
        rebased = urllib.parse.quote(os.path.relpath(target, os.path.dirname(copy)), safe="/")
        with open(copy, "w", encoding="utf-8") as handle:
            handle.write('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                         f'width="100" height="100"><image id="im" width="40" height="20" xlink:href="{rebased}"/></svg>')
        os.environ["DOCUMENT_PATH"] = saved
        return copy

    def test_missing_link_named_as_written_in_the_saved_document(self):
        """Issue 18 item 3: not the link Inkscape rewrote for its temporary copy, nor the copy's folder."""
        saved = os.path.join(self.tempdir, "my drawings", "poster.svg")
        copy = self.inkscape_copy(saved, "photos/missing%20one.png")
        errors = self.assertAborted(self.run_extension("--id=im", document=copy), "was not found",
                                    "links to 'photos/missing%20one.png'",
                                    f"looked for in {os.path.join(self.tempdir, 'my drawings', 'photos')};")
        self.assertNotIn("inkscape-copy", errors)
        self.assertNotIn("..", errors)

    def test_missing_link_above_the_saved_document(self):
        saved = os.path.join(self.tempdir, "a", "b", "poster.svg")
        copy = self.inkscape_copy(saved, "../pictures/cat.png")
        self.assertAborted(self.run_extension("--id=im", document=copy), "links to '../pictures/cat.png'",
                           f"looked for in {os.path.join(self.tempdir, 'a', 'pictures')};")

    def test_missing_absolute_link(self):
        self.assertAborted(self.linked("/nowhere/at all/gone.png"), "links to '/nowhere/at all/gone.png'",
                           "looked for in /nowhere/at all;")
        self.assertAborted(self.linked("file:///nowhere/at%20all/gone.png"),
                           "links to 'file:///nowhere/at%20all/gone.png'", "looked for in /nowhere/at all;")

    def test_missing_link_in_a_document_never_saved(self):
        os.environ["DOCUMENT_PATH"] = ""  # what Inkscape sets for a new document
        self.assertAborted(self.linked("photo.png"), "links to 'photo.png'", "has not been saved yet")

    def test_huge_linked_file_refused_before_reading(self):
        big = os.path.join(self.tempdir, "huge.png")
        with open(os.path.join(DATA, "photo_30x60.png"), "rb") as src, open(big, "wb") as dst:
            dst.write(src.read())
            dst.truncate(clipasso_sketch.MAX_IMAGE_BYTES + 1)  # sparse: costs no disk
        status, errors, _, _ = self.linked(big)
        self.assertIn("larger than the 200 MB", errors)
        self.assertFalse(os.path.exists(self.record), "the engine must not run")

    def test_linked_file_not_an_image_refused_before_the_engine(self):
        status, errors, _, _ = self.linked(os.path.join(DATA, "not_an_image.png"))
        self.assertIn("is not a PNG, JPEG", errors)
        self.assertFalse(os.path.exists(self.record), "the engine must not run")

    def test_header_sniffing(self):
        for header in (b"\x89PNG\r\n\x1a\n\0\0", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM\0\0",
                       b"RIFF\0\0\0\0WEBPVP8 ", b"II*\x00"):
            self.assertTrue(clipasso_sketch.looks_like_image(header), header)
        for header in (b"hello, I am text", b"", b"RIFF\0\0\0\0WAVE", b"<svg"):
            self.assertFalse(clipasso_sketch.looks_like_image(header), header)

    def test_layer_scaled_to_zero(self):
        infile = os.path.join(self.tempdir, "zero.svg")
        with open(infile, "w", encoding="utf-8") as handle:
            handle.write('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                         'xmlns:inkscape="http://www.inkscape.org/namespaces/inkscape" width="100" height="100">'
                         '<g id="outer" inkscape:groupmode="layer" transform="scale(0)">'
                         '<g id="inner" inkscape:groupmode="layer"><image id="im" width="40" height="20" '
                         f'xlink:href="{os.path.join(DATA, "photo_40x20.png")}"/></g></g></svg>')
        self.assertAborted(self.run_extension("--id=im", "--strokes=1", document=infile),
                           "scaled to zero", "'outer'")

    def killed_with(self, reading):
        """Run the double that SIGKILLs itself, the memory readings replaced by `reading`."""
        os.environ["ENGINE_DOUBLE_MODE"] = "killed"
        saved = engine_run.read_memory
        engine_run.read_memory = lambda pid: None if reading is None else dict(reading, time=time.monotonic())
        try:
            return self.run_extension("--id=plain")
        finally:
            engine_run.read_memory = saved

    def test_engine_killed_short_of_memory(self):
        """Issue 18 item 3: memory is named when the last reading makes it plausible."""
        gib = 2 ** 30
        for reading in ({"engine": 3 * gib, "available": gib // 2, "total": 16 * gib},  # less left than it held
                        {"engine": gib // 10, "available": gib, "total": 16 * gib}):  # under 10 % left
            errors = self.assertAborted(self.killed_with(reading), "stopped by the system", "SIGKILL",
                                        "ran out of memory", "fewer seeds", "Fast", self.log_path)
            self.assertNotRegex(errors, r"(?<!\w)-9(?!\w)")   # no raw exit status (a temp path may hold "-9")
        self.assertIn("(the engine held 0.1 GB, with 1.0 GB left, a moment before)", errors)

    def test_engine_killed_with_memory_to_spare(self):
        """A person or a process manager: stopped, and memory ruled out."""
        gib = 2 ** 30
        errors = self.assertAborted(self.killed_with({"engine": gib, "available": 8 * gib, "total": 16 * gib}),
                                    "was stopped from outside (SIGKILL: by a person, a process manager or the system)",
                                    "8.0 GB of memory still free", "not for lack of memory", self.log_path)
        self.assertNotIn("fewer seeds", errors)
        with open(self.log_path, encoding="utf-8") as handle:
            self.assertIn("== engine killed by signal 9; last memory reading", handle.read())

    def test_engine_killed_without_a_memory_reading(self):
        errors = self.assertAborted(self.killed_with(None), "was stopped from outside (SIGKILL",
                                    "if the computer was short of memory, try fewer seeds")
        self.assertNotIn("most likely", errors)

    def test_engine_killed_reads_the_real_memory(self):
        """Linux: the readings come from /proc while the engine runs (here, with memory to spare)."""
        if not os.path.exists("/proc/meminfo"):
            self.skipTest("needs /proc")
        reading = engine_run.read_memory(os.getpid())
        self.assertGreater(reading["total"], reading["available"])
        self.assertGreater(reading["engine"], 1 << 20)
        os.environ["ENGINE_DOUBLE_MODE"] = "killed"
        errors = self.assertAborted(self.run_extension("--id=plain"), "SIGKILL")
        if not engine_run.short_of_memory(reading):
            self.assertIn("of memory still free a moment before", errors)

    def test_web_link(self):
        infile = os.path.join(self.tempdir, "web.svg")
        with open(os.path.join(DATA, "placement.svg"), encoding="utf-8") as handle:
            text = handle.read().replace('xlink:href="photo_30x60.png"/>\n    <g id="group_rot"',
                                         'xlink:href="https://example.org/a.png"/>\n    <g id="group_rot"')
        with open(infile, "w", encoding="utf-8") as handle:
            handle.write(text)
        self.assertAborted(self.run_extension("--id=stretch_none", document=infile), "not a local file")

    def test_no_engine(self):
        os.environ.pop("CLIPASSO_ENGINE_PYTHON")
        self.assertAborted(self.run_extension("--id=plain"), "not installed", "install.py")

    def test_engine_python_missing(self):
        os.environ["CLIPASSO_ENGINE_PYTHON"] = os.path.join(self.tempdir, "gone", "python")
        self.assertAborted(self.run_extension("--id=plain"), "is missing", "install.py")

    def test_config_file_is_used(self):
        os.environ.pop("CLIPASSO_ENGINE_PYTHON")
        folder = os.path.join(self.tempdir, "installed")
        os.makedirs(folder)
        with open(os.path.join(folder, "clipasso_engine.json"), "w", encoding="utf-8") as handle:
            json.dump({"python": make_engine_wrapper(self.tempdir), "venv": folder, "version": "0.1.0",
                       "models_dir": "/models/here"}, handle)
        clipasso_sketch.config_path = lambda: os.path.join(folder, "clipasso_engine.json")
        status, errors, output, _ = self.run_extension("--id=plain", "--strokes=2")
        self.assertIsNone(status, errors)
        argv = self.recorded()[0]["argv"]
        self.assertEqual(argv[argv.index("--models-dir") + 1], "/models/here")

    def test_bad_strokes(self):
        self.assertAborted(self.run_extension("--id=plain", "--strokes=lots"), "whole numbers")

    def test_engine_error_event(self):
        os.environ["ENGINE_DOUBLE_MODE"] = "error"
        self.assertAborted(self.run_extension("--id=plain"), "not an image file", self.log_path)
        with open(self.log_path, encoding="utf-8") as handle:  # the code too, for whoever reads the log
            logged = [json.loads(line[len("== engine error "):]) for line in handle
                      if line.startswith("== engine error ")]
        self.assertEqual([(e["code"], e["message"]) for e in logged],
                         [("bad_image", "plain: not an image file (cannot identify format).")])

    def test_engine_error_names_an_embedded_image_by_its_id(self):
        """Issue 8 item 3: never the extension's temp file (image-0.png)."""
        os.environ["ENGINE_DOUBLE_MODE"] = "error"
        errors = self.assertAborted(self.run_extension("--id=embedded"), "embedded: not an image file")
        self.assertNotIn("image-0", errors)

    def test_engine_crash(self):
        os.environ["ENGINE_DOUBLE_MODE"] = "crash"
        self.assertAborted(self.run_extension("--id=plain"), "stopped unexpectedly", self.log_path)
        with open(self.log_path, encoding="utf-8") as handle:
            self.assertIn("RuntimeError: boom", handle.read(), "engine stderr must go to the log")

    def test_engine_exits_without_result(self):
        os.environ["ENGINE_DOUBLE_MODE"] = "noresult"
        self.assertAborted(self.run_extension("--id=plain"), "without a result", self.log_path)

    def test_engine_stall_timeout(self):
        os.environ["ENGINE_DOUBLE_MODE"] = "hang"
        os.environ["CLIPASSO_STALL_TIMEOUT"] = "0.5"
        self.assertAborted(self.run_extension("--id=plain"), "no sign of progress", self.log_path)

    def test_failure_in_second_image_changes_nothing(self):
        # not_an_image.png is refused by its header, before any engine runs
        self.assertAborted(self.run_extension("--id=plain", "--id=not_image"), "not_image", "is not a PNG")
        self.assertFalse(os.path.exists(self.record), "the engine must not run")


DUMP_INX = """<?xml version="1.0" encoding="UTF-8"?>
<inkscape-extension xmlns="http://www.inkscape.org/namespace/inkscape/extension">
  <name>Dump</name><id>org.clipasso.test_dump</id>
  <effect needs-live-preview="false"><object-type>all</object-type>
    <effects-menu><submenu name="Test"/></effects-menu></effect>
  <script><command location="inx" interpreter="python">dump.py</command></script>
</inkscape-extension>
"""
DUMP_PY = """import json, os, shutil, sys
kept = os.path.join(os.path.dirname(sys.argv[-1]), "received.svg")  # beside Inkscape's copy: same links
shutil.copy(sys.argv[-1], kept)
with open(os.environ["DUMP_TO"], "w") as handle:
    json.dump({"input": sys.argv[-1], "kept": kept, "DOCUMENT_PATH": os.environ.get("DOCUMENT_PATH")}, handle)
with open(sys.argv[-1], "rb") as handle:
    sys.stdout.buffer.write(handle.read())
"""


@unittest.skipUnless(all(__import__("shutil").which(tool) for tool in ("inkscape", "xvfb-run")),
                     "needs Inkscape and xvfb-run")
class TestInkscapeRebasesLinks(DoubleEngineMixin, TestCase):
    """What real Inkscape hands an extension for a saved document with a relative link: a copy in
    a temporary folder, the link rewritten to point from there. The missing-file message, given that
    copy, still names the link as written and the saved document's folder (issue 18 item 3)."""

    def test_message_names_the_link_as_written(self):
        import subprocess
        profile = os.path.join(self.tempdir, "profile")
        os.makedirs(os.path.join(profile, "extensions"))
        for name, text in (("dump.inx", DUMP_INX), ("dump.py", DUMP_PY)):
            with open(os.path.join(profile, "extensions", name), "w", encoding="utf-8") as handle:
                handle.write(text)
        saved = os.path.join(self.tempdir, "my drawings", "poster.svg")
        os.makedirs(os.path.dirname(saved))
        with open(saved, "w", encoding="utf-8") as handle:
            handle.write('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                         'width="100" height="100"><image id="im" width="40" height="20" '
                         'xlink:href="photos/missing%20one.png"/></svg>')
        report = os.path.join(self.tempdir, "received.json")
        inkscape_tmp = os.path.join(self.tempdir, "inkscape-tmp")  # where Inkscape puts its copy
        os.makedirs(inkscape_tmp)
        env = dict(os.environ, INKSCAPE_PROFILE_DIR=profile, DUMP_TO=report, TMPDIR=inkscape_tmp)
        subprocess.run(["timeout", "--kill-after=10", "120", "xvfb-run", "-a", "inkscape", "--batch-process",
                        "--actions=select-by-id:im;org.clipasso.test-dump.noprefs", saved],
                       env=env, capture_output=True, timeout=150)
        with open(report, encoding="utf-8") as handle:
            received = json.load(handle)
        dumped = received["kept"]
        self.assertEqual(os.path.dirname(dumped), inkscape_tmp)
        with open(dumped, encoding="utf-8") as handle:
            rewritten = re.search(r'xlink:href="([^"]+)"', handle.read()).group(1)
        self.assertEqual(received["DOCUMENT_PATH"], saved)
        self.assertNotEqual(rewritten, "photos/missing%20one.png", "Inkscape 1.2.2 rebases the link")
        os.environ["DOCUMENT_PATH"] = saved
        status, errors, output, _ = self.run_extension("--id=im", document=dumped)
        self.assertEqual(output, b"")
        self.assertIn("links to 'photos/missing%20one.png', looked for in "
                      f"{os.path.join(self.tempdir, 'my drawings', 'photos')};", errors)
        self.assertNotIn(rewritten, errors)


# --- what the engine is asked for -------------------------------------------------------------
class TestEngineCommand(DoubleEngineMixin, TestCase):
    def test_arguments(self):
        status, errors, output, _ = self.run_extension(
            "--id=plain", "--strokes=5", "--preset=paper", "--device=gpu", "--seeds=3",
            "--mask_background=true")
        self.assertIsNone(status, errors)
        self.assertEqual(errors, "")
        argv = self.recorded()[0]["argv"]
        self.assertEqual(argv[:3], ["-m", "clipasso_engine", "sketch"])
        options = dict(zip(argv[4::2], argv[5::2]))
        self.assertEqual(options["--strokes"], "5")
        self.assertEqual(options["--preset"], "paper")
        self.assertIn(options["--device"], ("cuda", "mps"))
        self.assertEqual(options["--seeds"], "3")
        self.assertEqual(options["--progress"], "jsonl")
        self.assertIn("--mask-background", argv)
        self.assertEqual(argv[3], os.path.join(DATA, "photo_40x20.png"))
        self.assertEqual(self.recorded()[0]["caller"], "inkscape")  # CLIPASSO_CALLER for the engine

    def test_defaults_leave_seeds_to_the_preset(self):
        self.run_extension("--id=plain")
        argv = self.recorded()[0]["argv"]
        self.assertNotIn("--seeds", argv)
        self.assertNotIn("--mask-background", argv)
        self.assertEqual(argv[argv.index("--preset") + 1], "fast")
        self.assertEqual(argv[argv.index("--strokes") + 1], "16")
        self.assertEqual(argv[argv.index("--device") + 1], "auto")

    def test_embedded_image_is_decoded(self):
        self.run_extension("--id=embedded", "--strokes=2")
        record = self.recorded()[0]
        self.assertEqual(record["image_sizes"], [[20, 10]])
        self.assertEqual(record["image_bytes"], [78])  # the base64 payload decoded

    def test_levels_and_images_in_one_engine_run(self):
        status, errors, output, _ = self.run_extension("--id=plain", "--id=stretch_none", "--strokes=8,4 8")
        self.assertIsNone(status, errors)
        [run] = self.recorded()  # one engine process for the whole Apply (issue 6 item 4)
        argv = run["argv"]
        self.assertEqual(run["image_sizes"], [[40, 20], [30, 60]])
        self.assertEqual(argv[argv.index("--strokes") + 1], "8,4")
        self.assertEqual([argv[i + 1] for i, word in enumerate(argv) if word == "--name"], ["plain", "stretch_none"])
        svg = inkex.load_svg(io.BytesIO(output)).getroot()
        labels = [layer.get("inkscape:label") for layer in svg.xpath("//svg:g[@inkscape:groupmode='layer']")]
        self.assertEqual(labels.count("CLIPasso sketch \u2014 8 strokes"), 2)
        self.assertEqual(labels.count("CLIPasso sketch \u2014 4 strokes"), 2)

    def test_absolute_and_file_uri_links(self):
        photo = os.path.join(DATA, "photo_30x60.png")
        for href in (photo, "file://" + photo):
            status, errors, output, _ = self.linked(href)
            self.assertIsNone(status, errors)
            self.assertTrue(output.startswith(b"<"))
        self.assertEqual([r["image_sizes"] for r in self.recorded()], [[[30, 60]], [[30, 60]]])

    def test_relative_link_next_to_document(self):
        folder = os.path.join(self.tempdir, "sub")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(DATA, "photo_30x60.png"), "rb") as src, \
                open(os.path.join(folder, "my photo.png"), "wb") as dst:
            dst.write(src.read())
        status, errors, _, _ = self.linked("my%20photo.png")
        self.assertIsNone(status, errors)
        self.assertEqual(self.recorded()[0]["image_sizes"], [[30, 60]])

    def test_inkscape_pythonpath_not_passed_to_engine(self):
        env = {"PYTHONPATH": "/usr/share/inkscape/extensions", "PYTHONHOME": "/x", "KEEP": "1"}
        saved = dict(os.environ)
        try:
            os.environ.update(env)
            engine_env = ClipassoSketch.engine_environment()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.assertNotIn("PYTHONPATH", engine_env)
        self.assertNotIn("PYTHONHOME", engine_env)
        self.assertEqual(engine_env["KEEP"], "1")

    def test_rerun_gives_fresh_ids(self):
        status, _, first, _ = self.run_extension("--id=plain", "--strokes=2")
        infile = os.path.join(self.tempdir, "again.svg")
        with open(infile, "wb") as handle:
            handle.write(first.replace(b'xlink:href="photo_40x20.png"',
                                       ('xlink:href="%s"' % os.path.join(DATA, "photo_40x20.png")).encode()))
        status, errors, second, _ = self.run_extension("--id=plain", "--strokes=2", document=infile)
        self.assertIsNone(status, errors)
        svg = inkex.load_svg(io.BytesIO(second)).getroot()
        ids = svg.xpath("//@id")
        self.assertEqual(len(ids), len(set(ids)))
        self.assertIn("clipasso-layer-plain-2", ids)
        self.assertIn("clipasso-layer-plain-2-2", ids)
        self.assertIn("clipasso-plain-2-2-stroke-1", ids)


# --- the placement arithmetic, checked against independently computed corners -----------------
def element_corners(svg, image_id, rect=None):
    """Rendered corners of an image in document coordinates, through inkex's own transforms.
    rect: the raster's rendered rect in the element's user space (default: its x/y/width/height)."""
    image = svg.getElementById(image_id)
    if rect is None:
        rect = tuple(float(image.get(k)) for k in ("x", "y", "width", "height"))
    x, y, w, h = rect
    ctm = image.composed_transform()
    return [tuple(ctm.apply_to_point((px, py))) for px, py in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))]


def mapped_corners(svg, image_id, image_size):
    """The extension's map, applied to the image's pixel corners (through the canvas)."""
    image = svg.getElementById(image_id)
    w, h = image_size
    side = max(w, h)
    canvas_to_image = (side / 224, 0, 0, side / 224, -(side - w) / 2, -(side - h) / 2)
    attributes = {k: image.get(k) for k in ("x", "y", "width", "height")}
    rect = placement.image_rect(attributes, image_size, (400, 300))
    pixels = placement.image_placement(*rect, image_size, image.get("preserveAspectRatio"))
    matrix = placement.canvas_to_layer(canvas_to_image, pixels, tuple(image.composed_transform().to_hexad()),
                                       placement.IDENTITY)
    to_canvas = placement.invert(canvas_to_image)
    return [placement.apply(matrix, *placement.apply(to_canvas, px, py))
            for px, py in ((0, 0), (w, 0), (w, h), (0, h))]


class TestPlacementMath(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.svg = inkex.load_svg(os.path.join(DATA, "placement.svg")).getroot()

    def check(self, image_id, image_size, expected, places=9):
        found = mapped_corners(self.svg, image_id, image_size)
        for (fx, fy), (ex, ey) in zip(found, expected):
            self.assertAlmostEqual(fx, ex, places, f"{image_id}: {found} != {expected}")
            self.assertAlmostEqual(fy, ey, places, f"{image_id}: {found} != {expected}")

    def test_exact_aspect_matches_bounding_box(self):
        self.check("plain", (40, 20), element_corners(self.svg, "plain"))
        bbox = self.svg.getElementById("plain").bounding_box(
            self.svg.getElementById("plain").getparent().composed_transform())
        self.assertEqual((bbox.left, bbox.top, bbox.right, bbox.bottom), (10, 20, 90, 60))

    def test_meet_mid_by_hand(self):  # 40x20 into 80x80: scale 2, 80x40, centred vertically
        self.check("meet_mid", (40, 20), [(100, 40), (180, 40), (180, 80), (100, 80)])

    def test_xMinYMax_meet_by_hand(self):
        self.check("align_xMinYMax_meet", (40, 20), [(200, 60), (280, 60), (280, 100), (200, 100)])

    def test_xMaxYMin_slice_by_hand(self):  # scale 3: 120x60 overflowing to the left
        self.check("slice_xMaxYMin", (40, 20), [(240, 20), (360, 20), (360, 80), (240, 80)])

    def test_none_stretches_to_the_rect(self):
        self.check("stretch_none", (30, 60), element_corners(self.svg, "stretch_none"))

    def test_rotation_by_hand(self):
        # rect (125,125)-(155,185) after the image's translate(5,5), rotated 30 deg about (150,150)
        c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
        rot = lambda x, y: (150 + c * (x - 150) - s * (y - 150), 150 + s * (x - 150) + c * (y - 150))
        self.check("rotated", (30, 60), [rot(125, 125), rot(155, 125), rot(155, 185), rot(125, 185)])

    def test_skew_by_hand(self):
        # skewX(20) scale(1.5,1): (x, y) -> (1.5 x + tan20 y, y), rect (220,120)-(260,140)
        t = math.tan(math.radians(20))
        sk = lambda x, y: (1.5 * x + t * y, y)
        self.check("skewed", (40, 20), [sk(220, 120), sk(260, 120), sk(260, 140), sk(220, 140)])

    def test_auto_size_is_pixel_size(self):
        self.check("autosize", (30, 60), [(300, 200), (330, 200), (330, 260), (300, 260)])

    def test_units_on_attributes(self):
        mm = 96 / 25.4
        self.check("units_mm", (40, 20), [(5 * mm, 192), (25 * mm, 192), (25 * mm, 192 + 10 * mm), (5 * mm, 192 + 10 * mm)])

    def test_nine_alignments_meet_and_slice(self):
        # 40x20 raster in a 60x60 box at (0,0): meet -> 60x30, slice -> 120x60
        for ax, fx in (("xMin", 0), ("xMid", 0.5), ("xMax", 1)):
            for ay, fy in (("YMin", 0), ("YMid", 0.5), ("YMax", 1)):
                for mode, (w, h) in (("meet", (60, 30)), ("slice", (120, 60))):
                    m = placement.image_placement(0, 0, 60, 60, (40, 20), f"{ax}{ay} {mode}")
                    x0, y0 = (60 - w) * fx, (60 - h) * fy
                    self.assertEqual(placement.apply(m, 0, 0), (x0, y0), (ax, ay, mode))
                    self.assertEqual(placement.apply(m, 40, 20), (x0 + w, y0 + h), (ax, ay, mode))

    def test_layer_inverse(self):
        # an image inside a scaled layer, new layer under a translated parent: corners land in the
        # parent's coordinates, i.e. the document position mapped by the parent's inverse
        layer_ctm = (2, 0, 0, 2, 10, 0)
        m = placement.canvas_to_layer(placement.IDENTITY, placement.IDENTITY, (1, 0, 0, 1, 30, 40), layer_ctm)
        self.assertEqual(placement.apply(m, 0, 0), (10, 20))
        self.assertEqual(placement.apply(m, 4, 2), (12, 21))

    def test_width_scale(self):
        self.assertAlmostEqual(placement.width_scale((0, 2, -2, 0, 5, 5)), 2)  # rotation + scale 2
        self.assertAlmostEqual(placement.width_scale((1.5, 0, 0.36, 1, 0, 0)), math.sqrt(1.5))  # skew
        self.assertAlmostEqual(placement.width_scale((4, 0, 0, 1, 0, 0)), 2)  # geometric mean

    def test_parse_preserve_aspect_ratio(self):
        self.assertEqual(placement.parse_preserve_aspect_ratio(None), ("xMidYMid", "meet"))
        self.assertEqual(placement.parse_preserve_aspect_ratio("defer xMaxYMin slice"), ("xMaxYMin", "slice"))
        self.assertEqual(placement.parse_preserve_aspect_ratio("none"), ("none", "meet"))
        self.assertEqual(placement.parse_preserve_aspect_ratio("bogus"), ("xMidYMid", "meet"))

    def test_path_data_is_plain_numbers(self):
        d = placement.stroke_path_data([[0, 0], [1, 0], [1, 1], [0, 1]], (2, 0, 0, 2, -0.00001, 0.5))
        self.assertEqual(d, "M 0,0.5 C 2,0.5 2,2.5 0,2.5")

    def test_golden_stroke_widths_and_corners(self):
        """The golden output's stroke 1 (through the canvas corners) and width, for one case."""
        out = inkex.load_svg(os.path.join(DATA, "refs", "clipasso_sketch__--id__meet_mid__--strokes__3.out"))
        path = out.getroot().getElementById("clipasso-meet_mid-3-stroke-1")
        self.assertEqual(path.get("d"), "M 100,20 C 180,20 180,100 100,100")  # canvas = 80x80 box
        self.assertIn("stroke-width:1.0714", path.get("style"))  # 3 px * (80 / 224)


# --- what shows: the engine is sent only the visible part (--crop) -------------------------------
class TestVisiblePixelBox(unittest.TestCase):
    """placement.visible_pixel_box: the visible box in image pixels, rounded outward, clamped."""

    def crop(self, image_size, rect, aspect, visible=None):
        pixels_to_user = placement.image_placement(*rect, image_size, aspect)
        x, y, w, h = rect
        return placement.visible_pixel_box(pixels_to_user, image_size, visible or (x, y, x + w, y + h))

    def test_slice_nine_alignments(self):
        # 40x20 in a 60x60 box, slice: scale 3, 120x60; a third of the columns shows, where aligned
        for ax, fx in (("xMin", 0), ("xMid", 0.5), ("xMax", 1)):
            for ay in ("YMin", "YMid", "YMax"):
                self.assertEqual(self.crop((40, 20), (0, 0, 60, 60), f"{ax}{ay} slice"),
                                 (20 * fx, 0, 20 + 20 * fx, 20), (ax, ay))
        # 30x60 in a 60x30 box: the rows are cut instead
        for ay, rows in (("YMin", (0, 15)), ("YMid", (22, 38)), ("YMax", (45, 60))):  # mid: 22.5..37.5 outward
            self.assertEqual(self.crop((30, 60), (5, 5, 60, 30), f"xMid{ay} slice"), (0, rows[0], 30, rows[1]))

    def test_meet_and_none_show_everything(self):
        for aspect in ("xMinYMin meet", "xMidYMid meet", "xMaxYMax meet", None, "none", "bogus"):
            self.assertIsNone(self.crop((40, 20), (0, 0, 60, 60), aspect), aspect)
        self.assertIsNone(self.crop((40, 20), (0, 0, 80, 40), "xMidYMid slice"))  # same aspect: all shows

    def test_raster_larger_or_smaller_than_its_rect(self):
        self.assertEqual(self.crop((400, 200), (0, 0, 60, 60), "xMidYMid slice"), (100, 0, 300, 200))  # scale 0.3
        self.assertEqual(self.crop((4, 2), (0, 0, 60, 60), "xMidYMid slice"), (1, 0, 3, 2))  # scale 30

    def test_rounded_outward(self):
        # 40x20 in 50x60: scale 3, pixels 11.67..28.33 show: all of 11 and 28 are sent
        self.assertEqual(self.crop((40, 20), (10, 10, 50, 60), "xMidYMid slice"), (11, 0, 29, 20))
        # float noise on a pixel edge adds no row
        self.assertEqual(self.crop((40, 20), (0, 0, 40, 20), None, (10 + 1e-12, 0, 30 - 1e-12, 10.0000000001)),
                         (10, 0, 30, 10))

    def test_clamped_to_the_raster(self):
        self.assertEqual(self.crop((40, 20), (0, 0, 40, 20), None, (-5, 5, 10, 50)), (0, 5, 10, 20))
        self.assertIsNone(self.crop((40, 20), (0, 0, 40, 20), None, (-100, -100, 100, 100)))
        self.assertIsNone(self.crop((40, 20), (0, 0, 40, 20), None, (50, 0, 60, 20)))  # nothing shows
        self.assertEqual(self.crop((40, 20), (0, 0, 40, 20), None, (10.2, 3.5, 10.3, 3.6)), (10, 3, 11, 4))  # a sliver
        self.assertEqual(self.crop((40, 20), (0, 0, 40, 20), None, (40 - 1e-9, 0, 41, 20)), (39, 0, 40, 20))

    def test_result_is_whole_pixels_the_engine_accepts(self):
        box = self.crop((40, 20), (10, 10, 50, 60), "xMaxYMin slice")
        self.assertTrue(all(isinstance(v, int) for v in box), box)
        left, top, right, bottom = box
        self.assertTrue(0 <= left < right <= 40 and 0 <= top < bottom <= 20, box)


class TestRasterSize(unittest.TestCase):
    """The upright pixel size from a file's header, as the engine will see the picture."""

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="clipasso-size-")
        self.addCleanup(lambda: __import__("shutil").rmtree(self.folder, ignore_errors=True))

    def saved(self, name, fmt, orientation=None, **options):
        from PIL import Image
        image = Image.new("RGB", (37, 21), "red")
        if orientation is not None:
            exif = Image.Exif()
            exif[0x0112] = orientation
            options["exif"] = exif.tobytes()
        path = os.path.join(self.folder, name)
        image.save(path, fmt, **options)
        return path

    def test_formats(self):
        for name, fmt, options in (("a.png", "PNG", {}), ("a.jpg", "JPEG", {}), ("a.gif", "GIF", {}),
                                   ("a.bmp", "BMP", {}), ("a.webp", "WEBP", {}),
                                   ("l.webp", "WEBP", {"lossless": True})):
            self.assertEqual(raster_size.upright_pixel_size(self.saved(name, fmt, **options)), (37, 21), name)
        self.assertEqual(raster_size.upright_pixel_size(os.path.join(DATA, "photo_30x60.png")), (30, 60))

    def test_exif_quarter_turns_swap_width_and_height(self):
        for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")):
            for orientation, size in ((1, (37, 21)), (3, (37, 21)), (6, (21, 37)), (8, (21, 37))):
                path = self.saved(f"o{orientation}.{suffix}", fmt, orientation)
                self.assertEqual(raster_size.upright_pixel_size(path), size, (fmt, orientation))

    def test_unsure_means_none(self):
        self.assertIsNone(raster_size.upright_pixel_size(self.saved("a.tif", "TIFF")))  # not parsed: no crop
        self.assertIsNone(raster_size.upright_pixel_size(os.path.join(DATA, "not_an_image.png")))
        self.assertIsNone(raster_size.upright_pixel_size(os.path.join(self.folder, "missing.png")))
        jpeg = open(self.saved("b.jpg", "JPEG", 6), "rb").read()
        exif_at = jpeg.index(b"Exif\x00\x00")
        damaged = os.path.join(self.folder, "damaged.jpg")
        with open(damaged, "wb") as handle:  # the EXIF block's byte order mark broken
            handle.write(jpeg[:exif_at + 6] + b"XX" + jpeg[exif_at + 8:])
        self.assertIsNone(raster_size.upright_pixel_size(damaged))
        truncated = os.path.join(self.folder, "truncated.jpg")
        with open(truncated, "wb") as handle:
            handle.write(jpeg[:exif_at])
        self.assertIsNone(raster_size.upright_pixel_size(truncated))


NUMBER = r"-?\d+(?:\.\d+)?"
# visible.svg: image id -> (--crop sent, the visible box in document coordinates, x0 y0 x1 y1)
VISIBLE = {
    "slice_mid": ("11,0,29,20", (10, 10, 60, 70)),
    "slice_tall": ("0,45,30,60", (70, 10, 130, 40)),
    "clipped": ("10,0,30,10", (30, 100, 70, 120)),
    "in_clipped_group": ("20,5,30,15", (150, 110, 170, 130)),
    "clipped_style": ("0,10,40,20", (200, 210, 240, 220)),
    "embedded_slice": ("0,0,10,10", (300, 200, 310, 210)),
}
WHOLE = ("meet_big", "clipped_bbox_units", "clipped_text", "clipped_away")  # nothing hidden, or unsure


class TestVisibleCrop(DoubleEngineMixin, TestCase):
    """End to end through the engine double, which draws inside the crop like the engine."""

    def sketch(self, *ids):
        status, errors, output, _ = self.run_extension(*[f"--id={i}" for i in ids], "--strokes=3",
                                                       document="visible.svg")
        self.assertIsNone(status, errors)
        self.assertEqual(errors, "")
        return inkex.load_svg(io.BytesIO(output)).getroot()

    def crops_sent(self):
        argv = self.recorded()[-1]["argv"]
        return [argv[i + 1] for i, word in enumerate(argv) if word == "--crop"]

    @staticmethod
    def nodes(svg, image_id):
        """Every node of every stroke, in document coordinates (the new layer has no transform)."""
        paths = [svg.getElementById(f"clipasso-{image_id}-3-stroke-{k}") for k in (1, 2, 3)]
        return [[(float(x), float(y)) for x, y in re.findall(f"({NUMBER}),({NUMBER})", path.get("d"))]
                for path in paths]

    def test_strokes_lie_on_what_shows(self):
        for image_id, (crop, (x0, y0, x1, y1)) in VISIBLE.items():
            with self.subTest(image=image_id):
                svg = self.sketch(image_id)
                self.assertEqual(self.crops_sent(), [crop])
                # outward rounding to whole pixels may add up to one raster pixel (3 units at most here)
                tolerance = 3.0 + 1e-6
                for node in sum(self.nodes(svg, image_id), []):
                    self.assertTrue(x0 - tolerance <= node[0] <= x1 + tolerance and
                                    y0 - tolerance <= node[1] <= y1 + tolerance, (node, (x0, y0, x1, y1)))

    def test_placement_stays_exact(self):
        """The double's stroke 1 runs through the crop's pixel corners: they land, to the 4 decimals
        written, where the image's own placement puts those pixels."""
        expected = {"slice_mid": [(8, 10), (62, 10), (62, 70), (8, 70)],  # pixels 11..29 at scale 3, x from -25
                    "slice_tall": [(70, 10), (130, 10), (130, 40), (70, 40)],
                    "in_clipped_group": [(150, 110), (170, 110), (170, 130), (150, 130)]}
        for image_id, corners in expected.items():
            with self.subTest(image=image_id):
                svg = self.sketch(image_id)
                self.assertEqual(self.nodes(svg, image_id)[0], [(float(x), float(y)) for x, y in corners])

    def test_whole_picture_when_all_shows_or_unsure(self):
        for image_id in WHOLE:
            with self.subTest(image=image_id):
                self.sketch(image_id)
                self.assertEqual(self.crops_sent(), [])
                self.assertEqual(self.recorded()[-1]["image_sizes"], [[40, 20]])

    def test_one_crop_per_image_in_image_order(self):
        self.sketch("slice_mid", "meet_big", "slice_tall")
        self.assertEqual(self.crops_sent(), ["11,0,29,20", "-", "0,45,30,60"])

    def test_clip_paths_unchanged(self):
        """Measuring a clip must not touch it (inkex 1.4 rewrites some attributes it reads)."""
        svg = self.sketch("in_clipped_group")
        shape = svg.getElementById("clip_group_rotated")
        self.assertEqual(shape.attrib["transform"], "rotate(10,20,10)")
        self.assertEqual(svg.getElementById("clip_group").attrib["transform"], "translate(10,0)")


# --- Selected paths: start from them, keep them and add strokes, ignore (issue 14 item 3) ---------
sys.path.insert(0, os.path.join(REPO, "tests"))
import engine_double  # noqa: E402  (its known strokes and its reader of the start file)

SVG = "{http://www.w3.org/2000/svg}"
PHOTO = os.path.join(DATA, "photo_40x20.png")


def start_strokes(text):
    """The strokes of a start file, read by the engine's reader when it is there (and then also by
    the double's, which must agree), else by the double's."""
    ours = engine_double.read_start_strokes(text)
    try:
        from clipasso_engine import svgpaths
    except ImportError:
        return ours
    # image_size / canvas_to_image: the file is canvas-sized (224 x 224), so they do not apply to it
    theirs = svgpaths.read_start_strokes(text, 224, (40, 20), placement.engine_canvas_to_image((40, 20)))
    theirs = [[[float(x), float(y)] for x, y in stroke] for stroke in theirs]
    assert_strokes_close(theirs, ours, 1e-9)
    return theirs


def assert_strokes_close(found, expected, tolerance):
    assert len(found) == len(expected), (len(found), len(expected))
    for stroke, wanted in zip(found, expected):
        for (x, y), (ex, ey) in zip(stroke, wanted):
            assert abs(x - ex) <= tolerance and abs(y - ey) <= tolerance, (stroke, wanted)


def path_nodes(data):
    return [(float(x), float(y)) for x, y in re.findall(f"({NUMBER}),({NUMBER})", data)]


class TestEngineCanvasMap(unittest.TestCase):
    """placement.engine_canvas_to_image, which the extension needs before the engine runs, is the
    engine's own canvas_to_image (imageio.load_image), to the bit."""

    def test_equals_the_engines(self):
        imageio = pytest.importorskip("clipasso_engine.imageio")
        pytest.importorskip("torch")
        from PIL import Image
        from clipasso_engine.config import make_config
        config = make_config("fast")
        cases = [((40, 20), None), ((41, 20), None), ((20, 41), None), ((30, 60), (0, 45, 30, 60)),
                 ((64, 64), None), ((7, 3), (1, 0, 6, 3)), ((451, 300), (11, 7, 300, 299)),
                 ((360, 240), (100, 0, 101, 240)), ((9001, 30), None), ((50, 9000), (3, 0, 50, 8999))]
        for size, crop in cases:
            with self.subTest(size=size, crop=crop):
                loaded = imageio.load_image(Image.new("RGB", size, "white"), config, crop=crop)
                self.assertEqual(placement.engine_canvas_to_image(size, crop), tuple(loaded.canvas_to_image))

    def test_the_double_frames_as_the_engine(self):
        for size, crop in (((41, 20), None), ((30, 60), (0, 45, 30, 60)), ((40, 20), (11, 0, 29, 20))):
            self.assertEqual(tuple(engine_double.canvas_to_image(*size, crop)),
                             placement.engine_canvas_to_image(size, crop))


class TestPathBounds(unittest.TestCase):
    def test_cubic_extrema(self):
        # an S through (0,0) and (3,0) with handles at y = +-3: extrema at y = +-sqrt(3)/2 ... exactly
        box = placement.cubic_box((0, 0), (1, 3), (2, -3), (3, 0))
        self.assertAlmostEqual(box[1], -box[3])
        t = (3 - math.sqrt(3)) / 6  # B_y'(t) = 0
        u = 1 - t
        self.assertAlmostEqual(box[3], 3 * u * u * t * 3 - 3 * u * t * t * 3, 12)
        self.assertEqual((box[0], box[2]), (0, 3))

    def test_superpath_mapped(self):
        superpath = inkex.Path("M 0,0 C 1,3 2,-3 3,0 L 3,0.5").to_superpath()
        box = placement.superpath_box((2, 0, 0, 2, 10, 0), superpath)
        self.assertAlmostEqual(box[0], 10)
        self.assertAlmostEqual(box[2], 16)
        self.assertAlmostEqual(box[3], 2 * placement.cubic_box((0, 0), (1, 3), (2, -3), (3, 0))[3])
        self.assertTrue(placement.boxes_touch((0, 0, 1, 0), (1, -1, 2, 1)))  # flat, touching
        self.assertFalse(placement.boxes_touch((0, 0, 1, 1), (1.01, 0, 2, 1)))


class TestSelectedPaths(DoubleEngineMixin, TestCase):
    """refine_mm.svg: a mm document; the photo's layer inside a translated, rotated, scaled layer, so
    the sketch layer is inserted there too; a hand-drawn path (and a clone of it) in another,
    translated layer; a path far off the image; a rectangle; a second image."""

    def first_sketch(self, strokes=3):
        """The document once sketched (3 strokes, in layer clipasso-layer-photo-3), saved with an
        absolute link so that it can be run on again."""
        status, errors, output, _ = self.run_extension("--id=photo", f"--strokes={strokes}", document="refine_mm.svg")
        self.assertIsNone(status, errors)
        infile = os.path.join(self.tempdir, "sketched.svg")
        with open(infile, "wb") as handle:
            handle.write(output.replace(b'xlink:href="photo_40x20.png"', f'xlink:href="{PHOTO}"'.encode()))
        with open(infile, "rb") as handle:
            return infile, handle.read()

    def again(self, infile, *args):
        status, errors, output, _ = self.run_extension(*args, document=infile)
        self.assertIsNone(status, errors)
        self.assertEqual(errors, "")
        return inkex.load_svg(io.BytesIO(output)).getroot(), output

    def start_file(self):
        [start] = self.recorded()[-1]["start_files"]
        return start["text"]

    @staticmethod
    def element_bytes(document, element_id):
        from lxml import etree
        root = etree.fromstring(document) if isinstance(document, bytes) else document
        found = [node for node in root.iter() if node.get("id") == element_id]
        assert len(found) == 1, element_id
        element = copy_without_tail(found[0])
        return etree.tostring(element)

    def new_layers(self, svg, before):
        return [g for g in svg.iter(f"{SVG}g") if (g.get("id") or "").startswith("clipasso-layer-")
                and g.get("id") not in before]

    def test_inx_has_the_option(self):
        from lxml import etree
        ns = {"i": "http://www.inkscape.org/namespace/inkscape/extension"}
        inx = etree.parse(os.path.join(REPO, "clipasso.inx"))
        param = inx.find(".//i:param[@name='selected_paths']", ns)
        self.assertEqual(param.get("type"), "optiongroup")
        self.assertEqual(param.get("gui-text"), "Selected paths")
        self.assertEqual([(o.get("value"), o.text) for o in param.findall("i:option", ns)],
                         [("start", "Start from them"), ("keep", "Keep them and add strokes"), ("ignore", "Ignore")])
        strokes = inx.find(".//i:param[@name='strokes']", ns)
        self.assertIn("With paths selected: how many strokes to add", strokes.get("gui-description"))
        help_text = "".join(inx.find(".//i:page[@name='help']", ns).itertext())
        for words in ("Start from them:", "Keep them and add strokes:", "Ignore:", "strokes to add",
                      "wholly off the image is refused", "one image at a time", "Object to Path"):
            self.assertIn(words, help_text)

    def test_start_file_holds_the_strokes_where_they_were_drawn(self):
        """The sketch layer, selected with its image, reaches the engine as the double's very canvas
        points (to 1e-4, what 4 decimals in the document allow): the exact inverse of the placement,
        through the rotated, scaled, translated layers of a mm document."""
        infile, _ = self.first_sketch()
        self.again(infile, "--id=photo", "--id=clipasso-layer-photo-3", "--strokes=2")
        text = self.start_file()
        self.assertIn('width="224" height="224" viewBox="0 0 224 224"', text)
        self.assertEqual(text.count("<path"), 3)
        self.assertRegex(text, r'transform="matrix\([^)]+\)"')
        assert_strokes_close(start_strokes(text), engine_double.known_strokes(3), 1e-4)
        argv = self.recorded()[-1]["argv"]
        self.assertEqual(argv[argv.index("--start-from") + 1], self.recorded()[-1]["start_files"][0]["path"])
        self.assertEqual(argv.count("--start-from"), 1)
        self.assertNotIn("--keep-start", argv)
        self.assertEqual(argv[argv.index("--strokes") + 1], "2")

    def test_hand_drawn_path_and_its_clone(self):
        """A path drawn by hand in another, translated layer (relative data made absolute; the
        line a segment of its own), and a clone of it (its own transform included)."""
        infile, _ = self.first_sketch()
        self.again(infile, "--id=photo", "--id=hand", "--id=hand_clone", "--strokes=1")
        text = self.start_file()
        self.assertIn('d="M 105.0 85.0 C 110.0 82.0 115.0 88.0 120.0 85.0 L 125.0 90.0"', text)
        self.assertIn('id="hand_clone"', text)
        strokes = start_strokes(text)
        self.assertEqual(len(strokes), 4)
        # by hand: document point -> canvas, through the inverse of the placement's own chain
        svg = inkex.load_svg(infile).getroot()
        image = svg.getElementById("photo")
        pixels = placement.image_placement(10, 10, 250, 125, (40, 20))
        to_canvas = placement.invert(placement.compose(tuple(image.composed_transform().to_hexad()), pixels,
                                                       placement.engine_canvas_to_image((40, 20))))
        for offset, first in ((0, strokes[0]), (6, strokes[2])):  # the clone: translate(4,6) more
            dx, dy = (4, 6) if offset else (0, 0)
            expected = [placement.apply(to_canvas, 2 + dx + x, 1 + dy + y)
                        for x, y in ((105, 85), (110, 82), (115, 88), (120, 85))]
            assert_strokes_close([first], [expected], 1e-9)

    def test_keep_inserts_only_added_strokes_and_leaves_the_paths(self):
        infile, before = self.first_sketch()
        svg, output = self.again(infile, "--id=photo", "--id=clipasso-layer-photo-3", "--id=hand",
                                 "--strokes=2", "--selected_paths=keep")
        argv = self.recorded()[-1]["argv"]
        self.assertIn("--keep-start", argv)
        [layer] = self.new_layers(svg, {"clipasso-layer-photo-3"})
        self.assertEqual(layer.get("inkscape:label"), "CLIPasso sketch \u2014 2 added strokes")
        self.assertIs(layer.getparent(), svg.getElementById("outer"))  # over the image, as every sketch layer
        paths = list(layer.iter(f"{SVG}path"))
        self.assertEqual(len(paths), 2)
        # the added strokes lie exactly where a fresh 2-stroke sketch puts the double's strokes
        status, errors, fresh, _ = self.run_extension("--id=photo", "--strokes=2", document=infile)
        fresh_svg = inkex.load_svg(io.BytesIO(fresh)).getroot()
        expected = [p.get("d") for p in fresh_svg.getElementById("clipasso-layer-photo-2").iter(f"{SVG}path")]
        self.assertEqual([p.get("d") for p in paths], expected)
        for element_id in ("clipasso-layer-photo-3", "clipasso-photo-3-stroke-1", "hand", "hand_layer"):
            self.assertEqual(self.element_bytes(output, element_id), self.element_bytes(before, element_id), element_id)

    def test_start_makes_a_new_layer_of_all_strokes(self):
        infile, before = self.first_sketch()
        svg, output = self.again(infile, "--id=photo", "--id=clipasso-layer-photo-3", "--id=hand",
                                 "--strokes=2", "--selected_paths=start")
        [layer] = self.new_layers(svg, {"clipasso-layer-photo-3"})
        self.assertEqual(layer.get("inkscape:label"), "CLIPasso sketch \u2014 7 strokes")  # 3 + 2 of hand + 2
        paths = list(layer.iter(f"{SVG}path"))
        self.assertEqual(len(paths), 7)
        # the double hands the start strokes back unchanged: they land where they were
        old = svg.getElementById("clipasso-layer-photo-3")
        for new_path, old_path in zip(paths, old.iter(f"{SVG}path")):
            for (x, y), (ox, oy) in zip(path_nodes(new_path.get("d")), path_nodes(old_path.get("d"))):
                self.assertAlmostEqual(x, ox, delta=2e-4)
                self.assertAlmostEqual(y, oy, delta=2e-4)
        for element_id in ("clipasso-layer-photo-3", "hand"):
            self.assertEqual(self.element_bytes(output, element_id), self.element_bytes(before, element_id))

    def test_start_with_no_strokes_to_add_only_refines(self):
        infile, _ = self.first_sketch()
        svg, _ = self.again(infile, "--id=photo", "--id=clipasso-photo-3-stroke-2", "--strokes=0")
        [layer] = self.new_layers(svg, {"clipasso-layer-photo-3"})
        self.assertEqual(len(list(layer.iter(f"{SVG}path"))), 1)
        self.assertEqual(self.recorded()[-1]["argv"][self.recorded()[-1]["argv"].index("--strokes") + 1], "0")

    def test_ignore_is_todays_run(self):
        infile, _ = self.first_sketch()
        svg, _ = self.again(infile, "--id=photo", "--id=clipasso-layer-photo-3", "--strokes=2",
                            "--selected_paths=ignore")
        argv = self.recorded()[-1]["argv"]
        self.assertNotIn("--start-from", argv)
        self.assertNotIn("--keep-start", argv)
        [layer] = self.new_layers(svg, {"clipasso-layer-photo-3"})
        self.assertEqual(len(list(layer.iter(f"{SVG}path"))), 2)

    def test_other_objects_are_not_paths(self):
        """A rectangle (or text...) selected with the image plays no part: today's run."""
        self.again(os.path.join(DATA, "refine_mm.svg"), "--id=photo", "--id=box", "--strokes=2")
        self.assertNotIn("--start-from", self.recorded()[-1]["argv"])

    def test_several_images_and_ignore(self):
        """Paths with Ignore: several images are fine, sketched afresh."""
        self.again(os.path.join(DATA, "refine_mm.svg"), "--id=photo", "--id=second", "--id=hand", "--strokes=2",
                   "--selected_paths=ignore")
        self.assertNotIn("--start-from", self.recorded()[-1]["argv"])

    def assertRefused(self, infile, *args_and_phrases):
        args = [a for a in args_and_phrases if a.startswith("--")]
        phrases = [a for a in args_and_phrases if not a.startswith("--")]
        status, errors, output, _ = self.run_extension(*args, document=infile)
        self.assertNotIn(status, (None, 0), errors)
        self.assertEqual(output, b"", "the document must not be written")
        self.assertEqual(len(errors.strip().splitlines()), 1, errors)
        self.assertNotIn("Traceback", errors)
        for phrase in phrases:
            self.assertIn(phrase, errors)
        self.assertFalse(os.path.exists(self.record), "the engine must not run")

    def test_refusals(self):
        infile = os.path.join(DATA, "refine_mm.svg")
        self.assertRefused(infile, "--id=photo", "--id=hand", "--id=far", "--strokes=2",
                           "The selected path 'far' lies wholly outside the part of the image 'photo' that shows")
        self.assertRefused(infile, "--id=photo", "--id=hand", "--strokes=0", "--selected_paths=keep",
                           "Keep them and add strokes needs at least 1 stroke to add")
        self.assertRefused(infile, "--id=photo", "--id=hand", "--strokes=2, 0", "--selected_paths=keep",
                           "at least 1 stroke")
        self.assertRefused(infile, "--id=photo", "--id=second", "--id=hand", "--strokes=2",
                           "The selection holds 2 images and 1 paths", "select one image at a time")
        self.assertRefused(infile, "--id=photo", "--strokes=0", "whole numbers from 1 to 1024")  # no paths: as before
        self.assertRefused(infile, "--id=photo", "--id=hand", "--strokes=-1", "whole numbers from 0 to 1024")


def copy_without_tail(element):
    import copy
    element = copy.deepcopy(element)
    element.tail = None
    return element


# --- the process side: events, ETA, cancel ------------------------------------------------------
class TestMemoryReadings(unittest.TestCase):
    """engine_run.read_memory on a made-up /proc (and cgroup v2 tree)."""

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="clipasso-proc-")
        self.addCleanup(lambda: __import__("shutil").rmtree(self.folder, ignore_errors=True))

    def write(self, path, text):
        path = os.path.join(self.folder, path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    def test_machine_engine_and_container(self):
        self.write("proc/meminfo", "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n")
        self.write("proc/42/status", "Name:\tpython\nVmRSS:\t  2048000 kB\nThreads:\t4\n")
        self.write("proc/self/cgroup", "0::/user.slice/app\n")
        proc, cgroup = os.path.join(self.folder, "proc"), os.path.join(self.folder, "cgroup")
        reading = engine_run.read_memory(42, proc, cgroup)
        self.assertEqual((reading["total"], reading["available"], reading["engine"]),
                         (16384000 * 1024, 8192000 * 1024, 2048000 * 1024))
        self.write("cgroup/user.slice/app/memory.max", "max\n")
        self.write("cgroup/user.slice/app/memory.current", "123\n")
        self.assertEqual(engine_run.read_memory(42, proc, cgroup)["total"], 16384000 * 1024)  # no limit
        self.write("cgroup/user.slice/app/memory.max", str(4 * 2 ** 30))
        self.write("cgroup/user.slice/app/memory.current", str(3 * 2 ** 30 + 2 ** 29))
        reading = engine_run.read_memory(42, proc, cgroup)  # the container's limit is the one that kills
        self.assertEqual((reading["total"], reading["available"]), (4 * 2 ** 30, 2 ** 29))
        self.assertTrue(engine_run.short_of_memory(reading))  # 0.5 GB left, the engine held 2 GB
        self.assertIsNone(engine_run.read_memory(43, proc, cgroup)["engine"])  # gone: unknown, not zero
        self.assertIsNone(engine_run.read_memory(42, os.path.join(self.folder, "nothing"), cgroup))

    def test_signals_other_than_sigkill_never_blame_memory(self):
        short = {"engine": 2 ** 30, "available": 0, "total": 2 ** 34, "time": 0.0}
        self.assertIn("most likely because the computer ran out of memory", engine_run.describe_kill(9, "LOG", short))
        text = engine_run.describe_kill(15, "LOG", short)
        self.assertIn("stopped from outside (SIGTERM", text)
        self.assertNotIn("memory", text)


class TestEngineRun(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="clipasso-run-")
        self.addCleanup(self.remove_folder)
        self.photo = os.path.join(DATA, "photo_40x20.png")
        self.log_path = os.path.join(self.folder, "log.txt")

    def command(self, mode):
        return ["env", f"ENGINE_DOUBLE_MODE={mode}", f"ENGINE_DOUBLE_PIDS={self.folder}/pids",
                sys.executable, DOUBLE, "sketch", self.photo, "-o", os.path.join(self.folder, "out.svg"),
                "--strokes", "2"]

    def remove_folder(self):
        import shutil
        shutil.rmtree(self.folder, ignore_errors=True)
        self.assertFalse(os.path.exists(self.folder), "tests must not leave clipasso-run-* behind")

    def test_parse_event_is_the_wire_module(self):
        self.assertEqual(engine_run.wire.parse_event(b'{"event":"progress","iteration":3}\n')["iteration"], 3)
        self.assertFalse(hasattr(engine_run, "parse_event"), "events are parsed by wire.py only")

    def test_format_eta(self):
        self.assertEqual(engine_run.format_eta(12.4), "about 12 s left")
        self.assertEqual(engine_run.format_eta(95), "about 1 min 35 s left")
        self.assertEqual(engine_run.format_eta(4000), "about 1 h 06 min left")
        for bad in (None, "x", float("nan"), -1):
            self.assertEqual(engine_run.format_eta(bad), "estimating time left")

    def test_describe_progress(self):
        fraction, text = engine_run.describe_progress(
            {"event": "progress", "iteration": 30, "total": 120, "loss": 1.23456, "eta": 90})
        self.assertEqual(fraction, 0.25)
        self.assertEqual(text, "Iteration 30 of 120 \u00b7 loss 1.2346 \u00b7 about 1 min 30 s left")
        self.assertEqual(engine_run.describe_progress({"iteration": 0, "total": 0})[0], 0.0)

    def run_blocking(self, mode, **kwargs):
        events = []
        with open(self.log_path, "wb") as log:
            try:
                return events, engine_run.run_blocking(self.command(mode), log, self.log_path,
                                                       on_event=events.append, **kwargs)
            except engine_run.EngineFailed as failure:
                return events, failure

    def test_result_and_stray_stdout(self):
        events, result = self.run_blocking("garbage")
        self.assertEqual([r["event"] for r in result], ["result"])
        self.assertEqual(len(result[0]["points"]), 2)
        self.assertEqual([e["event"] for e in events][:2], ["start", "status"])
        with open(self.log_path, encoding="utf-8") as handle:
            self.assertIn("[stdout] some library printing on stdout", handle.read())

    def cancel_after_progress(self, mode, stop_grace_s=engine_run.STOP_GRACE_S):
        """Run the double, cancel as soon as a progress event arrives; -> seconds it all took."""
        seen, failure = [], None
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            try:
                engine_run.run_blocking(self.command(mode), log, self.log_path, on_event=seen.append,
                                        should_cancel=lambda: any(e["event"] == "progress" for e in seen),
                                        stop_grace_s=stop_grace_s)
            except engine_run.EngineCancelled as cancelled:
                failure = cancelled
        self.assertIsInstance(failure, engine_run.EngineCancelled)
        self.assertIn("not changed", str(failure))
        return time.monotonic() - started

    def test_cancel_polite_engine(self):
        took = self.cancel_after_progress("hang")
        self.assertLess(took, engine_run.STOP_GRACE_S + 2, "closing stdin should stop it at once")
        self.assertFalse(engine_run.LIVE)

    def test_cancel_kills_stubborn_engine_and_its_children(self):
        took = self.cancel_after_progress("spawn", stop_grace_s=0.5)
        self.assertGreater(took, 1.0, "both grace periods must have been waited (it ignores stdin and SIGTERM)")
        with open(os.path.join(self.folder, "pids"), encoding="utf-8") as handle:
            pids = [int(p) for p in handle.read().split()]
        deadline = time.monotonic() + 2
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse([pid for pid in pids if alive(pid)], "engine or its child survived the cancel")

    def test_engine_exits_when_stdin_closes(self):
        with open(self.log_path, "wb") as log:
            engine = engine_run.EngineProcess(self.command("hang"), log)
            while engine.last_progress is None:
                engine.drain(timeout=0.1)
            engine.process.stdin.close()
            self.assertIn(engine.process.wait(timeout=5), (130,))
            engine.stop()

    def test_unstartable_engine(self):
        with open(self.log_path, "wb") as log:
            with self.assertRaises(engine_run.EngineFailed) as caught:
                engine_run.EngineProcess([os.path.join(self.folder, "nope")], log)
        self.assertIn("install.py", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
