"""Placement on unusual documents (issue 18 item 1): nested <svg> viewports (x, y, width, height,
viewBox, every preserveAspectRatio, the viewport clip), <symbol>/<use> clones, <a> and <switch>
groups, transforms on the image itself, a rotated layer in a millimetre document. And the crop of
round and turned clips on `slice` placements, free of float noise (issue 18 item 2).

Three independent witnesses that the strokes lie where the image's pixels are:
- a map from the raster's pixels to the page worked out by hand for every case (the comments in
  tests/data/extension/structures*.svg), against every control point the extension writes;
- Inkscape 1.2.2's own idea of each image's box (`inkscape --query-all`), where Inkscape is installed;
- golden files, written under inkex 1.4.1 and reproduced byte for byte under Debian's inkex 1.2.
"""

import io
import math
import os
import re
import shutil
import subprocess
import sys
import unittest

import inkex
from inkex.tester import ComparisonMixin, TestCase

import test_extension as base  # a module reference: its test classes are not collected again here

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine_double  # noqa: E402  (the double's own strokes and canvas map)

import clipasso_sketch  # noqa: E402
import document_tree  # noqa: E402
import placement  # noqa: E402
from clipasso_sketch import ClipassoSketch  # noqa: E402

DATA = base.DATA
SIZES = {"photo_40x20.png": (40, 20), "photo_30x60.png": (30, 60), "photo_360x240.png": (360, 240)}
TOLERANCE = 1e-3  # user units; the output's 4 decimals round by 5e-5 at most


def rotate_about(degrees, cx, cy):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return lambda x, y: (cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy))


MM_LAYER = rotate_about(30, 100, 75)
MM_CLONE = rotate_about(-15, 0, 0)

# (document, selected id) -> (layer id's tag, raster, crop sent or None, pixels -> page by hand)
CASES = {
    ("structures.svg", "in_nested_meet"): ("in_nested_meet", "photo_40x20.png", None,
                                           lambda px, py: (30 + 2 * px, 20 + 2 * py)),
    ("structures.svg", "in_nested_slice"): ("in_nested_slice", "photo_40x20.png", (16, 0, 40, 20),
                                            lambda px, py: (100 + 3 * px, 10 + 3 * py)),
    ("structures.svg", "in_nested_none"): ("in_nested_none", "photo_40x20.png", None,
                                           lambda px, py: (270 + 2.5 * px, 10 + 3 * py)),
    ("structures.svg", "in_nested_twice"): ("in_nested_twice", "photo_40x20.png", None,
                                            lambda px, py: (48 + px, 114 + py)),
    ("structures.svg", "clone_symbol"): ("clone_symbol-sym_image", "photo_40x20.png", None,
                                         lambda px, py: (160 + 2 * px, 160 + 2 * py)),
    ("structures.svg", "clone_image"): ("clone_image", "photo_30x60.png", None,
                                        lambda px, py: (300 - 0.5 * py, 200 + 0.5 * px)),
    ("structures.svg", "clone_of_clone"): ("clone_of_clone-sym_image", "photo_40x20.png", None,
                                           lambda px, py: (160 + 2 * px, 220 + 2 * py)),
    ("structures.svg", "clone_group"): ("clone_group-in_link", "photo_40x20.png", None,
                                        lambda px, py: (20 + px, 240 + py)),
    ("structures.svg", "in_link"): ("in_link", "photo_40x20.png", None, lambda px, py: (20 + px, 200 + py)),
    ("structures.svg", "switch"): ("switch_shown", "photo_40x20.png", None,
                                   lambda px, py: (100 + px, 250 + py)),
    ("structures_mm.svg", "mm_in_nested"): ("mm_in_nested", "photo_40x20.png", None,
                                            lambda px, py: MM_LAYER(10 + 1.5 * px, 10 + 1.5 * py)),
    ("structures_mm.svg", "mm_clone"): ("mm_clone-mm_sym_image", "photo_40x20.png", None,
                                        lambda px, py: MM_LAYER(*MM_CLONE(100 + px, 50 + py))),
    ("structures_mm.svg", "mm_in_slice"): ("mm_in_slice", "photo_40x20.png", (10, 0, 30, 20),
                                           lambda px, py: MM_LAYER(112.5 + 0.75 * px, 100 + 0.75 * py)),
    # clips.svg / clips_mm.svg: the 360x240 raster, slice, 0.5 (px) or 0.25 (mm) a pixel (see the files)
    ("clips.svg", "circle_slice"): ("circle_slice", "photo_360x240.png", (120, 40, 240, 160),
                                    lambda px, py: (-30 + px / 2, py / 2)),
    ("clips.svg", "circle_turned_group"): ("circle_turned_group", "photo_360x240.png", (120, 60, 240, 180),
                                           lambda px, py: (110 + px / 2, py / 2)),
    # the turned ellipse's exact box: (180 +- 2 sqrt(1300), 120 +- 2 sqrt(700)) px, rounded outward
    ("clips.svg", "ellipse_turned"): ("ellipse_turned", "photo_360x240.png", (107, 67, 253, 173),
                                      lambda px, py: (-30 + px / 2, 140 + py / 2)),
    ("clips.svg", "hair_outside"): ("hair_outside", "photo_360x240.png", (120, 40, 240, 160),
                                    lambda px, py: (110 + px / 2, 140 + py / 2)),
    ("clips.svg", "hair_inside"): ("hair_inside", "photo_360x240.png", (120, 40, 240, 160),
                                   lambda px, py: (110 + px / 2, 140 + py / 2)),
    ("clips.svg", "tenth_outside"): ("tenth_outside", "photo_360x240.png", (119, 39, 241, 161),
                                     lambda px, py: (110 + px / 2, 140 + py / 2)),
    ("clips_mm.svg", "mm_circle_slice"): ("mm_circle_slice", "photo_360x240.png", (120, 40, 240, 160),
                                          lambda px, py: MM_LAYER(-5 + px / 4, 10 + py / 4)),
    ("clips_mm.svg", "mm_circle_group"): ("mm_circle_group", "photo_360x240.png", (120, 40, 240, 160),
                                          lambda px, py: MM_LAYER(75 + px / 4, 10 + py / 4)),
}


