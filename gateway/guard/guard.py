"""The image guard: every image of a request, from URL to the RGB input the model sees.

``ImageGuard.prepare`` runs, per request: structural checks with no I/O (image count, URL
scheme and policy, data-URL sizes, bytes per request) -> bytes (data URL decode, SSRF-safe
fetch, or a file under a configured root) -> header probe (format allow-list, pixels, sides,
aspect) -> visual-token budget of the whole request -> decode, RGB, resize, digest. Each stage
runs for all images before the next starts, so a request over budget is refused before any
image is decoded. Pillow work runs in a bounded thread pool, never on the event loop.

Budgets (pixels per image by ``detail``, visual tokens per request): ``gateway.guard.budgets``.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, ParamSpec, TypeVar

import httpx

from adapters.base import Capabilities, ImageInput
from gateway.errors import InvalidValue, ServiceUnavailable, TooManyImages
from gateway.guard.budgets import check_visual_tokens, pixel_budget, size_image
from gateway.guard.config import GuardConfig
from gateway.guard.decoding import probe_image, render_image
from gateway.guard.fetch import ByteBudget, RemoteFetcher
from gateway.guard.network import AddressPolicy, Resolver
from gateway.guard.sources import DataURL, Source, decode_data_url, parse_source
from gateway.observability import metrics
from gateway.observability.telemetry import current_record

__all__ = (
    "WARNINGS",
    "FidelityReport",
    "GuardConfig",
    "ImageGuard",
    "ImageRef",
    "PreparedImage",
    "pixel_budget",
)

P = ParamSpec("P")
T = TypeVar("T")

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

_DETAILS = ("auto", "low", "high")
_LARGE_PAYLOAD = 1 << 20  # base64 text decoded off the event loop above this


@dataclass(frozen=True)
class ImageRef:
    """One ``image_url`` part of a request."""

    url: str
    detail: Literal["auto", "low", "high"]
    param: str
    """Where the part is, e.g. ``messages[2].content[1].image_url``; used in every error."""


@dataclass(frozen=True)
class FidelityReport:
    """What was done to one image; never silently degrade."""

    original_size: tuple[int, int]
    """Width, height as sent, in displayed (EXIF) orientation."""
    model_size: tuple[int, int]
    """Width, height the model sees."""
    visual_tokens: int
    source: Literal["data", "http", "file"]
    format: str
    """``png``, ``jpeg``, ``webp``, ``gif`` or ``bmp`` (sniffed from the bytes)."""
    bytes: int
    """Encoded size as received."""
    jpeg_quality: int | None
    """IJG quality estimated from the quantization tables (JPEG only)."""
    warnings: tuple[str, ...]
    """Codes from ``WARNINGS``, in pipeline order."""


@dataclass(frozen=True)
class PreparedImage:
    input: ImageInput
    report: FidelityReport


def _inspect(
    refs: Sequence[ImageRef], config: GuardConfig, capabilities: Capabilities
) -> list[Source]:
    limit = min(config.max_images, capabilities.max_images)
    if len(refs) > limit:
        raise TooManyImages(
            f"This request has {len(refs)} images; at most {limit} are accepted per request. "
            "Send fewer images.",
            param=refs[limit].param,
        )
    sources: list[Source] = []
    total = 0
    for ref in refs:
        if ref.detail not in _DETAILS:
            raise InvalidValue(
                "detail must be one of 'auto', 'low', 'high'.", param=f"{ref.param}.detail"
            )
        source = parse_source(ref.url, config, param=ref.param)
        if isinstance(source, DataURL):
            total += source.decoded_length
            if total > config.max_request_image_bytes:
                raise ByteBudget(config.max_request_image_bytes).overflow(ref.param)
        sources.append(source)
    return sources


class ImageGuard:
    """Turns a request's image parts into model inputs under every bound of ``GuardConfig``.

    ``resolver`` replaces DNS, ``transport`` the network (tests: ``httpx.MockTransport``),
    ``address_policy`` the strict public-only address policy (tests allow loopback ports) and
    ``ssl_context`` the TLS verification context of remote fetches (a private CA).
    """

    def __init__(
        self,
        config: GuardConfig,
        capabilities: Capabilities,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        address_policy: AddressPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.capabilities = capabilities
        self._fetcher = RemoteFetcher(
            config,
            resolver=resolver,
            transport=transport,
            policy=address_policy,
            ssl_context=ssl_context,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=config.decode_workers, thread_name_prefix="image-guard"
        )
        self._jobs = 0
        """Image jobs submitted and not finished (on the event loop only: no lock needed)."""

    async def prepare(
        self,
        refs: Sequence[ImageRef],
        *,
        max_pixels: int | None = None,
        text_heavy: bool = False,
    ) -> list[PreparedImage]:
        """Prepare every image of one request, in order, or raise the first refusal (an
        ``ImageError`` or ``InvalidValue`` whose ``param`` names the part)."""
        sources = _inspect(refs, self.config, self.capabilities)
        if not sources:
            return []
        budget = ByteBudget(self.config.max_request_image_bytes)
        for source, ref in zip(sources, refs, strict=True):
            if isinstance(source, DataURL):
                budget.take(source.decoded_length, param=ref.param)
        # Data URLs are decoded first: a malformed one refuses the request before any download.
        decoded = {
            i: await self._decode(source, ref.param)
            for i, (source, ref) in enumerate(zip(sources, refs, strict=True))
            if isinstance(source, DataURL)
        }
        record = current_record()
        with record.timed("image_fetch"):
            loaded = await _first_error(
                [
                    self._load(s, r, budget, decoded.get(i))
                    for i, (s, r) in enumerate(zip(sources, refs, strict=True))
                ]
            )
        decode_started = time.perf_counter()
        probes = await _first_error(
            [
                self._run(probe_image, data, declared, self.config, param=ref.param)
                for (data, declared, _), ref in zip(loaded, refs, strict=True)
            ]
        )
        sizings = [
            size_image(
                probe.size,
                detail=ref.detail,
                jpeg_quality=probe.jpeg_quality,
                config=self.config,
                capabilities=self.capabilities,
                max_pixels=max_pixels,
                text_heavy=text_heavy,
                param=ref.param,
            )
            for ref, probe in zip(refs, probes, strict=True)
        ]
        check_visual_tokens([r.param for r in refs], sizings, self.config.max_visual_tokens)
        rendered = await _first_error(
            [
                self._run(render_image, data, probe, sizing.size, param=ref.param)
                for (data, _, _), probe, sizing, ref in zip(
                    loaded, probes, sizings, refs, strict=True
                )
            ]
        )
        record.stage("image_decode", time.perf_counter() - decode_started)
        prepared = []
        for (data, _, kind), probe, sizing, out in zip(
            loaded, probes, sizings, rendered, strict=True
        ):
            warnings = dict.fromkeys((*probe.warnings, *out.warnings, *sizing.warnings))
            report = FidelityReport(
                original_size=out.original_size,
                model_size=out.image.size,
                visual_tokens=sizing.tokens,
                source=kind,
                format=probe.format.lower(),
                bytes=len(data),
                jpeg_quality=probe.jpeg_quality,
                warnings=tuple(warnings),
            )
            prepared.append(PreparedImage(ImageInput(out.image, out.digest), report))
            metrics.count_image(kind, len(data))
        return prepared

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` on a decode thread. The pool's backlog is bounded (``decode_queue``); a job
        still waiting when its request is abandoned is cancelled before it starts."""
        if self._jobs >= self.config.decode_workers + self.config.decode_queue:
            raise ServiceUnavailable(
                "The server is busy decoding images; retry shortly.", code="server_overloaded"
            )
        self._jobs += 1
        try:
            loop = asyncio.get_running_loop()
            call = functools.partial(fn, *args, **kwargs)
            return await loop.run_in_executor(self._executor, call)
        finally:
            self._jobs -= 1

    async def _decode(self, source: DataURL, param: str) -> bytes:
        if len(source.payload) > _LARGE_PAYLOAD:
            return await self._run(decode_data_url, source, param=param)
        return decode_data_url(source, param=param)

    async def _load(
        self, source: Source, ref: ImageRef, budget: ByteBudget, decoded: bytes | None
    ) -> tuple[bytes, str | None, Literal["data", "http", "file"]]:
        if isinstance(source, DataURL):
            assert decoded is not None
            return decoded, source.mediatype, "data"
        if isinstance(source, httpx.URL):
            fetched = await self._fetcher.fetch(source, param=ref.param, budget=budget)
            return fetched.data, fetched.content_type, "http"
        data = await self._run(source.read, self.config, param=ref.param)
        budget.take(len(data), param=ref.param)
        return data, None, "file"

    async def aclose(self) -> None:
        """Stop the decode threads (running work finishes in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self._fetcher.aclose()


async def _first_error(coros: Sequence[Awaitable[T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise the failure of the
    earliest image among those that failed (so the reported ``param`` is stable)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure
    return [task.result() for task in tasks]
