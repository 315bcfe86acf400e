"""Image format sniffing, the declared-type rule, and the JPEG quality estimate.

Formats accepted: PNG (first frame of APNG), JPEG (incl. MPO's first picture), WebP (first
frame), GIF (first frame), BMP. Everything else is refused; SVG, PDF, EPS/PostScript, TIFF,
HEIC/AVIF, ICO, PSD, JPEG XL and HTML are named in the refusal.

Declared type rule (the ``Content-Type`` of a download or a data URL's media type):
the bytes decide the format. A missing declaration, ``application/octet-stream`` and
``binary/octet-stream`` are sniffed silently; a declaration of another accepted raster type
(``image/png`` on JPEG bytes) is corrected to the sniffed format with the warning
``declared_type_mismatch``; any other declaration (``text/html``, ``image/svg+xml``,
``application/pdf``, ...) is refused with ``unsupported_image_format`` even when the bytes
look like an image, because a file that claims to be something else is not sent as an image.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from gateway.errors import InvalidImage, UnsupportedImageFormat

__all__ = (
    "ACCEPTED_FORMATS",
    "check_declared_type",
    "estimate_jpeg_quality",
    "header_size",
    "sniff",
)

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
"""Pillow format names, in the order of the module doc."""

_HOW = "Send a PNG, JPEG, WebP, GIF or BMP image."

_DECLARED: dict[str, str] = {
    "image/png": "PNG",
    "image/apng": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP",
}
_UNSPECIFIED = frozenset({"", "application/octet-stream", "binary/octet-stream"})

_REFUSED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF-", 0, "PDF"),
    (b"%!PS", 0, "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"8BPS", 0, "PSD"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"ftyp", 4, "HEIF/AVIF (ISO media)"),
)


def sniff(data: bytes, *, param: str) -> str:
    """The Pillow format name of ``data`` by its magic bytes, or an ``ImageError``."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM":
        return "BMP"
    for magic, offset, name in _REFUSED_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            raise UnsupportedImageFormat(f"{name} images are not supported. " + _HOW, param=param)
    text = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<?xml", b"<svg", b"<!doctype", b"<html")) or b"<svg" in text:
        raise UnsupportedImageFormat(
            "SVG, XML and HTML are not supported as images. " + _HOW, param=param
        )
    raise InvalidImage(
        "The image data is not a recognised image file (it may be corrupt or not an image). "
        + _HOW,
        param=param,
    )


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height from fixed header fields, before any library sees the file.

    Defence in depth: some decoders allocate their canvas when the file is opened (libwebp's
    animation decoder does), so the size is judged here first. None where the size is not at a
    fixed offset (JPEG: Pillow's open only walks markers) or the header is too short (Pillow
    then refuses the file).
    """
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if fmt == "GIF":
            w, h = struct.unpack("<HH", data[6:10])
            return w, h
        if fmt == "BMP":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 core header: 16-bit sides
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)  # negative height means top-down rows
        if fmt == "WEBP" and len(data) >= 30:
            chunk = data[12:16]
            if chunk == b"VP8X":  # 24-bit sides minus one: up to 16M x 16M
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return w, h
            if chunk == b"VP8L" and data[20:21] == b"\x2f":
                bits = int.from_bytes(data[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
    except struct.error:
        return None
    return None


def check_declared_type(declared: str | None, sniffed: str, *, param: str) -> tuple[str, ...]:
    """Apply the declared type rule of the module doc; returns the warnings it produces."""
    if declared is None:
        return ()
    mime = declared.split(";", 1)[0].strip().lower()
    if mime in _UNSPECIFIED:
        return ()
    fmt = _DECLARED.get(mime)
    if fmt is None:
        raise UnsupportedImageFormat(
            "The image was declared with a content type that is not a supported image type. "
            + _HOW
            + " Declare it as image/png, image/jpeg, image/webp, image/gif or image/bmp.",
            param=param,
        )
    return () if fmt == sniffed else ("declared_type_mismatch",)


# IJG (libjpeg) standard tables, natural (row-major) order, as Pillow reports them.
_STD_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_STD_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)  # fmt: skip


def _scaled(table: Sequence[int], quality: int, ceiling: int) -> list[int]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(max((v * scale + 50) // 100, 1), ceiling) for v in table]


# Baseline files (8-bit tables, what libjpeg writes by default) clamp entries at 255.
_SCALED = {
    ceiling: {
        q: (_scaled(_STD_LUMA, q, ceiling), _scaled(_STD_CHROMA, q, ceiling)) for q in range(1, 101)
    }
    for ceiling in (255, 32767)
}


def estimate_jpeg_quality(tables: Mapping[int, Sequence[int]]) -> int | None:
    """The IJG quality (1-100) whose scaled standard tables are nearest (L1) to ``tables``.

    Exact for files written by libjpeg/Pillow; an approximation for encoders with their own
    tables (camera firmware, mozjpeg). None when there is no 64-entry luminance table.
    """
    luma = tables.get(0)
    if luma is None or len(luma) != 64:
        return None
    chroma = tables.get(1)
    if chroma is not None and len(chroma) != 64:
        chroma = None

    scaled = _SCALED[255 if max(luma) <= 255 and max(chroma or (0,)) <= 255 else 32767]

    def distance(q: int) -> int:
        ref_luma, ref_chroma = scaled[q]
        d = sum(abs(a - b) for a, b in zip(luma, ref_luma, strict=True))
        if chroma is not None:
            d += sum(abs(a - b) for a, b in zip(chroma, ref_chroma, strict=True))
        return d

    # Ties go to the higher quality (tables saturate at 1 near q=100).
    return min(range(100, 0, -1), key=distance)