def comparisons_for(document):
    return [(f"--id={selected}", "--strokes=3") for doc, selected in CASES if doc == document]


class TestStructuresGolden(base.DoubleEngineMixin, ComparisonMixin, TestCase):
    effect_class = ClipassoSketch
    compare_file = "structures.svg"
    comparisons = comparisons_for(compare_file)


class TestClipsGolden(base.DoubleEngineMixin, ComparisonMixin, TestCase):
    effect_class = ClipassoSketch
    compare_file = "clips.svg"
    comparisons = comparisons_for(compare_file)


class TestClipsMillimetreGolden(base.DoubleEngineMixin, ComparisonMixin, TestCase):
    effect_class = ClipassoSketch
    compare_file = "clips_mm.svg"
    comparisons = comparisons_for(compare_file)


class TestStructuresMillimetreGolden(base.DoubleEngineMixin, ComparisonMixin, TestCase):
    effect_class = ClipassoSketch
    compare_file = "structures_mm.svg"
    comparisons = comparisons_for(compare_file)


@unittest.skipUnless(base.HAVE_INKEX_12, "needs Inkscape's own inkex (Debian: apt install inkscape)")
class TestStructuresUnderInkex12(base.DoubleEngineMixin, TestCase):
    """The same golden bytes when Inkscape's inkex 1.2 runs the script."""
    effect_class = ClipassoSketch  # names the golden files
    run_script = base.TestInkex12.run_script

    def test_goldens_under_inkex_12(self):
        for document, selected in CASES:
            args = (f"--id={selected}", "--strokes=3")
            with self.subTest(case=selected):
                done = self.run_script(args, document)
                self.assertEqual((done.returncode, done.stderr), (0, b""))
                with open(ComparisonMixin.get_compare_cmpfile(self, args), "rb") as handle:
                    self.assertEqual(done.stdout, handle.read())


