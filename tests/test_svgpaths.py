"""clipasso_engine.svgpaths: designers' SVG paths -> cubic start strokes in canvas px.

Expected points are worked out by hand in the comments; no torch needed."""

import math
import pathlib

import numpy as np
import pytest

from clipasso_engine import svgpaths
from clipasso_engine.errors import EngineError
from clipasso_engine.imageio import canvas_to_image_points
from clipasso_engine.svg import strokes_to_svg
from clipasso_engine.svgpaths import ARC_TOLERANCE, read_start_file, read_start_strokes

CANVAS = 224
IDENTITY = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
PHOTO_SIZE = (640, 480)
PHOTO_MAP = (640 / 224, 0.0, 0.0, 640 / 224, 0.0, -80.0)   # a 640 x 480 photo padded to a square


def svg(body, size="224", view_box="0 0 224 224", namespace=True):
    xmlns = ' xmlns="http://www.w3.org/2000/svg"' if namespace else ""
    box = f' viewBox="{view_box}"' if view_box else ""
    return f'<svg{xmlns} width="{size}" height="{size}"{box}>{body}</svg>'


def strokes(d=None, body=None, **kwargs):
    """Strokes of one path d (or a whole body) in a canvas file."""
    return read_start_strokes(svg(body if body is not None else f'<path d="{d}"/>', **kwargs),
                              CANVAS, PHOTO_SIZE, PHOTO_MAP)


def line(p0, p1):
    p0, p1 = np.array(p0, float), np.array(p1, float)
    return [p0, p0 + (p1 - p0) / 3, p0 + 2 * (p1 - p0) / 3, p1]


def refused(data, *, size=PHOTO_SIZE, matrix=PHOTO_MAP) -> str:
    with pytest.raises(EngineError) as caught:
        read_start_strokes(data, CANVAS, size, matrix, name="start.svg")
    assert caught.value.code == "bad_argument"
    return caught.value.message


def sample(cubics, count=200):
    """(N * count, 2) points along each cubic."""
    t = np.linspace(0, 1, count)[:, None]
    basis = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], axis=1)  # (count, 4, 1)
    return np.concatenate([(basis * cubic[None]).sum(axis=1) for cubic in cubics])


# ------------------------------------------------------------------------------------------------
# Segments

THE_PATH = [
    line((10, 10), (40, 10)),
    [(40, 10), (60, 10), (70, 20), (70, 40)],    # Q 70 10 70 40: 40 + 2/3 * 30 = 60, 40 + 2/3 * (10 - 40) = 20
    [(70, 40), (70, 60), (50, 70), (30, 70)],    # C as written
    line((30, 70), (10, 10)),                    # Z: back to the start
]


def test_a_multi_segment_path_is_one_cubic_per_segment():
    got = strokes("M 10 10 L 40 10 Q 70 10 70 40 C 70 60 50 70 30 70 Z")
    assert got.dtype == np.float64 and got.shape == (4, 4, 2)
    np.testing.assert_allclose(got, THE_PATH, atol=1e-12)
    np.testing.assert_allclose(got[3, 1], (70 / 3, 50), atol=1e-12)


def test_relative_commands_count_from_the_current_point():
    got = strokes("m 10 10 l 30 0 q 30 0 30 30 c 0 20 -20 30 -40 30 z")
    np.testing.assert_allclose(got, THE_PATH, atol=1e-12)


def test_pairs_after_a_moveto_are_linetos():
    np.testing.assert_allclose(strokes("M 10 10 20 10 20 20"), [line((10, 10), (20, 10)), line((20, 10), (20, 20))])
    np.testing.assert_allclose(strokes("m 10 10 10 0 0 10"), [line((10, 10), (20, 10)), line((20, 10), (20, 20))])


def test_after_z_a_relative_moveto_counts_from_the_subpath_start():
    got = strokes("M 10 10 L 20 10 L 20 20 Z m 5 5 l 1 0")
    np.testing.assert_allclose(got[-1], line((15, 15), (16, 15)), atol=1e-12)
    got = strokes("M 10 10 L 20 10 z l 0 5")   # a command after Z starts at the start, too
    np.testing.assert_allclose(got[-1], line((10, 10), (10, 15)), atol=1e-12)


def test_horizontal_and_vertical_lines():
    got = strokes("M 10 10 H 50 V 30 h -20 v 10")
    expected = [line((10, 10), (50, 10)), line((50, 10), (50, 30)), line((50, 30), (30, 30)), line((30, 30), (30, 40))]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_s_reflects_the_previous_cubic_control_point():
    got = strokes("M 0 0 C 10 0 20 10 30 10 S 50 30 60 30 s 10 0 20 0")
    # second: 2 * (30, 10) - (20, 10) = (40, 10); third: 2 * (60, 30) - (50, 30) = (70, 30), then +(10, 0)
    np.testing.assert_allclose(got[1], [(30, 10), (40, 10), (50, 30), (60, 30)])
    np.testing.assert_allclose(got[2], [(60, 30), (70, 30), (70, 30), (80, 30)])
    after_line = strokes("M 0 0 L 10 0 S 20 10 30 10")   # nothing to reflect: the current point
    np.testing.assert_allclose(after_line[1], [(10, 0), (10, 0), (20, 10), (30, 10)])


