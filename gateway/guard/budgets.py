"""Pixel and visual-token budgets, computed with the model's own resize rule before any decode.

Pixel budget per image (pixels the model sees), never above the operator's ceiling
``min(GuardConfig.max_pixels or model max, Capabilities.max_pixels)``:

- ``auto``: the router's budget for the image when it sets one (from the conversation's tasks:
  OCR and documents more than a description), else ``detail_auto_pixels``;
- ``low``: ``detail_low_pixels``, and never more than ``auto`` for the same task;
- ``high``: the ceiling itself, so ``high`` always means at least as many pixels as ``auto``.

The model's floor ``Capabilities.min_pixels`` always applies (smaller images are upscaled, with
a warning). A client chooses ``detail`` only; it never names a number, so it cannot pass the
operator's ceiling, and the visual-token budget per request bounds the total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.base import Capabilities
from gateway.errors import ImageTooLarge, InvalidImage
from gateway.guard.config import GuardConfig

__all__ = ("Sizing", "check_visual_tokens", "model_size", "pixel_budget", "size_image")

_PROCESSOR_MAX_ASPECT = 200  # Qwen's smart_resize raises at this ratio
_ASPECT_TOLERANCE = math.log(1.05)


def pixel_budget(
    detail: str, config: GuardConfig, capabilities: Capabilities, max_pixels: int | None = None
) -> int:
    """Pixels the model may see for one image at ``detail`` (see the module doc)."""
    ceiling = min(config.max_pixels or capabilities.max_pixels, capabilities.max_pixels)
    auto = min(config.detail_auto_pixels if max_pixels is None else max_pixels, ceiling)
    budget = {"low": min(config.detail_low_pixels, auto), "high": ceiling}.get(detail, auto)
    return max(budget, capabilities.min_pixels)


def model_size(width: int, height: int, budget: int, capabilities: Capabilities) -> tuple[int, int]:
    """The size the model sees: ``Capabilities.fit`` under ``budget``, made a fixed point of the
    processor's own resize (fit floors when downscaling, which can land under ``min_pixels``;
    the processor would then upscale again and the token count would be wrong)."""
    w, h = capabilities.fit(width, height, budget)
    if w * h < capabilities.min_pixels:
        w, h = capabilities.fit(w, h)
    return w, h


@dataclass(frozen=True)
class Sizing:
    size: tuple[int, int]
    """Model size (width, height) in the orientation of the ``size`` it was planned for."""
    tokens: int
    warnings: tuple[str, ...]


def size_image(
    size: tuple[int, int],
    *,
    detail: str,
    jpeg_quality: int | None,
    config: GuardConfig,
    capabilities: Capabilities,
    max_pixels: int | None,
    text_heavy: bool,
    param: str,
) -> Sizing:
    """Model size, visual tokens and the size-related fidelity warnings of one image."""
    budget = pixel_budget(detail, config, capabilities, max_pixels)
    w, h = size
    mw, mh = model_size(w, h, budget, capabilities)
    if max(mw, mh) >= _PROCESSOR_MAX_ASPECT * min(mw, mh):
        raise InvalidImage(
            f"The image is {w} x {h} pixels, too elongated for this model. Crop or pad it.",
            param=param,
        )
    f = capabilities.image_factor
    natural = max(f, round(w / f) * f) * max(f, round(h / f) * f)  # fit without a budget
    warnings: list[str] = []
    if natural > budget:
        warnings.append("downscaled_for_budget")
    elif natural < capabilities.min_pixels:
        warnings.append("upscaled")
    if abs(math.log((mw / mh) / (w / h))) > _ASPECT_TOLERANCE:
        warnings.append("aspect_ratio_changed")
    # Text drawn at text_glyph_px source pixels is text_glyph_px * scale model pixels tall.
    if text_heavy and min(mw / w, mh / h) * config.text_glyph_px < config.text_min_glyph_px:
        warnings.append("low_resolution_for_text")
    if jpeg_quality is not None and jpeg_quality < config.jpeg_quality_warn_below:
        warnings.append("lossy_compression")
    return Sizing((mw, mh), capabilities.image_tokens(mw, mh), tuple(warnings))


def check_visual_tokens(params: Sequence[str], sizings: Sequence[Sizing], limit: int) -> None:
    """Refuse a request whose images need more than ``limit`` visual tokens together; the error
    names the image at which the running total crosses the limit."""
    total = 0
    for param, sizing in zip(params, sizings, strict=True):
        total += sizing.tokens
        if total > limit:
            need = sum(p.tokens for p in sizings)
            raise ImageTooLarge(
                f"The images of this request need {need} visual tokens at the requested detail; "
                f"the limit is {limit}. Send fewer or smaller images, or use detail 'low'.",
                param=param,
            )
