"""Where the engine's strokes go in the document: pure affine arithmetic, stdlib only.

The chain, applied right to left to a point on the engine's 224 x 224 canvas:

    layer <- document  <- image element's user space <- image pixels <- canvas
    inv(L)  @  C_image  @  P(x, y, width, height, preserveAspectRatio)  @  canvas_to_image

canvas_to_image comes from the engine (it knows the padding), P is the SVG viewport rule for an
<image> (the raster's pixel size is the "viewBox"), C_image is the image's composed transform (its
own transform attribute and every ancestor's) and L is the composed transform of the new layer.
Cubic Beziers are affine-invariant, so mapping the four control points maps the curve exactly and
the paths need no transform attribute. Matrices are 6-tuples (a, b, c, d, e, f) in SVG's
convention: x' = a x + c y + e, y' = b x + d y + f.
"""

import math
import re

IDENTITY = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def compose(*matrices):
    """Product m1 @ m2 @ ... : the rightmost matrix is applied first."""
    a, b, c, d, e, f = IDENTITY
    for (a2, b2, c2, d2, e2, f2) in matrices:
        a, b, c, d, e, f = (a * a2 + c * b2, b * a2 + d * b2,
                            a * c2 + c * d2, b * c2 + d * d2,
                            a * e2 + c * f2 + e, b * e2 + d * f2 + f)
    return (a, b, c, d, e, f)


def invert(m):
    a, b, c, d, e, f = m
    det = a * d - b * c
    if abs(det) < 1e-300:
        raise ValueError("singular transform (the image or a group is scaled to zero)")
    return (d / det, -b / det, -c / det, a / det, (c * f - d * e) / det, (b * e - a * f) / det)


def apply(m, x, y):
    a, b, c, d, e, f = m
    return (a * x + c * y + e, b * x + d * y + f)


def determinant(m):
    return m[0] * m[3] - m[1] * m[2]


def width_scale(m):
    """How much a line width grows under m: sqrt(|det|), the geometric mean of the two
    singular values. Exact for similarities (translate, rotate, uniform scale); for a
    non-uniform map (skew, preserveAspectRatio="none") no single width is exact, and the
    geometric mean keeps the stroke's ink area right."""
    return math.sqrt(abs(determinant(m)))


# --- lengths -----------------------------------------------------------------------------------
# CSS absolute units in px (= user units where the attribute is read).
UNIT_PX = {"": 1.0, "px": 1.0, "pt": 96.0 / 72.0, "pc": 16.0, "mm": 96.0 / 25.4,
           "cm": 96.0 / 2.54, "in": 96.0, "q": 96.0 / 101.6, "em": 16.0, "ex": 8.0}
_LENGTH = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Z%]*)\s*$")


def user_length(text, percent_of=None):
    """An SVG length attribute in user units; None when absent or 'auto' (or unparsable)."""
    if text is None:
        return None
    match = _LENGTH.match(str(text))
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2).lower()
    if unit == "%":
        return None if percent_of is None else value * percent_of / 100.0
    if unit not in UNIT_PX:
        return None
    return value * UNIT_PX[unit]


# --- the <image> viewport rule -------------------------------------------------------------------
ALIGN_FRACTIONS = {"min": 0.0, "mid": 0.5, "max": 1.0}


def parse_preserve_aspect_ratio(text):
    """-> (align, mode) with align 'none' or e.g. 'xMidYMid', mode 'meet' or 'slice'.
    Anything unparsable falls back to the SVG default, xMidYMid meet."""
    words = (text or "").split()
    if words and words[0] == "defer":  # only meaningful for <image> pointing at an SVG; ignored
        words = words[1:]
    align, mode = "xMidYMid", "meet"
    if words and (words[0] == "none" or re.fullmatch(r"x(Min|Mid|Max)Y(Min|Mid|Max)", words[0])):
        align = words[0]
        if len(words) > 1 and words[1] in ("meet", "slice"):
            mode = words[1]
    return align, mode