def test_t_reflects_the_previous_quadratic_control_point():
    got = strokes("M 0 0 Q 10 20 20 0 T 40 0 T 60 0")
    # T 40 0: control 2 * (20, 0) - (10, 20) = (30, -20), raised: (20 + 20/3, -40/3), (40 - 20/3, -40/3)
    np.testing.assert_allclose(got[1], [(20, 0), (80 / 3, -40 / 3), (100 / 3, -40 / 3), (40, 0)], atol=1e-12)
    # T 60 0: control 2 * (40, 0) - (30, -20) = (50, 20)
    np.testing.assert_allclose(got[2], [(40, 0), (140 / 3, 40 / 3), (160 / 3, 40 / 3), (60, 0)], atol=1e-12)
    after_cubic = strokes("M 0 0 C 0 10 10 10 10 0 T 40 0")   # control = the current point (10, 0)
    np.testing.assert_allclose(after_cubic[1], [(10, 0), (10, 0), (20, 0), (40, 0)], atol=1e-12)


def test_numbers_without_separators():
    # M (10, -5), L (.5, .5), then an implicit L (-.5, .5)
    got = strokes("M1e1-5L.5.5-.5.5")
    np.testing.assert_allclose(got, [line((10, -5), (0.5, 0.5)), line((0.5, 0.5), (-0.5, 0.5))], atol=1e-12)
    np.testing.assert_allclose(strokes("M 1E-5,2e+1 L 3.,4"), [line((1e-5, 20), (3, 4))], atol=1e-15)


def test_z_adds_a_line_only_across_a_gap():
    assert len(strokes("M 0 0 L 10 0 L 0 0 Z")) == 2
    assert len(strokes("M 0 0 L 10 0 L 0 1e-10 Z")) == 2
    assert len(strokes("M 0 0 L 10 0 Z")) == 2


def test_zero_length_segments_stay_only_as_a_path_s_one_dot():
    np.testing.assert_allclose(strokes("M 10 10 L 10 10 L 20 10"), [line((10, 10), (20, 10))])
    np.testing.assert_allclose(strokes("M 10 10 L 10 10 l 0 0"), [line((10, 10), (10, 10))])
    assert len(strokes(body='<path d="M 5 5 L 5 5"/><path d="M 1 1 L 2 2"/>')) == 2


def test_paths_without_d_are_skipped_and_the_order_is_the_document_s():
    body = ('<g><path d="M 1 0 L 2 0"/><g><path d="M 3 0 L 4 0"/></g></g><path/><path d=" "/>'
            '<path d="M 5 0 L 6 0"/>')
    np.testing.assert_allclose(strokes(body=body)[:, 0, 0], [1, 3, 5])


# ------------------------------------------------------------------------------------------------
# Arcs

def radii(cubics, centre):
    return np.linalg.norm(sample(cubics) - np.array(centre, float), axis=1)


def test_a_quarter_circle_stays_within_the_tolerance():
    got = strokes("M 150 100 A 50 50 0 0 1 100 150")   # centre (100, 100), clockwise on screen
    assert np.abs(radii(got, (100, 100)) - 50).max() < ARC_TOLERANCE
    np.testing.assert_array_equal(got[0, 0], (150, 100))
    np.testing.assert_array_equal(got[-1, 3], (100, 150))
    points = sample(got)
    assert (points >= 100 - 1e-9).all()   # the quarter between 3 and 6 o'clock
    np.testing.assert_array_equal(got[1:, 0], got[:-1, 3])   # pieces meet
    # flags that touch, relative end
    np.testing.assert_allclose(strokes("M 150 100 a50,50 0 01-50,50"), got, atol=1e-12)


def test_a_large_arc_splits_into_more_pieces():
    quarter = strokes("M 150 100 A 50 50 0 0 1 100 150")
    large = strokes("M 150 100 A 50 50 0 1 1 100 150")   # 270 degrees about (150, 150)
    assert len(large) > len(quarter)
    assert np.abs(radii(large, (150, 150)) - 50).max() < ARC_TOLERANCE
    assert sample(large)[:, 0].max() == pytest.approx(200, abs=ARC_TOLERANCE)   # it passes 3 o'clock


