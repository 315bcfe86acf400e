"""Fixtures shared by the UpstreamAdapter tests."""

from __future__ import annotations

import pytest

from tests.unit.adapters.upstream.upstream_fake import Upstream


@pytest.fixture
def upstream() -> Upstream:
    """An emulated OpenAI-compatible server, answered through ``httpx.MockTransport``."""
    return Upstream()