def viewbox_transform(viewport, view_box, preserve_aspect_ratio=None):
    """SVG's viewBox rule: the matrix fitting view_box (x, y, w, h) into viewport (x, y, w, h), as
    preserveAspectRatio says (align 'none' stretches; meet fits inside, slice covers)."""
    x, y, width, height = (float(v) for v in viewport)
    box_x, box_y, box_w, box_h = (float(v) for v in view_box)
    if box_w <= 0 or box_h <= 0:
        raise ValueError("empty viewBox")
    align, mode = parse_preserve_aspect_ratio(preserve_aspect_ratio)
    scale_x, scale_y = width / box_w, height / box_h
    if align == "none":
        return (scale_x, 0.0, 0.0, scale_y, x - box_x * scale_x, y - box_y * scale_y)
    scale = min(scale_x, scale_y) if mode == "meet" else max(scale_x, scale_y)
    fx = ALIGN_FRACTIONS[align[1:4].lower()]
    fy = ALIGN_FRACTIONS[align[5:8].lower()]
    tx = x - box_x * scale + (width - scale * box_w) * fx
    ty = y - box_y * scale + (height - scale * box_h) * fy
    return (scale, 0.0, 0.0, scale, tx, ty)


def image_placement(x, y, width, height, image_size, preserve_aspect_ratio=None):
    """Matrix from image pixels (pixel-edge convention, (0,0)..(W,H)) to the <image> element's
    user space: the raster is fitted into the rect (x, y, width, height) as SVG says (the
    viewBox rule, the raster's pixel size being the viewBox).

    slice: the raster overflows the rect on one axis and the overflow is clipped on screen; the
    engine then sketches only the visible part (visible_pixel_box), yet its result still maps
    onto the full raster, so this matrix is the same either way."""
    pixel_w, pixel_h = float(image_size[0]), float(image_size[1])
    if pixel_w <= 0 or pixel_h <= 0:
        raise ValueError("image has no pixels")
    return viewbox_transform((x, y, width, height), (0.0, 0.0, pixel_w, pixel_h), preserve_aspect_ratio)


def image_rect(attributes, image_size, viewport_size=None):
    """(x, y, width, height) of an <image> in its user space, from its attribute dict.
    A missing or 'auto' width/height takes the raster's pixel size (SVG 2), keeping its aspect
    ratio when only one of the two is given. Percentages refer to viewport_size (w, h)."""
    vw, vh = viewport_size if viewport_size else (None, None)
    x = user_length(attributes.get("x"), vw) or 0.0
    y = user_length(attributes.get("y"), vh) or 0.0
    width = user_length(attributes.get("width"), vw)
    height = user_length(attributes.get("height"), vh)
    pixel_w, pixel_h = float(image_size[0]), float(image_size[1])
    if width is None and height is None:
        width, height = pixel_w, pixel_h
    elif width is None:
        width = height * pixel_w / pixel_h
    elif height is None:
        height = width * pixel_h / pixel_w
    return x, y, width, height