def test_the_tolerance_is_in_canvas_px():
    # a quarter of radius 200 needs two pieces (one errs by up to 200 * 5.45e-4 = 0.11 px), of radius 5 one
    grown = strokes(body='<path transform="scale(40)" d="M 10 5 A 5 5 0 0 1 5 10"/>')
    assert len(grown) == 2 and len(strokes("M 10 5 A 5 5 0 0 1 5 10")) == 1
    assert np.abs(radii(grown, (200, 200)) - 200).max() < ARC_TOLERANCE
    np.testing.assert_allclose(grown, strokes("M 400 200 A 200 200 0 0 1 200 400"), atol=1e-9)


def test_radii_too_small_are_scaled_up_and_zero_radii_are_lines():
    got = strokes("M 0 100 A 1 1 0 0 1 100 100")   # a half circle of radius 50 about (50, 100), over the top
    assert np.abs(radii(got, (50, 100)) - 50).max() < ARC_TOLERANCE
    assert sample(got)[:, 1].min() == pytest.approx(50, abs=ARC_TOLERANCE)
    np.testing.assert_allclose(strokes("M 0 0 A 0 5 0 0 1 30 0"), [line((0, 0), (30, 0))])
    assert len(strokes("M 0 0 A 5 5 0 0 1 0 0 L 1 0")) == 1   # an arc to its own start is omitted


