"""The application factory: assembles settings, backends, guard, router and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

from litestar import Litestar, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.types import Guard

from adapters.base import Adapter, AdapterError
from gateway import __version__
from gateway.chat import ChatService
from gateway.guard import ImageGuard
from gateway.handlers import exception_handlers
from gateway.http import Admission, KeyGuard, RateLimiter
from gateway.http.routes import ChatController, HealthController, ModelsController
from gateway.observability import (
    BuildInfo,
    install_request_log,
    metrics,
    metrics_config,
    metrics_route_handlers,
)
from gateway.routing import CapabilityRouter
from gateway.settings import Settings
from gateway.state import GatewayState

__all__ = ("create_app",)

log = logging.getLogger("gateway")


def create_app(
    settings: Settings,
    backends: Mapping[str, Adapter],
    router: CapabilityRouter,
    *,
    guard: ImageGuard | None = None,
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
    service = ChatService(settings, backends, guard, router, admission)
    state = GatewayState(settings=settings, router=router, backends=backends)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        task = asyncio.create_task(_start(state, on_fatal))
        try:
            yield
        finally:
            state.shutting_down = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for backend in backends.values():
                await backend.aclose()
            await guard.aclose()

    # Keys protect the API; health and readiness stay open for orchestrators' probes. Guards
    # run in order: authenticate, then rate-limit, then (in the handler) admission.
    guards: list[Guard] = [KeyGuard(settings.server.api_keys)]
    if settings.server.rate_limit_per_minute > 0:
        guards.append(
            RateLimiter(
                settings.server.rate_limit_per_minute, settings.server.rate_limit_burst or None
            )
        )
    api = Router(path="/", route_handlers=[ModelsController, ChatController], guards=guards)
    app = Litestar(
        route_handlers=[HealthController, api, *metrics_route_handlers(settings.metrics)],
        middleware=[metrics_config(settings.metrics).middleware],
        dependencies={
            "service": Provide(lambda: service, use_cache=True, sync_to_thread=False),
            "gw": Provide(lambda: state, use_cache=True, sync_to_thread=False),
        },
        exception_handlers=exception_handlers,
        lifespan=[lifespan],
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=OpenAPIConfig(title="vlm-gateway", version=__version__, path="/schema"),
        debug=False,
        # gateway.observability.logs owns logging; Litestar's default would replace it
        logging_config=None,
    )
    return install_request_log(app)


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
