"""A designer's SVG file -> start strokes: (N, 4, 2) cubic control points in canvas px.

What is accepted:
  * An SVG document (bytes or text, at most MAX_START_FILE_BYTES) whose user space is either the
    canvas (canvas_size x canvas_size, as `-o` writes a sketch) or the image's pixels (as
    `--image-svg` writes it). The user space is the viewBox when there is one (its origin is
    subtracted; width/height are then ignored, whatever their units: the numbers in the paths are
    what count), else the width/height attributes, plain numbers or "px" only. When the image is
    itself canvas_size x canvas_size both spaces match and the canvas wins (they are then the same
    pixels unless the image is padded, and a sketch file is the more common start).
  * Every <path> in the SVG namespace (or in no namespace), in document order, except those inside
    <defs>, <clipPath>, <mask>, <symbol>, <marker> and <pattern>, which are not drawn as such.
    The transform attributes of the path and of all its ancestors are applied (matrix, translate,
    scale, rotate with or without a centre, skewX, skewY); a nested <svg>'s own viewport (x, y,
    viewBox) is not. Fill, stroke and display styles are not read:
    a filled shape gives its outline. Other shapes (text, rect, circle, <use> ...) are not
    converted; a file holding only those is refused with a sentence saying so.
  * The whole SVG path grammar. Each segment becomes one cubic stroke: lines and quadratics raised
    exactly, cubics as written, elliptical arcs split into equal pieces that stay within
    ARC_TOLERANCE canvas px of the true arc, one stroke per piece. A closing Z adds a line only when
    it closes a gap (over 1e-9).
  * Zero-length segments (all four points within 1e-9 canvas px) are dropped, unless the path has
    nothing else: then it is a dot the designer drew, and it stays as one stroke.
Everything else (not XML, not <svg>, a size that is neither space, a malformed d or transform, a
file too large, more than MAX_START_STROKES strokes) is EngineError("bad_argument", sentence).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .errors import EngineError
from .imageio import invert_matrix
from .svg import NUMBER, SVG_NS   # the number grammar and namespace the engine writes with

MAX_START_FILE_BYTES = 5 * 1024 * 1024
MAX_START_STROKES = 1024        # the engine's limit on num_strokes (config.py)
ARC_TOLERANCE = 0.05            # canvas px between an arc and its cubic pieces
ZERO_LENGTH = 1e-9              # canvas px (segments) / file units (closing gaps)
SIZE_TOLERANCE = 1e-6

NOT_DRAWN = {"defs", "clipPath", "mask", "symbol", "marker", "pattern"}   # their paths are templates
UNCONVERTED_SHAPES = {"text", "flowRoot", "rect", "circle", "ellipse", "line", "polyline", "polygon",
                      "image", "use"}

_SEPARATORS = re.compile(r"[\s,]*")
_COMMANDS = set("MmLlHhVvCcSsQqTtAaZz")
_TRANSFORM = re.compile(r"[\s,]*(matrix|translate|scale|rotate|skewX|skewY)\s*\(([^)]*)\)[\s,]*")


# ------------------------------------------------------------------------------------------------
# Entry points

def read_start_file(path, canvas_size: int, image_size: tuple, canvas_to_image: tuple) -> np.ndarray:
    """read_start_strokes on a file, refused by its size before it is read whole."""
    path = Path(path)
    name = path.name or str(path)
    try:
        if path.is_dir():
            raise _bad(f"{name} is a folder, not an SVG file ({path}).")
        _refuse_large(name, path.stat().st_size)
        with path.open("rb") as file:
            data = file.read(MAX_START_FILE_BYTES + 1)   # a file growing meanwhile is still bounded
    except OSError as exc:
        raise _bad(f"The start file {path} cannot be read: {exc.strerror or exc}.") from None
    return read_start_strokes(data, canvas_size, image_size, canvas_to_image, name)


def read_start_strokes(data, canvas_size: int, image_size: tuple, canvas_to_image: tuple,
                       name: str = "the start file") -> np.ndarray:
    """(N, 4, 2) float64 control points in canvas px, one cubic per path segment, in document order."""
    _refuse_large(name, len(data))
    root = _parse_svg(data, name)
    file_to_canvas = _file_to_canvas(root, canvas_size, image_size, canvas_to_image, name)
    strokes, count, paths, others = [], 0, 0, []
    for element, tag, to_file in _drawn_elements(root, name):
        if tag != "path":
            others.append(tag)
            continue
        paths += 1
        cubics = _path_strokes(element, file_to_canvas @ to_file, name, paths)
        count += len(cubics)
        if count > MAX_START_STROKES:
            raise _bad(f"{name} holds more than {MAX_START_STROKES} strokes (one per path segment), the "
                       "engine's limit: simplify it (Path > Simplify in Inkscape) or use fewer paths.")
        strokes.append(cubics)
    if count == 0:
        raise _nothing_drawn(name, paths, others)
    return np.concatenate(strokes)


def _nothing_drawn(name: str, paths: int, others: list[str]) -> EngineError:
    """The sentence for a file without a single stroke, saying what it holds instead."""
    shapes = sorted(set(others) & UNCONVERTED_SHAPES)
    if shapes:
        held = ", ".join(shapes) + (f", {paths} empty path" + "s" * (paths > 1) if paths else "")
        return _bad(f"{name} holds no path (only {held}): draw them as paths "
                    "(Path > Object to Path in Inkscape).")
    if paths:
        its = f"its {paths} paths draw" if paths > 1 else "its path draws"
        return _bad(f"{name} holds no stroke: {its} nothing.")
    return _bad(f"{name} holds no path: it draws nothing.")


# ------------------------------------------------------------------------------------------------
# The document and its space

def _bad(message: str) -> EngineError:
    return EngineError("bad_argument", message)


def _refuse_large(name: str, size: int) -> None:
    if size > MAX_START_FILE_BYTES:
        raise _bad(f"{name} is {size / 2**20:.1f} MB; a start file may be at most "
                   f"{MAX_START_FILE_BYTES // 2**20} MB.")


def _parse_svg(data, name: str) -> ET.Element:
    if not (data.strip() if isinstance(data, str) else bytes(data).strip()):
        raise _bad(f"{name} is not an SVG file: it is empty.")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise _bad(f"{name} is not an SVG file: it is not XML ({exc}).") from None
    if _svg_tag(root) != "svg":
        raise _bad(f"{name} is not an SVG file: its root element is <{root.tag}>, not <svg>.")
    return root


def _svg_tag(element: ET.Element) -> str | None:
    """The local name of an SVG (or un-namespaced) element; None for other namespaces (Inkscape's own)."""
    tag = element.tag
    if not isinstance(tag, str):
        return None
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return local if namespace == SVG_NS else None
    return tag


def _file_to_canvas(root, canvas_size, image_size, canvas_to_image, name) -> np.ndarray:
    """The affine (3x3) from the file's user space to canvas px, chosen by the user space's size."""
    (x0, y0), (width, height) = _user_space(root, name)
    from_origin = _matrix(1, 0, 0, 1, -x0, -y0)
    if _same_size((width, height), (canvas_size, canvas_size)):
        return from_origin
    if _same_size((width, height), image_size):
        return _matrix(*invert_matrix(canvas_to_image)) @ from_origin
    raise _bad(f"{name} is {width:g} x {height:g}: neither the {canvas_size:g} x {canvas_size:g} canvas "
               f"of a sketch (-o) nor the image's {image_size[0]:g} x {image_size[1]:g} pixels (--image-svg).")


def _same_size(size, other) -> bool:
    return all(abs(float(s) - float(o)) <= SIZE_TOLERANCE for s, o in zip(size, other))


def _user_space(root, name) -> tuple[tuple[float, float], tuple[float, float]]:
    """((min x, min y), (width, height)) of the numbers the paths are written in."""
    view_box = root.get("viewBox")
    if view_box is not None:
        numbers = _numbers_only(view_box)
        if numbers is None or len(numbers) != 4 or numbers[2] <= 0 or numbers[3] <= 0:
            raise _bad(f"{name} has a viewBox that cannot be read: {view_box!r}.")
        return (numbers[0], numbers[1]), (numbers[2], numbers[3])
    return (0.0, 0.0), (_length(root, "width", name), _length(root, "height", name))


def _length(root, attribute: str, name: str) -> float:
    text = root.get(attribute)
    if text is None:
        raise _bad(f"{name} has neither a viewBox nor a {attribute}: its size is unknown.")
    match = re.fullmatch(r"\s*(" + NUMBER.pattern + r")\s*(px)?\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise _bad(f"{name} gives its {attribute} as {text!r}: without a viewBox only a plain number "
                   "of pixels (or px) can be read.")
    return float(match.group(1))


def _numbers_only(text: str) -> list[float] | None:
    """The numbers of a list separated by spaces/commas, or None when anything else is in it."""
    if _SEPARATORS.fullmatch(NUMBER.sub(" ", text)) is None:
        return None
    return [float(v) for v in NUMBER.findall(text)]


# ------------------------------------------------------------------------------------------------
# Elements and transforms

def _drawn_elements(root, name):
    """(element, local tag, its transform to the file's user space) for every SVG element that is
    drawn, in document order. Iterative, so that deeply nested groups cannot overflow the stack."""
    stack = [(root, np.eye(3))]
    while stack:
        element, parent = stack.pop()
        tag = _svg_tag(element)
        if tag is None or tag in NOT_DRAWN:
            continue
        to_file = parent @ _transform(element, tag, name)
        yield element, tag, to_file
        stack.extend((child, to_file) for child in reversed(element))


def _transform(element, tag: str, name: str) -> np.ndarray:
    """The element's transform attribute as a 3x3 matrix (a list applies right to left)."""
    text = element.get("transform", "")
    matrix, position = np.eye(3), 0
    while text[position:].strip():
        match = _TRANSFORM.match(text, position)
        arguments = _numbers_only(match.group(2)) if match else None
        step = _transform_step(match.group(1), arguments) if arguments is not None else None
        if step is None:
            label = f'{tag} "{element.get("id")}"' if element.get("id") else f"a <{tag}>"
            raise _bad(f"{name}: the transform of {label} cannot be read at {text[position:][:40]!r}.")
        matrix, position = matrix @ step, match.end()
    return matrix


def _transform_step(kind: str, args: list[float]) -> np.ndarray | None:
    """One transform function as a matrix; None when its number of arguments is wrong."""
    n = len(args)
    if not all(math.isfinite(v) for v in args):
        return None
    if kind == "matrix" and n == 6:
        return _matrix(*args)
    if kind == "translate" and n in (1, 2):
        return _matrix(1, 0, 0, 1, args[0], args[1] if n == 2 else 0.0)
    if kind == "scale" and n in (1, 2):
        return _matrix(args[0], 0, 0, args[1] if n == 2 else args[0], 0, 0)
    if kind == "rotate" and n in (1, 3):
        angle = math.radians(args[0])
        cos, sin = math.cos(angle), math.sin(angle)
        cx, cy = (args[1], args[2]) if n == 3 else (0.0, 0.0)
        # translate(cx, cy) rotate(a) translate(-cx, -cy), written out
        return _matrix(cos, sin, -sin, cos, cx - cos * cx + sin * cy, cy - sin * cx - cos * cy)
    if kind == "skewX" and n == 1:
        return _matrix(1, 0, math.tan(math.radians(args[0])), 1, 0, 0)
    if kind == "skewY" and n == 1:
        return _matrix(1, math.tan(math.radians(args[0])), 0, 1, 0, 0)
    return None


def _matrix(a, b, c, d, e, f) -> np.ndarray:
    """SVG's matrix(a, b, c, d, e, f) as a 3x3 array: x' = a x + c y + e, y' = b x + d y + f."""
    return np.array([[a, c, e], [b, d, f], [0.0, 0.0, 1.0]], dtype=np.float64)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


# ------------------------------------------------------------------------------------------------
# One path

class PathSyntaxError(ValueError):
    """A d attribute that does not follow the SVG path grammar; read_start_strokes names the path."""


def _path_strokes(element, to_canvas: np.ndarray, name: str, number: int) -> np.ndarray:
    """(k, 4, 2) canvas cubics of one <path>; zero-length ones only when the path has nothing else."""
    scale = np.linalg.norm(to_canvas[:2, :2], 2)   # largest singular value: the most a length grows
    tolerance = ARC_TOLERANCE / scale if scale > 0 else math.inf
    label = f'path "{element.get("id")}"' if element.get("id") else f"path {number}"
    try:
        cubics = _apply(to_canvas, path_cubics(element.get("d") or "", tolerance))
    except PathSyntaxError as exc:
        raise _bad(f"{name}: {label} has a malformed d: {exc}.") from None
    except (ArithmeticError, ValueError):   # float overflow in an arc of radius 1e200, say
        cubics = np.full((1, 4, 2), np.inf)
    if not np.isfinite(cubics).all():
        raise _bad(f"{name}: {label} holds numbers too large to draw.")
    extent = np.abs(cubics - cubics[:, :1]).max(axis=(1, 2)) if len(cubics) else np.zeros(0)
    drawn = extent > ZERO_LENGTH
    return cubics[drawn] if drawn.any() else cubics[:1]   # a path of only dots is one dot


def path_cubics(d: str, arc_tolerance: float) -> np.ndarray:
    """(k, 4, 2) cubics in the path's own coordinates, one per segment (an arc gives several pieces,
    each within arc_tolerance of it). Raises PathSyntaxError with the offending text."""
    cursor, pen = _Cursor(d), _Pen(arc_tolerance)
    if cursor.at_end():
        return np.zeros((0, 4, 2))
    command = cursor.command()
    if command not in "Mm":
        raise PathSyntaxError(f"it must begin with M or m, not {command!r}")
    while True:
        _draw(pen, command, cursor)
        if command in "Zz" or not cursor.at_number():
            if cursor.at_end():
                return pen.cubics()
            command = cursor.command()
        elif command in "Mm":   # the pairs after a moveto's first are linetos
            command = "L" if command == "M" else "l"


class _Cursor:
    """Reads a d attribute: command letters, numbers ("10-5" is two, "-.5.5" too) and arc flags,
    which may touch their neighbours ("a1 1 0 0110 10")."""

    def __init__(self, text: str):
        self.text, self.position = text, 0

    def _skip(self) -> None:
        self.position = _SEPARATORS.match(self.text, self.position).end()

    def at_end(self) -> bool:
        self._skip()
        return self.position >= len(self.text)

    def at_number(self) -> bool:
        self._skip()
        return NUMBER.match(self.text, self.position) is not None

    def command(self) -> str:
        self._skip()
        letter = self.text[self.position:self.position + 1]
        if letter not in _COMMANDS or not letter:
            raise self._expected("a command letter")
        self.position += 1
        return letter

    def number(self) -> float:
        self._skip()
        match = NUMBER.match(self.text, self.position)
        if match is None:
            raise self._expected("a number")
        value = float(match.group())
        if not math.isfinite(value):
            raise PathSyntaxError(f"{match.group()!r} is too large a number")
        self.position = match.end()
        return value

    def point(self) -> np.ndarray:
        return np.array([self.number(), self.number()])

    def flag(self) -> bool:
        self._skip()
        digit = self.text[self.position:self.position + 1]
        if digit not in ("0", "1"):
            raise self._expected("an arc flag (0 or 1)")
        self.position += 1
        return digit == "1"

    def _expected(self, what: str) -> PathSyntaxError:
        rest = self.text[self.position:self.position + 20]
        return PathSyntaxError(f"expected {what} at {rest!r}" if rest else f"expected {what} at the end")


_POINT_COUNTS = {"M": 1, "L": 1, "C": 3, "S": 2, "Q": 2, "T": 1}


def _draw(pen: _Pen, command: str, cursor: _Cursor) -> None:
    """One parameter set of one command; relative numbers count from the current point."""
    kind = command.upper()
    origin = pen.current.copy() if command != kind else np.zeros(2)
    if kind == "Z":
        pen.close()
    elif kind == "H":
        pen.line(np.array([cursor.number() + origin[0], pen.current[1]]))
    elif kind == "V":
        pen.line(np.array([pen.current[0], cursor.number() + origin[1]]))
    elif kind == "A":
        rx, ry, angle = cursor.number(), cursor.number(), cursor.number()
        large, sweep = cursor.flag(), cursor.flag()
        pen.arc(rx, ry, angle, large, sweep, cursor.point() + origin)
    else:
        points = [cursor.point() + origin for _ in range(_POINT_COUNTS[kind])]
        {"M": pen.move, "L": pen.line, "C": pen.cubic, "S": pen.smooth_cubic,
         "Q": pen.quad, "T": pen.smooth_quad}[kind](*points)


class _Pen:
    """The current point, the subpath's start and the last control points (for S and T), and the
    cubics drawn so far."""

    def __init__(self, arc_tolerance: float):
        self.arc_tolerance = arc_tolerance
        self.current, self.start = np.zeros(2), np.zeros(2)
        self.cubic_control = self.quad_control = None
        self.segments: list[np.ndarray] = []

    def cubics(self) -> np.ndarray:
        return np.concatenate(self.segments) if self.segments else np.zeros((0, 4, 2))

    def _add(self, cubics: np.ndarray, cubic_control=None, quad_control=None) -> None:
        self.segments.append(cubics)
        self.current = cubics[-1, 3].copy()
        self.cubic_control, self.quad_control = cubic_control, quad_control

    def move(self, point):
        self.current, self.start = point, point.copy()
        self.cubic_control = self.quad_control = None

    def line(self, end):
        self._add(line_cubic(self.current, end)[None])

    def cubic(self, control1, control2, end):
        self._add(np.array([[self.current, control1, control2, end]]), cubic_control=control2)

    def smooth_cubic(self, control2, end):
        reflected = _reflect(self.current, self.cubic_control)
        self.cubic(reflected, control2, end)

    def quad(self, control, end):
        self._add(quad_cubic(self.current, control, end)[None], quad_control=control)

    def smooth_quad(self, end):
        self.quad(_reflect(self.current, self.quad_control), end)

    def arc(self, rx, ry, angle, large, sweep, end):
        if np.abs(end - self.current).max() <= ZERO_LENGTH:
            self.cubic_control = self.quad_control = None   # SVG: an arc to its own start is omitted
        elif rx == 0 or ry == 0:
            self.line(end)
        else:
            self._add(arc_cubics(self.current, abs(rx), abs(ry), angle, large, sweep, end, self.arc_tolerance))

    def close(self):
        if np.abs(self.start - self.current).max() > ZERO_LENGTH:
            self.line(self.start)
        self.move(self.start)


def _reflect(current, control):
    """The first control point of S/T: the previous one mirrored, or the current point after another
    kind of command."""
    return current.copy() if control is None else 2 * current - control


def line_cubic(p0, p1) -> np.ndarray:
    """A line as an exact cubic: its control points at thirds."""
    return np.array([p0, p0 + (p1 - p0) / 3, p0 + 2 * (p1 - p0) / 3, p1])


def quad_cubic(p0, q, p1) -> np.ndarray:
    """A quadratic raised exactly to a cubic."""
    return np.array([p0, p0 + 2 / 3 * (q - p0), p1 + 2 / 3 * (q - p1), p1])


# ------------------------------------------------------------------------------------------------
# Arcs

def arc_cubics(p0, rx, ry, angle, large, sweep, p1, tolerance) -> np.ndarray:
    """An SVG endpoint arc as (n, 4, 2) cubics, n equal pieces, each within tolerance of the arc."""
    centre, rx, ry, phi, theta1, dtheta = _arc_centre(p0, rx, ry, angle, large, sweep, p1)
    if not np.isfinite([*centre, rx, ry, theta1, dtheta]).all():
        raise OverflowError("an arc beyond the range of floats")
    pieces = _arc_piece_count(max(rx, ry), abs(dtheta), tolerance)
    unit = _unit_arc_cubics(theta1, dtheta, pieces)
    cos, sin = math.cos(phi), math.sin(phi)
    ellipse = _matrix(rx * cos, rx * sin, -ry * sin, ry * cos, centre[0], centre[1])
    cubics = _apply(ellipse, unit)
    cubics[0, 0], cubics[-1, 3] = p0, p1   # the ends exactly where the path says
    return cubics


def _arc_centre(p0, rx, ry, angle, large, sweep, p1):
    """SVG 1.1 F.6.5: endpoint -> centre parameterisation, radii scaled up when too small (F.6.6).
    Returns (centre, rx, ry, phi, start angle, signed sweep angle)."""
    phi = math.radians(angle % 360)
    cos, sin = math.cos(phi), math.sin(phi)
    dx, dy = (float(v) for v in (p0 - p1) / 2)   # Python floats: an overflow raises, not warns
    x1, y1 = cos * dx + sin * dy, -sin * dx + cos * dy
    excess = (x1 / rx) ** 2 + (y1 / ry) ** 2
    if excess > 1:
        rx, ry = rx * math.sqrt(excess), ry * math.sqrt(excess)
    numerator = (rx * ry) ** 2 - (rx * y1) ** 2 - (ry * x1) ** 2
    denominator = (rx * y1) ** 2 + (ry * x1) ** 2
    root = math.sqrt(max(0.0, numerator / denominator)) if denominator > 0 else 0.0   # 0: ends all but equal
    factor = -root if large == sweep else root
    cx1, cy1 = factor * rx * y1 / ry, -factor * ry * x1 / rx
    centre = np.array([cos * cx1 - sin * cy1, sin * cx1 + cos * cy1]) + (p0 + p1) / 2
    theta1 = math.atan2((y1 - cy1) / ry, (x1 - cx1) / rx)
    dtheta = math.atan2((-y1 - cy1) / ry, (-x1 - cx1) / rx) - theta1
    if sweep and dtheta < 0:
        dtheta += 2 * math.pi
    elif not sweep and dtheta > 0:
        dtheta -= 2 * math.pi
    return centre, rx, ry, phi, theta1, dtheta


def _arc_piece_count(radius: float, sweep: float, tolerance: float) -> int:
    """The fewest equal pieces (at most a quarter turn each) whose error bound
    r (4/27) sin(t/4)^6 / cos(t/4)^2 is within tolerance. Capped just past MAX_START_STROKES: more
    would be refused anyway."""
    pieces = max(1, math.ceil(sweep / (math.pi / 2) - 1e-12))
    if math.isfinite(tolerance):
        # (t/4)^6 is close to sin(t/4)^6 / cos(t/4)^2: start a little below where it says
        pieces = max(pieces, math.floor(0.9 * sweep / 4 / (tolerance * 27 / 4 / radius) ** (1 / 6)))
    while pieces <= MAX_START_STROKES and _arc_error(radius, sweep / pieces) > tolerance:
        pieces += 1
    return min(pieces, MAX_START_STROKES + 1)


def _arc_error(radius: float, angle: float) -> float:
    """The standard bound on the distance between a circular arc and its cubic."""
    quarter = angle / 4
    return radius * 4 / 27 * math.sin(quarter) ** 6 / math.cos(quarter) ** 2


def _unit_arc_cubics(theta1: float, dtheta: float, pieces: int) -> np.ndarray:
    """(pieces, 4, 2) cubics on the unit circle from theta1 through dtheta (signed), handles
    4/3 tan(t/4) long along the tangents."""
    angles = theta1 + dtheta * np.arange(pieces + 1) / pieces
    start, end = angles[:-1], angles[1:]
    handle = 4 / 3 * math.tan(dtheta / pieces / 4)
    p0 = np.stack([np.cos(start), np.sin(start)], axis=-1)
    p3 = np.stack([np.cos(end), np.sin(end)], axis=-1)
    p1 = p0 + handle * np.stack([-np.sin(start), np.cos(start)], axis=-1)
    p2 = p3 - handle * np.stack([-np.sin(end), np.cos(end)], axis=-1)
    return np.stack([p0, p1, p2, p3], axis=1)
