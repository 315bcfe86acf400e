"""Settings: documented defaults in ``config/gateway.toml``, overridden by a config file, then by
``VLM_GATEWAY_*`` environment variables, then by command-line options.

Environment names: ``VLM_GATEWAY_<SECTION>__<KEY>`` for any key (``VLM_GATEWAY_GUARD__MAX_IMAGES``),
plus the short forms of the CLI options (``VLM_GATEWAY_MODEL``, ``_HOST``, ``_PORT``, ``_DTYPE``,
``_DEVICE``, ``_CONFIG``, ``_API_KEYS``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.files.config import FilesConfig
from gateway.guard.config import GuardConfig
from gateway.observability.exposition import MetricsConfig
from gateway.observability.logs import LogConfig
from gateway.routing.config import RouterConfig

__all__ = (
    "ENV_PREFIX",
    "CacheSettings",
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
    allowed_hosts: tuple[str, ...] = ()
    """Host names the server answers for (``*.example.com`` for subdomains, ``*`` for any).
    Empty: only loopback names when listening on a loopback address, any host otherwise (a
    defence against DNS rebinding; see gateway.http.hosts)."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the API cross-origin; empty: CORS is off."""
    api_keys: tuple[str, ...] = ()
    """Bearer keys accepted on /v1/*; empty means no authentication."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body, in bytes (413 request_too_large beyond)."""
    header_timeout_s: float = 10.0
    """Seconds a client has to send a request's headers once its connection is ready for one;
    then the connection is closed (a client dripping header bytes cannot hold it)."""
    body_timeout_s: float = 30.0
    """Seconds a client has to send its whole request body (408 request_timeout after), so a
    slow client cannot hold a connection and a handler open indefinitely."""
    rate_limit_per_minute: int = 0
    """Chat and model requests per minute per API key (or per peer address without keys);
    0 turns the per-client limit off. Excess gets 429 with Retry-After."""
    rate_limit_burst: int = 0
    """Requests a client may send at once before the rate applies; 0 means one minute's worth."""
    rate_limit_global_per_minute: int = 0
    """Chat and model requests per minute from all clients together (on top of the per-client
    limit); 0 turns the global limit off. Excess gets 429 with Retry-After."""
    rate_limit_global_burst: int = 0
    """Requests all clients together may send at once; 0 means one minute's worth."""
    rate_limit_backend: typing.Literal["memory", "redis"] = "memory"
    """Where the limits' buckets live: ``memory`` (this process) or ``redis`` (shared by every
    replica using the same Redis). With Redis unreachable each replica limits on its own."""
    rate_limit_redis_url: str = ""
    """Redis for ``rate_limit_backend = "redis"``: redis://[[user]:password@]host:port/db,
    rediss://... (TLS) or unix:///path.sock. Never logged (only scheme, host and port are)."""
    rate_limit_redis_prefix: str = "vlm-gateway:ratelimit:"
    """Prefix of the Redis keys (one per active bucket, each expiring when its bucket is full)."""
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
    prepack: typing.Literal["auto", "on", "off"] = "auto"
    """Local engine: the language model's Linear weights prepacked for oneDNN (a decode step for
    several streams then costs little more than for one). auto: for float32 on the CPU; on: an
    error where it cannot apply; off: never."""
    quantize: typing.Literal["none", "int8"] = "none"
    """Local engine: int8 = the language model's Linear layers (lm_head: quantize_head) in
    dynamic int8: faster decoding, changed numbers (bench/accuracy.py). Float32 CPU only."""
    quantize_vision: bool = False
    """Local engine: the vision encoder's Linear layers in dynamic int8 too (same conditions)."""
    quantize_head: bool = False
    compile: bool = False
    """Local engine: torch.compile the language model's norms and MLP activations at start-up."""
    aliases: tuple[str, ...] = ()
    """Extra names the model is served under in /v1/models and the ``model`` field."""
    step_tokens: int = 256
    """Local engine: tokens of model work per scheduling step, at most (a decode token per
    running stream, then prefill chunks, then vision-encoder blocks). Must exceed
    max_concurrent."""
    step_seconds: float = 0.5
    """Local engine: target step length (running streams' wait for a token while new requests
    start), from the measured prefill speed within step_tokens; 0: always step_tokens."""
    kv_bytes: int = 0
    """Local engine: key/value bytes the running generations may hold (a request that would not
    fit waits; one that never could is refused). 0: half the memory free after loading, less
    ``cache.prefix_bytes``, and each request's growth within half the memory then free."""
    fair_wait_s: float = 30.0
    """Local engine: seconds after which a waiting generation starts before newer ones."""

    def __post_init__(self) -> None:
        # Never-working combinations; dtype and device auto are checked when the model loads.
        if self.quantize_head and self.quantize == "none":
            raise ValueError("model.quantize_head needs model.quantize = int8")
        if self.quantize != "none" or self.quantize_vision:
            what = "model.quantize = int8" if self.quantize != "none" else "model.quantize_vision"
            if self.dtype == "bfloat16":
                raise ValueError(f"{what} quantizes float32 weights: set model.dtype to float32")
            if self.device.split(":")[0] not in ("auto", "cpu"):
                raise ValueError(f"{what} runs on the CPU only, not on {self.device}")


