"""The pixel size of a raster file, read from its header: stdlib only, no decoding.

The extension needs it before the engine runs, to tell the engine which part of the picture is
visible (--crop, in the upright picture's pixels). The engine turns a picture upright by its EXIF
orientation first, so the size returned here is the upright one: width and height swap for the
orientations 5 to 8 (the quarter turns). Whenever the header cannot be read with certainty
(unknown format, TIFF, unreadable EXIF) the answer is None, and the caller then sends the whole
picture: a crop computed from a wrong size would put the sketch on the wrong part of the picture.
"""

import struct

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION_TAG = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)   # EXIF orientations that swap width and height
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC share the range but are not frames
JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class Unreadable(Exception):
    """The header is not what its format promises: the size is unknown."""


def upright_pixel_size(path):
    """(width, height) of the picture as the engine sees it (EXIF orientation applied), or None."""
    try:
        with open(path, "rb") as handle:
            return _stored_size_and_orientation(handle)
    except (OSError, Unreadable, struct.error):
        return None


def _stored_size_and_orientation(handle):
    head = handle.read(32)
    if head.startswith(PNG_MAGIC):
        size, orientation = _png(handle)
    elif head.startswith(b"\xff\xd8"):
        size, orientation = _jpeg(handle)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        size, orientation = struct.unpack("<HH", head[6:10]), 1
    elif head[:2] == b"BM":
        size, orientation = _bmp(head), 1
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size, orientation = _webp(handle)
    else:  # TIFF keeps its size in tags anywhere in the file: not worth a parser here
        return None
    width, height = size
    if width <= 0 or height <= 0:
        return None
    return (height, width) if orientation in QUARTER_TURNS else (width, height)


# --- EXIF (a little TIFF structure) -------------------------------------------------------------
def exif_orientation(data):
    """The orientation (1-8) in an EXIF block (with or without its 'Exif\\0\\0' prefix); 1 when the
    block has no orientation tag; Unreadable when the block is damaged."""
    if data.startswith(b"Exif\x00\x00"):
        data = data[6:]
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or struct.unpack(order + "H", data[2:4])[0] != 42:
        raise Unreadable("not a TIFF structure")
    ifd = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    for entry in range(count):
        start = ifd + 2 + 12 * entry
        tag, kind = struct.unpack(order + "HH", data[start:start + 4])
        if tag == EXIF_ORIENTATION_TAG:
            if kind != 3:  # SHORT
                raise Unreadable("orientation is not a SHORT")
            return struct.unpack(order + "H", data[start + 8:start + 10])[0]
    return 1


# --- the formats ----------------------------------------------------------------------------------
def _png(handle):
    """IHDR holds the size; an eXIf chunk may come anywhere before IEND (it is looked for by
    skipping from chunk header to chunk header, never reading the pixel data)."""
    handle.seek(8)
    size, orientation = None, 1
    while True:
        header = handle.read(8)
        if len(header) < 8:
            break  # truncated: the size is still right when IHDR was read
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IHDR":
            size = struct.unpack(">II", handle.read(8))
            handle.seek(length - 8 + 4, 1)
        elif kind == b"eXIf":
            orientation = exif_orientation(handle.read(length))
            handle.seek(4, 1)
        elif kind == b"IEND":
            break
        else:
            handle.seek(length + 4, 1)  # data and CRC
    if size is None:
        raise Unreadable("PNG without IHDR")
    return size, orientation


def _jpeg(handle):
    """Segments up to the first frame header; an APP1 Exif segment before it gives the orientation."""
    handle.seek(2)
    orientation = 1
    while True:
        marker = handle.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise Unreadable("JPEG segment expected")
        while marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + handle.read(1)
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:  # no length
            continue
        length = struct.unpack(">H", handle.read(2))[0]
        if kind in JPEG_FRAMES:
            height, width = struct.unpack(">xHH", handle.read(5))
            return (width, height), orientation
        body = handle.read(length - 2)
        if kind == 0xE1 and body.startswith(b"Exif\x00\x00"):
            orientation = exif_orientation(body)
        if kind == 0xDA:  # start of scan before any frame header: damaged
            raise Unreadable("JPEG without a frame header")


def _bmp(head):
    header_size = struct.unpack("<I", head[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", head[18:22])
    width, height = struct.unpack("<ii", head[18:26])
    return width, abs(height)  # a negative height means rows stored top-down


def _webp(handle):
    """VP8 (lossy), VP8L (lossless) or VP8X (extended, may carry EXIF: its orientation is read).
    Chunks are skipped by their length, so the picture data itself is never read."""
    handle.seek(12)
    size, orientation = None, 1
    while True:
        header = handle.read(8)
        if len(header) < 8:
            break
        kind, length = struct.unpack("<4sI", header)
        padded = length + (length & 1)  # chunks are padded to even lengths
        if kind == b"VP8X":
            body = handle.read(10)
            size = (1 + int.from_bytes(body[4:7], "little"), 1 + int.from_bytes(body[7:10], "little"))
            if not body[0] & 0x08:  # no EXIF flag: nothing more to learn
                break
            handle.seek(padded - 10, 1)
        elif kind == b"VP8 " and size is None:
            body = handle.read(10)
            if body[3:6] != b"\x9d\x01\x2a":
                raise Unreadable("VP8 frame tag missing")
            width, height = struct.unpack("<HH", body[6:10])
            return (width & 0x3FFF, height & 0x3FFF), orientation
        elif kind == b"VP8L" and size is None:
            bits = int.from_bytes(handle.read(5)[1:5], "little")
            return (1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)), orientation
        elif kind == b"EXIF":
            orientation = exif_orientation(handle.read(length))
            break
        else:
            handle.seek(padded, 1)
    if size is None:
        raise Unreadable("WebP without a size")
    return size, orientation
