"""Where an <image> shows: the elements between it and the document that map its coordinates.

Stdlib only; elements are lxml nodes (inkex's or plain), read through their raw attributes, so the
document is never rewritten by reading it. An image shows once per path from the root down to it
as the document is rendered: through its ancestors, and through every <use> that clones it (or a
<g>, <symbol> or <svg> holding it). Such a path, innermost element first, is an `Instance`; its
`frames()` give, for every element on it, the matrices from the element's coordinates to the
root's user space (placement.py's 6-tuples):

    outer  the coordinates its own x/y/width/height are in (its transform attribute applied)
    inner  the coordinates of what it holds: outer @ translate(x, y) for a <use>,
           outer @ translate(x, y) @ the viewBox rule for a nested <svg> or a cloned <symbol>

What counts, as Inkscape 1.2.2 draws it (measured by rendering, tests/test_placement_documents.py):
- nested <svg>: x, y, width, height (default 100 % of the enclosing viewport), viewBox and every
  preserveAspectRatio. Its `transform` attribute is NOT applied: SVG 1.1 does not allow one there
  and Inkscape 1.2.2 ignores it (browsers following SVG 2 apply it; inkex's composed_transform()
  applies it too, under 1.2 and 1.4.1 alike, which is why this module does not use inkex's).
- <use>: transform, then translate(x, y), then the referenced element as it is (its own
  transform included); width/height only size a referenced <svg> or <symbol> (default 100 %).
- <symbol> (only through a <use>): a viewport like a nested <svg>, sized by the <use>.
- <a>, <switch>, <g>: groups (their transform applies); a <switch> shows only its first child
  whose systemLanguage / requiredExtensions pass, as Inkscape does.
- viewport clip: a nested <svg> or cloned <symbol> hides what falls outside its viewport unless
  its overflow is visible or auto (SVG 1.1 and 2; every browser). Inkscape 1.2.2 does not draw
  that clip (measured), but the document says it, so the crop follows the document.
"""

import os
import re

import placement

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
# Never drawn where they stand: their content shows only where something refers to it.
NOT_RENDERED = {"defs", "symbol", "clipPath", "mask", "pattern", "marker", "linearGradient",
                "radialGradient", "filter", "style", "script", "title", "desc", "metadata"}
VIEWPORTS = ("svg", "symbol")      # elements that establish a viewport (x, y, width, height, viewBox)
MAX_CLONE_DEPTH = 16               # a <use> of a <use> of ...: deeper is a loop (or absurd)


def kind(node):
    """The element's local name ('image', 'use', ...); None for comments and processing instructions."""
    return node.tag.rpartition("}")[2] if isinstance(node.tag, str) else None


def href(node):
    return (node.attrib.get(f"{{{XLINK_NS}}}href") or node.attrib.get("href") or "").strip()


def referenced(use):
    """The element a <use> clones (same document, '#id'), or None. Looked up by walking: ids may
    hold any character, which an XPath lookup cannot quote."""
    target = href(use)
    if not target.startswith("#") or len(target) < 2:
        return None
    for node in use.getroottree().getroot().iter():
        if node.attrib.get("id") == target[1:]:
            return node
    return None


def style_property(node, name):
    """A presentation attribute or its style property (the style wins, as in CSS)."""
    value = node.attrib.get(name)
    for declaration in (node.attrib.get("style") or "").split(";"):
        key, _, text = declaration.partition(":")
        if key.strip() == name:
            value = text.strip()
    return value


# --- which images a selection shows ----------------------------------------------------------------
class Instance:
    """One place an image shows: `chain` holds the image, then every element above it as rendered,
    up to the root (a <use> follows the element it clones)."""

    def __init__(self, chain):
        self.chain = tuple(chain)

    @property
    def image(self):
        return self.chain[0]

    @property
    def element(self):
        """The element shown (the <image>, or the <path> of paths_shown_by)."""
        return self.chain[0]

    @property
    def clones(self):
        """The <use> elements on the way, outermost first (empty for the image itself)."""
        return [node for node in reversed(self.chain) if kind(node) == "use"]

    @property
    def shown_by(self):
        """What the designer selected to see this image: the outermost <use>, else the image."""
        clones = self.clones
        return clones[0] if clones else self.image

    def __eq__(self, other):
        return isinstance(other, Instance) and len(self.chain) == len(other.chain) and \
            all(a is b for a, b in zip(self.chain, other.chain))

    def __hash__(self):
        return hash(tuple(id(node) for node in self.chain))

    def frames(self, parse_transform):
        return frames(self.chain, parse_transform)


