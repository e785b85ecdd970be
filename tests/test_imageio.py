"""imageio: every kind of raster in, CLIPasso's target out, and a canvas -> image map that is exact.

All images are made here with Pillow (tmp_path); nothing is downloaded."""

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipasso_engine import imageio
from clipasso_engine.config import make_config
from clipasso_engine.errors import EngineError
from clipasso_engine.imageio import (apply_mask, canvas_to_image_points, invert_matrix, load_image)

torch.set_num_threads(2)
S = 224
CONFIG = make_config("fast", soft_padding=0.0)   # white padding: the geometry below is checked on it
FIX_SCALE = CONFIG.replace(fix_scale=True)
STRETCH = CONFIG.replace(pad_to_square=False)

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 160, 0)


def canvas_rgb(loaded, x, y):
    """Target colour (0..255) at canvas pixel (column x, row y)."""
    return (loaded.target[0, :, y, x] * 255).round().int().tolist()


def assert_valid_target(loaded):
    t = loaded.target
    assert t.shape == (1, 3, S, S) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def rgb_of(source):
    """The decoded input, upright and on white, at its own pixel size (what load_image frames)."""
    return imageio.to_rgb_on_white(imageio.open_image(source)[1])


def near(rgb, expected, tol):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(rgb, expected))


# ------------------------------------------------------------------------------------------------
# formats and colour modes

@pytest.mark.parametrize("fmt,ext,tol", [("PNG", "png", 0), ("JPEG", "jpg", 12), ("WEBP", "webp", 12),
                                         ("TIFF", "tif", 0), ("GIF", "gif", 0), ("BMP", "bmp", 0)])
