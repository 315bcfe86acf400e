"""The request log: one structured line per HTTP request, and library noise kept out of it.

Policy: a line carries the request id, route template, model, task, backend, status, error code,
token counts, stage timings (ms), cache hits and warnings. It never carries image bytes, API
keys or headers, and carries the prompt only when ``log_prompts`` is on, cut to
``prompt_chars``. ``x-request-id`` is honoured when it is 1-128 characters of
``[A-Za-z0-9._:-]`` (so a client cannot inject line breaks or markup into logs), else a fresh id
is generated; either way it is sent back in the response.

``gateway.observability.telemetry`` opens and fills the ``RequestRecord`` a line is made from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gateway.observability.telemetry import RequestRecord

__all__ = (
    "LIBRARY_LOGGERS",
    "REQUEST_ID_HEADER",
    "REQUEST_LOGGER",
    "JsonFormatter",
    "LogConfig",
    "PlainFormatter",
    "log_request",
    "new_request_id",
    "sanitize_request_id",
    "setup_logging",
)

REQUEST_ID_HEADER = "x-request-id"
REQUEST_LOGGER = "vlm_gateway.request"
"""The request log's logger; it does not propagate, so only request lines go to its handler."""
LIBRARY_LOGGERS: tuple[str, ...] = (
    "transformers", "torch", "accelerate", "huggingface_hub", "tokenizers", "xgrammar",
    "PIL", "httpx", "httpcore", "py.warnings",
)  # fmt: skip
"""Loggers held at ``library_level`` (``py.warnings`` receives ``warnings.warn`` calls)."""

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(frozen=True)
class LogConfig:
    """The ``[logging]`` settings table."""

    format: Literal["plain", "json"] = "plain"
    """``json``: one JSON object per line; ``plain``: ``key=value`` pairs."""
    level: str = "INFO"
    """Level of the gateway's own loggers (request lines are INFO)."""
    library_level: str = "ERROR"
    """Level of ``LIBRARY_LOGGERS`` (transformers and torch warnings, httpx request lines)."""
    log_prompts: bool = False
    """Debugging only: add the request's last user text, cut to ``prompt_chars``, to its line."""
    prompt_chars: int = 200
    """Characters of prompt kept when ``log_prompts`` is on."""
    skip_routes: tuple[str, ...] = ("/metrics", "/health", "/ready")
    """Route templates not logged when they succeed (scrapes and probes every few seconds)."""

    def __post_init__(self) -> None:
        for name in (self.level, self.library_level):
            if not isinstance(logging.getLevelName(name.upper()), int):
                raise ValueError(f"unknown log level {name!r}")
        if self.prompt_chars < 0:
            raise ValueError("logging.prompt_chars must be >= 0")


_config = LogConfig()


def sanitize_request_id(value: str | bytes | None) -> str | None:
    """The client's request id if it is safe to log and echo, else ``None``."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if value is None or _REQUEST_ID.fullmatch(value) is None:
        return None
    return value


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``msg``, then ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # ASCII only: client-chosen strings (model names, unmatched paths) cannot carry terminal
        # escapes or Unicode line separators into the log.
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"), default=str)


class PlainFormatter(logging.Formatter):
    """``ts level logger msg key=value ...``; values with spaces or quotes are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        pairs = [f"{k}={_plain(v)}" for k, v in (getattr(record, "fields", None) or {}).items()]
        text = " ".join([head, *pairs])
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "-"
    text = "-" if value is None else str(value)
    if not text or not text.isascii() or not text.isprintable() or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


def setup_logging(config: LogConfig, stream: Any = None) -> logging.Handler:
    """Configure the gateway loggers, the request log and library loggers; returns the handler.

    One handler (``stream``, default stderr) in the configured format serves the ``gateway`` and
    ``vlm_gateway`` loggers and ``LIBRARY_LOGGERS``, none of which propagate (so a root or
    uvicorn handler does not print them twice, and a JSON log stays one object per line).
    Libraries are held at ``library_level``: transformers and torch warnings do not appear at
    the default ``ERROR``. Transformers installs its own stderr handler and level when first
    used, so it is configured now (its handler removed) and ``TRANSFORMERS_VERBOSITY`` is set for
    any child process. ``warnings.warn`` calls are routed to the ``py.warnings`` logger.
    Calling it again replaces the handler it installed before.
    """
    global _config
    _config = config
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else PlainFormatter())
    handler._vlm_gateway = True  # type: ignore[attr-defined]  # marks ours for re-setup
    library_level = config.library_level.upper()
    levels = dict.fromkeys(LIBRARY_LOGGERS, library_level)
    # uvicorn's "Uvicorn running on ..." lines share our format (the CLI passes log_config=None).
    levels.update(
        dict.fromkeys(("vlm_gateway", "gateway", "adapters", "uvicorn"), config.level.upper())
    )
    for name, level in levels.items():
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_vlm_gateway", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    os.environ["TRANSFORMERS_VERBOSITY"] = library_level.lower()
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # a slim install without the local backend
        pass
    else:
        hf_logging.set_verbosity(logging.getLevelName(library_level))
        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()  # "Loading weights" bars are noise in a server log
    logging.captureWarnings(True)
    return handler


def log_request(record: RequestRecord) -> None:
    """Write ``record`` as one INFO line on ``REQUEST_LOGGER`` (skipped routes: errors only)."""
    if record.route in _config.skip_routes and 0 < record.status < 400:
        return
    fields = record.as_log()
    if _config.log_prompts and record.prompt is not None:
        fields["prompt"] = record.prompt[: _config.prompt_chars]
    logging.getLogger(REQUEST_LOGGER).info("request", extra={"fields": fields})
