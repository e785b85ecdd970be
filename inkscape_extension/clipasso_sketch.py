#!/usr/bin/env python3
"""Inkscape effect: turn the selected raster image(s) into a CLIPasso sketch layer.

Runs in Inkscape's own Python (stdlib + inkex 1.2 or newer). All heavy work happens in the engine
process (`<engine python> -m clipasso_engine sketch ... --progress jsonl`, its own venv); this script
1. finds the selected <image>s and turns each into a file the engine can read,
2. finds the engine through clipasso_engine.json next to clipasso.inx (or CLIPASSO_ENGINE_PYTHON),
3. runs it once for all images and stroke counts, on the part of each picture that shows (a
   `slice` or a clip-path hides the rest: --crop), with a progress window when there is a display
   (Cancel; Keep current sketch returns the best strokes so far),
4. inserts one layer per result (image x stroke count), directly above the image's layer, with the strokes mapped exactly
   onto the image (placement.py), in plain document coordinates.
Paths selected with the image (issue 14 item 3, "Selected paths"): the engine starts from them
(start: all strokes refined, in a new layer), or keeps them and adds strokes (keep: the new layer
holds only the added ones), or they are ignored. They go to the engine as a 224 x 224 SVG
(--start-from), each mapped onto its canvas by the exact inverse of the map that places results.
Any failure becomes one sentence (inkex.AbortExtension) and the document is left untouched.
"""

import base64
import copy
import json
import os
import re
import signal
import sys
import tempfile
import urllib.parse
import urllib.request
import warnings

import inkex

warnings.simplefilter("ignore")  # anything on stderr makes Inkscape show a dialog (and hang in batch mode)

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import batch_mode  # noqa: E402
import document_tree  # noqa: E402
import engine_run  # noqa: E402
import placement  # noqa: E402
import raster_size  # noqa: E402
from engine_run import wire  # noqa: E402  (clipasso_wire when installed, else the checkout's)

CONFIG_NAME = "clipasso_engine.json"
LOG_NAME = "clipasso-sketch.log"
PRESETS = ("fast", "balanced", "paper")
SELECTED_PATHS = ("start", "keep", "ignore")  # the .inx's "Selected paths" option
START_NAME = "start-strokes-{}.svg"          # the hand-off to --start-from, one per image, in the workdir
DEVICES = {"auto": "auto", "cpu": "cpu", "gpu": "mps" if sys.platform == "darwin" else "cuda"}
MIME_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/gif": ".gif",
               "image/webp": ".webp", "image/bmp": ".bmp", "image/tiff": ".tif"}
INKSCAPE_NS = "http://www.inkscape.org/namespaces/inkscape"
SODIPODI_NS = "http://sodipodi.sourceforge.net/DTD/sodipodi-0.dtd"
XLINK_NS = "http://www.w3.org/1999/xlink"
SVG_NS = "http://www.w3.org/2000/svg"
# What a clipPath may hold whose bounds inkex knows exactly; text and <use> are not among them.
CLIP_SHAPES = {"path", "rect", "circle", "ellipse", "polygon", "polyline", "line"}
CLIP_IGNORED = {"title", "desc", "metadata"}  # never drawn, so never part of the clip
CLIP_URL = re.compile(r"^\s*url\(\s*['\"]?#([^'\")]+)['\"]?\s*\)")
# A linked file above this size is refused before anything reads it (issue 8 item 1): the engine's
# own pixel limit is far below what any such file holds, and reading it whole would eat the RAM.
MAX_IMAGE_BYTES = 200 * 1024 * 1024
# Leading bytes of the formats the engine reads: anything else is refused before it is read whole.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(header):
    """True when the file's first bytes are those of PNG, JPEG, GIF, BMP, TIFF or WebP."""
    return header.startswith(IMAGE_MAGIC) or (header[:4] == b"RIFF" and header[8:12] == b"WEBP")


def abort(message):
    raise inkex.AbortExtension(message)


def parse_levels(text, minimum=1):
    """'8, 16 32' -> [8, 16, 32] (order kept, duplicates dropped). minimum 0: only when the engine
    starts from selected paths (0 added strokes = only refine them)."""
    levels = []
    for word in re.split(r"[,;\s]+", str(text).strip()):
        if not word:
            continue
        if not word.isdigit() or not minimum <= int(word) <= 1024:
            abort(f"Number of strokes must be whole numbers from {minimum} to 1024, like 16 or 8, 16, 32 "
                  f"(got {text!r}).")
        if int(word) not in levels:
            levels.append(int(word))
    if not levels:
        abort("Give a number of strokes, like 16 or 8, 16, 32.")
    return levels


