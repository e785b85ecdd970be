"""The SVG is the reference's format and round-trips exactly (to the written precision)."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from clipasso_engine.errors import EngineError
from clipasso_engine.svg import SVG_NS, path_data, strokes_to_svg, svg_to_strokes


def test_reference_format():
    points = np.array([[[10, 20.5], [30, 40], [50.25, 60], [70, 80]]], dtype=float)
    text = strokes_to_svg(points)
    root = ET.fromstring(text)
    assert root.get("width") == "224" and root.get("height") == "224"
    paths = list(root.iter(f"{{{SVG_NS}}}path"))
    assert len(paths) == 1
    p = paths[0]
    assert p.get("d") == "M 10 20.5 C 30 40 50.25 60 70 80"
    assert p.get("stroke-width") == "3.0"
    assert (p.get("fill"), p.get("stroke"), p.get("stroke-linecap"), p.get("stroke-linejoin")) == \
        ("none", "rgb(0, 0, 0)", "round", "round")
    assert not list(root.iter(f"{{{SVG_NS}}}rect"))  # no background rectangle


def test_round_trip():
    rng = np.random.default_rng(0)
    points = rng.uniform(-20, 250, size=(32, 4, 2))
    back, width, size = svg_to_strokes(strokes_to_svg(points, 3.0, (224, 224)))
    np.testing.assert_allclose(back, points, atol=5e-5)
    assert width == 3.0 and size == (224, 224)


def test_non_integer_width_and_image_size():
    back, width, size = svg_to_strokes(strokes_to_svg(np.zeros((2, 4, 2)), 7.3125, (640, 480)))
    assert width == 7.3125 and size == (640, 480) and back.shape == (2, 4, 2)


def test_negative_zero_and_exponents_are_written_plainly():
    assert path_data(np.array([[-0.0, 1e-9], [1, 2], [3, 4], [5, 6]])) == "M 0 0 C 1 2 3 4 5 6"


@pytest.mark.parametrize("bad", ["<svg", '<svg xmlns="http://www.w3.org/2000/svg"><path d="M 0 0 L 1 1"/></svg>'])
def test_bad_svg_is_a_clear_error(bad):
    with pytest.raises(EngineError) as err:
        svg_to_strokes(bad)
    assert err.value.code == "bad_argument"


def test_exponent_numbers_are_accepted():
    """Issue 8 item 12: the number pattern accepts 1e-05, so the path check must too."""
    text = ('<svg xmlns="http://www.w3.org/2000/svg" width="224" height="224">'
            '<path d="M 1e-05 2E+1 C 3 4 5 6 7.5e1 8" stroke-width="3"/></svg>')
    points, width, size = svg_to_strokes(text)
    assert np.allclose(points[0], [[1e-05, 20], [3, 4], [5, 6], [75, 8]]) and width == 3.0
    with pytest.raises(EngineError):
        svg_to_strokes(text.replace("C 3", "L 3"))
