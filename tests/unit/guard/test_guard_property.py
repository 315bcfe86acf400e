"""Property: for ANY bytes and ANY declared type, the guard returns an RGB image within every
bound, or raises one of our errors. Never anything else, never library text."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.errors import GatewayError, ImageError
from gateway.guard.budgets import model_size
from gateway.guard.guard import WARNINGS, GuardConfig, ImageGuard, PreparedImage, pixel_budget
from tests.unit.guard.conftest import CAPS, StaticResolver, assert_clean, noise_bytes, ref

# Mutated headers can claim > 89 MP: Pillow warns at open, before our own (lower) limit refuses.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

CONFIG = GuardConfig(max_image_pixels=4_000_000, max_side=4000)


def _seeds() -> list[bytes]:
    seeds = [noise_bytes((40, 30), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP")]
    for mode, color in (("RGBA", (1, 2, 3, 100)), ("P", 3), ("LA", (9, 200)), ("I;16", 999)):
        buf = io.BytesIO()
        Image.new(mode, (33, 17), color).save(buf, "PNG")
        seeds.append(buf.getvalue())
    buf = io.BytesIO()
    Image.new("CMYK", (20, 30), (1, 2, 3, 4)).save(buf, "JPEG")
    return [*seeds, buf.getvalue()]


SEEDS = _seeds()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """Real image bytes with flipped bytes, a truncation or a splice: reaches the decoders."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(1, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


payloads = st.one_of(st.binary(max_size=2048), mutated_images(), st.sampled_from(SEEDS))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
mimes = st.one_of(
    st.none(),
    st.sampled_from(
        ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/svg+xml",
         "text/html", "application/octet-stream", "IMAGE/PNG", "image/png;charset=x"]
    ),
    header_text,
)  # fmt: skip
details = st.sampled_from(["auto", "low", "high"])


@dataclass
class Runner:
    """One event loop and one guard for all examples (hypothesis calls a test many times);
    ``served`` is what the fake image server answers next."""

    loop: asyncio.AbstractEventLoop
    guard: ImageGuard
    served: tuple[bytes, str | None] = (b"", None)

    def prepare(self, url: str, detail: str) -> list[PreparedImage] | GatewayError:
        async def attempt() -> list[PreparedImage] | GatewayError:
            try:
                return await self.guard.prepare([ref(url, detail)])
            except GatewayError as exc:
                return exc

        result = self.loop.run_until_complete(attempt())
        event(type(result).__name__ if isinstance(result, GatewayError) else "accepted")
        return result


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    def serve(request: httpx.Request) -> httpx.Response:
        data, mime = state.served
        headers = {"content-type": mime} if mime is not None else {}
        return httpx.Response(200, headers=headers, content=data)

    guard = ImageGuard(
        CONFIG,
        CAPS,
        resolver=StaticResolver({"img.example": ["93.184.216.34"]}),
        transport=httpx.MockTransport(serve),
    )
    state = Runner(asyncio.new_event_loop(), guard)
    yield state
    state.loop.run_until_complete(guard.aclose())
    state.loop.close()


def check(result: list[PreparedImage] | GatewayError, detail: str) -> None:
    if isinstance(result, GatewayError):
        assert isinstance(result, ImageError), type(result)
        assert result.param == "messages[0].content[0].image_url"
        assert_clean(result)
        return
    (prepared,) = result
    image, report = prepared.input.image, prepared.report
    w, h = image.size
    assert image.mode == "RGB"
    assert w % CAPS.image_factor == 0
    assert h % CAPS.image_factor == 0
    budget = pixel_budget(detail, CONFIG, CAPS)
    assert CAPS.min_pixels <= w * h <= max(budget, CAPS.min_pixels * 2)
    assert CAPS.fit(w, h) == (w, h)  # the model's processor will not resize it
    assert max(w, h) / min(w, h) < 200
    assert report.model_size == (w, h)
    assert report.visual_tokens == CAPS.image_tokens(w, h)
    ow, oh = report.original_size
    assert CONFIG.min_side <= min(ow, oh)
    assert ow * oh <= CONFIG.max_image_pixels
    assert set(report.warnings) <= WARNINGS
    assert len(prepared.input.digest) == 64


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=payloads, mime=mimes, detail=details)
def test_any_data_url_gives_a_bounded_rgb_image_or_our_error(
    runner: Runner, data: bytes, mime: str | None, detail: str
) -> None:
    url = f"data:{mime or ''};base64,{base64.b64encode(data).decode()}"
    check(runner.prepare(url, detail), detail)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=payloads, mime=st.one_of(st.none(), header_text), detail=details)
def test_any_download_gives_a_bounded_rgb_image_or_our_error(
    runner: Runner, data: bytes, mime: str | None, detail: str
) -> None:
    runner.served = (data, mime)
    check(runner.prepare("https://img.example/x", detail), detail)


@settings(max_examples=300, deadline=None)
@given(w=st.integers(8, 16384), h=st.integers(8, 16384), budget=st.integers(1, 20_000_000))
def test_model_sizes_are_fixed_points_of_the_processor(w: int, h: int, budget: int) -> None:
    if max(w, h) / min(w, h) > CONFIG.max_aspect_ratio:
        return
    clamped = max(min(budget, CAPS.max_pixels), CAPS.min_pixels)
    mw, mh = model_size(w, h, clamped, CAPS)
    assert CAPS.fit(mw, mh) == (mw, mh)  # the processor leaves it alone
    assert CAPS.min_pixels <= mw * mh <= max(clamped, CAPS.min_pixels * 2)
    assert max(mw, mh) < 200 * min(mw, mh)
