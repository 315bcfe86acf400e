"""PDF inspection and rendering in a bounded child process: sizes, text, exact pixels, and the
refusals (encrypted, malformed, too many pages, CPU and memory bombs, cancellation)."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from PIL import Image

from gateway.errors import InvalidFile, ServiceUnavailable
from gateway.files.pdf import PdfInfo, PdfRenderer
from tests.unit.files.pdf_samples import (
    Page,
    annotated_form_pdf,
    build_pdf,
    encrypted_pdf,
    first_extra,
    nested_xobject_bomb,
    nested_xobject_page,
    pages_pdf,
    red_left_half_pdf,
    shading_bomb,
    text_pdf,
)

# One renderer (and event loop) for the module: its spare child stays warm between tests.
pytestmark = pytest.mark.asyncio(loop_scope="module")

_MIB = 1 << 20
PARAM = "messages[0].content[1].file"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def renderer() -> AsyncIterator[PdfRenderer]:
    r = PdfRenderer(timeout_s=1.5, memory_bytes=512 * _MIB, max_page_pixels=12_000_000)
    yield r
    await r.aclose()


def _refusal(exc: pytest.ExceptionInfo[InvalidFile], code: str) -> str:
    assert exc.value.code == code
    assert exc.value.param == PARAM
    assert exc.value.status == 400
    message = exc.value.message
    assert "pdfium" not in message.lower()
    assert "error" not in message.lower()  # ours, not PdfiumError's "Data format error"
    return message


async def test_page_sizes_as_displayed(renderer: PdfRenderer) -> None:
    data = pages_pdf([Page(612, 792), Page(842, 595), Page(612, 792, rotate=90), Page(rotate=270)])
    info = await renderer.inspect(data, max_pages=16, with_text=False, param=PARAM)
    assert info == PdfInfo(((612, 792), (842, 595), (792, 612), (792, 612)), None)


async def test_page_sizes_of_a_pillow_written_pdf(renderer: PdfRenderer) -> None:
    buffer = io.BytesIO()
    first, second = Image.new("RGB", (300, 150), "blue"), Image.new("RGB", (100, 400), "red")
    first.save(buffer, "PDF", resolution=150, save_all=True, append_images=[second])
    info = await renderer.inspect(buffer.getvalue(), max_pages=2, with_text=True, param=PARAM)
    assert info.pages == ((144, 72), (48, 192))  # pixels / 150 dpi * 72 pt
    assert info.text == ("", "")  # pictures only: no text layer


async def test_text_layer(renderer: PdfRenderer) -> None:
    data = text_pdf(["Quarterly report", "Revenue: 1,234 EUR"])
    info = await renderer.inspect(data, max_pages=1, with_text=True, param=PARAM)
    assert info.text == ("Quarterly report\nRevenue: 1,234 EUR",)
    info = await renderer.inspect(data, max_pages=1, with_text=False, param=PARAM)
    assert info.text is None


def _red(pixel: object) -> bool:
    assert isinstance(pixel, tuple)
    return pixel[0] > 230 and pixel[1] < 25 and pixel[2] < 25


def _white(pixel: object) -> bool:
    assert isinstance(pixel, tuple)
    return min(pixel) > 230


async def test_render_exact_sizes_and_pixels(renderer: PdfRenderer) -> None:
    data = pages_pdf(
        [
            Page(200, 100, b"1 0 0 rg 0 0 100 100 re f"),
            Page(200, 100, b"0 0 1 rg 0 0 100 100 re f", 90),
        ]
    )
    # 2x, an inexact scale (333 / 200 != 167 / 100) and the rotated page as displayed
    images = await renderer.render(
        data, [(0, (400, 200)), (0, (333, 167)), (1, (50, 100))], param=PARAM
    )
    assert [im.size for im in images] == [(400, 200), (333, 167), (50, 100)]
    assert all(im.mode == "RGB" for im in images)
    big, odd, turned = images
    assert _red(big.getpixel((10, 10)))
    assert _red(big.getpixel((190, 190)))
    assert _white(big.getpixel((210, 10)))
    assert _white(big.getpixel((390, 190)))
    assert _red(odd.getpixel((160, 80)))
    assert _white(odd.getpixel((170, 80)))
    # /Rotate 90 turns the page clockwise: its left half (blue) becomes the top half
    assert turned.getpixel((25, 10)) == (0, 0, 255)
    assert _white(turned.getpixel((25, 90)))


async def test_render_draws_annotations_and_form_fields(renderer: PdfRenderer) -> None:
    (image,) = await renderer.render(annotated_form_pdf(), [(0, (400, 200))], param=PARAM)
    assert image.getpixel((50, 150)) == (0, 255, 0)  # the square annotation
    assert image.getpixel((210, 20)) == (255, 255, 0)  # the field's background
    colors = image.crop((200, 0, 400, 200)).getcolors(40_000) or []
    assert (0, 0, 255) in {color for _, color in colors}  # its value, drawn by the form filler


async def test_render_without_pages_or_beyond_the_limits_is_a_caller_bug(
    renderer: PdfRenderer,
) -> None:
    assert await renderer.render(red_left_half_pdf(), [], param=PARAM) == []
    with pytest.raises(ValueError, match="max_page_pixels"):
        await renderer.render(red_left_half_pdf(), [(0, (4000, 3001))], param=PARAM)
    with pytest.raises(ValueError, match="invalid page"):
        await renderer.render(red_left_half_pdf(), [(0, (0, 10))], param=PARAM)
    with pytest.raises(ValueError, match="last page"):
        await renderer.render(red_left_half_pdf(), [(1, (10, 10))], param=PARAM)


async def test_too_many_pages_is_refused_before_reading_the_pages(renderer: PdfRenderer) -> None:
    # the last page takes many seconds and ~4 GB to load: it is never loaded
    data = pages_pdf([Page()] * 16 + [nested_xobject_page(7, 8, first_extra(17))])
    started = time.perf_counter()
    with pytest.raises(InvalidFile) as exc:
        await renderer.inspect(data, max_pages=16, with_text=True, param=PARAM)
    message = _refusal(exc, "too_many_pages")
    assert "17 pages" in message
    assert "at most 16" in message
    assert "fewer pages" in message
    # sizes alone do not load a page either
    info = await renderer.inspect(data, max_pages=17, with_text=False, param=PARAM)
    assert len(info.pages) == 17
    assert info.pages[16] == (612, 792)
    assert time.perf_counter() - started < 1.0


async def test_encrypted_pdf(renderer: PdfRenderer) -> None:
    with pytest.raises(InvalidFile) as exc:
        await renderer.inspect(encrypted_pdf(), max_pages=16, with_text=False, param=PARAM)
    assert "password" in _refusal(exc, "encrypted_file")
    with pytest.raises(InvalidFile) as exc:
        await renderer.render(encrypted_pdf(), [(0, (100, 100))], param=PARAM)
    _refusal(exc, "encrypted_file")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a not a PDF at all" * 10,
        text_pdf(["cut short"])[:200],
        build_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]),
    ],
    ids=["empty", "garbage", "truncated", "no_pages"],
)
async def test_malformed_pdfs(renderer: PdfRenderer, data: bytes) -> None:
    with pytest.raises(InvalidFile) as exc:
        await renderer.inspect(data, max_pages=16, with_text=False, param=PARAM)
    _refusal(exc, "invalid_file")


async def test_cpu_bomb_times_out_and_the_renderer_keeps_working(renderer: PdfRenderer) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidFile) as exc:
        await renderer.render(shading_bomb(), [(0, (600, 800))], param=PARAM)
    assert time.perf_counter() - started < 3.0
    assert "took too long to render (limit 1.5 s)" in _refusal(exc, "invalid_file")
    assert not renderer._running
    images = await renderer.render(red_left_half_pdf(), [(0, (20, 10))], param=PARAM)
    assert _red(images[0].getpixel((2, 5)))


async def test_memory_bombs_are_refused_not_fatal() -> None:
    renderer = PdfRenderer(timeout_s=10, memory_bytes=200 * _MIB, max_page_pixels=100_000_000)
    try:
        # a bitmap over the address-space limit: Python's MemoryError in the child
        with pytest.raises(InvalidFile) as exc:
            await renderer.render(red_left_half_pdf(), [(0, (10_000, 9_000))], param=PARAM)
        assert "more memory" in _refusal(exc, "invalid_file")
        # a form drawn 8**6 times needs ~500 MB of page objects: PDFium aborts the child
        with pytest.raises(InvalidFile) as exc:
            await renderer.render(nested_xobject_bomb(6), [(0, (100, 100))], param=PARAM)
        assert "too complex" in _refusal(exc, "invalid_file")
        images = await renderer.render(red_left_half_pdf(), [(0, (20, 10))], param=PARAM)
        assert images[0].size == (20, 10)
    finally:
        await renderer.aclose()


async def test_cancelled_render_kills_its_child(renderer: PdfRenderer) -> None:
    task = asyncio.create_task(renderer.render(shading_bomb(), [(0, (600, 800))], param=PARAM))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if renderer._running:
            break
    (child,) = renderer._running
    await asyncio.sleep(0.2)  # rendering by now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert child.returncode is not None  # killed and reaped, not left running
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    assert not renderer._running


async def test_closed_renderer_refuses_and_leaves_no_process() -> None:
    renderer = PdfRenderer(timeout_s=5, memory_bytes=256 * _MIB, max_page_pixels=1_000_000)
    await renderer.inspect(red_left_half_pdf(), max_pages=1, with_text=False, param=PARAM)
    spare = renderer._spare
    assert spare is not None
    await renderer.aclose()
    assert spare.returncode is not None
    with pytest.raises(ServiceUnavailable) as exc:
        await renderer.inspect(red_left_half_pdf(), max_pages=1, with_text=False, param=PARAM)
    assert exc.value.code == "shutting_down"


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(8, "big") + payload


@pytest.mark.parametrize(
    "reply",
    [
        b"",  # died before answering
        _frame(b"[1, 2]"),  # not an object
        b"\xff" * 8,  # a frame larger than any limit
        _frame(b'{"pages": [[612, -1]], "text": null}'),
        _frame(b'{"pages": [[612, 792]], "text": ["\\ud800"]}'),  # a lone surrogate
        _frame(b'{"pages": [[612, 792]], "text": ["a", "b"]}'),
    ],
    ids=["nothing", "array", "huge", "negative", "surrogate", "text_count"],
)
async def test_a_misbehaving_child_is_an_unreadable_pdf(
    monkeypatch: pytest.MonkeyPatch, reply: bytes
) -> None:
    """The child parses hostile input with C code: what it sends back is checked, never
    trusted (a compromised child must not crash or mislead the server)."""
    boot = f"import os, sys; sys.stdout.buffer.write({reply!r}); sys.stdout.flush(); os.abort()"
    monkeypatch.setattr("gateway.files.pdf._BOOT", boot)
    renderer = PdfRenderer(timeout_s=5, memory_bytes=256 * _MIB, max_page_pixels=1_000_000)
    try:
        with pytest.raises(InvalidFile) as exc:
            await renderer.inspect(red_left_half_pdf(), max_pages=4, with_text=True, param=PARAM)
        assert "could not be processed" in _refusal(exc, "invalid_file")
    finally:
        await renderer.aclose()
