"""Decoding rules with real bytes made by Pillow: formats, declared types, modes, EXIF and
truncation. Size bounds, the bomb, JPEG quality and the digest: ``test_guard_pixels.py``."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from gateway.errors import (
    ImageError,
    InvalidImage,
    UnsupportedImageFormat,
)
from gateway.guard import PreparedImage
from tests.unit.guard.conftest import (
    PARAM,
    MakeGuard,
    assert_clean,
    image_bytes,
    noise_bytes,
    one,
)

# -- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "save"),
    [
        ("PNG", "image/png", {}),
        ("JPEG", "image/jpeg", {"quality": 90}),
        ("WEBP", "image/webp", {"lossless": True}),
        ("WEBP", "image/webp", {"quality": 80}),
        ("GIF", "image/gif", {}),
        ("BMP", "image/bmp", {}),
    ],
)
async def test_accepted_formats_become_rgb_at_model_size(
    make_guard: MakeGuard, fmt: str, mime: str, save: dict[str, Any]
) -> None:
    prepared = await one(make_guard(), image_bytes((300, 200), fmt, **save), mime)
    image = prepared.input.image
    assert image.mode == "RGB"
    assert image.width % 32 == 0
    assert image.height % 32 == 0
    assert prepared.report.format == fmt.lower()
    assert prepared.report.original_size == (300, 200)
    assert prepared.report.model_size == image.size
    assert prepared.report.visual_tokens == (image.width // 32) * (image.height // 32)
    assert prepared.report.source == "data"


@pytest.mark.parametrize(
    ("maker", "name"),
    [
        (lambda: image_bytes(fmt="TIFF"), "TIFF"),
        (lambda: image_bytes(fmt="ICO"), "ICO"),
        (lambda: image_bytes(fmt="PDF"), "PDF"),
        (lambda: image_bytes(fmt="EPS"), "EPS"),
        (lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (lambda: b"  <svg width='10' height='10'></svg>", "SVG"),
        (lambda: b"<!DOCTYPE html><html></html>", "HTML"),
        (lambda: b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
        (lambda: b"\x00\x00\x00\x1cftypavif" + b"\x00" * 40, "AVIF"),
    ],
)
async def test_other_formats_are_refused_by_name(
    make_guard: MakeGuard, maker: Callable[[], bytes], name: str
) -> None:
    with pytest.raises(UnsupportedImageFormat) as info:
        await one(make_guard(), maker(), None)
    assert info.value.param == PARAM
    assert info.value.code == "unsupported_image_format"
    assert name.split("/")[0][:3] in info.value.message.upper()
    assert_clean(info.value)


@pytest.mark.parametrize("data", [b"", b"hello world", bytes(range(256)) * 4, b"\x89PNG"])
async def test_unrecognised_bytes_are_invalid_image(make_guard: MakeGuard, data: bytes) -> None:
    with pytest.raises(InvalidImage) as info:
        await one(make_guard(), data or b"\x00", None)
    assert_clean(info.value)


# -- declared type rule -------------------------------------------------------------------------


@pytest.mark.parametrize("mime", [None, "application/octet-stream", "binary/octet-stream"])
async def test_unspecified_types_are_sniffed_silently(make_guard: MakeGuard, mime: str) -> None:
    prepared = await one(make_guard(), image_bytes(), mime)
    assert "declared_type_mismatch" not in prepared.report.warnings


async def test_another_raster_type_is_corrected_with_a_warning(make_guard: MakeGuard) -> None:
    prepared = await one(make_guard(), image_bytes(fmt="PNG"), "image/jpeg")
    assert prepared.report.format == "png"
    assert "declared_type_mismatch" in prepared.report.warnings


@pytest.mark.parametrize("mime", ["image/svg+xml", "text/html", "application/pdf", "image/tiff"])
async def test_non_raster_declarations_are_refused_even_for_png_bytes(
    make_guard: MakeGuard, mime: str
) -> None:
    with pytest.raises(UnsupportedImageFormat):
        await one(make_guard(), image_bytes(fmt="PNG"), mime)


# -- normalisation -----------------------------------------------------------------------------


def _pixel(prepared: PreparedImage, x: float, y: float) -> tuple[int, int, int]:
    image = prepared.input.image
    return image.getpixel((int(x * (image.width - 1)), int(y * (image.height - 1))))  # type: ignore[return-value]


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


async def test_exif_orientation_is_applied(make_guard: MakeGuard) -> None:
    im = Image.new("RGB", (640, 320), (255, 0, 0))
    im.paste((0, 0, 255), (320, 0, 640, 320))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left goes to the top
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif)
    prepared = await one(make_guard(), buf.getvalue(), "image/jpeg")
    assert prepared.report.original_size == (320, 640)
    assert prepared.input.image.height > prepared.input.image.width
    assert _close(_pixel(prepared, 0.5, 0.1), (255, 0, 0), 40)
    assert _close(_pixel(prepared, 0.5, 0.9), (0, 0, 255), 40)
    assert "exif_rotated" in prepared.report.warnings


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("RGBA", (0, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),  # half-transparent black over white
        ("LA", (0, 0), (255, 255, 255)),
    ],
)
async def test_alpha_is_composited_on_white(
    make_guard: MakeGuard, mode: str, color: Any, expected: tuple[int, int, int]
) -> None:
    prepared = await one(make_guard(), image_bytes((300, 300), "PNG", mode, color))
    assert _close(_pixel(prepared, 0.5, 0.5), expected, 2)
    assert "transparency_flattened" in prepared.report.warnings


async def test_palette_transparency_is_composited_on_white(make_guard: MakeGuard) -> None:
    im = Image.new("P", (300, 300), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(0, (0, 0, 150, 300))  # left half index 0 = transparent
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0)
    prepared = await one(make_guard(), buf.getvalue())
    assert _close(_pixel(prepared, 0.1, 0.5), (255, 255, 255), 2)
    assert _close(_pixel(prepared, 0.9, 0.5), (255, 0, 0), 2)


async def test_cmyk_jpeg_becomes_rgb(make_guard: MakeGuard) -> None:
    data = image_bytes((300, 300), "JPEG", "CMYK", (0, 255, 255, 0), quality=95)
    prepared = await one(make_guard(), data, "image/jpeg")
    assert _close(_pixel(prepared, 0.5, 0.5), (255, 0, 0), 30)
    assert "cmyk_converted" in prepared.report.warnings


async def test_16_bit_grey_is_scaled_not_clipped(make_guard: MakeGuard) -> None:
    prepared = await one(make_guard(), image_bytes((300, 300), "PNG", "I;16", 32768))
    assert _close(_pixel(prepared, 0.5, 0.5), (127, 127, 127), 2)
    assert "high_bit_depth_reduced" in prepared.report.warnings


@pytest.mark.parametrize(("fmt", "mime"), [("GIF", "image/gif"), ("WEBP", "image/webp")])
async def test_animations_use_the_first_frame(make_guard: MakeGuard, fmt: str, mime: str) -> None:
    frames = [Image.new("RGB", (300, 300), c) for c in ((0, 200, 0), (200, 0, 0), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100)
    prepared = await one(make_guard(), buf.getvalue(), mime)
    assert _close(_pixel(prepared, 0.5, 0.5), (0, 200, 0), 20)
    assert "first_frame_only" in prepared.report.warnings


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
async def test_truncated_files_are_refused(make_guard: MakeGuard, fmt: str, keep: float) -> None:
    data = noise_bytes((200, 150), fmt)
    with pytest.raises(ImageError) as info:
        await one(make_guard(), data[: int(len(data) * keep)], None)
    assert info.value.code == "invalid_image"
    assert info.value.param == PARAM
    assert_clean(info.value)
