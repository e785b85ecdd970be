"""Any raster image -> CLIPasso's target (1x3xSxS in [0, 1], RGB on white) and the exact map back.

The steps, in order (docs/ALGORITHM.md, "Preprocessing"):
  1. open: a path, bytes, a PIL image or a numpy array; the first frame of an animation; upright
     according to its EXIF orientation. Every way a file can be bad becomes EngineError("bad_image",
     "<file name>: <what is wrong>"), never a traceback.
  2. RGB on white: alpha (RGBA, LA, palette or colour-key transparency) is composited onto white;
     16-bit and 32-bit greys are scaled to 8 bits (not clipped); CMYK goes through its ICC profile
     when it has one.
  3. frame: pad to a white square, image centred (DEVIATION, config.pad_to_square), or the reference's
     `fix_scale` (a white square of side max(h, w) + 20), or stretch like the reference.
  4. resize to the canvas with PIL bicubic (what torchvision's Resize does to a PIL image), /255.

Geometry. The map `canvas_to_image` is in pixel-edge coordinates: canvas (0, 0) is the canvas's
top-left corner and (S, S) its bottom-right; image (0, 0) is the top-left corner of pixel (0, 0) and
(W, H) the image's bottom-right corner. PIL's resize maps box edges onto box edges (output pixel i
samples the input at (i + 0.5) * in / out), and the padding offsets are whole pixels, so the map is an
exact affine, including padding with an odd difference (one more white column/row right/bottom, as
the reference's integer centring) and the pre-shrink of very large frames.
"""

from __future__ import annotations

import io
import os
import re
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# torch is imported where a tensor is made, not here: importing it costs seconds, and a bad file must be
# answered before that (the CLI reads every input before torch and the models load).

from .errors import EngineError

# Larger images are refused before decoding (a tiny file can claim 100000 x 100000 pixels and eat all
# memory: a "decompression bomb"). Pillow's own hard limit (2 x its warning limit), ~179 megapixels.
MAX_PIXELS = 2 * 89_478_485

# A padded square wider than this is built from a shrunk copy of the image (a 30000 x 800 panorama
# would otherwise need a 30000 x 30000 white square in memory). The map stays exact; the result differs
# from a one-step resize only by resampling twice.
MAX_PAD_SIDE = 8192

# Files larger than this are refused from their size alone, before a byte is read: the largest image
# we accept (MAX_PIXELS, 16-bit RGBA, uncompressed TIFF) is about 1.4 GB, and a 2 GB file linked by
# mistake must not be read into memory to find out that it is not a picture.
MAX_FILE_BYTES = 1_500_000_000

FIX_SCALE_MARGIN = 20  # reference `fix_scale`: white square of side max(h, w) + 20

SUPPORTED = "PNG, JPEG, WebP, TIFF, GIF or BMP"

# How the file starts, for formats we read: a file that starts like one of them but cannot be read
# is damaged, not "not an image".
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP", b"RIFF": "WebP",
}


@dataclass(frozen=True)
class LoadedImage:
    target: torch.Tensor               # 1x3xSxS float32 in [0, 1], CPU: what CLIP sees
    image_size: tuple[int, int]        # (width, height) of the WHOLE input, after EXIF rotation, even when cropped
    canvas_to_image: tuple[float, ...]  # (a, b, c, d, e, f): x_img = a x + c y + e, y_img = b x + d y + f
    name: str = "image"                # display name, for messages (file name unless given)
    mask: torch.Tensor | None = None   # 1x1xSxS {0, 1}, 1 = kept, once apply_mask has run
    photo_box: tuple[float, ...] | None = None  # (left, top, right, bottom) canvas px the photo covers (the
                                                # rest is padding); None = the whole canvas

    @property
    def photo_region(self) -> tuple[float, ...]:
        """photo_box, or the whole canvas when none is known."""
        size = self.target.shape[-1]
        return self.photo_box or (0.0, 0.0, float(size), float(size))