def test_every_format_reads_with_its_colours(tmp_path, fmt, ext, tol):
    image = Image.new("RGB", (96, 64), (255, 255, 255))
    image.paste(RED, (0, 0, 48, 64))  # left half red, right half white
    path = tmp_path / f"photo.{ext}"
    image.save(path, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    loaded = load_image(path, CONFIG)
    assert_valid_target(loaded)
    full = rgb_of(path)
    assert loaded.image_size == (96, 64) and full.size == (96, 64) and full.mode == "RGB"
    assert near(full.getpixel((10, 30)), RED, tol)
    assert near(full.getpixel((80, 30)), (255, 255, 255), tol)
    # 96 x 64 pads to 96 x 96 with 16 white rows on top: canvas row 112 is inside, row 5 is padding
    assert near(canvas_rgb(loaded, 40, 112), RED, tol + 2)
    assert canvas_rgb(loaded, 40, 5) == [255, 255, 255]


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (0, 0, 0, 0)          # fully transparent black -> white
    rgba[:, 20:30] = (0, 0, 0, 128)      # half-transparent black -> mid grey
    rgba[:, 30:] = (0, 0, 255, 255)      # opaque blue
    Image.fromarray(rgba).save(tmp_path / "a.png")
    full = rgb_of(tmp_path / "a.png")
    assert full.getpixel((5, 5)) == (255, 255, 255)
    assert full.getpixel((25, 5)) == (127, 127, 127)  # 255 * (1 - 128/255)
    assert full.getpixel((35, 5)) == BLUE


def test_grey_with_alpha_la(tmp_path):
    la = np.zeros((20, 20, 2), np.uint8)
    la[:10] = (0, 255)   # opaque black
    la[10:] = (0, 0)     # transparent
    Image.fromarray(la).save(tmp_path / "la.png")
    full = rgb_of(tmp_path / "la.png")
    assert full.getpixel((5, 5)) == (0, 0, 0) and full.getpixel((5, 15)) == (255, 255, 255)


@pytest.mark.parametrize("ext", ["png", "gif"])
def test_palette_with_transparency(tmp_path, ext):
    p = Image.new("P", (20, 20), 0)
    p.putpalette([0, 0, 0] + list(RED) + [0] * 762)  # index 0 black (transparent), 1 red
    p.paste(1, (0, 0, 10, 20))
    p.save(tmp_path / f"p.{ext}", transparency=0)
    full = rgb_of(tmp_path / f"p.{ext}")
    assert full.getpixel((5, 5)) == RED
    assert full.getpixel((15, 5)) == (255, 255, 255)  # transparent black shows white, not black


def test_grey_with_colour_key_transparency(tmp_path):
    grey = Image.new("L", (20, 20), 0)
    grey.paste(90, (0, 0, 10, 20))
    grey.save(tmp_path / "key.png", transparency=0)
    full = rgb_of(tmp_path / "key.png")
    assert full.getpixel((5, 5)) == (90, 90, 90) and full.getpixel((15, 5)) == (255, 255, 255)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_grey_is_scaled_not_clipped(tmp_path, ext):
    values = np.array([[0, 30000, 65535, 1000]], np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / f"g16.{ext}")
    full = rgb_of(tmp_path / f"g16.{ext}")
    assert [full.getpixel((i, 1))[0] for i in range(4)] == [0, 117, 255, 4]  # round(v / 257)


def test_32bit_integer_and_float_tiff(tmp_path):
    ints = np.array([[0, 30000, 65535]], np.int32).repeat(3, axis=0)
    Image.fromarray(ints).save(tmp_path / "i32.tif")
    image = Image.open(tmp_path / "i32.tif")
    assert image.mode == "I"
    full = rgb_of(tmp_path / "i32.tif")
    assert [full.getpixel((i, 1))[0] for i in range(3)] == [0, 117, 255]

    floats = np.array([[0.0, 0.5, 1.0]], np.float32).repeat(3, axis=0)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    full = rgb_of(tmp_path / "f.tif")
    assert [full.getpixel((i, 1))[0] for i in range(3)] == [0, 128, 255]

    wide = np.array([[-1000.0, 0.0, 3000.0]], np.float32).repeat(3, axis=0)  # arbitrary range: min..max
    Image.fromarray(wide).save(tmp_path / "w.tif")
    full = rgb_of(tmp_path / "w.tif")
    assert [full.getpixel((i, 1))[0] for i in range(3)] == [0, 64, 255]


def test_16bit_rgb_png(tmp_path):
    # Pillow reads 16-bit RGB PNGs as 8-bit RGB; write one by hand to be sure it comes through
    raw = b"".join(b"\x00" + struct.pack(">HHH", 65535, 32896, 0) * 4 for _ in range(4))
    (tmp_path / "rgb16.png").write_bytes(png_bytes(4, 4, 16, 2, raw))
    full = rgb_of(tmp_path / "rgb16.png")
    assert full.getpixel((1, 1)) == (255, 128, 0)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "print.jpg", quality=95)  # magenta+yellow
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    loaded = load_image(tmp_path / "print.jpg", CONFIG)
    assert near(rgb_of(tmp_path / "print.jpg").getpixel((16, 16)), RED, 6)
    assert near(canvas_rgb(loaded, 112, 112), RED, 6)


CMYK_PROFILE = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")


@pytest.mark.skipif(not CMYK_PROFILE.exists(), reason="no CMYK ICC profile on this machine")
def test_cmyk_jpeg_with_icc_profile_goes_through_it(tmp_path):
    Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg", quality=95,
                                                     icc_profile=CMYK_PROFILE.read_bytes())
    r, g, b = rgb_of(tmp_path / "cyan.jpg").getpixel((16, 16))
    # process cyan prints as a mid blue, not the naive formula's (0, 255, 255)
    assert r < 40 and 120 < g < 220 and b > 200


def test_cmyk_with_broken_icc_profile_falls_back(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "odd.jpg", quality=95,
                                                       icc_profile=b"not a profile at all")
    assert near(rgb_of(tmp_path / "odd.jpg").getpixel((16, 16)), RED, 6)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert rgb_of(tmp_path / "anim.gif").getpixel((8, 8)) == RED