def images_shown_by(element):
    """Every Instance the selected element shows: itself when it is an <image>, else the images
    under it as rendered (through clones, a <switch>'s chosen child; not inside <defs>). Nothing
    for an element inside <defs>, a <symbol> or a <clipPath>: it shows only where it is cloned."""
    return shown_by(element, "image")


def paths_shown_by(element):
    """The same for <path> elements: every place a path the selected element shows is drawn (the
    path itself, the paths in a selected group or layer, recursively, or those a clone shows).
    chain[0] of each Instance is the <path>."""
    return shown_by(element, "path")


def shown_by(element, wanted):
    above = tuple(element.iterancestors())
    if any(kind(node) in NOT_RENDERED for node in above):  # picked in the XML editor: drawn nowhere there
        return []
    return [Instance(tuple(reversed(path)) + above) for path in _paths_down(element, (), 0, wanted)]


def _paths_down(node, path, depth, wanted="image"):
    """Paths (outermost first) from node down to each element of kind `wanted` it shows."""
    name = kind(node)
    path = path + (node,)
    if name == wanted:
        yield path
    elif name == "use":
        target = referenced(node)
        if target is not None and depth < MAX_CLONE_DEPTH and not _clones_itself(node, target, path):
            yield from _paths_down(target, path, depth + 1, wanted)
    elif name == "switch":
        child = switch_choice(node)
        if child is not None:
            yield from _paths_down(child, path, depth, wanted)
    elif name is None or (name in NOT_RENDERED and not _cloned_symbol(node, path)):
        return
    else:
        for child in node:
            yield from _paths_down(child, path, depth, wanted)


def _clones_itself(use, target, path):
    """A <use> of itself or of an element holding it: renderers refuse the loop, so do we."""
    return target in path or any(ancestor is target for ancestor in use.iterancestors())


def _cloned_symbol(node, path):
    return kind(node) == "symbol" and len(path) > 1 and kind(path[-2]) == "use"


def user_languages(environ=os.environ):
    """The user's language tags ('de', 'pt-br'), from the POSIX locale variables; ['en'] if none."""
    for key in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        text = environ.get(key, "")
        tags = [re.split(r"[.@]", part)[0].replace("_", "-").lower() for part in text.split(":")]
        tags = [tag for tag in tags if tag and tag not in ("c", "posix")]
        if tags:
            return tags
    return ["en"]


def switch_choice(switch, languages=None):
    """The child of a <switch> that shows: the first element whose conditions pass. Inkscape
    supports no requiredExtensions, and matches systemLanguage on the language's primary tag."""
    languages = languages or user_languages()
    for child in switch:
        name = kind(child)
        if name is None or name in ("title", "desc", "metadata"):
            continue
        if (child.attrib.get("requiredExtensions") or "").strip():
            continue
        wanted = child.attrib.get("systemLanguage")
        if wanted is not None and not _language_matches(wanted, languages):
            continue
        return child
    return None


def _language_matches(wanted, languages):
    tags = [tag.strip().lower() for tag in wanted.split(",") if tag.strip()]
    return any(tag == own or tag.split("-")[0] == own.split("-")[0] for tag in tags for own in languages)


# --- the matrices along an instance ----------------------------------------------------------------
class Frame:
    """One element of an instance: outer/inner matrices to the root's user space, the viewport
    size (w, h) its children's percentages refer to, and the viewport clip (x0, y0, x1, y1) it
    imposes on them in its outer coordinates (None when it clips nothing)."""

    def __init__(self, node, outer, inner, size, clip=None):
        self.node, self.outer, self.inner, self.size, self.clip = node, outer, inner, size, clip


