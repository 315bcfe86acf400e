"""The ``vlm-gateway`` command as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VLM_GATEWAY_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=timeout, env=environ,
    )  # fmt: skip


def test_unavailable_model_exits_at_once_with_advice(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli(
        "serve", "--model", "Qwen/Qwen3-VL-2B-Instruct", "--port", str(free_port()),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert time.monotonic() - started < 30
    message = result.stderr.strip().splitlines()[-1]
    assert "--model PATH" in message
    assert "--model demo" in message
    # huggingface_hub's command is `hf`; `huggingface-cli` is gone from current releases.
    assert "`hf download Qwen/Qwen3-VL-2B-Instruct`" in message
    assert "huggingface-cli" not in message
    assert "Traceback" not in result.stderr


def test_serve_help_shows_the_settings_defaults() -> None:
    from gateway.settings import ModelSettings, ServerSettings

    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps the help text
    server, model = ServerSettings(), ModelSettings()
    for value in (model.id, server.host, server.port, model.dtype, model.device):
        assert f"default: {value})" in text
    for name in ("VLM_GATEWAY_MODEL", "VLM_GATEWAY_HOST", "VLM_GATEWAY_PORT"):
        assert name in text


def test_bad_settings_exit_with_the_key_named(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[server]\nmax_queue = 'many'\n")
    result = run_cli("serve", "--model", "demo", "--config", str(config))
    assert result.returncode == 2
    assert "server.max_queue" in result.stderr
    result = run_cli("serve", "--model", "demo", env={"VLM_GATEWAY_SERVER__NOPE": "1"})
    assert result.returncode == 2
    assert "VLM_GATEWAY_SERVER__NOPE" in result.stderr or "server.nope" in result.stderr


def test_make_test_model_then_serve_demo(tmp_path: Path) -> None:
    result = run_cli("make-test-model", str(tmp_path / "tiny"), "--size", "tiny")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny" / "config.json").exists()

    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VLM_GATEWAY_")}
    environ.update({"XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--model", "demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        # The demo also answers to the default model's name, so the README examples run unchanged.
        assert [m["id"] for m in models["data"]] == ["demo", "Qwen/Qwen3-VL-2B-Instruct"]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert "answers are noise" in output
    assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
