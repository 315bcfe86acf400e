"""PDF inspection and page rendering with PDFium (pypdfium2), in a bounded child process.

Why a child process: PDFium is C++ that is not thread-safe, and hostile PDFs can crash it,
make it loop for minutes (nested form XObjects, PostScript-calculator shadings evaluated per
pixel) or allocate gigabytes (a form drawn 8**7 times). None of that may touch the server, so
every ``inspect``/``render`` call runs in a fresh Python child that does that one job and exits:

- the child is started with ``subprocess`` (``gateway.files.pdf_process``) and runs
  ``gateway.files.pdf_child``, which imports only the standard library,
  ``gateway.files.pdf_wire`` and pypdfium2 (no torch); one is kept started ahead ("spare") so
  a call does not wait for interpreter start-up;
- in the child, after the request is read: an address-space limit of ``memory_bytes`` and a
  CPU-time limit a little above the timeout (see ``gateway.files.pdf_child``);
- from the parent: a wall-clock ``timeout_s`` per call, after which the child is killed;
  a cancelled call (client gone) kills its child too; at most ``CHILDREN`` run at once, so a
  burst of PDFs cannot fork-bomb the host. A crash, a timeout or a memory failure becomes a
  400 ``invalid_file`` for that request, and the server keeps serving.

The pipe protocol (``gateway.files.pdf_wire``) treats the child as untrusted: length-prefixed
JSON frames checked against limits, and pixels read as exactly the bytes the parent asked for.
This module is the parent's side: the renderer, its children's scheduling, and the child's
refusals translated into the API's errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from PIL import Image

from gateway.errors import InvalidFile, ServerOverloaded, ServiceUnavailable
from gateway.files import pdf_process as process
from gateway.files.pdf_wire import HEADER, MAX_FRAME, Broken, check_info, read_exact, read_frame

__all__ = ("CHILDREN", "PdfInfo", "PdfRenderer")

log = logging.getLogger("gateway.files.pdf")

T = TypeVar("T")

CHILDREN = 2
"""PDF child processes running at once per renderer; further calls wait their turn."""

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from gateway.files.pdf_child import main; main()"
)
"""The child's program (``python -P -c _BOOT <gateway root>``): imports stay light."""

_INVALID = (
    "The file is not a valid PDF or is damaged, and could not be read. Re-export it as PDF "
    "(or send its pages as images) and send it again."
)
_CRASHED = (
    "The PDF could not be processed: it is malformed or too complex to render safely. "
    "Re-export it as PDF, or send its pages as images."
)


@dataclass(frozen=True)
class PdfInfo:
    pages: tuple[tuple[float, float], ...]
    """Each page's (width, height) in points as displayed (its /Rotate applied)."""
    text: tuple[str, ...] | None
    """Each page's text layer when asked for ("" for a page without one); None otherwise."""