# How a camera stores an upright picture for each EXIF orientation (EXIF 2.3, tag 0x0112): the stored
# pixels are the upright picture transformed by the inverse of what a viewer must do to show it.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,   # viewer mirrors horizontally
    3: Image.Transpose.ROTATE_180,        # viewer rotates 180
    4: Image.Transpose.FLIP_TOP_BOTTOM,   # viewer mirrors vertically
    5: Image.Transpose.TRANSPOSE,         # viewer mirrors along the main diagonal
    6: Image.Transpose.ROTATE_90,         # viewer rotates 90 clockwise -> stored 90 counter-clockwise
    7: Image.Transpose.TRANSVERSE,        # viewer mirrors along the anti-diagonal
    8: Image.Transpose.ROTATE_270,        # viewer rotates 90 counter-clockwise -> stored clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_comes_out_upright(tmp_path, orientation):
    upright = Image.new("RGB", (48, 32), (255, 255, 255))  # wide, so a lost rotation changes the size
    upright.paste(RED, (0, 0, 16, 16))       # top-left corner marker
    upright.paste(BLUE, (32, 0, 48, 16))     # top-right corner marker (catches mirroring)
    upright.paste(GREEN, (0, 16, 16, 32))    # bottom-left
    stored = upright if STORED_AS[orientation] is None else upright.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "cam.jpg", quality=95, exif=exif.tobytes())
    loaded = load_image(tmp_path / "cam.jpg", CONFIG)
    assert loaded.image_size == (48, 32)
    full = rgb_of(tmp_path / "cam.jpg")
    assert near(full.getpixel((8, 8)), RED, 20)
    assert near(full.getpixel((40, 8)), BLUE, 20)
    assert near(full.getpixel((8, 24)), GREEN, 20)
    assert near(full.getpixel((40, 24)), (255, 255, 255), 20)


def test_exif_orientation_in_png_and_tiff(tmp_path):
    upright = Image.new("RGB", (30, 20), (255, 255, 255))
    upright.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    for ext in ("png", "tif"):
        upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / f"r.{ext}", exif=exif.tobytes())
        loaded = load_image(tmp_path / f"r.{ext}", CONFIG)
        assert loaded.image_size == (30, 20) and rgb_of(tmp_path / f"r.{ext}").getpixel((3, 3)) == RED


# ------------------------------------------------------------------------------------------------
# geometry: padding, fix_scale, stretch, and the exact canvas -> image map

def expected_matrix(width, height, config):
    """The map written out by hand from the definition of each framing."""
    if config.fix_scale:
        side = max(width, height) + 20
        left, top = side // 2 - width // 2, side // 2 - height // 2
    elif config.pad_to_square:
        side = max(width, height)
        left, top = (side - width) // 2, (side - height) // 2
    else:
        return (width / S, 0, 0, height / S, 0, 0)
    return (side / S, 0, 0, side / S, -left, -top)


SHAPES = {"square": (120, 120), "wide": (301, 180), "tall": (180, 301), "wide_even": (300, 200),
          "strip": (3, 500), "pixel": (1, 1)}
CONFIGS = {"pad": CONFIG, "fix_scale": FIX_SCALE, "stretch": STRETCH}


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_canvas_corners_map_to_the_framed_image_corners(shape, config_name):
    width, height = SHAPES[shape]
    config = CONFIGS[config_name]
    loaded = load_image(Image.new("RGB", (width, height), (0, 0, 0)), config)
    assert_valid_target(loaded)
    assert loaded.image_size == (width, height)
    np.testing.assert_allclose(loaded.canvas_to_image, expected_matrix(width, height, config), rtol=1e-12, atol=1e-12)
    corners = canvas_to_image_points(np.array([[0, 0], [S, 0], [0, S], [S, S]]), loaded.canvas_to_image)
    if config_name == "stretch" or (shape in ("square", "pixel") and config_name == "pad"):
        np.testing.assert_allclose(corners, [[0, 0], [width, 0], [0, height], [width, height]], atol=1e-9)
    else:  # the canvas is a square around the image: corners outside it by the padding, image centred
        lo, hi = corners[0], corners[3]
        np.testing.assert_allclose(hi - lo, [max(width, height) + 20 * config.fix_scale] * 2, atol=1e-9)
        assert (lo <= 0).all() and (hi >= [width, height]).all()
        # centred to within the half pixel an odd difference forces
        assert abs((lo[0] + hi[0]) - width) <= 1 and abs((lo[1] + hi[1]) - height) <= 1