class TestStrokesOnThePixels(base.DoubleEngineMixin, TestCase):
    """Every control point the extension writes, against the hand-made pixel -> page map."""

    def sketch(self, document, selected):
        status, errors, output, _ = self.run_extension(f"--id={selected}", "--strokes=3", document=document)
        self.assertIsNone(status, errors)
        self.assertEqual(errors, "")
        return inkex.load_svg(io.BytesIO(output)).getroot()

    def crops_sent(self):
        argv = self.recorded()[-1]["argv"]
        return [argv[i + 1] for i, word in enumerate(argv) if word == "--crop"]

    def test_every_control_point(self):
        for (document, selected), (tag, raster, crop, by_hand) in CASES.items():
            with self.subTest(case=selected):
                svg = self.sketch(document, selected)
                self.assertEqual(self.crops_sent(), [",".join(map(str, crop))] if crop else [])
                width, height = SIZES[raster]
                to_pixels = engine_double.canvas_to_image(width, height, crop)
                strokes = engine_double.inside_crop(engine_double.known_strokes(3), crop)
                for k, stroke in enumerate(strokes):
                    path = svg.getElementById(f"clipasso-{tag}-3-stroke-{k + 1}")
                    found = [(float(x), float(y)) for x, y in re.findall(f"({base.NUMBER}),({base.NUMBER})",
                                                                         path.get("d"))]
                    expected = [by_hand(*placement.apply(to_pixels, x, y)) for x, y in stroke]
                    for (fx, fy), (ex, ey) in zip(found, expected):
                        self.assertLess(max(abs(fx - ex), abs(fy - ey)), TOLERANCE, (k, found, expected))

    def test_layer_goes_over_the_clone_and_the_original_stays(self):
        svg = self.sketch("structures.svg", "clone_symbol")
        layer = svg.getElementById("clipasso-layer-clone_symbol-sym_image-3")
        self.assertIs(layer.getprevious(), svg.getElementById("layer_clones"))
        # without the new layer, the document is the one read, to the byte
        layer.getparent().remove(layer)
        original = inkex.load_svg(os.path.join(DATA, "structures.svg")).getroot()
        self.assertEqual(svg.tostring(), original.tostring())

    def test_switch_sketches_only_what_shows(self):
        self.sketch("structures.svg", "switch")
        self.assertEqual(self.recorded()[-1]["image_sizes"], [[40, 20]])
        argv = self.recorded()[-1]["argv"]
        self.assertEqual([argv[i + 1] for i, word in enumerate(argv) if word == "--name"], ["switch_shown"])

    def test_a_clone_is_named_by_the_clone(self):
        self.sketch("structures.svg", "clone_image")
        argv = self.recorded()[-1]["argv"]
        self.assertEqual([argv[i + 1] for i, word in enumerate(argv) if word == "--name"], ["clone_image"])

    def test_the_original_and_its_clone_are_two_sketches(self):
        status, errors, output, _ = self.run_extension("--id=clone_symbol", "--id=clone_of_clone", "--id=link",
                                                       "--id=clone_group", "--strokes=2", document="structures.svg")
        self.assertIsNone(status, errors)
        ids = inkex.load_svg(io.BytesIO(output)).getroot().xpath("//@id")
        for tag in ("clone_symbol-sym_image", "clone_of_clone-sym_image", "in_link", "clone_group-in_link"):
            self.assertIn(f"clipasso-layer-{tag}-2", ids)


