"""Backends and checkpoints for tests, benchmarks and the demo: never for real answers.

``FakeAdapter`` answers what a test ``enqueue``s (no torch). ``adapters.testing.models`` writes a
random-weight Qwen3-VL (``tiny`` for tests, ``2b`` with the real dimensions for benchmarks); it
imports torch, so it is not re-exported here.
"""

from __future__ import annotations

from adapters.testing.fake import FakeAdapter, ToolAnswer

__all__ = ("FakeAdapter", "ToolAnswer")
