"""Settings of the file store, the Files API and PDF rendering (the ``[files]`` table)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ("FilesConfig",)

_MIB = 1024 * 1024


@dataclass(frozen=True)
class FilesConfig:
    store: Literal["sqlite", "postgres"] = "sqlite"
    """Where files and stored responses live: ``sqlite`` (blobs under ``data_dir`` and a SQLite
    index: one replica) or ``postgres`` (``postgres_url``: shared by every replica)."""
    data_dir: str = ""
    """Directory of the ``sqlite`` store; empty: ``$XDG_DATA_HOME/vlm-gateway`` (by default
    ``~/.local/share/vlm-gateway``)."""
    postgres_url: str = ""
    """``postgresql://user:password@host:port/db`` for the ``postgres`` store; never logged."""
    max_file_bytes: int = 32 * _MIB
    """Largest upload (413 file_too_large beyond); also the largest inline ``file_data``."""
    quota_bytes: int = 1024 * _MIB
    """Bytes of live files one API key may keep; 0: no quota."""
    purge_interval_s: float = 300.0
    """How often expired files and stored responses are deleted (they are invisible at once)."""
    response_retention_s: int = 30 * 24 * 3600
    """Seconds a stored response (Responses API ``store``) is kept; 0: until deleted."""
    pdf_max_pages: int = 16
    """PDF pages one request may send to the model (all its PDFs together)."""
    pdf_max_page_pixels: int = 12_000_000
    """Largest bitmap one page is rendered to, before the model's pixel budget lowers it."""
    pdf_text_dpi: int = 300
    """Rendering resolution for text-heavy tasks (OCR, documents, charts), at most: the model's
    pixel budget lowers it for large pages."""
    pdf_dpi: int = 150
    """Rendering resolution for other tasks (description), at most."""
    pdf_timeout_s: float = 30.0
    """Seconds the renderer may spend on one step (opening a PDF, drawing one page); beyond,
    400 invalid_file (a PDF bomb)."""
    pdf_memory_bytes: int = 1024 * _MIB
    """Address space of the rendering process; a PDF needing more is refused (400)."""
    pdf_text_layer: bool = False
    """Also give the model each page's text layer (when the PDF has one), after its image."""

    def __post_init__(self) -> None:
        if self.store == "postgres" and not self.postgres_url:
            raise ValueError("store = 'postgres' needs postgres_url")
        for name in ("max_file_bytes", "pdf_max_pages", "pdf_max_page_pixels", "pdf_text_dpi"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.pdf_dpi < 1 or self.pdf_timeout_s <= 0 or self.pdf_memory_bytes < 64 * _MIB:
            raise ValueError("pdf_dpi >= 1, pdf_timeout_s > 0 and pdf_memory_bytes >= 64 MiB")

    def data_path(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(base) / "vlm-gateway"