class TestDocumentTree(unittest.TestCase):
    """Which images a selection shows, and where, without running anything."""

    @classmethod
    def setUpClass(cls):
        cls.svg = inkex.load_svg(os.path.join(DATA, "structures.svg")).getroot()

    def shown(self, element_id):
        return [instance.image.get("id") for instance in
                document_tree.images_shown_by(self.svg.getElementById(element_id))]

    def test_selection_follows_the_rendering(self):
        self.assertEqual(self.shown("layer_clones"), ["sym_image", "def_image", "sym_image", "in_link"])
        self.assertEqual(self.shown("switch"), ["switch_shown"])
        # the whole document: <defs> and its <symbol> show only through the clones
        self.assertEqual(self.shown("svg1"), ["in_nested_meet", "in_nested_slice", "in_nested_none", "in_nested_twice",
                                              "sym_image", "def_image", "sym_image", "in_link", "in_link",
                                              "switch_shown"])

    def test_an_original_inside_defs_shows_nothing_where_it_stands(self):
        self.assertEqual(self.shown("sym_image"), [])  # picked in the XML editor: sketch its clone instead
        self.assertEqual(self.shown("def_image"), [])
        self.assertEqual(self.shown("sym"), [])

    def test_a_clone_without_size_gives_its_symbol_the_whole_viewport(self):
        svg = inkex.load_svg(io.BytesIO(
            b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="0 0 400 300">'
            b'<symbol id="s" viewBox="0 0 40 30"><image id="im" width="40" height="20"/></symbol>'
            b'<use id="u" xlink:href="#s" x="5"/></svg>')).getroot()
        [instance] = document_tree.images_shown_by(svg.getElementById("u"))
        # 100 % of 400 x 300: the 40 x 30 viewBox at scale 10, then x = 5
        self.assertEqual(instance.frames(clipasso_sketch.parse_transform)[0].outer, (10, 0, 0, 10, 5, 0))

    def test_switch_languages(self):
        switch = inkex.load_svg(io.BytesIO(
            b'<svg xmlns="http://www.w3.org/2000/svg"><switch><g id="de" systemLanguage="de, fr"/>'
            b'<g id="en" systemLanguage="en-GB"/><g id="any"/></switch></svg>')).getroot()[0]
        choose = lambda *languages: document_tree.switch_choice(switch, list(languages)).get("id")
        self.assertEqual(choose("de-at"), "de")
        self.assertEqual(choose("fr"), "de")
        self.assertEqual(choose("en-us"), "en")
        self.assertEqual(choose("ja"), "any")
        self.assertEqual(document_tree.user_languages({"LANG": "pt_BR.UTF-8"}), ["pt-br"])
        self.assertEqual(document_tree.user_languages({"LANGUAGE": "de:en", "LANG": "C"}), ["de", "en"])
        self.assertEqual(document_tree.user_languages({"LANG": "C.UTF-8"}), ["en"])

    def test_a_clone_of_itself_shows_nothing(self):
        svg = inkex.load_svg(io.BytesIO(
            b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
            b'<g id="g"><image id="im" width="4" height="2" xlink:href="a.png"/>'
            b'<use id="loop" xlink:href="#g"/></g><use id="self" xlink:href="#self"/></svg>')).getroot()
        self.assertEqual([i.image.get("id") for i in document_tree.images_shown_by(svg.getElementById("g"))], ["im"])
        self.assertEqual(document_tree.images_shown_by(svg.getElementById("self")), [])

    def test_viewport_clip_and_overflow(self):
        [slice_] = document_tree.images_shown_by(self.svg.getElementById("in_nested_slice"))
        frames = slice_.frames(clipasso_sketch.parse_transform)
        self.assertEqual(frames[1].clip, (150.0, 10.0, 250.0, 70.0))
        [visible] = document_tree.images_shown_by(self.svg.getElementById("in_nested_none"))
        self.assertIsNone(visible.frames(clipasso_sketch.parse_transform)[1].clip)

    def test_zero_sized_viewport_is_a_value_error(self):
        svg = inkex.load_svg(io.BytesIO(b'<svg xmlns="http://www.w3.org/2000/svg">'
                                        b'<svg width="0" height="10"><image id="im"/></svg></svg>')).getroot()
        [instance] = document_tree.images_shown_by(svg.getElementById("im"))
        with self.assertRaises(ValueError):
            instance.frames(clipasso_sketch.parse_transform)

    def test_viewbox_transform_matches_the_image_rule(self):
        for aspect in (None, "none", "xMinYMax slice", "xMaxYMid meet"):
            self.assertEqual(placement.viewbox_transform((5, 6, 70, 30), (0, 0, 40, 20), aspect),
                             placement.image_placement(5, 6, 70, 30, (40, 20), aspect))
        # a viewBox origin shifts by its own scale: (10,5) lands on the viewport's corner
        m = placement.viewbox_transform((150, 10, 100, 60), (10, 5, 50, 20), "xMinYMin slice")
        self.assertEqual(placement.apply(m, 10, 5), (150, 10))


