"""The ``vlm-gateway`` command: ``serve`` and ``make-test-model``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.base import Adapter
from gateway import __version__
from gateway.observability import BuildInfo, setup_logging
from gateway.routing import CapabilityRouter
from gateway.settings import ModelSettings, ServerSettings, Settings, SettingsError, load_settings

__all__ = ("main",)

log = logging.getLogger("gateway")

DEMO = "demo"

_UNAVAILABLE = (
    "vlm-gateway: cannot load the model '{model}': it is not in the local Hugging Face cache "
    "and the Hugging Face hub cannot be reached ({why}). Download it on a machine with network "
    "access (`hf download {model}`) and pass its directory with `--model PATH`, "
    "or try the gateway offline with `--model demo` (a tiny randomly initialised Qwen3-VL whose "
    "answers are noise)."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "make-test-model":
        return _make_test_model(args)
    return _serve(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm-gateway", description="OpenAI-compatible API gateway for vision-language models."
    )
    parser.add_argument("--version", action="version", version=f"vlm-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    # The options default to None so that the file and the environment are not overridden; the
    # help shows the settings' own defaults, which apply when neither sets a value.
    server, model = ServerSettings(), ModelSettings()
    serve = commands.add_parser(
        "serve",
        help="serve a model over the OpenAI API",
        description="Serve a model over the OpenAI API. Options override the VLM_GATEWAY_* "
        "environment variables, which override the --config file.",
    )
    serve.add_argument(
        "--model",
        help="hub id, checkpoint directory, or 'demo' "
        f"(env VLM_GATEWAY_MODEL; default: {model.id})",
    )
    serve.add_argument(
        "--host", help=f"listen address (env VLM_GATEWAY_HOST; default: {server.host})"
    )
    serve.add_argument(
        "--port", type=int, help=f"listen port (env VLM_GATEWAY_PORT; default: {server.port})"
    )
    serve.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (see config/gateway.toml; env VLM_GATEWAY_CONFIG; default: none)",
    )
    serve.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        help=f"weights' dtype (env VLM_GATEWAY_DTYPE; default: {model.dtype})",
    )
    serve.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        help=f"where the model runs (env VLM_GATEWAY_DEVICE; default: {model.device})",
    )

    make = commands.add_parser(
        "make-test-model", help="write a random-weight Qwen3-VL checkpoint for tests and benchmarks"
    )
    make.add_argument("directory", type=Path, help="where to write the checkpoint")
    make.add_argument(
        "--size", choices=("tiny", "tiny-vllm", "2b"), default="tiny", help="(default: %(default)s)"
    )
    make.add_argument("--seed", type=int, default=0, help="weights' seed (default: %(default)s)")
    return parser


def _make_test_model(args: argparse.Namespace) -> int:
    from adapters.testing.models import build_test_model

    path = build_test_model(args.directory, args.size, seed=args.seed)
    print(f"wrote a random-weight {args.size} Qwen3-VL to {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        "model": {"id": args.model, "dtype": args.dtype, "device": args.device},
        "server": {"host": args.host, "port": args.port},
    }
    try:
        settings = load_settings(args.config, overrides=overrides)
    except SettingsError as exc:
        print(f"vlm-gateway: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging)

    import uvicorn

    from adapters.base import ModelUnavailable
    from gateway.app import create_app
    from gateway.http.connections import protocol_with
    from gateway.observability import start_metrics_server
    from gateway.routing import ProfileError

    try:
        router = CapabilityRouter.from_config(settings.router, served_names=_served_names(settings))
    except ProfileError as exc:
        print(f"vlm-gateway: invalid routing configuration: {exc}", file=sys.stderr)
        return 2
    local: Adapter | None = None
    build_info: BuildInfo | None = None
    # A front gateway whose backends are all upstream (a pool) loads no model.
    if any(b.upstream is None for b in router.backends.values()):
        model_path = _resolve_model(settings)
        if model_path is None:
            return 1
        try:
            local, build_info = _local(settings, model_path)
        except ModelUnavailable as exc:
            print(f"vlm-gateway: {exc}", file=sys.stderr)
            return 1
    try:
        backends = _backends(router, local)
    except (TypeError, ValueError) as exc:
        print(f"vlm-gateway: invalid routing configuration: {exc}", file=sys.stderr)
        return 2
    if build_info is None:
        build_info = BuildInfo(model=next(iter(backends.values())).capabilities.model_id)

    failures: list[str] = []
    server: uvicorn.Server | None = None

    def fatal(message: str) -> None:
        failures.append(message)
        log.error("exiting: %s", message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, backends, router, build_info=build_info, on_fatal=fatal)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.server.host,
            port=settings.server.port,
            log_config=None,  # keep the handlers setup_logging installed
            access_log=False,  # the request log line replaces uvicorn's access log
            http=protocol_with(settings.server.header_timeout_s),
            timeout_graceful_shutdown=5,
        )
    )
    metrics_server = start_metrics_server(settings.metrics)
    try:
        server.run()
    finally:
        if metrics_server is not None:
            metrics_server.close()
    return 1 if failures else 0


def _local(settings: Settings, model_path: str) -> tuple[Adapter, BuildInfo]:
    """The local engine for ``model_path`` and the build facts it reports."""
    from adapters.local import LocalModelConfig, LocalVLMAdapter, resolve_device, resolve_dtype
    from gateway.observability import CacheMetrics, EngineMetrics

    adapter = LocalVLMAdapter(
        LocalModelConfig(
            model=model_path,
            revision=settings.model.revision,
            dtype=settings.model.dtype,
            device=settings.model.device,
            threads=settings.model.threads,
            prepack=settings.model.prepack,
            quantize=settings.model.quantize,
            quantize_vision=settings.model.quantize_vision,
            quantize_head=settings.model.quantize_head,
            compile=settings.model.compile,
            cache=_engine_cache(settings),
            # Every admitted generation decodes in the one running batch.
            max_batch_size=settings.server.max_concurrent,
            step_tokens=settings.model.step_tokens,
            step_seconds=settings.model.step_seconds,
            kv_bytes=settings.model.kv_bytes,
            fair_wait_s=settings.model.fair_wait_s,
        ),
        model_id=settings.model.id,
        cache_observer=CacheMetrics(),
        engine_observer=EngineMetrics(),
    )
    device = resolve_device(settings.model.device)
    return adapter, BuildInfo(
        model=settings.model.id,
        dtype=str(resolve_dtype(settings.model.dtype, device)).removeprefix("torch."),
        device=device.type,
    )


def _backends(router: CapabilityRouter, local: Adapter | None) -> dict[str, Adapter]:
    """One adapter per configured backend: the local model (at most one backend has no
    ``upstream`` table), and an ``UpstreamAdapter`` for each backend with one (limits from that
    backend's capability profile; a pool reports to ``PoolMetrics``)."""
    from adapters.upstream import UpstreamAdapter, UpstreamConfig
    from gateway.observability.pool_metrics import PoolMetrics

    local_names = [n for n, b in router.backends.items() if b.upstream is None]
    if len(local_names) > 1 or (local_names and local is None):
        raise ValueError(
            "at most one backend may be local (no 'upstream' table): the model --model serves"
        )
    backends: dict[str, Adapter] = {}
    for name, backend in router.backends.items():
        if backend.upstream is None:
            assert local is not None
            backends[name] = local
            continue
        config = UpstreamConfig(**backend.upstream)
        capabilities = backend.profile.to_capabilities(model_id=config.model)
        # Tools need both: a model trained for them (the profile) and an upstream engine that
        # parses its calls (the upstream table; vLLM needs --enable-auto-tool-choice).
        capabilities = dataclasses.replace(
            capabilities, supports_tools=capabilities.supports_tools and config.supports_tools
        )
        observer = PoolMetrics(name) if config.pooled else None
        backends[name] = UpstreamAdapter(config, capabilities, observer=observer)
    # The primary backend, whose capabilities size the guard, comes first: the local model, or
    # without one the first upstream backend configured.
    return dict(sorted(backends.items(), key=lambda item: item[1] is not local))


def _resolve_model(settings: Settings) -> str | None:
    """A local directory to load, or None after printing why the model cannot be had."""
    model = settings.model.id
    if model == DEMO:
        from adapters.testing.models import demo_model_dir

        path = demo_model_dir()
        log.warning(
            "serving the demo model: a tiny randomly initialised Qwen3-VL built locally; "
            "its answers are noise. Pass --model to serve a real checkpoint."
        )
        return str(path)
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(model, revision=settings.model.revision)
    except Exception as exc:  # network, auth and "not found" all end the same way for the user
        print(_UNAVAILABLE.format(model=model, why=type(exc).__name__), file=sys.stderr)
        return None


def _engine_cache(settings: Settings) -> Any:
    """The engine's cache sizes from the ``[cache]`` settings (partitioning is the gateway's)."""
    from adapters.local import CacheConfig

    sizes = {f.name: getattr(settings.cache, f.name) for f in dataclasses.fields(CacheConfig)}
    return CacheConfig(**sizes)


def _served_names(settings: Settings) -> tuple[str, ...]:
    """The model id and its aliases. The demo also answers to the default model's name, so the
    README's examples (written for the real model) run unchanged against ``--model demo``."""
    names = (settings.model.id, *settings.model.aliases)
    if settings.model.id == DEMO:
        names += (ModelSettings().id,)
    return tuple(dict.fromkeys(names))
