"""Container structure is bounded before decoding: scans, chunks, frames, truncation."""

from __future__ import annotations

import asyncio
import io
import struct
import time
from collections.abc import Callable

import pytest
from PIL import Image

from gateway.errors import InvalidImage, ServiceUnavailable
from gateway.guard import GuardConfig, ImageGuard
from gateway.guard.structure import check_structure
from tests.unit.guard.conftest import (
    PARAM,
    assert_clean,
    data_url,
    image_bytes,
    noise_bytes,
    png_chunk,
    ref,
)

MakeGuard = Callable[..., ImageGuard]


def segments(jpeg: bytes) -> list[tuple[int, int]]:
    """(start, end) of every marker segment of a JPEG, scans with their entropy data."""
    out, pos = [], 2
    while pos < len(jpeg):
        marker = jpeg[pos + 1]
        if marker == 0xD9:
            out.append((pos, pos + 2))
            break
        (length,) = struct.unpack(">H", jpeg[pos + 2 : pos + 4])
        end = pos + 2 + length
        if marker == 0xDA:
            while not (jpeg[end] == 0xFF and jpeg[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append((pos, end))
        pos = end
    return out


def repeated_scans(size: tuple[int, int], repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: valid, tiny, and slow to decode."""
    buffer = io.BytesIO()
    smooth = Image.linear_gradient("L").resize(size).convert("RGB")  # tiny refinement scans
    smooth.save(buffer, "JPEG", progressive=True, quality=80)
    jpeg = buffer.getvalue()
    parts = segments(jpeg)
    last_scan = max((s for s in parts if jpeg[s[0] + 1] == 0xDA), key=lambda s: s[0])
    scan = jpeg[last_scan[0] : last_scan[1]]
    eoi = parts[-1][0]
    return jpeg[:eoi] + scan * repeats + jpeg[eoi:]


async def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding(
    make_guard: MakeGuard,
) -> None:
    bomb = repeated_scans((2048, 2048), 2000)
    assert len(bomb) < 2_000_000
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="scans") as info:
        await make_guard().prepare([ref(data_url(bomb, "image/jpeg"))])
    assert time.perf_counter() - started < 1.0  # it took ~9 s of decoding before
    assert_clean(info.value)
    # An ordinary progressive JPEG has about 10 scans: accepted.
    ordinary = noise_bytes((640, 480), "JPEG", progressive=True, quality=80)
    (prepared,) = await make_guard().prepare([ref(data_url(ordinary, "image/jpeg"))])
    assert prepared.input.image.size[0] > 0


async def test_truncated_jpegs_are_refused(make_guard: MakeGuard) -> None:
    whole = noise_bytes((320, 240), "JPEG", quality=85)
    for cut in (len(whole) // 2, len(whole) - 2):
        with pytest.raises(InvalidImage, match="truncated"):
            await make_guard().prepare([ref(data_url(whole[:cut], "image/jpeg"))])


async def test_a_jpeg_whose_data_ends_early_is_named_in_a_warning(make_guard: MakeGuard) -> None:
    """Its header says 1536 x 1536, its data holds 512 x 512; libjpeg paints the rest grey."""
    data = bytearray(noise_bytes((512, 512), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 1536, 1536)
    (prepared,) = await make_guard().prepare([ref(data_url(bytes(data), "image/jpeg"))])
    assert "incomplete_image_data" in prepared.report.warnings
    whole = noise_bytes((512, 512), "JPEG", quality=90)
    (fine,) = await make_guard().prepare([ref(data_url(whole, "image/jpeg"))])
    assert "incomplete_image_data" not in fine.report.warnings


def many_chunk_png(chunks: int) -> bytes:
    png = image_bytes((16, 16))
    iend = png.rindex(b"IEND") - 4
    filler = png_chunk(b"tEXt", b"k\x00v") * chunks
    return png[:iend] + filler + png[iend:]


def many_frame_gif(frames: int) -> bytes:
    buffer = io.BytesIO()
    first = Image.new("P", (16, 16), 1)
    rest = [Image.new("P", (16, 16), i % 2) for i in range(frames - 1)]
    first.save(buffer, "GIF", save_all=True, append_images=rest, duration=1, optimize=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "build", "mime"),
    [("PNG", many_chunk_png, "image/png"), ("GIF", many_frame_gif, "image/gif")],
)
async def test_chunk_and_frame_counts_are_bounded(
    make_guard: MakeGuard, fmt: str, build: Callable[[int], bytes], mime: str
) -> None:
    config = GuardConfig(max_chunks=50)
    with pytest.raises(InvalidImage, match="chunks or frames"):
        check_structure(build(200), fmt, config, param=PARAM)
    check_structure(build(10), fmt, config, param=PARAM)  # within the bound
    with pytest.raises(InvalidImage):
        await make_guard(max_chunks=50).prepare([ref(data_url(build(200), mime))])


async def test_the_decode_backlog_is_bounded(make_guard: MakeGuard) -> None:
    guard = make_guard(decode_workers=1, decode_queue=1)
    slow = noise_bytes((1600, 1200), "PNG")
    requests = [guard.prepare([ref(data_url(slow))]) for _ in range(4)]
    results = await asyncio.gather(*requests, return_exceptions=True)
    refused = [r for r in results if isinstance(r, ServiceUnavailable)]
    assert refused
    assert all(r.code == "server_overloaded" for r in refused)
    assert any(not isinstance(r, BaseException) for r in results)
