"""Container structure, bounded before anything is decoded: the cost of a decode is not only its
pixels.

An 81 KB progressive JPEG whose last scan is repeated 2,000 times costs about 9 s of CPU to
decode at 2048 x 2048, and a PNG or GIF can hold millions of tiny chunks or frames that Pillow
walks one by one in Python. So the file's own structure is walked first, without decoding a
pixel, and bounded:

- JPEG: the number of scans (``GuardConfig.max_jpeg_scans``; libjpeg writes 10 for a
  progressive file, mozjpeg up to about 20, a baseline file has 1). A file whose entropy-coded
  data runs out before the end-of-image marker is truncated: refused.
- PNG: the number of chunks (``GuardConfig.max_chunks``): real files have a few dozen.
- GIF: the number of frames and extension blocks (``GuardConfig.max_chunks``); only the first
  frame is used, but Pillow may walk the rest.
- WebP: the number of RIFF chunks, animation frames included (``GuardConfig.max_chunks``).

Every walk is linear in the file's bytes with no allocation beyond counters.
"""

from __future__ import annotations

import struct

from gateway.errors import InvalidImage
from gateway.guard.config import GuardConfig

__all__ = ("check_structure",)

_TRUNCATED = (
    "The image file is truncated (its data ends before the end of the image). Re-export it "
    "as PNG or JPEG and send it again."
)
# JPEG markers with no length field: SOI, EOI, TEM and the restart markers.
_STANDALONE = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})
_SOS, _EOI = 0xDA, 0xD9


def check_structure(data: bytes, fmt: str, config: GuardConfig, *, param: str) -> None:
    """Refuse ``data`` (already sniffed as ``fmt``) whose structure makes decoding costly or
    which is truncated. Blocking, linear, cheap."""
    if fmt == "JPEG":
        scans = _jpeg_scans(data, param)
        if scans > config.max_jpeg_scans:
            raise InvalidImage(
                f"The JPEG has {scans} scans; at most {config.max_jpeg_scans} are accepted "
                "(more only make decoding slower). Re-export it as baseline JPEG or PNG.",
                param=param,
            )
        return
    count = {"PNG": _png_chunks, "GIF": _gif_blocks, "WEBP": _webp_chunks}.get(fmt)
    if count is not None and count(data, config.max_chunks + 1) > config.max_chunks:
        raise InvalidImage(
            f"The {fmt} file has more than {config.max_chunks} chunks or frames. Re-export it "
            "as a single-frame PNG or JPEG.",
            param=param,
        )


def _jpeg_scans(data: bytes, param: str) -> int:
    """Scans (SOS segments) of a JPEG, walking its marker segments and entropy-coded data."""
    pos, scans, end = 2, 0, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:
            raise InvalidImage(_TRUNCATED, param=param)  # garbage where a marker must be
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            return scans
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > end:
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
        if marker == _SOS:
            scans += 1
            pos = _after_entropy_data(data, pos)
    raise InvalidImage(_TRUNCATED, param=param)


def _after_entropy_data(data: bytes, pos: int) -> int:
    """The offset of the first marker after entropy-coded data starting at ``pos`` (stuffed
    ``FF 00`` bytes and restart markers belong to the data)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
        else:
            return pos


def _png_chunks(data: bytes, limit: int) -> int:
    pos, count = 8, 0
    while pos + 8 <= len(data) and count < limit:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        count += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length
    return count


def _gif_blocks(data: bytes, limit: int) -> int:
    """Image descriptors and extensions, skipping their data sub-blocks."""
    if len(data) < 13:
        return 0
    pos, count = 13, 0
    flags = data[10]
    if flags & 0x80:  # global colour table
        pos += 3 * (2 ** ((flags & 0x07) + 1))
    while pos < len(data) and count < limit:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            break
        count += 1
        if kind == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif kind == 0x2C:  # image descriptor, optional local table, LZW size, sub-blocks
            if pos + 10 > len(data):
                break
            local = data[pos + 9]
            pos += 10 + (3 * (2 ** ((local & 0x07) + 1)) if local & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)
        else:
            break  # not a GIF block: Pillow will refuse the file itself
    return count


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


def _webp_chunks(data: bytes, limit: int) -> int:
    """RIFF chunks after the header; an animation frame (``ANMF``) is one chunk."""
    pos, count = 12, 0
    while pos + 8 <= len(data) and count < limit:
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        count += 1
        pos += 8 + length + (length & 1)  # chunks are padded to an even size
    return count
