"""Fixtures shared by the observability tests: the request log captured as JSON lines."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest

from gateway.observability.labels import BACKENDS, configure_labels
from gateway.observability.logs import LIBRARY_LOGGERS, LogConfig, setup_logging
from tests.unit.observability.request_log_app import MODEL


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Request log into a buffer as JSON; every logger and setting touched is restored after."""
    names = ("vlm_gateway", "gateway", *LIBRARY_LOGGERS)
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}
    handlers = {n: list(logging.getLogger(n).handlers) for n in names}
    env = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ.pop("TRANSFORMERS_VERBOSITY", None)
    configure_labels(models=(MODEL,))
    buffer = io.StringIO()
    setup_logging(LogConfig(format="json"), stream=buffer)
    yield buffer
    setup_logging(LogConfig())
    logging.captureWarnings(False)
    for name, (level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers[name]
    os.environ.pop("TRANSFORMERS_VERBOSITY", None)
    if env is not None:
        os.environ["TRANSFORMERS_VERBOSITY"] = env
    configure_labels(models=(), backends=BACKENDS)
