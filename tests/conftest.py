"""Fixtures shared by every test tree: the tiny random-weight Qwen3-VL checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-VL checkpoint (about 3 MB, float32), built once per test session."""
    from adapters.testing.models import build_test_model  # torch: only for tests that use it

    return build_test_model(tmp_path_factory.mktemp("tiny-qwen3-vl"), "tiny")


@pytest.fixture(autouse=True, scope="session")
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The file store's default directory ($XDG_DATA_HOME/vlm-gateway) inside the session's
    temporary directory, for in-process apps and the servers tests start alike: tests never
    write to the home directory."""
    import os

    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