@pytest.mark.parametrize("config_name", ["pad", "fix_scale"])
def test_white_padding_is_where_the_map_says(config_name):
    """A black image: canvas pixels well outside the image's mapped box are pure white, well inside black."""
    width, height = 301, 180
    loaded = load_image(np.zeros((height, width, 3), np.uint8), CONFIGS[config_name])
    to_canvas = invert_matrix(loaded.canvas_to_image)
    (x0, y0), (x1, y1) = canvas_to_image_points(np.array([[0, 0], [width, height]]), to_canvas)
    grey = loaded.target[0].mean(0).numpy()
    rows, cols = np.arange(S) + 0.5, np.arange(S) + 0.5  # pixel centres
    outside = (rows[:, None] < y0 - 2) | (rows[:, None] > y1 + 2) | (cols[None] < x0 - 2) | (cols[None] > x1 + 2)
    inside = ((rows[:, None] > y0 + 2) & (rows[:, None] < y1 - 2) & (cols[None] > x0 + 2) & (cols[None] < x1 - 2))
    assert outside.sum() > 1000 and inside.sum() > 10000
    assert (grey[outside] == 1.0).all() and (grey[inside] == 0.0).all()
    if config_name == "pad":  # wide: white above and below only, image touches left and right edges
        assert x0 == 0 and abs(x1 - S) < 1e-9 and y0 > 40 and S - y1 > 40