def config_path():
    """clipasso_engine.json next to clipasso.inx: the installer copies the .inx and this folder
    into <extensions>/clipasso/, so that is the parent of this script's folder."""
    return os.path.join(os.path.dirname(HERE), CONFIG_NAME)


def find_engine(environ=os.environ):
    """-> (engine python, models_dir or None); aborts with what to do when there is none."""
    config = {}
    path = config_path()
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError):
            abort(f"The CLIPasso engine settings ({path}) cannot be read: run install.py again.")
    python = environ.get("CLIPASSO_ENGINE_PYTHON") or config.get("python")
    if not python:
        abort("The CLIPasso engine is not installed: run `python3 install.py` in the CLIPasso folder, "
              "then try again.")
    if not os.path.isfile(python):
        abort(f"The CLIPasso engine's Python ({python}) is missing: run `python3 install.py` again.")
    return python, config.get("models_dir")


def color_to_css(color):
    """inkex.Color (1.2 and 1.4 alike) -> ('#rrggbb', opacity)."""
    rgb = [int(round(float(value))) for value in list(color)[:3]]
    rgb += [0] * (3 - len(rgb))
    try:
        alpha = float(color.alpha)
    except (AttributeError, TypeError, ValueError):
        alpha = 1.0
    return "#{:02x}{:02x}{:02x}".format(*[max(0, min(255, v)) for v in rgb]), alpha


def parse_transform(text):
    """A transform attribute's text -> 6-tuple. Elements are always read through their raw
    attributes (document_tree): inkex 1.4's `.transform` and even `.get("transform")` rewrite the
    attribute (rotate(30,150,150) becomes a 6-digit matrix), which would change the user's document."""
    return tuple(inkex.Transform(text).to_hexad())


def raw_matrix(element):
    """The element's own transform attribute as a 6-tuple (raw access, see parse_transform)."""
    text = element.attrib.get("transform")
    return tuple(inkex.Transform(text).to_hexad()) if text else placement.IDENTITY


def clip_reference(element):
    """The id in the element's clip-path (attribute or style property), or None."""
    value = element.attrib.get("clip-path")
    for declaration in (element.attrib.get("style") or "").split(";"):
        name, _, text = declaration.partition(":")
        if name.strip() == "clip-path":
            value = text  # the style property wins over the attribute, as in CSS
    match = CLIP_URL.match(value or "")
    return match.group(1) if match else None


def clip_box(clip, matrix):
    """Bounds (x0, y0, x1, y1) of a <clipPath>'s shapes mapped by matrix (the user space of the
    element it clips -> image pixels), or None when they cannot be known for sure
    (objectBoundingBox units, text, <use>, nothing)."""
    if (clip.attrib.get("clipPathUnits") or "userSpaceOnUse").strip() != "userSpaceOnUse":
        return None
    matrix = placement.compose(matrix, raw_matrix(clip))
    box = None
    for child in clip:
        if not isinstance(child.tag, str):  # a comment
            continue
        kind = child.tag.rpartition("}")[2]
        if kind in CLIP_IGNORED:
            continue
        if kind not in CLIP_SHAPES:
            return None
        measured, shape = shape_box(child, kind, matrix)
        if not measured:  # the clip is unknown, never guessed
            return None
        if shape is None:  # draws nothing
            continue
        box = shape if box is None else (min(box[0], shape[0]), min(box[1], shape[1]),
                                         max(box[2], shape[2]), max(box[3], shape[3]))
    return box


def shape_box(shape, kind, matrix):
    """-> (measured, bounds of the shape mapped by matrix, None when it draws nothing). Exact from
    the attributes for circles, ellipses, rects, lines and polygons, whatever the map (issue 18
    item 2: inkex measures a circle through its Bezier form, up to 3e-5 of the radius over); paths,
    and shapes with percentages, through inkex, which maps the path first (exact for a rotated path)."""
    exact = exact_shape_box(shape, kind, placement.compose(matrix, raw_matrix(shape)))
    if exact is not None:
        return True, exact or None
    try:  # on a copy: inkex 1.4 may rewrite attributes it reads, and the document stays as it was
        bounds = copy.deepcopy(shape).bounding_box(inkex.Transform(matrix))
    except Exception:  # inkex cannot measure it
        return False, None
    return True, None if bounds is None else (bounds.left, bounds.top, bounds.right, bounds.bottom)


