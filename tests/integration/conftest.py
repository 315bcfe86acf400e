"""A real ``vlm-gateway serve`` process on a free loopback port, serving the tiny random model;
the ground-truth reference and a LocalVLMAdapter on the same checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from adapters.local import LocalVLMAdapter
    from tests.reference import Reference

READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, model_dir: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VLM_GATEWAY_")}
        environ.update(env)
        environ["HF_HUB_OFFLINE"] = "1"
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--model",
                str(model_dir),
                "--port",
                str(self.port),
                "--dtype",
                "float32",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environ,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {READY_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path) -> Reference:
    """The tiny checkpoint driven by plain ``model.generate``: the ground truth."""
    from tests.reference import Reference

    return Reference(tiny_model_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def adapter(tiny_model_dir: Path) -> AsyncIterator[LocalVLMAdapter]:
    """A started LocalVLMAdapter at the default settings, one per test module (on its loop)."""
    from adapters.local import LocalModelConfig, LocalVLMAdapter

    local = LocalVLMAdapter(LocalModelConfig(model=str(tiny_model_dir), dtype="float32"))
    await local.start()
    yield local
    await local.aclose()


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server runs at the default settings (several slots, one running batch)."""
    srv = Server(tiny_model_dir, tmp_path_factory.mktemp("server") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