def marker_image(width, height, box):
    image = np.full((height, width, 3), 255, np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 0
    return image


def darkness_centroid(target):
    dark = 1.0 - target[0].mean(0).double().numpy()
    ys, xs = np.mgrid[0:S, 0:S] + 0.5  # pixel centres in pixel-edge coordinates
    return np.array([(dark * xs).sum(), (dark * ys).sum()]) / dark.sum()


@pytest.mark.parametrize("case", [
    ("square", (150, 150), (100, 20, 110, 30), CONFIG),
    ("wide odd", (301, 180), (201, 40, 211, 50), CONFIG),
    ("tall odd", (180, 301), (40, 230, 50, 240), CONFIG),
    ("fix_scale", (301, 180), (201, 40, 211, 50), FIX_SCALE),
    ("stretch", (301, 180), (201, 40, 211, 50), STRETCH),
    ("upscale", (60, 45), (7, 30, 10, 33), CONFIG),
], ids=lambda c: c[0])
def test_marker_lands_where_the_inverse_map_puts_it(case):
    """Exactness: a half-pixel slip (input or canvas side) would move the marker by >= 0.37 canvas px."""
    _, (width, height), box, config = case
    loaded = load_image(marker_image(width, height, box), config)
    centre_in_image = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
    expected = canvas_to_image_points(np.array(centre_in_image), invert_matrix(loaded.canvas_to_image))
    np.testing.assert_allclose(darkness_centroid(loaded.target), expected, atol=0.06)


def test_huge_padded_frame_is_built_shrunk_and_the_map_stays_exact(monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PAD_SIDE", 400)  # stands for 8192 without the memory
    width, height, box = 1001, 130, (611, 50, 631, 70)
    loaded = load_image(marker_image(width, height, box), CONFIG)
    a, _, _, d, e, f = loaded.canvas_to_image
    assert a != d  # the shrunk copy lands on whole pixels: its scale differs a little per axis
    expected = canvas_to_image_points(np.array([621.0, 60.0]), invert_matrix(loaded.canvas_to_image))
    np.testing.assert_allclose(darkness_centroid(loaded.target), expected, atol=0.1)
    # the image still spans the canvas width, and a 1-px-wide strip still works
    np.testing.assert_allclose(canvas_to_image_points(np.array([[0, 0], [S, 0]]), loaded.canvas_to_image)[:, 0],
                               [0, width], atol=1e-9)
    strip = load_image(np.zeros((1000, 1, 3), np.uint8), CONFIG)
    assert_valid_target(strip)
    assert float(strip.target.min()) < 0.9  # the strip is still visible on the canvas


@pytest.mark.parametrize("shape", [(120, 120), (301, 180)])
def test_target_matches_the_reference_pipeline(shape):
    """Square / stretched: exactly torchvision's Resize(bicubic) + ToTensor on the PIL image."""
    torchvision = pytest.importorskip("torchvision")
    from torchvision import transforms
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (shape[1], shape[0], 3), dtype=np.uint8)
    reference = transforms.Compose([transforms.Resize((S, S), interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.ToTensor()])(Image.fromarray(pixels))[None]
    ours = load_image(pixels, STRETCH).target
    assert torch.equal(ours, reference)


def test_very_small_images():
    for width, height in [(1, 1), (3, 500), (500, 3), (2, 1)]:
        loaded = load_image(np.zeros((height, width), np.uint8), CONFIG)
        assert_valid_target(loaded)
        assert loaded.image_size == (width, height)
        assert float(loaded.target.min()) < 0.5  # the black image is visible


# ------------------------------------------------------------------------------------------------
# inputs: paths, bytes, PIL images, numpy arrays

def test_every_input_kind_gives_the_same_target(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    from_path = load_image(tmp_path / "x.png", CONFIG)
    assert from_path.name == "x.png"
    for source in [str(tmp_path / "x.png"), (tmp_path / "x.png").read_bytes(), Image.open(tmp_path / "x.png"),
                   pixels, pixels.astype(np.uint16) * 257, pixels / 255.0]:
        loaded = load_image(source, CONFIG)
        assert torch.equal(loaded.target, from_path.target)
        assert loaded.canvas_to_image == from_path.canvas_to_image


def test_numpy_array_layouts():
    grey = np.full((10, 12), 100, np.uint8)
    for array in [grey, grey[..., None], np.stack([grey, np.full_like(grey, 255)], -1)]:
        assert rgb_of(array).getpixel((3, 3)) == (100, 100, 100)
    rgba = np.zeros((10, 12, 4), np.uint8)  # transparent -> white
    assert rgb_of(rgba).getpixel((3, 3)) == (255, 255, 255)
    assert rgb_of(np.ones((10, 12), bool)).getpixel((3, 3)) == (255, 255, 255)
    assert rgb_of(np.full((10, 12), 7, np.int64)).getpixel((3, 3)) == (7, 7, 7)


@pytest.mark.parametrize("array,words", [
    (np.zeros((10, 10, 5), np.uint8), "shape"),
    (np.zeros((0, 10, 3), np.uint8), "no pixels"),
    (np.full((10, 10), 2.0), "[0, 1]"),
    (np.full((10, 10), np.nan), "NaN"),
    (np.full((10, 10), 300, np.int32), "uint8"),
    (np.zeros((10, 10), np.complex64), "unsupported"),
])
def test_bad_arrays(array, words):
    with pytest.raises(EngineError) as err:
        load_image(array, CONFIG)
    assert err.value.code == "bad_image" and words in err.value.message


# ------------------------------------------------------------------------------------------------
# bad files: one clear sentence naming the file, never a traceback

def png_bytes(width, height, depth, colour_type, raw):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def good_bytes(fmt):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def bad_image_message(source, config=CONFIG):
    with pytest.raises(EngineError) as err:
        load_image(source, config)
    assert err.value.code == "bad_image"
    assert "Traceback" not in err.value.message
    return err.value.message


def test_missing_file(tmp_path):
    message = bad_image_message(tmp_path / "holiday photo.png")
    assert message.startswith("holiday photo.png: ") and "not found" in message


def test_directory(tmp_path):
    (tmp_path / "photos").mkdir()
    message = bad_image_message(tmp_path / "photos")
    assert message.startswith("photos: ") and "folder" in message


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    message = bad_image_message(tmp_path / "empty.png")
    assert message.startswith("empty.png: ") and "empty" in message
    assert "no data" in bad_image_message(b"")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("shopping list: milk, eggs\n" * 20)
    assert bad_image_message(tmp_path / "notes.png") == \
        "notes.png: not an image file (cannot identify format). Use PNG, JPEG, WebP, TIFF, GIF or BMP."
    (tmp_path / "logo.svg").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>')
    message = bad_image_message(tmp_path / "logo.svg")
    assert message.startswith("logo.svg: not an image file") and "SVG" in message and "vector" in message


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("WEBP", "webp"),
                                     ("TIFF", "tif"), ("BMP", "bmp")])
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_files(tmp_path, fmt, ext, keep):
    data = good_bytes(fmt)
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[:max(12, int(len(data) * keep))])
    message = bad_image_message(path)
    assert message.startswith(f"cut.{ext}: ")
    assert "damaged or incomplete" in message and "truncated" in message