class TestInkexComposedTransform(unittest.TestCase):
    """Why the extension composes nested viewports itself: inkex's composed_transform() (1.4.1 here,
    1.2 below) applies a nested <svg>'s transform and ignores its x, y and viewBox, unlike Inkscape."""
    SOURCE = (b'<svg xmlns="http://www.w3.org/2000/svg"><svg x="100" y="50" width="200" height="100" '
              b'viewBox="0 0 50 50" transform="translate(7,0)"><image id="im" width="4" height="2"/></svg></svg>')
    PROBE = ("import inkex, io, sys; svg = inkex.load_svg(io.BytesIO(sys.stdin.buffer.read())).getroot(); "
             "print(tuple(svg.getElementById('im').composed_transform().to_hexad()))")

    def test_inkex_14(self):
        svg = inkex.load_svg(io.BytesIO(self.SOURCE)).getroot()
        self.assertEqual(tuple(svg.getElementById("im").composed_transform().to_hexad()), (1, 0, 0, 1, 7, 0))
        [instance] = document_tree.images_shown_by(svg.getElementById("im"))
        # meet: scale min(4, 2) = 2, centred across: (150, 50); the transform is not drawn
        self.assertEqual(instance.frames(clipasso_sketch.parse_transform)[0].outer, (2, 0, 0, 2, 150, 50))

    @unittest.skipUnless(base.HAVE_INKEX_12, "needs Inkscape's own inkex")
    def test_inkex_12(self):
        done = subprocess.run([base.SYSTEM_PYTHON, "-c", self.PROBE], input=self.SOURCE, capture_output=True,
                              env=dict(os.environ, PYTHONPATH=base.INKSCAPE_EXTENSIONS), timeout=60)
        self.assertEqual(done.stdout.decode().strip(), "(1.0, 0.0, 0.0, 1.0, 7.0, 0.0)", done.stderr)