def load_image(source, config, name: str | None = None, crop=None) -> LoadedImage:
    """Read `source` (path, bytes, PIL image, numpy HxW[xC] array) into CLIPasso's target.

    name: the display name used in every message (default: the file name).
    crop: (left, top, right, bottom) in the upright image's pixels, or None for the whole image: only
    that rectangle is framed and sketched, while image_size and canvas_to_image still refer to the whole
    image, so strokes land on the same place of the picture.
    Uses config.canvas_size, config.pad_to_square and config.fix_scale. The full-resolution pixels are
    dropped on return: only the canvas-sized target is kept for the run."""
    name, image = open_image(source, name)
    whole_size = image.size
    left, top = 0, 0
    if crop is not None:
        left, top, right, bottom = check_crop(crop, whole_size, name)
        image = image.crop((left, top, right, bottom))
    rgb = to_rgb_on_white(image, name)
    del image
    size = config.canvas_size
    working, (sx, tx, sy, ty) = frame(rgb, pad_to_square=config.pad_to_square, fix_scale=config.fix_scale)
    # canvas -> working image is a pure scale (edges onto edges); working -> input is (sx, tx, sy, ty),
    # then the crop's offset into the whole image
    ww, wh = working.size
    matrix = (ww / size * sx, 0.0, 0.0, wh / size * sy, tx + left, ty + top)
    resized = working.resize((size, size), Image.Resampling.BICUBIC)
    import torch
    target = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    a, _, _, d, e, f = matrix
    box = ((left - e) / a, (top - f) / d, (left + rgb.width - e) / a, (top + rgb.height - f) / d)
    if config.pad_to_square and not config.fix_scale and config.soft_padding:
        target = soften_padding(target, box, config.soft_padding)
    return LoadedImage(target=target, image_size=whole_size, canvas_to_image=matrix, name=name, photo_box=box)


def soften_padding(target, photo_box, fade: float):
    """The padding without an edge (DEVIATION, config.soft_padding): white padding next to a photo is a
    strong straight edge in the target, which CLIP's features see and the strokes then draw (a line across
    the sketch that is not part of the object). Each padding pixel instead continues the photo's border,
    blurred (sigma fade / 2) so that it carries no lines, and fades to white with the distance d to the photo
    as exp(-d / fade). The photo's own pixels are unchanged, and so is the canvas -> image map."""
    import torch
    from scipy.ndimage import gaussian_filter
    size = target.shape[-1]
    x0, y0, x1, y1 = photo_box
    c0, r0 = max(0, int(np.ceil(x0 - 1e-6))), max(0, int(np.ceil(y0 - 1e-6)))      # whole photo pixels
    c1, r1 = min(size, int(np.floor(x1 + 1e-6))), min(size, int(np.floor(y1 + 1e-6)))
    if (c0, r0, c1, r1) == (0, 0, size, size) or c1 - c0 < 2 or r1 - r0 < 2:
        return target
    image = target[0].numpy().astype(np.float64)
    border = gaussian_filter(image[:, r0:r1, c0:c1], sigma=(0, fade / 2, fade / 2), mode="nearest")
    extended = np.pad(border, ((0, 0), (r0, size - r1), (c0, size - c1)), mode="edge")
    centres = np.arange(size) + 0.5
    dx = np.maximum(np.maximum(c0 - centres, centres - c1), 0)[None, :]
    dy = np.maximum(np.maximum(r0 - centres, centres - r1), 0)[:, None]
    weight = np.exp(-np.hypot(dx, dy) / fade)
    inside = (dx == 0) & (dy == 0)
    softened = np.where(inside, image, 1.0 + (extended - 1.0) * weight)
    return torch.from_numpy(softened.astype(np.float32))[None].contiguous()


def check_crop(crop, image_size, name: str = "image") -> tuple[int, int, int, int]:
    """(left, top, right, bottom) as whole pixels inside the image, or a bad_argument sentence."""
    width, height = image_size
    try:
        left, top, right, bottom = (int(round(float(v))) for v in crop)
    except (TypeError, ValueError):
        raise EngineError("bad_argument", f"{name}: the crop must be four numbers left, top, right, bottom "
                                          f"(got {crop!r}).") from None
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise EngineError("bad_argument", f"{name}: the crop {left},{top},{right},{bottom} is empty or outside "
                                          f"the image ({width} x {height} pixels); give left,top,right,bottom "
                                          f"with 0 <= left < right <= {width} and 0 <= top < bottom <= {height}.")
    return left, top, right, bottom


# ------------------------------------------------------------------------------------------------
# 1. open

def _bad(name: str, reason: str) -> EngineError:
    return EngineError("bad_image", f"{name}: {reason}")


