"""The PDF child process: reads one job from stdin, does it with PDFium, replies, exits.

Started by ``gateway.files.pdf`` as ``sys.executable -P -c <boot code>``, which imports this
module and calls ``main``. It must stay light (a child is started for every call): it imports
only the standard library, ``gateway.files.pdf_wire`` and pypdfium2 (no torch, no Pillow,
nothing of the server).

In the child, after the request is read: ``RLIMIT_AS`` = ``memory_bytes`` (PDFium aborts, or
Python raises ``MemoryError``, instead of the host swapping) and ``RLIMIT_CPU`` a little above
the timeout (a backstop should the parent be gone).

Pages are rendered straight to the requested pixel size (PDFium maps the page onto the bitmap;
the guard has already chosen a size with the page's aspect ratio), so no resampling pass is
needed and text stays as sharp as the pixel size allows.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

from gateway.files.pdf_wire import HEADER, Broken, read_exact

__all__ = ("main",)


class _Refusal(Exception):
    def __init__(self, error: str, **fields: Any) -> None:
        super().__init__(error)
        self.reply = {"error": error, **fields}


def main() -> None:
    """Entry point of a child (``python -c _BOOT``): read one job, do it, reply, exit."""
    out = os.fdopen(os.dup(1), "wb")
    # Anything C code prints goes nowhere: fd 1 must not corrupt the protocol stream.
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    import pypdfium2  # noqa: F401  # loaded before the job arrives (the spare is warm)

    source = sys.stdin.buffer
    try:
        (size,) = HEADER.unpack(read_exact(source, HEADER.size))
        job = json.loads(read_exact(source, size))
        data = bytes(read_exact(source, job["size"]))
    except Broken:
        os._exit(0)  # a spare never used: the server closed our stdin
    resource.setrlimit(resource.RLIMIT_AS, (job["memory"], job["memory"]))
    resource.setrlimit(resource.RLIMIT_CPU, (job["cpu"], job["cpu"] + 1))

    def send(reply: dict[str, Any], pixels: memoryview | None = None) -> None:
        frame = json.dumps(reply, ensure_ascii=False).encode("utf-8")
        out.write(HEADER.pack(len(frame)))
        out.write(frame)
        if pixels is not None:
            out.write(pixels)

    try:
        if job["op"] == "inspect":
            send(_inspect(data, job["max_pages"], job["with_text"]))
        else:
            _render(data, [(i, (w, h)) for i, (w, h) in job["pages"]], send)
    except _Refusal as refusal:
        send(refusal.reply)
    except MemoryError:
        send({"error": "memory"})
    except Exception as exc:  # PdfiumError and anything PDFium's input makes Python raise
        send({"error": "invalid", "detail": type(exc).__name__})
    out.flush()
    # No interpreter teardown: PDFium's state after a hostile file is best not walked again.
    os._exit(0)


def _open(data: bytes) -> Any:
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    # The raw loader, not ``PdfDocument(data)``: that reports a zero-page document as a
    # format error, and the error code is what tells a password-protected PDF apart.
    raw = pdfium_c.FPDF_LoadMemDocument64(data, len(data), None)
    if not raw:
        code = pdfium_c.FPDF_GetLastError()
        if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise _Refusal("encrypted")
        raise _Refusal("invalid", detail=f"load error {code}")
    doc = pypdfium2.PdfDocument(raw)
    if len(doc) < 1:
        raise _Refusal("no_pages")
    return doc


def _inspect(data: bytes, max_pages: int, with_text: bool) -> dict[str, Any]:
    doc = _open(data)
    count = len(doc)
    if count > max_pages:
        raise _Refusal("too_many_pages", count=count)
    # By index: the page's dictionary only, its content is not parsed (a bomb costs nothing
    # here); PDFium swaps width and height for a /Rotate of 90 or 270.
    pages = [doc.get_page_size(i) for i in range(count)]
    if not all(0 < v < math.inf for size in pages for v in size):
        raise _Refusal("invalid", detail="page size")
    text = None
    if with_text:
        text = []
        for i in range(count):
            page = doc.get_page(i)
            found = page.get_textpage().get_text_bounded()  # undecodable UTF-16 is dropped
            text.append(found.replace("\r\n", "\n").replace("\x00", ""))
            page.close()
    return {"pages": pages, "text": text}


def _render(
    data: bytes,
    pages: list[tuple[int, tuple[int, int]]],
    send: Callable[[dict[str, Any], memoryview | None], None],
) -> None:
    """Render and send one page at a time, so only one bitmap is ever held."""
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    doc = _open(data)
    doc.init_forms()  # before any page is loaded, or form fields are not drawn
    count = len(doc)
    flags = pdfium_c.FPDF_ANNOT | pdfium_c.FPDF_REVERSE_BYTE_ORDER  # RGB, not BGR, bytes
    for index, (width, height) in pages:
        if not 0 <= index < count:
            raise _Refusal("page_index")
        page = doc.get_page(index)
        # Packed (stride = width * 3) and allocated by Python: exactly the bytes to send,
        # and an allocation over RLIMIT_AS is a MemoryError rather than a PDFium abort.
        bitmap = pypdfium2.PdfBitmap.new_native(
            width, height, pdfium_c.FPDFBitmap_BGR, rev_byteorder=True
        )
        bitmap.fill_rect((255, 255, 255, 255), 0, 0, width, height)
        # Rotation 0: PDFium applies the page's own /Rotate; the page's displayed box is
        # mapped onto the whole bitmap.
        pdfium_c.FPDF_RenderPageBitmap(bitmap, page, 0, 0, width, height, 0, flags)
        if page.formenv:
            pdfium_c.FPDF_FFLDraw(page.formenv, bitmap, page, 0, 0, width, height, 0, flags)
        send({"ok": True}, memoryview(bitmap.buffer).cast("B"))
        page.close()
        bitmap.close()
