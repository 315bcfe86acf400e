"""Header probe, decode, normalisation to RGB, resize and digest of one image.

Both entry points are blocking and meant for a worker thread. Every Pillow exception is
translated to ``InvalidImage`` here (Pillow raises nearly any exception type on hostile input
and its messages contain heap addresses); only ``gateway.errors`` classes leave this module.

Pipeline (the digest names it, see ``PIPELINE``):

1. ``probe_image``: sniff the magic bytes, apply the declared type rule, open with Pillow
   restricted to the sniffed format, and check width x height, sides and aspect ratio from the
   header. Nothing is decoded; a 50000 x 50000 PNG is refused here.
2. ``render_image``: decode the first frame only (JPEG decodes at 1/2, 1/4 or 1/8 scale via
   DCT scaling when the target allows); 16-bit grey is scaled to 8 bits; CMYK, palette and
   grey become RGB; alpha is composited over white; the image is resized (bicubic, alpha
   premultiplied) to the target given in stored orientation, then the EXIF orientation is
   applied. ``LOAD_TRUNCATED_IMAGES`` stays false, so a truncated file is refused.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from gateway.errors import GatewayError, ImageTooLarge, ImageTooSmall, InvalidImage
from gateway.guard.config import GuardConfig
from gateway.guard.formats import (
    check_declared_type,
    estimate_jpeg_quality,
    header_size,
    sniff,
)
from gateway.guard.structure import check_structure

__all__ = ("PIPELINE", "Probe", "Rendered", "drawn", "probe_image", "render_image")

PIPELINE = "vlm-gateway-guard/1;bicubic;alpha-over-white;exif-oriented"
"""Preprocessing parameters that are not visible in the output size, part of every digest."""

_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HIGH_BIT_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_CORRUPT = (
    "The image file is corrupt or truncated and could not be decoded. "
    "Re-export it as PNG or JPEG and send it again."
)


@dataclass(frozen=True)
class Probe:
    """What the header says; nothing decoded."""

    format: str
    """Pillow format name (``PNG``, ``JPEG``, ``WEBP``, ``GIF``, ``BMP``)."""
    size: tuple[int, int]
    """Width, height as stored (before EXIF orientation)."""
    orientation: int
    """EXIF orientation 1-8 when known from the header (PNG may reveal it only after decode)."""
    animated: bool
    jpeg_quality: int | None
    warnings: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Rendered:
    image: Image.Image
    """RGB at the model size, displayed orientation."""
    digest: str
    """BLAKE2b-256 hex of ``PIPELINE``, the size and the RGB pixels."""
    original_size: tuple[int, int]
    """Width, height as sent, in displayed orientation."""
    warnings: tuple[str, ...]


def _orientation(im: Image.Image, *, loaded: bool) -> int:
    if im.format == "PNG" and "exif" not in im.info and not loaded:
        return 1  # PngImageFile.getexif() would decode the whole image to look for eXIf
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block is ignored, not fatal
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _check_dimensions(width: int, height: int, config: GuardConfig, param: str) -> None:
    if min(width, height) < config.min_side:
        raise ImageTooSmall(
            f"The image is {width} x {height} pixels; each side must be at least "
            f"{config.min_side} pixels. Send a larger image.",
            param=param,
        )
    if width * height > config.max_image_pixels or max(width, height) > config.max_side:
        raise ImageTooLarge(
            f"The image is {width} x {height} pixels; the limit is {config.max_image_pixels} "
            f"pixels and {config.max_side} pixels per side. Send a smaller image.",
            param=param,
        )
    if max(width, height) / min(width, height) > config.max_aspect_ratio:
        raise InvalidImage(
            f"The image is {width} x {height} pixels, too elongated: the longer side may be at "
            f"most {config.max_aspect_ratio:g} times the shorter. Crop or pad it.",
            param=param,
        )


def _open(data: bytes, fmt: str, param: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(
            "The image has too many pixels to be processed. Send a smaller image.", param=param
        ) from exc
    except Exception as exc:
        raise InvalidImage(_CORRUPT, param=param) from exc


def probe_image(data: bytes, declared: str | None, config: GuardConfig, *, param: str) -> Probe:
    """Read the header and enforce the size bounds; decode nothing. Blocking, cheap."""
    fmt = sniff(data, param=param)
    warnings = check_declared_type(declared, fmt, param=param)
    stated = header_size(data, fmt)
    if stated is not None:  # judged before Pillow (or libwebp) allocates anything
        _check_dimensions(*stated, config, param)
    check_structure(data, fmt, config, param=param)
    with _open(data, fmt, param) as im:
        _check_dimensions(im.width, im.height, config, param)
        try:
            animated = bool(getattr(im, "is_animated", False))
            quality = estimate_jpeg_quality(getattr(im, "quantization", None) or {})
        except Exception as exc:
            raise InvalidImage(_CORRUPT, param=param) from exc
        orientation = _orientation(im, loaded=False)
        return Probe(fmt, im.size, orientation, animated, quality, warnings)


def _gray_tail(im: Image.Image) -> bool:
    """Whether the last block row of a decoded JPEG is flat mid-grey: what libjpeg paints,
    silently, where a file's data ended before the picture its header announced."""
    rows = max(1, min(16, im.height // 8))
    extrema = im.crop((0, im.height - rows, im.width, im.height)).getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return all(band == (128, 128) for band in bands)


def _to_rgb(im: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    """RGB at ``size``; resizes in the cheapest correct mode (grey stays grey until the end)."""
    notes: list[str] = []
    if im.mode in _HIGH_BIT_GREY:
        grey = im if im.mode == "I" else im.convert("I")
        im = grey.point(lambda v: v / 257).convert("L")
        notes.append("high_bit_depth_reduced")
    elif im.mode == "CMYK":
        im = im.convert("RGB")
        notes.append("cmyk_converted")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if rgba.size != size:
            rgba = rgba.resize(size, Image.Resampling.BICUBIC)  # premultiplied by Pillow
        alpha = rgba.getchannel("A")
        lowest, _ = alpha.getextrema()
        if isinstance(lowest, int | float) and lowest < 255:
            notes.append("transparency_flattened")
        out = Image.new("RGB", size, (255, 255, 255))
        out.paste(rgba.convert("RGB"), mask=alpha)
        return out, notes
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    if im.size != size:
        im = im.resize(size, Image.Resampling.BICUBIC)
    return (im if im.mode == "RGB" else im.convert("RGB")), notes


def render_image(data: bytes, probe: Probe, size: tuple[int, int], *, param: str) -> Rendered:
    """Decode the first frame and produce the model's RGB input.

    ``size`` is the model size in STORED orientation (width, height before EXIF rotation); a
    90-degree orientation swaps it in the result. Blocking; memory is bounded by the probe.
    """
    try:
        with _open(data, probe.format, param) as im:
            if im.size != probe.size:
                raise InvalidImage(_CORRUPT, param=param)
            if probe.format == "JPEG":
                im.draft(None, size)  # DCT-domain downscale: never below ``size``
            im.load()
            orientation = _orientation(im, loaded=True)
            incomplete = probe.format == "JPEG" and _gray_tail(im)
            rgb, notes = _to_rgb(im, size)
            if incomplete:
                notes.append("incomplete_image_data")
    except GatewayError:
        raise
    except Exception as exc:  # truncated data, decoder errors, MemoryError, ...
        raise InvalidImage(_CORRUPT, param=param) from exc
    width, height = probe.size
    if orientation != 1:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
        notes.append("exif_rotated")
        if orientation >= 5:
            width, height = height, width
    if probe.animated:
        notes.append("first_frame_only")
    return Rendered(rgb, _digest(rgb), (width, height), tuple(notes))


def drawn(image: Image.Image, original_size: tuple[int, int]) -> Rendered:
    """A server-drawn image (a PDF page, RGB at its model size) as the guard's output: its
    digest names its pixels, so the same page drawn again meets its cached features."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return Rendered(rgb, _digest(rgb), original_size, ())


def _digest(rgb: Image.Image) -> str:
    digest = hashlib.blake2b(digest_size=32)
    digest.update(f"{PIPELINE};{rgb.width}x{rgb.height};".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()