def open_image(source, name: str | None = None) -> tuple[str, Image.Image]:
    """(name for messages, decoded PIL image, upright). Files and bytes give their first frame.

    name, when given, replaces the file name in every message."""
    label = name
    if isinstance(source, Image.Image):
        name = Path(getattr(source, "filename", "") or "image").name
        image = _decode(source, name, first_frame=False)  # a PIL image's current frame is the caller's choice
    elif isinstance(source, np.ndarray):
        name, image = "array", array_to_image(source, "array")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "image data"
        data = bytes(source)
        if not data:
            raise _bad(name, "no data (0 bytes).")
        image = _decode(data, name)
    elif isinstance(source, (str, os.PathLike)):
        if not str(source).strip():
            raise _bad("(no file)", "no file name given.")
        path = Path(source)
        name = label or path.name or str(path)
        image = _decode_file(path, name)
    else:
        raise EngineError("bad_argument", f"Cannot read an image from a {type(source).__name__}; "
                                          "give a file path, bytes, a PIL image or a numpy array.")
    return label or name, _upright(image)


def _decode_file(path: Path, name: str) -> Image.Image:
    """Decode a file straight from disk (no copy of its bytes in memory), after checking its size and
    that it opens at all. Every file-system problem becomes one sentence here."""
    try:
        if path.is_dir():
            raise _bad(name, f"is a folder, not an image file ({path}).")
        size = path.stat().st_size
        if size == 0:
            raise _bad(name, "the file is empty (0 bytes).")
        if size > MAX_FILE_BYTES:
            raise _bad(name, f"the file is too large ({size / 1e9:.1f} GB; the limit is "
                             f"{MAX_FILE_BYTES / 1e9:.1f} GB). Is it really a picture? Use {SUPPORTED}, "
                             "scaled down if needed.")
        with open(path, "rb") as handle:
            head = handle.read(4096)
            handle.seek(0)
            # Pillow reads the header, then decodes from the open file; the handle is closed on return
            # (the first frame is loaded by then, so nothing needs it afterwards).
            return _decode(handle, name, head=head)
    except FileNotFoundError:
        raise _bad(name, f"file not found ({path.absolute()}). Was it moved or renamed?") from None
    except PermissionError:
        raise _bad(name, "cannot read the file (permission denied).") from None
    except IsADirectoryError:
        raise _bad(name, f"is a folder, not an image file ({path}).") from None
    except OSError as e:
        raise _bad(name, f"cannot read the file ({e.strerror or e}).") from None


def _decode(source, name: str, first_frame: bool = True, head: bytes | None = None) -> Image.Image:
    """source: a PIL image, bytes, or an open binary file (then `head` is its first bytes, for messages)."""
    with warnings.catch_warnings():
        # Pillow warns between 89 and 179 megapixels; our own limit below decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if isinstance(source, Image.Image):
            image = source
        else:
            stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
            try:
                image = Image.open(stream)
            except Image.DecompressionBombError as e:
                pixels = re.search(r"\((\d+) pixels\)", str(e))
                raise _too_large(name, int(pixels.group(1)) if pixels else None) from None
            except UnidentifiedImageError:
                raise _not_an_image(name, head if head is not None else source) from None
            except Exception as e:  # Pillow's plugins raise anything on a malformed header
                raise _damaged(name, e) from None
        width, height = image.size
        if width == 0 or height == 0:
            raise _bad(name, f"the image has no pixels ({width} x {height}).")
        if width * height > MAX_PIXELS:
            raise _too_large(name, width * height, image.size)
        try:
            if first_frame:
                image.seek(0)  # animated GIF / WebP, multi-page TIFF: the first frame
            image.load()
        except MemoryError:
            raise _bad(name, f"not enough memory to load this {width} x {height} image. "
                             "Scale it down and try again.") from None
        except Exception as e:  # truncated data, bad checksums, broken streams...
            raise _damaged(name, e) from None
    return image


def _too_large(name: str, pixels: int | None, size=None) -> EngineError:
    dims = f"{size[0]} x {size[1]} = " if size else ""
    got = f" ({dims}{pixels / 1e6:,.0f} megapixels)" if pixels else ""
    return _bad(name, f"the image is too large{got}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels, to guard "
                      "against damaged or malicious 'decompression bomb' files. Scale it down and try again.")


