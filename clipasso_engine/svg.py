"""Strokes <-> SVG text in the reference's format.

One `<path d="M x0 y0 C x1 y1 x2 y2 x3 y3">` per stroke, black, no fill, round caps and joins,
`stroke-width="3.0"` on the 224 x 224 canvas (CLIPasso's half-width 1.5), no background rectangle.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np

from .errors import EngineError

SVG_NS = "http://www.w3.org/2000/svg"
STROKE_STYLE = ('fill="none" stroke="rgb(0, 0, 0)" stroke-opacity="1.0" stroke-width="{width}" '
                'stroke-linecap="round" stroke-linejoin="round"')


def _num(v: float) -> str:
    text = f"{float(v):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def path_data(stroke: np.ndarray) -> str:
    """'M x0 y0 C x1 y1 x2 y2 x3 y3' for one (4, 2) cubic."""
    (x0, y0), *rest = np.asarray(stroke, dtype=np.float64)
    return f"M {_num(x0)} {_num(y0)} C " + " ".join(f"{_num(x)} {_num(y)}" for x, y in rest)


def strokes_to_svg(points, stroke_width: float = 3.0, size=(224, 224)) -> str:
    """SVG document text for (N, 4, 2) control points in the document's pixel units."""
    width, height = size
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<svg xmlns="{SVG_NS}" version="1.1" width="{_num(width)}" height="{_num(height)}" '
             f'viewBox="0 0 {_num(width)} {_num(height)}">',
             "  <g>"]
    width_text = f"{float(stroke_width):.1f}" if float(stroke_width).is_integer() else _num(stroke_width)
    style = STROKE_STYLE.format(width=width_text)  # "3.0", as the reference's own sketches say
    for k, stroke in enumerate(np.asarray(points, dtype=np.float64)):
        lines.append(f'    <path id="path{k}" d="{path_data(stroke)}" {style}/>')
    lines += ["  </g>", "</svg>", ""]
    return "\n".join(lines)


NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def svg_to_strokes(text: str):
    """Parse our (or the reference's) SVG back: (points (N, 4, 2), stroke_width, (width, height)).

    Accepts exactly one absolute 'M x y C x y x y x y' per path, which is what the reference writes.
    """
    try:
        root = ET.fromstring(text.encode("utf-8") if isinstance(text, str) else text)
    except ET.ParseError as exc:
        raise EngineError("bad_argument", f"Not a valid SVG file: {exc}.") from None
    size = tuple(float(NUMBER.match(root.get(k, "224")).group()) for k in ("width", "height"))
    strokes, width = [], None
    for path in root.iter(f"{{{SVG_NS}}}path"):
        d = path.get("d", "")
        # Letters are checked with the numbers taken out, so that exponents like 1e-05 are accepted.
        if not re.fullmatch(r"\s*M[^A-Za-z]*C[^A-Za-z]*", NUMBER.sub(" ", d)):
            raise EngineError("bad_argument", f"Path {path.get('id', '?')} is not a single 'M ... C ...' cubic.")
        numbers = [float(v) for v in NUMBER.findall(d)]
        if len(numbers) != 8:
            raise EngineError("bad_argument", f"Path {path.get('id', '?')} has {len(numbers)} numbers, expected 8.")
        strokes.append(np.array(numbers).reshape(4, 2))
        if path.get("stroke-width") is not None:
            width = float(path.get("stroke-width"))
    points = np.stack(strokes) if strokes else np.zeros((0, 4, 2))
    return points, width, size
