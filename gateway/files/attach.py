"""File parts of a chat request become what the guard takes: images and PDF pages.

``Attachments.expand`` runs after the structural checks and before routing: it reads each file
(the caller's own upload by id, or inline ``file_data``), sniffs it, and replaces the part with
an image held in memory, or with one drawn image per PDF page (plus the page's text layer when
``files.pdf_text_layer`` is on). PDFs are opened here only to count and measure their pages
(in the renderer's bounded process); pages are drawn later by the guard, at the size its budgets
choose for the routed task, so the page and visual-token limits hold before anything is drawn.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from PIL import Image

from gateway.chat.conversation import Conversation, FileInput
from gateway.errors import FileNotFound, InvalidFile, InvalidValue
from gateway.files.config import FilesConfig
from gateway.files.content import decode_file_data, is_image, sniff_file
from gateway.files.pdf import PdfRenderer
from gateway.files.store import Store
from gateway.guard.refs import HeldBytes, ImageRef

__all__ = ("Attachments", "PdfPage")

_POINTS_PER_INCH = 72
_LARGE_PAYLOAD = 1 << 20  # base64 text decoded off the event loop above this


@dataclass(frozen=True, eq=False)
class PdfPage:
    """One PDF page as a ``gateway.guard.refs.DrawnImage``."""

    document: bytes
    index: int
    points: tuple[float, float]
    config: FilesConfig
    renderer: PdfRenderer
    param: str

    def natural_size(self, *, text_heavy: bool) -> tuple[int, int]:
        dpi = self.config.pdf_text_dpi if text_heavy else self.config.pdf_dpi
        return _fit(self.points, dpi, self.config.pdf_max_page_pixels)

    async def draw(self, size: tuple[int, int]) -> Image.Image:
        # The model may want a tiny page larger than the renderer's cap: draw within the cap,
        # then enlarge (the guard reports it as upscaled).
        cap = self.config.pdf_max_page_pixels
        target = size if size[0] * size[1] <= cap else _shrink(size, cap)
        pages = await self.renderer.render(self.document, [(self.index, target)], param=self.param)
        image = pages[0]
        return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def _fit(points: tuple[float, float], dpi: float, max_pixels: int) -> tuple[int, int]:
    w, h = (max(1, round(p * dpi / _POINTS_PER_INCH)) for p in points)
    return (w, h) if w * h <= max_pixels else _shrink((w, h), max_pixels)


def _shrink(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    scale = (max_pixels / (size[0] * size[1])) ** 0.5
    return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))


class Attachments:
    def __init__(self, store: Store, renderer: PdfRenderer, config: FilesConfig) -> None:
        self.store = store
        self.renderer = renderer
        self.config = config

    async def expand(self, conversation: Conversation, owner: str) -> Conversation:
        """``conversation`` with every file part replaced by its images (and page texts)."""
        contents: dict[int, list[str | ImageRef]] = {}
        pages_left = self.config.pdf_max_pages
        for index, item in conversation.files:
            data = await self._read(item, owner)
            media_type = sniff_file(data, param=item.param)
            if is_image(media_type):
                held = HeldBytes(data, media_type)
                contents[index] = [ImageRef(_name(item), item.detail, item.param, held)]
                continue
            if item.image_only:
                raise InvalidValue(
                    "This file is a PDF; send it as a 'file' content part, not 'image_url'.",
                    param=item.param,
                )
            contents[index] = await self._pages(item, data, pages_left)
            pages_left -= sum(isinstance(p, ImageRef) for p in contents[index])
        return conversation.expand(contents)

    async def _read(self, item: FileInput, owner: str) -> bytes:
        if item.data is not None:
            decode = functools.partial(
                decode_file_data,
                item.data,
                max_bytes=self.config.max_file_bytes,
                param=f"{item.param}.file_data",
            )
            return await asyncio.to_thread(decode) if len(item.data) > _LARGE_PAYLOAD else decode()
        assert item.file_id is not None
        data = await self.store.read_file(owner, item.file_id, now=int(time.time()))
        if data is None:
            raise FileNotFound(
                f"No file with id '{item.file_id[:64]}' exists for this API key (it may have "
                "been deleted or have expired).",
                param=f"{item.param}.file_id",
            )
        return data

    async def _pages(self, item: FileInput, data: bytes, pages_left: int) -> list[str | ImageRef]:
        if pages_left <= 0:
            raise InvalidFile(
                f"This request already has {self.config.pdf_max_pages} PDF pages, the limit "
                "(files.pdf_max_pages). Send fewer pages.",
                param=item.param,
                code="too_many_pages",
            )
        info = await self.renderer.inspect(
            data, max_pages=pages_left, with_text=self.config.pdf_text_layer, param=item.param
        )
        out: list[str | ImageRef] = []
        for n, points in enumerate(info.pages):
            param = f"{item.param}.pages[{n}]"
            page = PdfPage(data, n, points, self.config, self.renderer, param)
            out.append(ImageRef(f"{_name(item)}#page={n + 1}", item.detail, param, page))
            text = info.text[n].strip() if info.text else ""
            if text:
                out.append(f"[Text layer of page {n + 1}]\n{text}")
        return out


def _name(item: FileInput) -> str:
    """How the file appears in logs (never its content)."""
    return item.file_id or item.filename or "file_data"