def root_viewport_size(root):
    """The document's viewport in user units: its viewBox size, else width/height, else 100 x 100."""
    box = _view_box(root)
    if box is not None:
        return box[2], box[3]
    return (placement.user_length(root.attrib.get("width")) or 100.0,
            placement.user_length(root.attrib.get("height")) or 100.0)


def frames(chain, parse_transform):
    """Frame per element of chain (innermost first, as the chain). parse_transform: text -> 6-tuple.
    ValueError when an element on the way shows nothing (a zero-sized viewport)."""
    top_down = list(reversed(chain))
    root = top_down[0]
    outer = _own_transform(root, parse_transform)
    result = [Frame(root, outer, outer, root_viewport_size(root))]
    for above, node in zip(top_down, top_down[1:]):
        result.append(_frame(node, above, result[-1], parse_transform))
    return list(reversed(result))


def _frame(node, above, parent, parse_transform):
    """The frame of node, given the element above it on the chain and that element's frame."""
    name = kind(node)
    cloned = kind(above) == "use" and above is not node.getparent()
    if name == "svg":  # the transform on a nested <svg> is ignored (module docstring)
        outer = parent.inner
    else:
        outer = placement.compose(parent.inner, _own_transform(node, parse_transform))
    if name == "use":
        x = placement.user_length(node.attrib.get("x"), parent.size[0]) or 0.0
        y = placement.user_length(node.attrib.get("y"), parent.size[1]) or 0.0
        return Frame(node, outer, placement.compose(outer, (1.0, 0.0, 0.0, 1.0, x, y)), parent.size)
    if name in VIEWPORTS:
        return _viewport_frame(node, above if cloned else None, outer, parent.size)
    return Frame(node, outer, outer, parent.size)


def _viewport_frame(node, use, outer, size):
    """A nested <svg>, or an <svg>/<symbol> cloned by `use` (whose width/height, when given,
    size the viewport)."""
    def length(name, percent_of):
        value = use.attrib.get(name) if use is not None else None
        if value is None or value.strip() == "auto":
            value = node.attrib.get(name)
        return placement.user_length(value, percent_of)

    x = placement.user_length(node.attrib.get("x"), size[0]) or 0.0
    y = placement.user_length(node.attrib.get("y"), size[1]) or 0.0
    width, height = length("width", size[0]), length("height", size[1])
    width = size[0] if width is None else width
    height = size[1] if height is None else height
    if width <= 0 or height <= 0:
        raise ValueError("a nested viewport of zero size shows nothing")
    box = _view_box(node)
    if box is None:
        inner, inner_size = placement.compose(outer, (1.0, 0.0, 0.0, 1.0, x, y)), (width, height)
    else:
        inner = placement.compose(outer, placement.viewbox_transform(
            (x, y, width, height), box, node.attrib.get("preserveAspectRatio")))
        inner_size = (box[2], box[3])
    overflow = (style_property(node, "overflow") or "hidden").strip().lower()
    clip = None if overflow in ("visible", "auto") else (x, y, x + width, y + height)
    return Frame(node, outer, inner, inner_size, clip)


def _view_box(node):
    """(x, y, width, height) of a viewBox attribute, or None when absent or unusable."""
    words = (node.attrib.get("viewBox") or "").replace(",", " ").split()
    if len(words) != 4:
        return None
    try:
        box = tuple(float(word) for word in words)
    except ValueError:
        return None
    return box if box[2] > 0 and box[3] > 0 else None


def _own_transform(node, parse_transform):
    text = node.attrib.get("transform")  # raw access: inkex 1.4's .transform rewrites the attribute
    return tuple(parse_transform(text)) if text else placement.IDENTITY


def content_matrix(element, parse_transform):
    """Coordinates of the element's children -> the root's user space (a layer's parent)."""
    return frames((element, *element.iterancestors()), parse_transform)[0].inner
