"""Pixel bounds from the header (the decompression bomb included), JPEG quality estimates and
the content digest, with real bytes made by Pillow."""

from __future__ import annotations

import io
import struct
import time
from typing import Any

import pytest
from PIL import Image

from gateway.errors import (
    ImageError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
)
from gateway.guard.formats import estimate_jpeg_quality, header_size
from tests.unit.guard.conftest import (
    PARAM,
    MakeGuard,
    assert_clean,
    bomb_png,
    image_bytes,
    noise_bytes,
    one,
    rss_kib,
)

# -- size bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "error", "config"),
    [
        ((7, 100), ImageTooSmall, {}),
        ((1, 1), ImageTooSmall, {}),
        ((1000, 9), InvalidImage, {}),  # aspect ratio 111 > 100
        ((5000, 10), InvalidImage, {}),
        ((3000, 2000), ImageTooLarge, {"max_image_pixels": 5_000_000}),
        ((2100, 100), ImageTooLarge, {"max_side": 2000}),
    ],
)
async def test_size_bounds_from_the_header(
    make_guard: MakeGuard, size: tuple[int, int], error: type[ImageError], config: dict[str, Any]
) -> None:
    with pytest.raises(error) as info:
        await one(make_guard(**config), image_bytes(size, "PNG", "L", 0))
    assert info.value.param == PARAM
    assert info.value.status == 400
    assert_clean(info.value)


@pytest.mark.parametrize("side", [50_000, 8_000])  # beyond Pillow's own limit, and below it
async def test_decompression_bomb_is_refused_from_the_header(
    make_guard: MakeGuard, side: int
) -> None:
    guard = make_guard()
    await one(guard, image_bytes())  # warm the worker thread
    data = bomb_png(side, side)
    before = rss_kib()
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:  # not InvalidImage: the IDAT was never inflated
        await one(guard, data)
    elapsed = time.perf_counter() - started
    assert info.value.code == "image_too_large"
    assert info.value.param == PARAM
    assert_clean(info.value)
    # The acceptance bound is 50 ms (bench/guard_bench.py measures it); generous here because
    # the test machine is shared. A decoded 50000^2 RGB image would be 7.5 GB.
    assert elapsed < 0.5
    assert rss_kib() - before < 20 * 1024


def webp_canvas(width: int, height: int) -> bytes:
    """An animated WebP whose VP8X canvas is width x height around one 16x16 frame; libwebp's
    animation decoder allocates the whole canvas when the file is opened."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "WEBP", lossless=True)
    vp8l = buf.getvalue()[12:]

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return tag + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)

    sides = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    frame = bytes(6) + (15).to_bytes(3, "little") * 2 + (100).to_bytes(3, "little") + b"\0"
    body = (
        b"WEBP"
        + chunk(b"VP8X", b"\x02\0\0\0" + sides)
        + chunk(b"ANIM", bytes(6))
        + chunk(b"ANMF", frame + vp8l)
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


async def test_webp_canvas_is_judged_before_the_decoder_exists(make_guard: MakeGuard) -> None:
    guard = make_guard(max_image_pixels=1_000_000)
    accepted = await one(guard, webp_canvas(900, 900), "image/webp")
    assert accepted.report.original_size == (900, 900)
    with pytest.raises(ImageTooLarge):
        await one(guard, webp_canvas(9000, 9000), "image/webp")


@pytest.mark.parametrize(
    ("fmt", "save"),
    [
        ("PNG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"quality": 50}),
        ("WEBP", {"save_all": True, "append_images": [Image.new("RGB", (123, 45))]}),
    ],
)
def test_header_sizes_agree_with_pillow(fmt: str, save: dict[str, Any]) -> None:
    data = image_bytes((123, 45), fmt, **save)
    assert header_size(data, fmt) == (123, 45)
    assert header_size(data[:20], fmt) in (None, (123, 45))


# -- JPEG quality and digest --------------------------------------------------------------------


@pytest.mark.parametrize("quality", [5, 10, 25, 50, 75, 90, 95, 100])
def test_jpeg_quality_is_estimated_from_quantization_tables(quality: int) -> None:
    buf = io.BytesIO(noise_bytes((64, 64), "JPEG", quality=quality))
    with Image.open(buf) as im:
        tables = im.quantization  # type: ignore[attr-defined]
    estimate = estimate_jpeg_quality(tables)
    assert estimate is not None
    assert abs(estimate - quality) <= 2


async def test_heavy_jpeg_compression_is_reported(make_guard: MakeGuard) -> None:
    guard = make_guard()
    low = await one(guard, noise_bytes((300, 200), quality=30), "image/jpeg")
    high = await one(guard, noise_bytes((300, 200), quality=92), "image/jpeg")
    assert low.report.jpeg_quality is not None
    assert low.report.jpeg_quality <= 35
    assert "lossy_compression" in low.report.warnings
    assert "lossy_compression" not in high.report.warnings
    png = await one(guard, image_bytes())
    assert png.report.jpeg_quality is None


async def test_digest_is_of_pixels_not_bytes(make_guard: MakeGuard) -> None:
    guard = make_guard()
    src = Image.open(io.BytesIO(noise_bytes((400, 300), "PNG")))
    encodings = []
    for fmt, save in (("PNG", {"compress_level": 1}), ("PNG", {"compress_level": 9}), ("BMP", {})):
        buf = io.BytesIO()
        src.save(buf, fmt, **save)
        encodings.append(buf.getvalue())
    assert len(set(encodings)) == 3
    digests = {(await one(guard, data, None)).input.digest for data in encodings}
    assert len(digests) == 1

    src.putpixel((200, 150), (0, 0, 0) if src.getpixel((200, 150)) != (0, 0, 0) else (9, 9, 9))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    other = await one(guard, buf.getvalue(), None)  # one pixel differs
    assert other.input.digest not in digests


async def test_same_bytes_at_two_budgets_have_two_digests(make_guard: MakeGuard) -> None:
    guard = make_guard()
    data = noise_bytes((1600, 1200), "PNG")
    low = await one(guard, data, detail="low")
    high = await one(guard, data, detail="high")
    assert low.input.image.size != high.input.image.size
    assert low.input.digest != high.input.digest
    again = await one(guard, data, detail="low")
    assert again.input.digest == low.input.digest