def test_a_rotated_ellipse():
    flat = strokes("M 0 100 A 60 30 0 0 1 120 100")   # half an ellipse about (60, 100)
    x, y = (sample(flat) - (60, 100)).T
    assert np.abs(np.hypot(x / 60, y / 30) - 1).max() < ARC_TOLERANCE / 30
    np.testing.assert_allclose(strokes("M 0 100 A 30 60 90 0 1 120 100"), flat, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Transforms and spaces

def test_transforms_of_the_group_and_the_path():
    body = ('<g transform="rotate(90 100 100)"><path transform="matrix(2 0 0 2 10 0)" d="M 0 0 L 10 0"/></g>')
    # the matrix: (10, 0) and (30, 0); rotate 90 about (100, 100): (x, y) -> (200 - y, x)
    np.testing.assert_allclose(strokes(body=body), [line((200, 10), (200, 30))], atol=1e-12)


@pytest.mark.parametrize("transform, expected", [
    ("translate(5) scale(2,3)", [(7, 3), (9, 3)]),          # the list applies right to left
    ("translate(5,0),scale(2)", [(7, 2), (9, 2)]),
    ("skewX(45)", [(2, 1), (3, 1)]),
    ("skewY(45)", [(1, 2), (2, 3)]),
    ("rotate(180)", [(-1, -1), (-2, -1)]),
])
def test_transform_functions(transform, expected):
    got = strokes(body=f'<path transform="{transform}" d="M 1 1 L 2 1"/>')
    np.testing.assert_allclose(got, [line(*expected)], atol=1e-12)


def test_templates_and_foreign_elements_are_not_drawn():
    body = ('<defs><path d="M 0 0 L 9 9"/></defs><clipPath><path d="M 0 0 L 8 8"/></clipPath>'
            '<mask><path d="M 0 0 L 7 7"/></mask><foo:path xmlns:foo="urn:foo" d="M 0 0 L 6 6"/>'
            '<path d="M 1 1 L 2 2"/>')
    np.testing.assert_allclose(strokes(body=body), [line((1, 1), (2, 2))])


def test_an_svg_without_namespace_and_a_view_box_origin():
    got = strokes(body='<path d="M 110 60 L 120 60"/>', view_box="100 50 224 224", namespace=False)
    np.testing.assert_allclose(got, [line((10, 10), (20, 10))])


def test_a_canvas_file_round_trips_exactly():
    points = np.round(np.random.default_rng(3).uniform(-20, 244, (40, 4, 2)), 4)
    got = read_start_strokes(strokes_to_svg(points), CANVAS, PHOTO_SIZE, PHOTO_MAP)
    np.testing.assert_allclose(got, points, rtol=0, atol=1e-9)


def test_an_image_file_maps_back_to_the_canvas_exactly():
    # multiples of 0.7 canvas px are whole multiples of 2 image px (640/224 = 20/7): the file is exact
    points = 0.7 * np.random.default_rng(4).integers(-10, 330, (30, 4, 2))
    text = strokes_to_svg(canvas_to_image_points(points, PHOTO_MAP), size=PHOTO_SIZE)
    got = read_start_strokes(text, CANVAS, PHOTO_SIZE, PHOTO_MAP)
    np.testing.assert_allclose(got, points, rtol=0, atol=1e-9)


def test_when_both_sizes_match_the_canvas_wins():
    got = read_start_strokes(strokes_to_svg([line((0, 3), (3, 6))]), CANVAS, (224, 224), (0.5, 0, 0, 0.5, 10, 10))
    np.testing.assert_allclose(got, [line((0, 3), (3, 6))])


def test_sizes_in_px_and_units_beside_a_view_box():
    assert len(strokes("M 0 0 L 1 1", size="224px", view_box=None)) == 1
    assert len(strokes("M 0 0 L 1 1", size="80mm")) == 1   # the viewBox is the user space
    assert "'224mm'" in refused(svg('<path d="M 0 0 L 1 1"/>', size="224mm", view_box=None))


# ------------------------------------------------------------------------------------------------
# Refusals

def test_a_wrong_size_is_refused_naming_both_spaces():
    message = refused(svg('<path d="M 0 0 L 1 1"/>', view_box="0 0 300 200"))
    assert message == ("start.svg is 300 x 200: neither the 224 x 224 canvas of a sketch (-o) nor the image's "
                       "640 x 480 pixels (--image-svg).")


def test_a_file_of_text_only_says_what_it_holds():
    message = refused(svg('<text x="1" y="1"><tspan>hi</tspan></text><rect width="3" height="3"/>'))
    assert "holds no path (only rect, text)" in message and "Object to Path" in message
    assert "holds no path" in refused(svg(""))
    assert "holds no stroke: its path draws nothing" in refused(svg('<path d=""/>'))
    assert "its 2 paths draw nothing" in refused(svg('<path d="M 1 1"/><path/>'))


def test_not_svg_files():
    assert "not an SVG file" in refused("this is not XML")
    assert "root element is <html>" in refused("<html><body/></html>")
    assert "empty" in refused(b"")


def test_a_malformed_d_names_the_path_and_the_text():
    message = refused(svg('<path id="stroke7" d="M 10 10 L 20 x 5"/>'))
    assert 'path "stroke7"' in message and "'x 5'" in message
    message = refused(svg('<path d="M 0 0 L 1 1"/><path d="M 0 0 A 1 1 0 2 1 5 5"/>'))
    assert "path 2" in message and "arc flag" in message
    assert "begin with M" in refused(svg('<path d="L 10 10"/>'))
    assert "at the end" in refused(svg('<path d="M 10 10 L"/>'))
    assert "expected a command letter at '5'" in refused(svg('<path d="M 10 10 Z 5"/>'))


def test_a_malformed_transform_is_refused():
    assert 'g "layer1"' in refused(svg('<g id="layer1" transform="rotate(1 2)"><path d="M 0 0 L 1 1"/></g>'))
    assert "bogus" in refused(svg('<path transform="bogus(1)" d="M 0 0 L 1 1"/>'))


def test_more_strokes_than_the_engine_takes():
    d = "M 0 0 " + " ".join(f"L {k % 200} {k // 200}" for k in range(1, 1026))
    assert "1024" in refused(svg(f'<path d="{d}"/>'))


def test_a_file_too_large_is_refused_before_it_is_read(tmp_path, monkeypatch):
    big = tmp_path / "big.svg"
    big.write_bytes(b" " * (6 * 1024 * 1024))
    monkeypatch.setattr(pathlib.Path, "open", lambda *a, **k: pytest.fail("the large file was opened"))
    monkeypatch.setattr(svgpaths, "_parse_svg", lambda *a: pytest.fail("the large file was parsed"))
    with pytest.raises(EngineError) as caught:
        read_start_file(big, CANVAS, PHOTO_SIZE, PHOTO_MAP)
    assert caught.value.code == "bad_argument" and "big.svg is 6.0 MB" in caught.value.message
    assert "5 MB" in caught.value.message


def test_files_that_cannot_be_read(tmp_path):
    for path, words in [(tmp_path / "missing.svg", "cannot be read"), (tmp_path, "folder")]:
        with pytest.raises(EngineError) as caught:
            read_start_file(path, CANVAS, PHOTO_SIZE, PHOTO_MAP)
        assert caught.value.code == "bad_argument" and words in caught.value.message
    empty = tmp_path / "empty.svg"
    empty.write_bytes(b"")
    with pytest.raises(EngineError, match="empty.svg is not an SVG file: it is empty"):
        read_start_file(empty, CANVAS, PHOTO_SIZE, PHOTO_MAP)


def test_a_file_is_read(tmp_path):
    path = tmp_path / "start.svg"
    path.write_text(strokes_to_svg([line((0, 3), (3, 6))]), encoding="utf-8")
    np.testing.assert_allclose(read_start_file(path, CANVAS, PHOTO_SIZE, PHOTO_MAP), [line((0, 3), (3, 6))])


def test_numbers_beyond_floats_are_refused():
    assert "too large" in refused(svg('<path id="p" d="M 0 0 A 1e200 1e200 0 0 1 10 0"/>'))
    assert "too large" in refused(svg('<path d="M 0 0 L 1e999 0"/>'))
    assert "cannot be read" in refused(svg('<path transform="rotate(1e999)" d="M 0 0 L 1 0"/>'))
