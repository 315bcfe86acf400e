"""The application factory: assembles settings, backends, guard, router and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import Guard

from adapters.base import Adapter, AdapterError
from gateway import __version__
from gateway.chat import ChatService
from gateway.files.attach import Attachments
from gateway.files.pdf import PdfRenderer
from gateway.files.routes import FilesController
from gateway.files.store import Store, build_store
from gateway.guard import ImageGuard
from gateway.handlers import exception_handlers
from gateway.http import Admission, KeyGuard
from gateway.http.hosts import HostGuard, host_policy
from gateway.http.openapi import GatewayOpenAPIConfig
from gateway.http.ratelimit import build_rate_limiter
from gateway.http.routes import ChatController, HealthController, ModelsController
from gateway.observability import (
    BuildInfo,
    install_request_log,
    metrics,
    metrics_config,
    metrics_route_handlers,
)
from gateway.responses.routes import ResponsesController
from gateway.routing import CapabilityRouter
from gateway.settings import Settings
from gateway.state import GatewayState

__all__ = ("create_app",)

log = logging.getLogger("gateway")

_MIB = 1024 * 1024


def create_app(
    settings: Settings,
    backends: Mapping[str, Adapter],
    router: CapabilityRouter,
    *,
    guard: ImageGuard | None = None,
    store: Store | None = None,
    build_info: BuildInfo | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> Litestar:
    """Build the ASGI app. Backends start in the background; ``/ready`` says when they are up.

    ``on_fatal`` is called with a message if a backend fails to start (the CLI exits).
    """
    # Metric label vocabularies are the configured names: client input never becomes a label.
    metrics.configure(models=router.models(), backends=backends.keys(), build_info=build_info)
    metrics.set_ready(loaded=False, ready=False)
    primary = next(iter(backends.values()))
    guard = guard or ImageGuard(settings.guard, primary.capabilities)
    admission = Admission(
        settings.server.max_concurrent, settings.server.max_queue, settings.server.retry_after_s
    )
    files = settings.files
    store = store or build_store(files)
    renderer = PdfRenderer(
        timeout_s=files.pdf_timeout_s,
        memory_bytes=files.pdf_memory_bytes,
        max_page_pixels=files.pdf_max_page_pixels,
    )
    attachments = Attachments(store, renderer, files)
    service = ChatService(settings, backends, guard, router, admission, attachments)
    state = GatewayState(settings=settings, router=router, backends=backends)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await store.open()  # before serving: a store that cannot open stops the start-up
        task = asyncio.create_task(_start(state, on_fatal))
        purge = asyncio.create_task(_purge(store, files.purge_interval_s))
        try:
            yield
        finally:
            state.shutting_down = True
            for background in (task, purge):
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await store.aclose()
            await renderer.aclose()
            for backend in backends.values():
                await backend.aclose()
            await guard.aclose()
            if limiter is not None:
                await limiter.aclose()  # the Redis connections, when the limits live there

    # Keys protect the API; health and readiness stay open for orchestrators' probes. Guards
    # run in order: authenticate, then rate-limit, then (in the handler) admission.
    guards: list[Guard] = [KeyGuard(settings.server.api_keys)]
    limiter = build_rate_limiter(settings.server)  # None when both limits are off
    if limiter is not None:
        guards.append(limiter)
    api = Router(
        path="/",
        route_handlers=[ModelsController, ChatController, ResponsesController],
        guards=guards,
    )
    # Uploads carry a whole file plus the multipart framing.
    uploads = Router(
        path="/",
        route_handlers=[FilesController],
        guards=guards,
        request_max_body_size=max(settings.server.max_body_bytes, files.max_file_bytes + _MIB),
    )
    middleware: list[Any] = [metrics_config(settings.metrics).middleware]
    hosts = host_policy(settings.server.host, settings.server.allowed_hosts)
    if hosts is not None:
        middleware.insert(0, HostGuard(hosts))
    cors = settings.server.cors_origins
    app = Litestar(
        route_handlers=[HealthController, api, uploads, *metrics_route_handlers(settings.metrics)],
        middleware=middleware,
        cors_config=CORSConfig(allow_origins=list(cors)) if cors else None,
        dependencies={
            "service": Provide(lambda: service, use_cache=True, sync_to_thread=False),
            "gw": Provide(lambda: state, use_cache=True, sync_to_thread=False),
            "store": Provide(lambda: store, use_cache=True, sync_to_thread=False),
            "files": Provide(lambda: attachments, use_cache=True, sync_to_thread=False),
        },
        exception_handlers=exception_handlers,
        lifespan=[lifespan],
        request_max_body_size=settings.server.max_body_bytes,
        # The document only, as JSON at /schema and /schema/openapi.json: Litestar's UI pages load
        # their scripts from a CDN, blank on an offline machine.
        openapi_config=GatewayOpenAPIConfig(
            title="vlm-gateway",
            version=__version__,
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
        debug=False,
        # gateway.observability.logs owns logging; Litestar's default would replace it
        logging_config=None,
    )
    return install_request_log(app)


async def _purge(store: Store, interval_s: float) -> None:
    """Delete expired files and stored responses now and then (reads already skip them)."""
    while True:
        try:
            purged = await store.purge_expired(int(time.time()))
            if purged:
                log.info("purged %d expired files and responses", purged)
        except Exception:
            log.exception("purging expired files failed; retrying later")
        await asyncio.sleep(interval_s)


async def _start(state: GatewayState, on_fatal: Callable[[str], None] | None) -> None:
    try:
        for name, backend in state.backends.items():
            log.info("starting backend %s (%s)", name, backend.capabilities.model_id)
            await backend.start()
    except AdapterError as exc:
        state.failure = str(exc)
    except Exception:
        log.exception("backend failed to start")
        state.failure = "the model failed to load (see the log above)"
    if state.failure is not None:
        log.error("not ready: %s", state.failure)
        if on_fatal is not None:
            on_fatal(state.failure)
        return
    state.ready = True
    metrics.set_ready(loaded=True, ready=True)
    log.info("ready")