def exact_shape_box(shape, kind, matrix):
    """The bounds of a basic shape mapped by matrix (its own transform included); () when it draws
    nothing; None when its attributes are not plain lengths (then inkex measures it)."""
    def length(name, default=None):
        text = shape.attrib.get(name)
        return default if text is None else placement.user_length(text)

    if kind in ("circle", "ellipse"):
        cx, cy = length("cx", 0.0), length("cy", 0.0)
        rx, ry = (length("r"),) * 2 if kind == "circle" else (length("rx"), length("ry"))
        rx, ry = (ry if rx is None else rx), (rx if ry is None else ry)  # SVG 2: a missing one is 'auto'
        if None in (cx, cy, rx, ry):
            return None
        return placement.ellipse_box(matrix, cx, cy, rx, ry) if rx > 0 and ry > 0 else ()
    if kind == "rect":
        x, y, width, height = length("x", 0.0), length("y", 0.0), length("width"), length("height")
        if None in (x, y, width, height):
            return None
        corners = [(x, y), (x + width, y), (x, y + height), (x + width, y + height)]
        return placement.points_box(matrix, corners) if width > 0 and height > 0 else ()
    if kind == "line":
        ends = [(length("x1", 0.0), length("y1", 0.0)), (length("x2", 0.0), length("y2", 0.0))]
        return None if None in sum(ends, ()) else placement.points_box(matrix, ends)
    if kind in ("polygon", "polyline"):
        numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", shape.attrib.get("points") or "")
        points = list(zip(map(float, numbers[0::2]), map(float, numbers[1::2])))
        return placement.points_box(matrix, points) if len(points) >= 2 else ()
    return None


def xml_attribute(text):
    """text as a quoted XML attribute value."""
    from xml.sax.saxutils import quoteattr
    return quoteattr(str(text))


def absolute_path_data(path):
    """An absolute inkex.Path as path data at full precision (str(Path) keeps 6 digits), every command
    as it is (arcs, quadratics, shorthands: the engine's reader handles them)."""
    return " ".join(" ".join([segment.letter, *(repr(float(v)) for v in segment.args)]) for segment in path)


def placement_of(instance, image_size):
    """(frames, rect, pixels_to_user) of an image as it is drawn: its frames on the way to the root
    (document_tree.frames), its rect (x, y, width, height) in its own user space, and the map from its
    pixels to that space. The one place a placement is worked out: sketches are inserted with it, the
    visible crop is measured with it and selected paths are brought to the engine with its inverse.
    ValueError or ZeroDivisionError when a transform or viewport is singular."""
    image = instance.image
    attributes = {name: image.get(name) for name in ("x", "y", "width", "height")}
    frames = instance.frames(parse_transform)
    rect = placement.image_rect(attributes, image_size, frames[1].size)
    return frames, rect, placement.image_placement(*rect, image_size, image.get("preserveAspectRatio"))


