"""Image bytes -> RGB array, refusing what is not a whole JPEG, PNG, WebP or BMP.

The header is read first, by hand: it names the format (415 for anything else) and the
pixel count (413 over the limit) before OpenCV allocates anything, so a small file that
declares a huge canvas (a decompression bomb) is never decoded. OpenCV's ``imdecode``
with ``IMREAD_COLOR`` applies the EXIF orientation, so boxes and keypoints are in the
coordinates of the upright image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from service import errors

# OpenCV prints a warning to stderr for every corrupt image a client sends; those are answered
# with a 400 and logged as JSON by the service, so silence the library's own lines.
if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    return None


def probe(data: bytes) -> ImageHeader:
    """Format and declared size from the header; raises a 400/415 :class:`errors.Problem`."""
    if not data:
        raise errors.invalid_image("the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise errors.unsupported_media_type("the image is not JPEG, PNG, WebP or BMP")
    try:
        width, height = _SIZE_READERS[fmt](data)
    except (struct.error, IndexError, ValueError) as exc:
        raise errors.invalid_image(f"corrupt {fmt.upper()} header: {exc}") from None
    if width <= 0 or height <= 0:
        raise errors.invalid_image(f"the {fmt.upper()} header declares an empty image ({width}x{height})")
    return ImageHeader(fmt, width, height)


def _png_size(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ValueError("first chunk is not IHDR")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while True:
        # Markers may be preceded by any number of 0xFF fill bytes.
        while data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("no frame header before the scan")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("bad VP8L signature")
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 start code")
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    raise ValueError(f"unknown WebP chunk {chunk!r}")


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # negative height = top-down rows


_SIZE_READERS = {"jpeg": _jpeg_size, "png": _png_size, "webp": _webp_size, "bmp": _bmp_size}


def jpeg_is_complete(data: bytes) -> bool:
    """Whether the JPEG's last scan reaches an EOI marker.

    libjpeg decodes a truncated file into a grey-padded picture with only a warning, so
    truncation is found here: walk the segments to each scan, then skip entropy-coded
    data (where 0xFF is always followed by 0x00 or a restart marker) to the next marker.
    An EOI inside an embedded EXIF thumbnail sits in a skipped segment and does not count.
    """
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
        if marker == 0xDA:
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return False
                nxt = data[pos + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    pos += 1 if nxt == 0xFF else 2
                    continue
                break
    return pos + 2 <= n and data[pos : pos + 2] == b"\xff\xd9"


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 RGB, upright; raises 400/413/415 problems."""
    header = probe(data)
    if header.width * header.height > max_pixels:
        raise errors.too_large(
            f"the image declares {header.width}x{header.height} = {header.width * header.height} pixels; "
            f"the limit is {max_pixels}"
        )
    if header.format == "jpeg" and not jpeg_is_complete(data):
        raise errors.invalid_image("the JPEG is truncated (no end-of-image marker after the last scan)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # newer OpenCV builds may raise instead of returning None
        image = None
    if image is None or image.size == 0:
        raise errors.invalid_image(f"the {header.format.upper()} data could not be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode(image_rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    ext, params = (".png", []) if fmt == "png" else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"could not encode {fmt}")
    return buf.tobytes()
