"""Helpers shared by test modules: real image bytes made with Pillow."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageDraw

from adapters.base import ImageInput, Message

__all__ = ("as_hf", "data_url", "image_bytes", "make_image", "make_pdf")


def make_image(width: int = 256, height: int = 192, seed: int = 0) -> Image.Image:
    """A deterministic RGB picture with shapes and text-like strokes."""
    image = Image.new("RGB", (width, height), (255 - seed % 255, 240, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 8, height // 8, width // 2, height // 2), fill=(200, 30, 30))
    draw.ellipse((width // 2, height // 3, width - 10, height - 10), fill=(20, 90, 200))
    draw.text((10, height - 30), f"vlm-gateway {seed}", fill=(0, 0, 0))
    return image


def image_bytes(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def data_url(image: Image.Image | None = None, fmt: str = "PNG", **save: object) -> str:
    raw = image_bytes(image or make_image(), fmt, **save)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def make_pdf(*pages: Image.Image, dpi: float = 150) -> bytes:
    """A PDF (written by Pillow) whose pages are the given pictures at ``dpi``: a 1275 x 1650
    picture at 150 dpi is a US-letter page."""
    pictures = list(pages) or [make_image(1275, 1650)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, "PDF", resolution=dpi, save_all=True, append_images=pictures[1:])
    return buffer.getvalue()


def as_hf(messages: list[Message]) -> list[dict[str, Any]]:
    """Internal messages as the HF chat-template messages ``apply_chat_template`` takes."""
    return [
        {
            "role": m.role,
            "content": [
                {"type": "image", "image": p.image}
                if isinstance(p, ImageInput)
                else {"type": "text", "text": p}
                for p in m.content
            ],
        }
        for m in messages
    ]