def test_corrupt_png_data(tmp_path):
    data = bytearray(good_bytes("PNG"))
    data[60:200] = bytes(140)  # zeros over the compressed pixels
    (tmp_path / "bits.png").write_bytes(bytes(data))
    message = bad_image_message(tmp_path / "bits.png")
    assert message.startswith("bits.png: ") and "damaged" in message


def test_decompression_bomb(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bytes(30000, 30000, 8, 2, b""))  # 900 MP claimed in 60 bytes
    message = bad_image_message(tmp_path / "bomb.png")
    assert message.startswith("bomb.png: the image is too large") and "900 megapixels" in message
    assert "decompression bomb" in message and "Scale it down" in message


def test_our_own_pixel_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 1000)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    message = bad_image_message(tmp_path / "big.png")
    assert message.startswith("big.png: the image is too large (40 x 40 = ")


def test_zero_size_and_unsupported_mode():
    assert "no pixels (0 x 3)" in bad_image_message(Image.new("RGB", (0, 3)))
    message = bad_image_message(Image.new("La", (4, 4)))  # premultiplied grey+alpha: Pillow cannot convert it
    assert message.startswith("image: unsupported colour mode 'La'")


def test_a_pil_image_keeps_its_file_name(tmp_path):
    (tmp_path / "half.png").write_bytes(good_bytes("PNG")[:150])
    message = bad_image_message(Image.open(tmp_path / "half.png"))
    assert message.startswith("half.png: ") and "damaged" in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.png"
    path.write_bytes(good_bytes("PNG"))
    path.chmod(0)
    assert "permission denied" in bad_image_message(path)


def test_no_file_name():
    assert "no file name" in bad_image_message("")


def test_wrong_source_type_is_a_bad_argument():
    with pytest.raises(EngineError) as err:
        load_image(42, CONFIG)
    assert err.value.code == "bad_argument"


# ------------------------------------------------------------------------------------------------
# mask and points

def test_apply_mask_whitens_the_background():
    loaded = load_image(np.zeros((50, 50, 3), np.uint8), CONFIG)
    mask = torch.zeros(1, 1, S, S)
    mask[..., :, 100:] = 0.9           # object on the right
    mask[..., :, 90:100] = 0.5         # exactly at the threshold: kept
    masked = apply_mask(loaded, mask, threshold=0.5)
    assert (masked.target[..., :, :90] == 1).all()
    assert (masked.target[..., :, 90:] == loaded.target[..., :, 90:]).all()
    assert (loaded.target == 0).all()  # the original is untouched
    assert masked.mask.shape == (1, 1, S, S) and masked.mask[0, 0, 0, 95] == 1 and masked.mask[0, 0, 0, 5] == 0
    assert masked.canvas_to_image == loaded.canvas_to_image
    assert (apply_mask(loaded, mask.numpy()[0, 0]).target == masked.target).all()  # SxS numpy works too
    with pytest.raises(ValueError):
        apply_mask(loaded, torch.zeros(1, 1, 100, 100))