def _damaged(name: str, error: Exception) -> EngineError:
    detail = str(error) or type(error).__name__
    return _bad(name, f"the file is damaged or incomplete (truncated or corrupt: {detail}). "
                      "Re-export or re-download it.")


def _not_an_image(name: str, data: bytes) -> EngineError:
    for signature, kind in SIGNATURES.items():
        if data.startswith(signature) and (kind != "WebP" or data[8:12] == b"WEBP"):
            return _bad(name, f"the file looks like a {kind} but cannot be read: it is damaged or incomplete "
                              "(truncated or corrupt). Re-export or re-download it.")
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return _bad(name, f"not an image file (cannot identify format): this is an SVG (vector) drawing; "
                          f"use a raster image ({SUPPORTED}).")
    if head.startswith(b"%pdf"):
        return _bad(name, f"not an image file (cannot identify format): this is a PDF; use a raster image ({SUPPORTED}).")
    return _bad(name, f"not an image file (cannot identify format). Use {SUPPORTED}.")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (1-8), as photo viewers and Inkscape show the picture."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: show the pixels as stored
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def array_to_image(array: np.ndarray, name: str = "array") -> Image.Image:
    """HxW, HxWx1 (grey), HxWx2 (grey + alpha), HxWx3 (RGB), HxWx4 (RGBA); uint8, uint16, bool, float
    in [0, 1], or other integers in 0..255 -> an 8-bit PIL image."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (2, 3, 4))):
        raise _bad(name, f"an array of shape {a.shape} is not an image (expected HxW, HxWx1, HxWx3 or HxWx4).")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise _bad(name, f"the image has no pixels ({a.shape[1]} x {a.shape[0]}).")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.round(a / 257.0).astype(np.uint8)  # 65535 -> 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise _bad(name, "the array holds NaN or infinite values.")
        if a.min() < 0 or a.max() > 1:
            raise _bad(name, f"float arrays must hold values in [0, 1] (got {a.min():g} to {a.max():g}); "
                             "divide 0-255 data by 255.")
        a = np.round(a * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise _bad(name, f"integer arrays must be uint8 (0-255) or uint16 (0-65535); got {a.dtype} "
                             f"with values {a.min()} to {a.max()}.")
        a = a.astype(np.uint8)
    else:
        raise _bad(name, f"unsupported array type {a.dtype} (use uint8, uint16 or float in [0, 1]).")
    return Image.fromarray(np.ascontiguousarray(a))


# ------------------------------------------------------------------------------------------------
# 2. RGB on white

def to_rgb_on_white(image: Image.Image, name: str = "image") -> Image.Image:
    """8-bit RGB, transparency composited onto white (the reference pastes RGBA onto white)."""
    mode = image.mode
    try:
        if mode.startswith("I;16") or mode in ("I", "F"):
            return Image.fromarray(_grey_to_8bit(np.asarray(image), mode)).convert("RGB")
        if mode == "CMYK":
            return _cmyk_to_rgb(image)
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            return Image.fromarray(_composite_on_white(np.asarray(image.convert("RGBA"))))
        return image.convert("RGB")
    except (ValueError, TypeError, KeyError) as e:  # Pillow has no conversion for this mode
        raise _bad(name, f"unsupported colour mode {mode!r} ({e}). Save it as 8-bit RGB and try again.") from None


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Exact 8-bit 'over' onto white: c * a + 255 * (1 - a), rounded."""
    colour = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _grey_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit ('I;16*'), 32-bit integer ('I') and float ('F') greys -> uint8, scaled, never clipped.

    'I' is how Pillow holds 16-bit PNG/TIFF greys in some versions: values in 0..65535 are read as
    16-bit; 'F' in [0, 1] as is; anything else (scientific data) is stretched min..max."""
    v = np.nan_to_num(values.astype(np.float64))
    lo, hi = float(v.min()), float(v.max())
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        v = v / 65535.0
    elif not (mode == "F" and lo >= 0 and hi <= 1):
        v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    return np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK through its embedded ICC profile to sRGB when it has one (print files: Pillow's plain formula
    makes their colours garish), else Pillow's formula. Pillow already undoes Adobe's inverted CMYK JPEGs."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms
            return ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                             ImageCms.createProfile("sRGB"),
                                             renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
        except Exception:  # no littlecms, or a broken / non-CMYK profile: fall back to the formula
            pass
    return image.convert("RGB")


# ------------------------------------------------------------------------------------------------
# 3. frame: pad to a white square, fix_scale, or stretch

def frame(rgb: Image.Image, pad_to_square: bool = True, fix_scale: bool = False):
    """The picture that gets resized to the canvas, and the map from its pixels to the input's.

    Returns (working image, (sx, tx, sy, ty)) with x_in = sx * x_work + tx, y_in = sy * y_work + ty,
    in pixel-edge coordinates. Stretching (pad_to_square False, no fix_scale) resizes the input itself."""
    width, height = rgb.size
    if fix_scale:  # the reference: centred on a white square of side max(h, w) + 20, integer offsets
        side = max(width, height) + FIX_SCALE_MARGIN
        left, top = side // 2 - width // 2, side // 2 - height // 2
    elif pad_to_square:  # centred; with an odd difference the extra white column/row is right/bottom
        side = max(width, height)
        left, top = (side - width) // 2, (side - height) // 2
    else:
        return rgb, (1.0, 0.0, 1.0, 0.0)
    if side == width == height:
        return rgb, (1.0, 0.0, 1.0, 0.0)
    return _paste_on_white_square(rgb, side, left, top)


def _paste_on_white_square(rgb: Image.Image, side: int, left: int, top: int):
    """White side x side square with `rgb` at (left, top), built at most MAX_PAD_SIDE wide."""
    width, height = rgb.size
    if side <= MAX_PAD_SIDE:
        work_side, box = side, (left, top, left + width, top + height)
    else:
        # Same picture at a smaller scale: the image lands on whole working pixels, so its own scale
        # may differ a little per axis; the map below carries that exactly.
        r = MAX_PAD_SIDE / side
        x0, y0 = round(left * r), round(top * r)
        x1, y1 = max(x0 + 1, round((left + width) * r)), max(y0 + 1, round((top + height) * r))
        work_side, box = MAX_PAD_SIDE, (x0, y0, min(x1, MAX_PAD_SIDE), min(y1, MAX_PAD_SIDE))
        rgb = rgb.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BICUBIC)
    square = Image.new("RGB", (work_side, work_side), (255, 255, 255))
    square.paste(rgb, box[:2])
    sx, sy = width / (box[2] - box[0]), height / (box[3] - box[1])
    return square, (sx, -box[0] * sx, sy, -box[1] * sy)


# ------------------------------------------------------------------------------------------------
# masks and points

def apply_mask(loaded: LoadedImage, mask, threshold: float = 0.5) -> LoadedImage:
    """The target with white wherever mask < threshold (the reference's U^2-Net background removal).

    mask: 1x1xSxS (or SxS) tensor or array on the canvas, 1 = object."""
    import torch
    target = loaded.target
    mask = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    size = target.shape[-1]
    if mask.numel() != size * size:
        raise ValueError(f"mask must have {size}x{size} values on the canvas, got shape {tuple(mask.shape)}")
    keep = (mask.reshape(1, 1, size, size).to(target.device, torch.float32) >= threshold)
    masked = torch.where(keep, target, torch.ones_like(target))
    return replace(loaded, target=masked, mask=keep.to(target.dtype))


def canvas_to_image_points(points, matrix):
    """Map points (..., 2) in canvas px to input px with an SVG matrix (a, b, c, d, e, f).

    numpy in, numpy (float64) out; torch in, torch out (same device/dtype, differentiable)."""
    a, b, c, d, e, f = (float(m) for m in matrix)
    torch = sys.modules.get("torch")   # a tensor can only come from an imported torch
    is_tensor = torch is not None and isinstance(points, torch.Tensor)
    if not is_tensor:
        points = np.asarray(points, dtype=np.float64)
    x, y = points[..., 0], points[..., 1]
    mapped = [a * x + c * y + e, b * x + d * y + f]
    return torch.stack(mapped, dim=-1) if is_tensor else np.stack(mapped, axis=-1)


def invert_matrix(matrix) -> tuple[float, ...]:
    """The inverse SVG matrix (image -> canvas for canvas_to_image)."""
    a, b, c, d, e, f = (float(m) for m in matrix)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return (ia, ib, ic, id_, -(ia * e + ic * f), -(ib * e + id_ * f))