class TestCropWithoutNoise(unittest.TestCase):
    """Whole pixels from a visible box: snapped within placement.SNAP_PX, outward beyond it."""

    def test_issue_case_inkex_box_of_a_circle(self):
        # what inkex 1.2 and 1.4.1 measure for <circle cx=60 cy=50 r=30> (the Bezier form): 8.8e-4 over
        # on the left and bottom, 1.75e-3 px at 2 px a unit; the circle is (120,40)-(240,160) px
        box = (2 * (29.99912310074212 + 30), 2 * 20.0, 2 * (90.0 + 30), 2 * 80.00087689925789)
        self.assertEqual(placement.whole_pixel_box((360, 240), box), (120, 40, 240, 160))

    def test_hairs_and_slivers(self):
        for hair in (1e-9, 1e-4, 5e-3, 0.0099):
            for sign in (-1, 1):  # outside, inside
                box = (120 - sign * hair, 40 - sign * hair, 240 + sign * hair, 160 + sign * hair)
                self.assertEqual(placement.whole_pixel_box((360, 240), box), (120, 40, 240, 160), (hair, sign))
        # a hundredth of a pixel or more outside: that pixel shows, and is sketched
        self.assertEqual(placement.whole_pixel_box((360, 240), (119.98, 39.9, 240.011, 160.5)), (119, 39, 241, 161))
        # a hundredth of a pixel or more inside: the pixel still shows, and stays
        self.assertEqual(placement.whole_pixel_box((360, 240), (120.5, 40.02, 239.5, 159.98)), (120, 40, 240, 160))
        # a sliver narrower than the snap is still one pixel
        self.assertEqual(placement.whole_pixel_box((360, 240), (100.001, 0, 100.004, 240)), (100, 0, 101, 240))

    def test_ellipse_box_against_its_points(self):
        for m in ((1, 0, 0, 1, 0, 0), placement.compose((0.5, 0, 0, 0.5, -30, 0), (math.cos(1), math.sin(1),
                                                                                     -math.sin(1), math.cos(1), 4, 5)),
                  (1.5, 0.3, 0.7, 0.9, 10, -2)):
            box = placement.ellipse_box(m, 60, 50, 40, 20)
            points = [placement.apply(m, 60 + 40 * math.cos(t), 50 + 20 * math.sin(t))
                      for t in (2 * math.pi * k / 20000 for k in range(20000))]
            sampled = (min(x for x, _ in points), min(y for _, y in points),
                       max(x for x, _ in points), max(y for _, y in points))
            for ours, theirs in zip(box, sampled):
                self.assertAlmostEqual(ours, theirs, delta=1e-6)
            inside = [a <= b + 1e-12 for a, b in zip(box[:2], sampled[:2])]
            self.assertTrue(all(inside), "the exact box is never smaller than the ellipse")

    def test_shape_boxes(self):
        svg = inkex.load_svg(io.BytesIO(
            b'<svg xmlns="http://www.w3.org/2000/svg"><clipPath id="c">'
            b'<rect id="r" x="1" y="2" width="3" height="4" transform="rotate(90)"/>'
            b'<polygon id="p" points="0,0 10,0 5,8"/><line id="l" x1="1" y1="1" x2="3" y2="7"/>'
            b'<circle id="zero" r="0"/><circle id="pct" cx="50%" cy="5" r="2"/>'
            b'<path id="d" d="M 0,0 L 10,0 L 10,5 Z" transform="translate(1,1)"/></clipPath></svg>')).getroot()
        shift = (2, 0, 0, 2, 100, 0)

        def box(element_id):
            element = svg.getElementById(element_id)
            measured, bounds = clipasso_sketch.shape_box(element, element.tag.rpartition("}")[2], shift)
            self.assertTrue(measured, element_id)
            return bounds and tuple(round(v, 12) for v in bounds)

        self.assertEqual(box("r"), (100 - 12, 2, 100 - 4, 8))  # rotate(90): (x, y) -> (-y, x)
        self.assertEqual(box("p"), (100, 0, 120, 16))
        self.assertEqual(box("l"), (102, 2, 106, 14))
        self.assertIsNone(box("zero"))  # draws nothing
        self.assertIsNotNone(box("pct"))  # a percentage: inkex measures it
        self.assertEqual(box("d"), (102, 2, 122, 12))
        self.assertEqual(svg.getElementById("d").attrib["transform"], "translate(1,1)", "measured on a copy")


def inkscape_available():
    return shutil.which("inkscape") is not None and shutil.which("xvfb-run") is not None


@unittest.skipUnless(inkscape_available(), "needs Inkscape and xvfb-run")
class TestInkscapeAgrees(unittest.TestCase):
    """Inkscape's own bounding box of each image (--query-all, px, 3 decimals) is where the hand-made
    maps above (which every stroke matches) put the raster's corners (each raster here fills its rect)."""

    def query(self, document):
        done = subprocess.run(["xvfb-run", "-a", "inkscape", "--query-all", os.path.join(DATA, document)],
                              capture_output=True, timeout=120)
        boxes = {}
        for line in done.stdout.decode().splitlines():
            name, *numbers = line.split(",")
            if len(numbers) == 4:
                x, y, w, h = map(float, numbers)
                boxes[name] = (x, y, x + w, y + h)
        return boxes

    def test_query_all(self):
        for document, px_per_unit in (("structures.svg", 1.0), ("structures_mm.svg", 96 / 25.4)):  # not clips
            boxes = self.query(document)
            for (doc, selected), (tag, raster, crop, by_hand) in CASES.items():
                if doc != document or selected == "switch":  # Inkscape boxes every child of a switch
                    continue
                with self.subTest(case=selected):
                    width, height = SIZES[raster]
                    corners = [by_hand(x, y) for x in (0, width) for y in (0, height)]
                    ours = (min(x for x, _ in corners), min(y for _, y in corners),
                            max(x for x, _ in corners), max(y for _, y in corners))
                    theirs = tuple(v / px_per_unit for v in boxes[selected])
                    self.assertLess(max(abs(a - b) for a, b in zip(ours, theirs)), TOLERANCE, (ours, theirs))


if __name__ == "__main__":
    unittest.main()