def test_canvas_to_image_points_numpy_and_torch():
    matrix = (2.0, 0.5, -1.0, 3.0, 10.0, -4.0)
    points = np.array([[[0.0, 0.0], [1.0, 2.0]], [[3.0, -1.0], [224.0, 224.0]]])  # (..., 2)
    expected = np.stack([2 * points[..., 0] - points[..., 1] + 10, 0.5 * points[..., 0] + 3 * points[..., 1] - 4], -1)
    np.testing.assert_allclose(canvas_to_image_points(points, matrix), expected)
    torch_points = torch.tensor(points, dtype=torch.float32, requires_grad=True)
    mapped = canvas_to_image_points(torch_points, matrix)
    assert isinstance(mapped, torch.Tensor) and mapped.shape == (2, 2, 2) and mapped.dtype == torch.float32
    mapped.sum().backward()
    assert torch_points.grad is not None
    np.testing.assert_allclose(canvas_to_image_points(canvas_to_image_points(points, matrix), invert_matrix(matrix)),
                               points, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# display name, crop, huge files (issue 8 items 1-2)

def test_name_replaces_the_file_name_in_messages(tmp_path):
    (tmp_path / "image-0.img").write_bytes(b"not a picture at all")
    with pytest.raises(EngineError) as err:
        load_image(tmp_path / "image-0.img", CONFIG, name="Cat photo")
    assert err.value.message.startswith("Cat photo:") and "image-0" not in err.value.message
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert load_image(tmp_path / "ok.png", CONFIG, name="Cat photo").name == "Cat photo"


def test_crop_sketches_only_the_rectangle_but_maps_onto_the_whole_image(tmp_path):
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    image.paste(RED, (120, 20, 160, 60))  # a red square inside the crop below
    image.save(tmp_path / "wide.png")
    crop = (100, 10, 180, 90)  # an 80 x 80 square: fills the canvas with no padding
    loaded = load_image(tmp_path / "wide.png", CONFIG, crop=crop)
    assert loaded.image_size == (200, 100)
    # canvas corners land on the crop's corners in the WHOLE image's pixels
    corners = canvas_to_image_points(np.array([[0.0, 0.0], [S, S]]), loaded.canvas_to_image)
    assert np.allclose(corners, [[100, 10], [180, 90]])
    # the red square (crop pixels 20..60 of 80) is at canvas 56..168
    assert near(canvas_rgb(loaded, 112, 112), RED, 2) and near(canvas_rgb(loaded, 20, 20), (255, 255, 255), 2)
    # same placement as the whole image for a point inside the crop: (140, 40) is red in both
    x, y = canvas_to_image_points(np.array([[112.0, 112.0]]), loaded.canvas_to_image)[0]
    assert image.getpixel((int(x), int(y))) == RED


@pytest.mark.parametrize("crop", [(0, 0, 0, 10), (10, 10, 5, 20), (-1, 0, 10, 10), (0, 0, 201, 100), ("a", 0, 1, 1)])
def test_crop_outside_or_empty_is_a_bad_argument(tmp_path, crop):
    Image.new("RGB", (200, 100)).save(tmp_path / "p.png")
    with pytest.raises(EngineError) as err:
        load_image(tmp_path / "p.png", CONFIG, name="Photo", crop=crop)
    assert err.value.code == "bad_argument" and err.value.message.startswith("Photo:")


def test_loaded_image_keeps_no_full_resolution_copy():
    loaded = load_image(np.zeros((600, 800, 3), np.uint8), CONFIG)
    assert not hasattr(loaded, "rgb_full")
    assert all(not isinstance(v, Image.Image) for v in vars(loaded).values())


def test_huge_file_is_refused_from_its_size_without_reading_it(tmp_path, monkeypatch):
    huge = tmp_path / "movie.png"
    with open(huge, "wb") as f:
        f.truncate(2 * 1024 ** 3)  # sparse: 2 GB on paper, no disk used
    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read")
    monkeypatch.setattr(Path, "read_bytes", no_reading)
    monkeypatch.setattr(Image, "open", no_reading)
    with pytest.raises(EngineError) as err:
        load_image(huge, CONFIG)
    assert err.value.code == "bad_image" and "too large" in err.value.message and "GB" in err.value.message


def test_large_non_image_file_is_not_read_whole(tmp_path):
    """Under the size limit, a non-image is refused from its header: peak memory does not grow by its size."""
    import subprocess
    import sys
    big = tmp_path / "data.bin"
    with open(big, "wb") as f:
        f.write(b"garbage!" * 512)
        f.truncate(400 * 1024 ** 2)  # 400 MB, sparse
    script = ("import resource, sys\n"
              "from clipasso_engine.imageio import load_image\n"
              "from clipasso_engine.config import make_config\n"
              "from clipasso_engine.errors import EngineError\n"
              "config = make_config('fast')\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    load_image(sys.argv[1], config)\nexcept EngineError as e:\n    print(e.code)\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", script, str(big)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    code, grown_mb = out.stdout.split()
    assert code == "bad_image" and int(grown_mb) < 100, out
