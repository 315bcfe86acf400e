"""Settings: documented defaults in ``config/gateway.toml``, overridden by a config file, then by
``VLM_GATEWAY_*`` environment variables, then by command-line options.

Environment names: ``VLM_GATEWAY_<SECTION>__<KEY>`` for any key (``VLM_GATEWAY_GUARD__MAX_IMAGES``),
plus the short forms of the CLI options (``VLM_GATEWAY_MODEL``, ``_HOST``, ``_PORT``, ``_DTYPE``,
``_DEVICE``, ``_CONFIG``, ``_API_KEYS``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.cache import CacheConfig
from gateway.exposition import MetricsConfig
from gateway.guardconfig import GuardConfig
from gateway.logs import LogConfig
from gateway.routing import RouterConfig

__all__ = (
    "ENV_PREFIX",
    "ModelSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "load_settings",
)

ENV_PREFIX = "VLM_GATEWAY_"

# Short environment names of the CLI options -> (section, key).
_SHORT_ENV = {
    "MODEL": ("model", "id"),
    "DTYPE": ("model", "dtype"),
    "DEVICE": ("model", "device"),
    "HOST": ("server", "host"),
    "PORT": ("server", "port"),
    "API_KEYS": ("server", "api_keys"),
}


class SettingsError(ValueError):
    """A configuration value is unknown or malformed; the message names it."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    """Address to listen on. Use 0.0.0.0 only behind a proxy or with api_keys set."""
    port: int = 8000
    """TCP port."""
    api_keys: tuple[str, ...] = ()
    """Bearer keys accepted on /v1/*; empty means no authentication."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body, in bytes (413 request_too_large beyond)."""
    rate_limit_per_minute: int = 0
    """Chat and model requests per minute per API key (or per peer address without keys);
    0 turns rate limiting off. Excess gets 429 with Retry-After."""
    rate_limit_burst: int = 0
    """Requests a client may send at once before the rate applies; 0 means one minute's worth."""
    max_concurrent: int = 8
    """Generations in flight at once; the local model decodes them together as one batch."""
    max_queue: int = 16
    """Requests waiting for a generation slot; beyond it, 503 server_overloaded."""
    request_timeout_s: float = 600.0
    """Deadline for one request from admission to its last token (504 timeout)."""
    retry_after_s: int = 1
    """Seconds suggested in Retry-After on 503."""
    max_tokens_default: int = 1024
    """Completion tokens when the client sets neither max_tokens nor max_completion_tokens."""


@dataclass(frozen=True)
class ModelSettings:
    id: str = "Qwen/Qwen3-VL-2B-Instruct"
    """Hub id, local checkpoint directory, or ``demo`` (tiny random model, answers are noise)."""
    revision: str = "main"
    """Hub revision; part of every cache key."""
    dtype: str = "auto"
    """auto, bfloat16 or float32. auto: bfloat16 on CUDA and on CPUs with avx512_bf16/AMX."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default (one per core)."""
    aliases: tuple[str, ...] = ()
    """Extra names the model is served under in /v1/models and the ``model`` field."""


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    guard: GuardConfig = field(default_factory=GuardConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LogConfig = field(default_factory=LogConfig)


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Merge file, environment and explicit overrides (in that order) over the defaults."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(environ[ENV_PREFIX + "CONFIG"])
    tables: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                loaded = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
        for section, table in loaded.items():
            if not isinstance(table, dict):
                raise SettingsError(f"config key {section!r} must be a [table]")
            tables.setdefault(section, {}).update(table)
    for section, key, raw in _environment_values(environ):
        tables.setdefault(section, {})[key] = raw
    for section, table in (overrides or {}).items():
        tables.setdefault(section, {}).update({k: v for k, v in table.items() if v is not None})
    return _build(Settings, tables, "")


def _environment_values(environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    out = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest in _SHORT_ENV:
            section, key = _SHORT_ENV[rest]
        elif "__" in rest:
            section, key = (p.lower() for p in rest.split("__", 1))
        else:
            raise SettingsError(f"unknown environment variable {name}")
        out.append((section, key, raw))
    return out


def _build(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """Construct dataclass ``cls`` from ``table``, coercing strings and refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        name = f"{where}{key}"
        if key not in fields:
            raise SettingsError(f"unknown setting {name!r}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise SettingsError(f"setting {name!r} must be a table")
            kwargs[key] = _build(hint, value, f"{name}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, hint, name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"invalid settings in [{where.rstrip('.') or 'root'}]: {exc}") from exc


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except SettingsError:
                continue
        raise SettingsError(f"setting {name!r} has an invalid value {value!r}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise SettingsError(f"setting {name!r} must be a list")
        return tuple(
            _coerce(v.strip() if isinstance(v, str) else v, args[0], name) for v in items if v != ""
        )
    if origin is typing.Literal:
        if value in args:
            return value
        raise SettingsError(f"setting {name!r} must be one of {', '.join(map(str, args))}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
    elif hint in (int, float):
        if isinstance(value, bool):
            raise SettingsError(f"setting {name!r} must be a number")
        try:
            return hint(value)
        except (TypeError, ValueError):
            pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str | Path):
            return Path(value)
    else:
        return value
    raise SettingsError(f"setting {name!r} has an invalid value {value!r}")
