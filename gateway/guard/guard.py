"""The image guard: every image of a request, from URL to the RGB input the model sees.

``ImageGuard.prepare`` runs, per request: structural checks with no I/O (image count, URL
scheme and policy, data-URL sizes, bytes per request) -> bytes (data URL decode, SSRF-safe
fetch, a file under a configured root, or bytes already held: an upload) -> header probe
(format allow-list, pixels, sides, aspect) -> visual-token budget of the whole request ->
decode, RGB, resize, digest. Each stage runs for all images before the next starts, so a
request over budget is refused before any image is decoded. A drawn image (a PDF page) skips
the bytes and the probe: its size comes from its dimensions, and it is drawn at the model size
in the decode stage. Pillow work runs in a bounded thread pool, never on the event loop.

Budgets (pixels per image by ``detail``, visual tokens per request): ``gateway.guard.budgets``.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import httpx

from adapters.base import Capabilities, ImageInput
from gateway.errors import InvalidValue, ServiceUnavailable, TooManyImages
from gateway.guard.budgets import check_visual_tokens, pixel_budget, size_image
from gateway.guard.config import GuardConfig
from gateway.guard.decoding import Probe, Rendered, drawn, probe_image, render_image
from gateway.guard.fetch import ByteBudget, RemoteFetcher
from gateway.guard.network import AddressPolicy, Resolver
from gateway.guard.refs import (
    WARNINGS,
    DrawnImage,
    FidelityReport,
    HeldBytes,
    ImageRef,
    PreparedImage,
    SourceKind,
)
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

_DETAILS = ("auto", "low", "high")
_LARGE_PAYLOAD = 1 << 20  # base64 text decoded off the event loop above this
_NO_BYTES = b""
_DRAWN = "PDF"  # the probe format of a drawn page (the only kind there is)

Input = Source | HeldBytes | DrawnImage
"""One image after the structural checks: what to fetch, or what the server already has."""


def _inspect(
    refs: Sequence[ImageRef], config: GuardConfig, capabilities: Capabilities
) -> list[Input]:
    limit = min(config.max_images, capabilities.max_images)
    if len(refs) > limit:
        raise TooManyImages(
            f"This request has {len(refs)} images; at most {limit} are accepted per request. "
            "Send fewer images.",
            param=refs[limit].param,
        )
    sources: list[Input] = []
    total = 0
    for ref in refs:
        if ref.detail not in _DETAILS:
            raise InvalidValue(
                "detail must be one of 'auto', 'low', 'high'.", param=f"{ref.param}.detail"
            )
        source = ref.held or parse_source(ref.url, config, param=ref.param)
        size = _known_bytes(source)
        if size is not None:
            # Held bytes obey the same caps as a data URL's: they are decoded the same way.
            if size > config.max_image_bytes:
                raise ByteBudget(config.max_image_bytes).overflow(ref.param)
            total += size
            if total > config.max_request_image_bytes:
                raise ByteBudget(config.max_request_image_bytes).overflow(ref.param)
        sources.append(source)
    return sources


def _known_bytes(source: Input) -> int | None:
    """Encoded bytes known before any I/O (data URLs and held bytes)."""
    if isinstance(source, DataURL):
        return source.decoded_length
    if isinstance(source, HeldBytes):
        return len(source.data)
    return None


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
        max_pixels: Sequence[int | None] = (),
        text_heavy: bool = False,
    ) -> list[PreparedImage]:
        """Prepare every image of one request, in order, or raise the first refusal (an
        ``ImageError`` or ``InvalidValue`` whose ``param`` names the part). ``max_pixels``: the
        router's budget of each image, aligned with ``refs`` (empty: none for any image)."""
        budgets = tuple(max_pixels) or (None,) * len(refs)
        if len(budgets) != len(refs):
            raise ValueError(f"{len(budgets)} pixel budgets for {len(refs)} images")
        sources = _inspect(refs, self.config, self.capabilities)
        if not sources:
            return []
        budget = ByteBudget(self.config.max_request_image_bytes)
        for source, ref in zip(sources, refs, strict=True):
            size = _known_bytes(source)
            if size is not None:
                budget.take(size, param=ref.param)
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
                self._probe(source, data, declared, ref, text_heavy)
                for source, (data, declared, _), ref in zip(sources, loaded, refs, strict=True)
            ]
        )
        sizings = [
            size_image(
                probe.size,
                detail=ref.detail,
                jpeg_quality=probe.jpeg_quality,
                config=self.config,
                capabilities=self.capabilities,
                max_pixels=budget,
                text_heavy=text_heavy,
                param=ref.param,
            )
            for ref, probe, budget in zip(refs, probes, budgets, strict=True)
        ]
        check_visual_tokens([r.param for r in refs], sizings, self.config.max_visual_tokens)
        rendered = await _first_error(
            [
                self._render(source, data, probe, sizing.size, ref)
                for source, (data, _, _), probe, sizing, ref in zip(
                    sources, loaded, probes, sizings, refs, strict=True
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

    async def _probe(
        self, source: Input, data: bytes, declared: str | None, ref: ImageRef, text_heavy: bool
    ) -> Probe:
        if not isinstance(source, DrawnImage):
            return await self._run(probe_image, data, declared, self.config, param=ref.param)
        size = source.natural_size(text_heavy=text_heavy)
        return Probe(_DRAWN, size, 1, animated=False, jpeg_quality=None, warnings=())

    async def _render(
        self, source: Input, data: bytes, probe: Probe, size: tuple[int, int], ref: ImageRef
    ) -> Rendered:
        if not isinstance(source, DrawnImage):
            return await self._run(render_image, data, probe, size, param=ref.param)
        image = await source.draw(size)
        return await self._run(drawn, image, probe.size)

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
        self, source: Input, ref: ImageRef, budget: ByteBudget, decoded: bytes | None
    ) -> tuple[bytes, str | None, SourceKind]:
        if isinstance(source, DataURL):
            assert decoded is not None
            return decoded, source.mediatype, "data"
        if isinstance(source, HeldBytes):
            return source.data, source.declared, "upload"
        if isinstance(source, DrawnImage):
            return _NO_BYTES, None, "pdf"  # drawn in the decode stage
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