_MiB = 1024 * 1024


@dataclass(frozen=True)
class CacheSettings:
    """Sizes of the local engine's caches (TOML table ``[cache]``); the CLI hands them to the
    engine's own ``adapters.local.CacheConfig``."""

    embedding_bytes: int = 512 * _MiB
    """Vision-encoder outputs kept, in bytes of tensor data; 0 disables the embedding cache.
    Qwen3-VL-2B in bf16: about 12.6 MB per 1024x768 image (768 tokens x 2048 x 4 tensors)."""
    embedding_ttl_s: float = 0.0
    """Seconds an image's features stay cached after they were stored; 0: until evicted."""
    prefix_bytes: int = 1024 * _MiB
    """Key/value caches of recent prompts (and their completions) kept for prefix reuse, in
    bytes; 0 disables prefix reuse. Qwen3-VL-2B in bf16: about 112 KiB per token."""
    prefix_ttl_s: float = 0.0
    """Seconds a prompt's key/value cache stays reusable after it was stored; 0: until evicted."""
    prefix_min_tokens: int = 16
    """A cached prefix is reused only when it covers at least this many prompt tokens."""
    share_across_keys: bool = False
    """Let every API key use every cached image and prefix. Off: the caches are partitioned per
    key, so one caller cannot learn (from ``cached_tokens`` or timing) what another sent; turn
    it on only for a single-tenant deployment whose keys all belong to one party."""


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    guard: GuardConfig = field(default_factory=GuardConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    cache: CacheSettings = field(default_factory=CacheSettings)
    files: FilesConfig = field(default_factory=FilesConfig)
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
    return _convert(tables)


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


def _convert(tables: Mapping[str, Any]) -> Settings:
    """Build ``Settings`` with msgspec; any unknown key or bad value is a ``SettingsError``
    naming the dotted setting (or, for a failed cross-field check, the section)."""
    prepared = _prepare(Settings, tables, "")
    try:
        return msgspec.convert(prepared, type=Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = re.fullmatch(r"(.*) - at `\$\.?(.*)`", str(exc), re.DOTALL)
        message, name = match.groups() if match else (str(exc), "")
        # msgspec wraps a __post_init__'s TypeError/ValueError, keeping it as the cause.
        if isinstance(exc.__cause__, TypeError | ValueError):
            raise SettingsError(f"invalid settings in [{name or 'root'}]: {exc.__cause__}") from exc
        value = _value_at(prepared, name)
        raise SettingsError(f"setting {name!r} has an invalid value {value!r}: {message}") from exc


def _prepare(cls: type, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Copy ``table`` for dataclass ``cls``, refusing unknown keys and reading strings (from the
    environment) the way ``_from_string`` says."""
    # msgspec silently drops unknown dataclass fields, and a misspelt key must not be ignored.
    known = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in table.items():
        name = f"{where}{key}"
        if key not in known:
            raise SettingsError(f"unknown setting {name!r}")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = _prepare(hint, value, f"{name}.")
        elif isinstance(value, str):
            value = _from_string(value, hint)
        out[key] = value
    return out


# msgspec's strict=False already reads true/false/1/0 (any case) and numbers from strings.
_MORE_BOOLS = {"yes": True, "on": True, "no": False, "off": False}


def _from_string(value: str, hint: Any) -> Any:
    """A string for a tuple is a comma-separated list (blank items dropped); a string for a bool
    may also be yes/on/no/off; surrounding blanks count only in ``str`` settings."""
    if hint is str:
        return value
    value = value.strip()
    if typing.get_origin(hint) is tuple:
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if hint is bool:
        return _MORE_BOOLS.get(value.lower(), value)
    return value


def _value_at(tables: Mapping[str, Any], name: str) -> Any:
    """The value at dotted ``name`` (``a.b[0]``) of ``tables``, for error messages."""
    value: Any = tables
    for part in re.findall(r"[^.\[\]]+", name):
        value = value[int(part)] if isinstance(value, list | tuple) else value[part]
    return value