class ClipassoSketch(inkex.EffectExtension):
    def add_arguments(self, pars):
        pars.add_argument("--tab", default="options")
        pars.add_argument("--strokes", default="16", help="number of strokes, or several: 8, 16, 32")
        pars.add_argument("--selected_paths", default="start", choices=SELECTED_PATHS,
                          help="what selected paths are for: start from them, keep them, ignore them")
        pars.add_argument("--preset", default="fast", choices=PRESETS)
        pars.add_argument("--seeds", type=int, default=0, help="0 = the preset's default")
        pars.add_argument("--mask_background", type=inkex.Boolean, default=False)
        pars.add_argument("--device", default="auto", choices=tuple(DEVICES))
        pars.add_argument("--stroke_color", type=inkex.Color, default=inkex.Color("black"))
        pars.add_argument("--layer_name", default="CLIPasso sketch")

    def load(self, stream):
        """inkex 1.2 looks selected ids up with the XPath //*[@id="..."], which fails outright on an
        id holding a double quote (issue 8 item 14), before effect() runs. Such ids are left out of
        inkex's lookup and selected here by walking the tree instead."""
        quoted = [eid for eid in self.options.ids if '"' in eid]
        self.options.ids = [eid for eid in self.options.ids if '"' not in eid]
        document = super().load(stream)
        for eid in quoted:
            found = [element for element in self.svg.iter() if element.get("id") == eid]
            try:
                self.svg.selection.add(*found[:1])
            except Exception:  # inkex's own limitation: say which element, not a traceback
                abort(f"The selected element with the id {eid!r} cannot be read by Inkscape's extension "
                      f"library because of the double quote in its id: rename it (Object > Object "
                      f"Properties) and try again.")
        return document

    # --- 1. the images ------------------------------------------------------------------------
    def selected_images(self):
        """Every place a selected image shows (document_tree.Instance): an <image>, the images in a
        selected group or layer, or the image a selected clone (<use>) shows."""
        selected = list(self.svg.selection.values())
        if not selected:
            abort("Select an image first, then run CLIPasso Sketch again.")
        images = []
        for element in selected:
            for instance in document_tree.images_shown_by(element):
                if instance not in images:
                    images.append(instance)
        if not images:
            abort("The selection holds no raster image: select an image and run CLIPasso Sketch again.")
        return images

    # --- 1b. the selected paths (Selected paths: start from them / keep them) --------------------
    def selected_paths(self, images):
        """Every place a selected <path> is drawn (document_tree.Instance, chain[0] the path): the
        selected paths, the paths in selected groups and layers (recursively) and those a selected
        clone shows; each once, in selection order. Other objects (text, rectangles, ellipses ...)
        are not paths and are left out; so are paths with no data. Empty unless the option asks for
        them. Several images with paths: refused, as which image a path belongs to is a guess."""
        if self.options.selected_paths == "ignore":
            return []
        found = []
        for element in self.svg.selection.values():
            for instance in document_tree.paths_shown_by(element):
                if instance not in found and (instance.element.attrib.get("d") or "").strip():
                    found.append(instance)
        if found and len(images) > 1:
            abort(f"The selection holds {len(images)} images and {len(found)} paths: with paths selected, "
                  f"select one image at a time (or set Selected paths to Ignore to sketch every image afresh).")
        return found

    @staticmethod
    def path_name(instance):
        """What the designer calls a path: its label or id (or the clone's that shows it)."""
        for node in (instance.element, *instance.clones):
            name = node.get(f"{{{INKSCAPE_NS}}}label") or node.get("id")
            if name:
                return name
        return "a path without an id"

    def start_file(self, instance, source, crop, paths, workdir, index):
        """The 224 x 224 SVG the engine starts from (--start-from): one <path> per selected path, its
        own data made absolute (arcs and quadratics as they are), its transform the document ->
        canvas map composed with the path's own composed transform: the exact inverse of the map
        insert_layer places results with. A path lying wholly outside the part of the image that
        shows is refused, naming it; one partly outside is sent whole (the engine sees only what
        lies on its canvas)."""
        name = self.display_name(instance, index)
        size = raster_size.upright_pixel_size(source)
        if size is None:
            abort(f"The selected paths cannot be placed on {name!r}: its pixel size cannot be read from the "
                  f"picture (PNG, JPEG, GIF, BMP and WebP can be): convert the image, or set Selected paths "
                  f"to Ignore.")
        canvas_to_image = placement.engine_canvas_to_image(size, crop)
        try:
            frames, _, pixels_to_user = placement_of(instance, size)
            document_to_canvas = placement.invert(placement.canvas_to_layer(canvas_to_image, pixels_to_user,
                                                                            frames[0].outer, placement.IDENTITY))
        except (ValueError, ZeroDivisionError):
            abort(f"The selected paths cannot be placed on {name!r}: the image, or a group holding it, is "
                  f"scaled to zero. Fix its transform (Object > Transform) and try again.")
        region = placement.mapped_box(placement.invert(canvas_to_image), crop or (0, 0, size[0], size[1]))
        lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{placement.ENGINE_CANVAS}" '
                 f'height="{placement.ENGINE_CANVAS}" viewBox="0 0 {placement.ENGINE_CANVAS} '
                 f'{placement.ENGINE_CANVAS}">']
        for path in paths:
            try:
                matrix = placement.compose(document_to_canvas, path.frames(parse_transform)[0].outer)
                data = inkex.Path(path.element.attrib.get("d")).to_absolute()
                box = placement.superpath_box(matrix, inkex.Path(data).to_superpath())
            except (ValueError, ZeroDivisionError, TypeError, IndexError):
                abort(f"The selected path {self.path_name(path)!r} cannot be read (its path data or a "
                      f"transform on the way is broken): deselect it or fix it, and try again.")
            if box is None or not placement.boxes_touch(box, region):
                abort(f"The selected path {self.path_name(path)!r} lies wholly outside the part of the image "
                      f"{name!r} that shows, so CLIPasso cannot draw with it: deselect it, or move it onto "
                      f"the image, and try again.")
            ident = (path.clones[0] if path.clones else path.element).get("id")  # what shows it: unique
            lines.append("  <path" + (f" id={xml_attribute(ident)}" if ident else "")
                         + f' d="{absolute_path_data(data)}" transform="matrix('
                         + ",".join(repr(float(v)) for v in matrix) + ')"/>')
        lines.append("</svg>")
        target = os.path.join(workdir, START_NAME.format(index))
        with open(target, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return target

    def image_file(self, image, workdir, index):
        """A local file holding the image's pixels: a decoded data: URI or the linked file."""
        href = (image.get(f"{{{XLINK_NS}}}href") or image.get("href") or "").strip()
        name = image.get("id") or f"image {index + 1}"
        if not href:
            abort(f"The image {name!r} has no picture (empty link).")
        if href.startswith("data:"):
            header, _, payload = href[5:].partition(",")
            mime = header.split(";")[0].strip().lower()
            try:
                if ";base64" in header:
                    data = base64.b64decode(re.sub(r"\s+", "", urllib.parse.unquote(payload)), validate=False)
                else:
                    data = urllib.parse.unquote_to_bytes(payload)
            except ValueError:
                abort(f"The embedded picture of {name!r} is damaged (bad base64 data).")
            # named after the image, so the engine's messages name what the designer sees (issue 8 item 3)
            label = image.get(f"{{{INKSCAPE_NS}}}label") or name
            safe = re.sub(r"[^\w .()-]+", "_", label).strip(" .") or f"image {index + 1}"
            folder = os.path.join(workdir, str(index))  # one folder per image: equal labels never clash
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, safe[:80] + MIME_SUFFIX.get(mime, ".img"))
            with open(path, "wb") as handle:
                handle.write(data)
            return path
        scheme = urllib.parse.urlparse(href).scheme.lower()
        if scheme == "file":
            candidates = [urllib.request.url2pathname(urllib.parse.urlparse(href).path)]
        elif len(scheme) > 1:  # http:, https: ... (one letter is a Windows drive: C:\...)
            abort(f"The image {name!r} links to {href}, which is not a local file: embed it or save it "
                  f"locally and link that.")
        else:
            path = urllib.parse.unquote(href)
            candidates = [path] if os.path.isabs(path) else []
            if not candidates:
                # Inkscape rebases relative links onto the temporary copy it hands us (INKSCAPE.md):
                # try that folder first, then the saved document's, then Inkscape's absolute copy.
                folders = [os.path.dirname(os.path.abspath(self.options.input_file))
                           if isinstance(self.options.input_file, str) else None,
                           self.svg_path()]
                candidates = [os.path.join(folder, path) for folder in folders if folder]
            absref = image.get(f"{{{SODIPODI_NS}}}absref")
            if absref:
                candidates.append(absref)
        for candidate in candidates:
            if candidate and os.path.isfile(os.path.expanduser(candidate)):
                return self.checked_link(os.path.expanduser(candidate), name)
        written, folder = self.link_as_written(href, scheme)
        if folder is None:
            abort(f"The linked image file of {name!r} was not found: the document links to {written!r}, "
                  f"relative to its own folder, but the document has not been saved yet: save it, or "
                  f"relink or embed the image, and try again.")
        abort(f"The linked image file of {name!r} was not found: the document links to {written!r}, "
              f"looked for in {folder}; relink or embed the image and try again.")

    def link_as_written(self, href, scheme):
        """-> (the link as the designer wrote it, the folder its file was looked for in; None when a
        relative link belongs to a document never saved). Inkscape hands the script a copy of the
        document in a temporary folder, its relative links rewritten to point from there (measured,
        Inkscape 1.2.2: 'photos/a%20b.png' in '/home/me/my drawings/doc.svg' arrives in /tmp as
        '../home/me/my%20drawings/photos/a%20b.png'): taken back to the saved document's folder, the
        link reads as written (issue 18 item 3)."""
        if scheme == "file":
            path = urllib.request.url2pathname(urllib.parse.urlparse(href).path)
            return href, os.path.dirname(path)
        if os.path.isabs(urllib.parse.unquote(href)):
            return href, os.path.dirname(urllib.parse.unquote(href))
        copy_folder = os.path.dirname(os.path.abspath(self.options.input_file)) \
            if isinstance(self.options.input_file, str) else None
        saved = self.document_path()  # None: not started by Inkscape; "": a document never saved
        if saved == "":
            return href, None
        saved_folder = os.path.dirname(os.path.abspath(saved)) if saved else copy_folder
        written = href
        if copy_folder and saved_folder and copy_folder != saved_folder:  # undo Inkscape's rebasing
            target = os.path.join(copy_folder, urllib.parse.unquote(href))
            written = os.path.relpath(target, saved_folder).replace(os.sep, "/")
            if "%" in href:  # Inkscape wrote it %-escaped (a space as %20), as it writes links
                written = urllib.parse.quote(written, safe="/")
        if saved_folder is None:
            return written, None
        looked = os.path.join(saved_folder, urllib.parse.unquote(written))
        return written, os.path.dirname(os.path.normpath(looked))

    @staticmethod
    def checked_link(path, name):
        """The linked file, once its size and first bytes say it is an image (issue 8 item 1):
        a huge or foreign file is refused before the engine reads it whole."""
        size = os.path.getsize(path)
        if size > MAX_IMAGE_BYTES:
            abort(f"The linked file of {name!r} ({path}) is {size / 2**20:.0f} MB, larger than the "
                  f"{MAX_IMAGE_BYTES // 2**20} MB CLIPasso reads: link a smaller copy (a few megapixels is plenty).")
        with open(path, "rb") as handle:
            header = handle.read(16)
        if not looks_like_image(header):
            abort(f"The linked file of {name!r} ({path}) is not a PNG, JPEG, GIF, BMP, TIFF or WebP "
                  f"image: relink the image and try again.")
        return path

    # --- what of each picture shows ----------------------------------------------------------------
    def visible_crop(self, instance, path):
        """The engine's --crop for one image: (left, top, right, bottom) of the pixels that show on
        the canvas, or None to sketch the whole picture. A `slice` image shows only what falls in
        its rect; a clip-path on it, an ancestor or a clone, or a nested viewport, may hide more.
        Whenever something is uncertain (unreadable header, odd transform) the answer is None:
        more is sketched, never less."""
        size = raster_size.upright_pixel_size(path)
        if size is None:
            return None
        try:
            frames, (x, y, width, height), pixels_to_user = placement_of(instance, size)
            # measured in the raster's pixels: a clip shape's box there is exact under any rotation
            to_pixels = placement.invert(placement.compose(frames[0].outer, pixels_to_user))
            visible = placement.mapped_box(placement.invert(pixels_to_user), (x, y, x + width, y + height))
            for box in self.clip_boxes(frames, to_pixels):
                visible = placement.intersect_boxes(visible, box)
                if visible is None:  # clipped away entirely: nothing shows, sketch it whole
                    return None
            return placement.whole_pixel_box(size, visible)
        except (ValueError, ZeroDivisionError):  # no size or a singular transform: placement says so later
            return None

    def clip_boxes(self, frames, to_pixels):
        """The bounds of each clip on the image's way to the root, in the image's pixels (to_pixels:
        the root's user space -> pixels): the clip-paths on it, its ancestors and clones, and the
        viewports of nested <svg>s and cloned <symbol>s. A clip whose bounds are unknown is skipped:
        the sketch then covers more than shows."""
        for frame in frames:
            # clip units are the clipped node's user space (its transform included), and so is a viewport
            matrix = placement.compose(to_pixels, frame.outer)
            clip_id = clip_reference(frame.node)
            clip = self.clip_path(clip_id) if clip_id else None
            box = clip_box(clip, matrix) if clip is not None else None
            if box is not None:
                yield box
            if frame.clip is not None:
                yield placement.mapped_box(matrix, frame.clip)

    def clip_path(self, clip_id):
        """The <clipPath> with that id; looked up by walking, as ids may hold any character."""
        for clip in self.svg.iter(f"{{{SVG_NS}}}clipPath"):
            if clip.get("id") == clip_id:
                return clip
        return None

    # --- 2 + 3. running the engine ------------------------------------------------------------
    def engine_command(self, python, models_dir, sources, names, levels, workdir, crops=(), starts=()):
        """One engine process for the whole Apply: every image, every stroke count (one model load).
        starts: per image the start strokes' file (--start-from) or None."""
        jobs = len(sources) * len(levels)
        out = os.path.join(workdir, "sketch.svg" if jobs == 1 else "sketches")  # the CLI's -o rule
        command = [python, "-m", "clipasso_engine", "sketch", *sources, "-o", out,
                   "--strokes", ",".join(str(n) for n in levels)]
        for name in names:  # the engine's messages then name what the designer sees (issue 8 item 3)
            command += ["--name", name]
        if any(crops):  # one per image, in image order; '-' is the whole picture
            for crop in crops:
                command += ["--crop", ",".join(str(v) for v in crop) if crop else "-"]
        if any(starts):  # one per image, in image order; '-' is none
            for start in starts:
                command += ["--start-from", start or "-"]
            if self.options.selected_paths == "keep":
                command += ["--keep-start"]
        command += ["--preset", self.options.preset, "--device", DEVICES[self.options.device],
                    "--progress", "jsonl"]
        if self.options.seeds > 0:
            command += ["--seeds", str(self.options.seeds)]
        if self.options.mask_background:
            command += ["--mask-background"]
        if models_dir:
            command += ["--models-dir", str(models_dir)]
        return command

    @staticmethod
    def engine_environment():
        """Our environment minus Inkscape's Python settings: Inkscape puts its own extension
        folder (and on Windows/macOS its bundled packages) on PYTHONPATH, which must not shadow
        the engine venv's packages. CLIPASSO_ENGINE_PYTHONPATH sets one for the engine (a checkout)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        if os.environ.get("CLIPASSO_ENGINE_PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["CLIPASSO_ENGINE_PYTHONPATH"]
        env["PYTHONUNBUFFERED"] = "1"
        env[wire.CALLER_ENV] = wire.CALLER_INKSCAPE  # engine messages then speak to an Inkscape user
        return env

    def run_engine(self, title, command, log_path, image_paths=()):
        """-> the result events in job order (AbortExtension on any failure)."""
        import progress_window  # gi is imported inside, only when a window can be shown

        env = self.engine_environment()
        with open(log_path, "wb") as log_file:
            log_file.write(("== " + " ".join(command) + "\n").encode("utf-8", "replace"))
            log_file.flush()
            stall = float(os.environ.get("CLIPASSO_STALL_TIMEOUT", engine_run.STALL_TIMEOUT_S))
            previous = {}

            def on_signal(signum, _frame):  # Inkscape or the user killing us: take the engine down
                engine_run.stop_all(grace_s=0.5)
                os._exit(128 + signum)

            for sig in ("SIGTERM", "SIGHUP", "SIGINT"):
                if hasattr(signal, sig):
                    previous[sig] = signal.signal(getattr(signal, sig), on_signal)
            try:
                if progress_window.available():
                    return progress_window.run_with_window(
                        title, command, lambda cmd: engine_run.EngineProcess(cmd, log_file, env), log_path, stall,
                        image_paths=image_paths)
                return engine_run.run_blocking(command, log_file, log_path, env=env, stall_timeout_s=stall)
            except engine_run.EngineFailed as failure:
                abort(str(failure))
            finally:
                for sig, handler in previous.items():
                    signal.signal(getattr(signal, sig), handler)

    # --- 4. the result ------------------------------------------------------------------------
    @staticmethod
    def layer_anchor(image):
        """The element the new layer goes directly after: the image's nearest layer, else its
        top-level ancestor (then the layer lands at the top level, just above the image)."""
        anchor = image
        for ancestor in image.iterancestors():
            if ancestor.get(f"{{{INKSCAPE_NS}}}groupmode") == "layer":
                return ancestor
            if ancestor.getparent() is None:
                break
            anchor = ancestor
        return anchor

    def unique_tag(self, tag, taken):
        candidate, n = tag, 1
        while f"clipasso-layer-{candidate}" in taken:
            n += 1
            candidate = f"{tag}-{n}"
        return candidate

    def insert_layer(self, instance, index, result, anchor, taken):
        """A new layer after `anchor` holding one path per stroke; returns the layer."""
        image = instance.image
        parent = anchor.getparent()
        image_size = result["image_size"]
        try:
            frames, _, pixels_to_user = placement_of(instance, image_size)
            matrix = placement.canvas_to_layer(tuple(result["canvas_to_image"]), pixels_to_user,
                                               frames[0].outer, document_tree.content_matrix(parent, parse_transform))
        except (ValueError, ZeroDivisionError):  # issue 8 item 13: a sentence, not a traceback
            abort(f"The sketch of {image.get('id') or 'the image'!r} cannot be placed: the layer or group "
                  f"{parent.get('id') or ''!r} that holds it is scaled to zero (or the image has no size). "
                  f"Fix its transform (Object > Transform) and try again.")
        width = float(result.get("stroke_width", 3.0)) * placement.width_scale(matrix)
        color, opacity = color_to_css(self.options.stroke_color)
        style = (f"fill:none;stroke:{color};stroke-width:{placement.fmt(width)};"
                 f"stroke-linecap:round;stroke-linejoin:round")
        if opacity < 1.0:
            style += f";stroke-opacity:{placement.fmt(opacity, 3)}"

        # the strokes the engine kept as they were (Keep them and add strokes) are in the document already
        kept = {int(k) for k in result.get("kept") or ()}
        strokes = [points for k, points in enumerate(result["points"]) if k not in kept]
        image_id = re.sub(r"[^A-Za-z0-9_.-]", "_", self.instance_id(instance, index))
        tag = self.unique_tag(f"{image_id}-{len(strokes)}", taken)
        label = f"{len(strokes)} added strokes" if kept else f"{len(strokes)} strokes"
        layer = inkex.Layer.new(f"{self.options.layer_name} \u2014 {label}")
        layer.set("id", f"clipasso-layer-{tag}")
        taken.add(layer.get("id"))
        for k, points in enumerate(strokes):
            path = inkex.PathElement()
            path.set("id", f"clipasso-{tag}-stroke-{k + 1}")
            # raw attributes: our own number formatting, identical under inkex 1.2 and 1.4
            path.attrib["d"] = placement.stroke_path_data(points, matrix)
            path.attrib["style"] = style
            layer.append(path)
        # indented like the anchor, so the XML editor and diffs stay readable (whitespace only)
        previous = anchor.getprevious()
        lead = previous.tail if previous is not None else anchor.getparent().text
        lead = lead if lead and not lead.strip() else "\n"
        layer.text = lead + "  "
        for path in layer:
            path.tail = lead + "  "
        if len(layer):
            layer[-1].tail = lead
        after = anchor.tail
        anchor.addnext(layer)  # (lxml may move tails around here: set them after)
        layer.tail, anchor.tail = after, lead
        return layer

    @staticmethod
    def display_name(instance, index):
        """What the designer calls it: the label or id of the image, or of the clone that shows it."""
        shown_by = instance.shown_by
        return shown_by.get(f"{{{INKSCAPE_NS}}}label") or shown_by.get("id") or f"image {index + 1}"

    @staticmethod
    def instance_id(instance, index):
        """The image's id, or for a clone the clone's id (and the image's, when the clone shows a
        group or symbol holding it): the new layer's and strokes' ids start with it."""
        image_id = instance.image.get("id") or f"image{index + 1}"
        if instance.shown_by is instance.image:
            return image_id
        clone_id = instance.shown_by.get("id") or f"clone{index + 1}"
        shows_image_itself = len(instance.clones) == 1 and document_tree.referenced(instance.shown_by) is instance.image
        return clone_id if shows_image_itself else f"{clone_id}-{image_id}"

    def effect(self):
        images = self.selected_images()
        paths = self.selected_paths(images)
        mode = self.options.selected_paths if paths else None
        levels = parse_levels(self.options.strokes, minimum=0 if paths else 1)
        if mode == "keep" and 0 in levels:
            abort("Keep them and add strokes needs at least 1 stroke to add: set Number of strokes to 1 or "
                  "more (or choose Start from them to only refine the selected paths).")
        python, models_dir = find_engine()
        log_path = os.path.join(tempfile.gettempdir(), LOG_NAME)
        names = [self.display_name(image, index) for index, image in enumerate(images)]
        with tempfile.TemporaryDirectory(prefix="clipasso-") as workdir:
            sources = [self.image_file(image.image, workdir, index) for index, image in enumerate(images)]
            crops = [self.visible_crop(image, source) for image, source in zip(images, sources)]
            starts = [self.start_file(images[0], sources[0], crops[0], paths, workdir, 0)] if paths else []
            command = self.engine_command(python, models_dir, sources, names, levels, workdir, crops, starts)
            counts = ", ".join(str(n) for n in levels)
            title = (f"{names[0]}: {counts} strokes" if len(images) == 1
                     else f"{len(images)} images: {counts} strokes")
            if paths:
                title = f"{names[0]}: {len(paths)} selected paths + {counts} strokes"
            results = self.run_engine(title, command, log_path, sources)
        # Only now, with every run done, touch the document: a failure above leaves it as it was.
        taken = set(self.svg.xpath("//@id"))
        # image's layer -> the newest layer put above it (keeps runs in order). Keyed by the element
        # itself: lxml hands out the same proxy object for a node while one is referenced.
        last_inserted = {}
        for result in results:  # job order: image by image, stroke counts as given
            index = int(result["image"])
            image = images[index]
            anchor = self.layer_anchor(image.shown_by)  # over the clone, when a clone shows it
            layer = self.insert_layer(image, index, result, last_inserted.get(anchor, anchor), taken)
            last_inserted[anchor] = layer


if __name__ == "__main__":
    # inkscape --batch-process: the error sentence to Inkscape's stderr and the log, never to a
    # dialog nobody can close (batch_mode.py)
    batch_mode.route_stderr(os.path.join(tempfile.gettempdir(), LOG_NAME))
    ClipassoSketch().run()