def intersect_boxes(first, second):
    """Overlap of two boxes (x0, y0, x1, y1); None when they do not overlap."""
    x0, y0 = max(first[0], second[0]), max(first[1], second[1])
    x1, y1 = min(first[2], second[2]), min(first[3], second[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def points_box(m, points):
    """Exact axis-aligned bounds of points (x, y) mapped by m."""
    mapped = [apply(m, float(x), float(y)) for x, y in points]
    xs, ys = [x for x, _ in mapped], [y for _, y in mapped]
    return (min(xs), min(ys), max(xs), max(ys))


def mapped_box(m, box):
    """Axis-aligned bounds of a box (x0, y0, x1, y1) mapped by m (a superset when m rotates)."""
    return points_box(m, [(x, y) for x in (box[0], box[2]) for y in (box[1], box[3])])


def ellipse_box(m, cx, cy, rx, ry):
    """Exact bounds of the ellipse (cx, cy, rx, ry) mapped by m, whatever m does: the mapped
    ellipse's half extents are the lengths of the mapped radii's x and y parts."""
    x, y = apply(m, cx, cy)
    a, b, c, d = m[:4]
    half_w, half_h = math.hypot(a * rx, c * ry), math.hypot(b * rx, d * ry)
    return (x - half_w, y - half_h, x + half_w, y + half_h)


def cubic_box(p0, p1, p2, p3):
    """Exact bounds (x0, y0, x1, y1) of one cubic Bezier: its ends and its extrema on each axis."""
    xs, ys = [p0[0], p3[0]], [p0[1], p3[1]]
    for axis, values in ((0, xs), (1, ys)):
        a0, a1, a2, a3 = p0[axis], p1[axis], p2[axis], p3[axis]
        # B'(t)/3 = a t^2 + b t + c
        a, b, c = -a0 + 3 * a1 - 3 * a2 + a3, 2 * (a0 - 2 * a1 + a2), a1 - a0
        if abs(a) < 1e-12:
            roots = [-c / b] if abs(b) > 1e-12 else []
        else:
            disc = b * b - 4 * a * c
            roots = [] if disc < 0 else [(-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1, -1)]
        for t in roots:
            if 0 < t < 1:
                u = 1 - t
                values.append(u ** 3 * a0 + 3 * u * u * t * a1 + 3 * u * t * t * a2 + t ** 3 * a3)
    return (min(xs), min(ys), max(xs), max(ys))


def superpath_box(m, superpath):
    """Exact bounds of a path given as inkex's CubicSuperPath (subpaths of [in, point, out] nodes),
    mapped by m (an affine map maps a cubic's control points exactly); None when it has no node."""
    box = None
    for subpath in superpath:
        nodes = [[apply(m, float(x), float(y)) for x, y in node] for node in subpath]
        parts = [points_box(IDENTITY, [node[1]]) for node in nodes]
        parts += [cubic_box(a[1], a[2], b[0], b[1]) for a, b in zip(nodes, nodes[1:])]
        for part in parts:
            box = part if box is None else (min(box[0], part[0]), min(box[1], part[1]),
                                            max(box[2], part[2]), max(box[3], part[3]))
    return box


def boxes_touch(first, second):
    """True when two boxes (x0, y0, x1, y1) overlap or touch (a flat box counts: a straight line)."""
    return first[0] <= second[2] and second[0] <= first[2] and first[1] <= second[3] and second[1] <= first[3]


# A visible edge closer than this to a pixel edge (in the raster's pixels) is on it (issue 18 item 2).
# Float noise in a clip's box (inkex measures a circle through its Bezier form: 1.75e-3 px over on a
# 60-pixel radius) must not add a row of pixels the viewer never sees; an edge 1/100 pixel past a pixel
# edge shows 1 % of that pixel, too little to be worth sketching. Beyond that, outward, never less.
SNAP_PX = 0.01


def visible_pixel_box(pixels_to_user, image_size, visible_box):
    """whole_pixel_box for a visible box given in the <image>'s user space (x0, y0, x1, y1): its rect
    (a `slice` raster overflows it), intersected with any clip, mapped back to image pixels."""
    return whole_pixel_box(image_size, mapped_box(invert(pixels_to_user), visible_box))


def whole_pixel_box(image_size, pixel_box):
    """The raster's visible part as whole pixels (left, top, right, bottom) for the engine's --crop,
    or None when all of it shows (or none of it: then there is nothing better to sketch).

    pixel_box: what shows, in image pixels (x0, y0, x1, y1). It is clamped to the raster and rounded
    outward, edges within SNAP_PX of a pixel edge snapped onto it, so no visible pixel is left out."""
    width, height = int(image_size[0]), int(image_size[1])
    box = intersect_boxes(pixel_box, (0, 0, width, height))
    if box is None:
        return None
    left, right = _whole_pixels(box[0], box[2], width)
    top, bottom = _whole_pixels(box[1], box[3], height)
    if (left, top, right, bottom) == (0, 0, width, height):
        return None
    return (left, top, right, bottom)


def _whole_pixels(start, end, size):
    """[start, end] rounded outward to pixel edges inside [0, size], at least one pixel wide."""
    first = min(size - 1, max(0, math.floor(start + SNAP_PX)))
    last = min(size, max(first + 1, math.ceil(end - SNAP_PX)))
    return first, last


# The engine's framing (clipasso_engine/imageio.py, load_image with its defaults: pad_to_square, no
# fix_scale, 224 px canvas), replicated here without numpy: the map is needed BEFORE the engine runs,
# to bring selected paths onto its canvas (--start-from). tests/test_extension.py checks it against
# the engine's own for many sizes and crops.
ENGINE_CANVAS = 224
ENGINE_MAX_PAD_SIDE = 8192  # imageio.MAX_PAD_SIDE: a wider padded square is built from a shrunk copy


def engine_canvas_to_image(image_size, crop=None, canvas_size=ENGINE_CANVAS):
    """The canvas_to_image the engine will report for an upright image of image_size (w, h), sketched
    whole or on crop (left, top, right, bottom): the cropped picture centred on a white square of
    side max(w, h) (whole-pixel offsets, an odd difference's extra white column/row right/bottom),
    resized to the canvas, then shifted by the crop's offset into the whole image."""
    left, top, right, bottom = crop if crop else (0, 0, int(image_size[0]), int(image_size[1]))
    width, height = right - left, bottom - top
    side = max(width, height)
    if side == width == height:
        sx, tx, sy, ty, work_side = 1.0, 0.0, 1.0, 0.0, side
    elif side <= ENGINE_MAX_PAD_SIDE:
        sx, sy, work_side = 1.0, 1.0, side
        tx, ty = -float((side - width) // 2), -float((side - height) // 2)
    else:  # imageio._paste_on_white_square's shrunk square, rounded as Python rounds
        r = ENGINE_MAX_PAD_SIDE / side
        pad_x, pad_y = (side - width) // 2, (side - height) // 2
        x0, y0 = round(pad_x * r), round(pad_y * r)
        x1, y1 = max(x0 + 1, round((pad_x + width) * r)), max(y0 + 1, round((pad_y + height) * r))
        x1, y1 = min(x1, ENGINE_MAX_PAD_SIDE), min(y1, ENGINE_MAX_PAD_SIDE)
        sx, sy, work_side = width / (x1 - x0), height / (y1 - y0), ENGINE_MAX_PAD_SIDE
        tx, ty = -x0 * sx, -y0 * sy
    return (work_side / canvas_size * sx, 0.0, 0.0, work_side / canvas_size * sy, tx + left, ty + top)


def canvas_to_layer(canvas_to_image, pixels_to_user, image_ctm, layer_ctm):
    """The whole chain: canvas px -> the new layer's coordinates."""
    return compose(invert(layer_ctm), image_ctm, pixels_to_user, canvas_to_image)


# --- output ----------------------------------------------------------------------------------
def fmt(value, digits=4):
    """Fixed, version-independent number formatting: 4 decimals, trailing zeros dropped."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "", "-") else text


def stroke_path_data(control_points, m):
    """'M x0,y0 C x1,y1 x2,y2 x3,y3' for one cubic stroke given in canvas px, mapped by m."""
    p = [apply(m, float(x), float(y)) for x, y in control_points]
    if len(p) != 4:
        raise ValueError(f"a stroke needs 4 control points, got {len(p)}")
    xy = [f"{fmt(px)},{fmt(py)}" for px, py in p]
    return f"M {xy[0]} C {xy[1]} {xy[2]} {xy[3]}"