class _ChildRefused(Exception):
    """The child finished and reported a refusal (a JSON ``{"error": ...}`` frame)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("error"))
        self.reply = reply


class PdfRenderer:
    """Inspects and renders PDFs, each call in its own bounded child process."""

    def __init__(self, *, timeout_s: float, memory_bytes: int, max_page_pixels: int) -> None:
        if timeout_s <= 0 or memory_bytes < 1 or max_page_pixels < 1:
            raise ValueError("timeout_s, memory_bytes and max_page_pixels must be positive")
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self.max_page_pixels = max_page_pixels
        self._slots = asyncio.Semaphore(CHILDREN)
        # A dedicated pool: each job blocks a thread for up to timeout_s, which must not
        # starve the loop's default executor (file store, telemetry).
        self._executor = ThreadPoolExecutor(max_workers=CHILDREN, thread_name_prefix="pdf")
        self._spare: subprocess.Popen[bytes] | None = None
        self._running: set[subprocess.Popen[bytes]] = set()
        self._closed = False

    async def inspect(self, data: bytes, *, max_pages: int, with_text: bool, param: str) -> PdfInfo:
        """Page sizes (and optionally text) of a PDF; nothing is rendered.

        Refuses a PDF of more than ``max_pages`` pages before reading any page."""
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        job = {"op": "inspect", "max_pages": max_pages, "with_text": with_text}
        # The reply may carry every page's text: bounded by what the child could build.
        limit = max(self.memory_bytes, MAX_FRAME)

        def read(stream: IO[bytes]) -> PdfInfo | dict[str, Any]:
            reply = read_frame(stream, limit)
            if "error" in reply:
                return reply
            return PdfInfo(*check_info(reply, max_pages=max_pages, with_text=with_text))

        result = await self._call(job, data, read, param=param, verb="read")
        if isinstance(result, dict):
            raise self._refusal(result, max_pages=max_pages, param=param)
        return result

    async def render(
        self, data: bytes, pages: Sequence[tuple[int, tuple[int, int]]], *, param: str
    ) -> list[Image.Image]:
        """Each ``(page_index, (width_px, height_px))`` as an RGB image of exactly that size:
        white background, annotations and form fields drawn, the page's /Rotate applied."""
        wanted = [(index, (width, height)) for index, (width, height) in pages]
        for index, (width, height) in wanted:
            if not all(type(v) is int for v in (index, width, height)):
                raise ValueError("page indexes and sizes must be integers")
            if index < 0 or width < 1 or height < 1:
                raise ValueError(f"invalid page {index} or size {width} x {height}")
            if width * height > self.max_page_pixels:
                raise ValueError(f"{width} x {height} exceeds max_page_pixels")
        if not wanted:
            return []
        job = {"op": "render", "pages": wanted}

        def read(stream: IO[bytes]) -> list[Image.Image] | dict[str, Any]:
            images = []
            for _, size in wanted:
                reply = read_frame(stream, MAX_FRAME)
                if "error" in reply:
                    return reply
                if reply != {"ok": True}:
                    raise Broken
                pixels = read_exact(stream, size[0] * size[1] * 3)
                images.append(Image.frombytes("RGB", size, pixels))
            return images

        result = await self._call(job, data, read, param=param, verb="render")
        if isinstance(result, dict):
            if result.get("error") == "page_index":
                raise ValueError("page index beyond the PDF's last page")
            raise self._refusal(result, max_pages=0, param=param)
        return result

    async def aclose(self) -> None:
        """Kill the spare and running children; later calls get 503 ``shutting_down``."""
        self._closed = True
        spare, self._spare = self._spare, None
        for proc in [*self._running, *([spare] if spare else [])]:
            process.kill(proc)
        if spare is not None:
            await asyncio.to_thread(process.reap, spare)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the parent's side ------------------------------------------------------------------

    async def _call(
        self,
        job: dict[str, Any],
        data: bytes,
        read: Callable[[IO[bytes]], T],
        *,
        param: str,
        verb: str,
    ) -> T:
        request = self._request(job, data)
        async with self._slots:
            self._check_open()
            proc = self._take_child()
            self._running.add(proc)
            loop = asyncio.get_running_loop()
            exchange = loop.run_in_executor(
                self._executor, process.exchange, proc, (request, data), read
            )
            timed_out = False
            try:
                return await asyncio.wait_for(asyncio.shield(exchange), self.timeout_s)
            except TimeoutError:
                timed_out = True
            except Broken:
                pass
            except asyncio.CancelledError:
                # The client is gone: kill the child now, and wait (briefly: its pipes close
                # when it dies) for the thread to reap it, so no zombie or busy CPU remains.
                process.kill(proc)
                with contextlib.suppress(Exception):
                    await asyncio.shield(exchange)
                raise
            finally:
                self._running.discard(proc)
            process.kill(proc)
            with contextlib.suppress(Exception):
                await asyncio.shield(exchange)
        self._check_open()
        status = proc.returncode
        log.info("PDF child failed (timed out: %s, exit status %s)", timed_out, status)
        if timed_out or status == -signal.SIGXCPU:
            raise InvalidFile(
                f"The PDF took too long to {verb} (limit {self.timeout_s:g} s): it is too "
                "complex. Simplify it (or print it to a new PDF), or send its pages as images.",
                param=param,
            )
        raise InvalidFile(_CRASHED, param=param)

    def _request(self, job: dict[str, Any], data: bytes) -> bytes:
        """The job's frame; ``data`` follows it on the pipe (not joined: no copy of it)."""
        limits = {
            "memory": self.memory_bytes,
            # CPU seconds since the child started (imports included), a backstop only: the
            # parent's wall-clock timeout normally fires first.
            "cpu": math.ceil(self.timeout_s) + 2,
            "size": len(data),
        }
        header = json.dumps({**job, **limits}).encode()
        return HEADER.pack(len(header)) + header

    def _take_child(self) -> subprocess.Popen[bytes]:
        """The spare child (already past its imports) or a new one; starts the next spare."""
        proc, self._spare = self._spare, None
        try:
            if proc is None or proc.poll() is not None:
                proc = process.spawn(_BOOT)
            self._spare = process.spawn(_BOOT)
        except OSError as exc:  # out of processes or memory: the host is overloaded
            raise ServerOverloaded(
                "The server is busy rendering PDFs; retry shortly.", code="server_overloaded"
            ) from exc
        return proc

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable(
                "The server is shutting down; retry on another instance.", code="shutting_down"
            )

    def _refusal(self, reply: dict[str, Any], *, max_pages: int, param: str) -> InvalidFile:
        error = reply.get("error")
        if error == "encrypted":
            return InvalidFile(
                "The PDF is password-protected. Save a copy without the password (or without "
                "encryption) and send it again.",
                param=param,
                code="encrypted_file",
            )
        count = reply.get("count")
        if error == "too_many_pages" and type(count) is int:
            return InvalidFile(
                f"The PDF has {count} pages; this request may send at most {max_pages} PDF "
                "pages to the model. Send fewer pages (split the document).",
                param=param,
                code="too_many_pages",
            )
        if error == "no_pages":
            return InvalidFile("The PDF has no pages. Send a PDF with content.", param=param)
        if error == "memory":
            return InvalidFile(
                "The PDF needs more memory to process than allowed "
                f"({self.memory_bytes // (1 << 20)} MiB). Simplify it, render fewer or "
                "smaller pages, or send its pages as images.",
                param=param,
            )
        if error != "invalid":
            log.warning("PDF child sent an unknown reply %.200r", reply)
        else:
            log.info("PDF refused by PDFium: %s", reply.get("detail"))
        return InvalidFile(_INVALID, param=param)
