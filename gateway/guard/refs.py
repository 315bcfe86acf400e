"""What the guard takes and gives: image references in, prepared images with reports out.

An ``ImageRef`` is one image of a request: a URL the guard fetches (``image_url``), bytes the
server already holds (an uploaded image, inline ``file_data``), or a ``DrawnImage``: a page the
server draws itself (a PDF page), sized from its dimensions before anything is drawn so the
request's budgets are checked first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from PIL import Image

from adapters.base import ImageInput

__all__ = (
    "WARNINGS",
    "DrawnImage",
    "FidelityReport",
    "HeldBytes",
    "ImageRef",
    "PreparedImage",
    "SourceKind",
)

WARNINGS = frozenset(
    {
        "declared_type_mismatch",  # the declared MIME type named another format; bytes won
        "first_frame_only",  # animated GIF/WebP/PNG: the model sees frame 1
        "exif_rotated",  # EXIF orientation applied
        "cmyk_converted",
        "transparency_flattened",  # alpha composited over white
        "high_bit_depth_reduced",  # 16-bit grey scaled to 8 bits
        "downscaled_for_budget",  # smaller than its own size because of the pixel budget
        "upscaled",  # below the model's minimum pixels, enlarged
        "aspect_ratio_changed",  # rounding sides to the model's factor moved the ratio > 5 %
        "low_resolution_for_text",  # text-heavy task, glyphs likely below a readable size
        "lossy_compression",  # JPEG quality estimate below jpeg_quality_warn_below
        "incomplete_image_data",  # a JPEG's data ended early; its last rows are grey filler
    }
)
"""Every warning code a report can carry (a bounded set: safe as a metric label)."""

SourceKind = Literal["data", "http", "file", "upload", "pdf"]
"""Where an image came from: a data URL, a remote URL, a ``file://`` URL, an uploaded or inline
file (Files API, ``file_data``), or a rendered PDF page."""


@dataclass(frozen=True)
class HeldBytes:
    """An encoded image the server already has (an upload, inline ``file_data``)."""

    data: bytes
    declared: str | None = None
    """The media type it was declared or sniffed as, checked against the bytes like a URL's."""


@runtime_checkable
class DrawnImage(Protocol):
    """An image the server draws itself at the size the guard chooses (a PDF page)."""

    def natural_size(self, *, text_heavy: bool) -> tuple[int, int]:
        """Width, height in pixels it would be drawn at without a pixel budget."""

    async def draw(self, size: tuple[int, int]) -> Image.Image:
        """The image, RGB, at exactly ``size``; errors are ``gateway.errors`` classes."""


@dataclass(frozen=True)
class ImageRef:
    """One image of a request."""

    url: str
    """The ``image_url`` URL; for held and drawn images a description for logs (never fetched)."""
    detail: Literal["auto", "low", "high"]
    param: str
    """Where the part is, e.g. ``messages[2].content[1].image_url``; used in every error."""
    held: HeldBytes | DrawnImage | None = None
    """Set when the image is not fetched from ``url``."""


@dataclass(frozen=True)
class FidelityReport:
    """What was done to one image; never silently degrade."""

    original_size: tuple[int, int]
    """Width, height as sent, in displayed (EXIF) orientation; a PDF page's at its dpi."""
    model_size: tuple[int, int]
    """Width, height the model sees."""
    visual_tokens: int
    source: SourceKind
    format: str
    """``png``, ``jpeg``, ``webp``, ``gif``, ``bmp`` (sniffed from the bytes) or ``pdf``."""
    bytes: int
    """Encoded size as received (0 for a drawn page)."""
    jpeg_quality: int | None
    """IJG quality estimated from the quantization tables (JPEG only)."""
    warnings: tuple[str, ...]
    """Codes from ``WARNINGS``, in pipeline order."""


@dataclass(frozen=True)
class PreparedImage:
    input: ImageInput
    report: FidelityReport
