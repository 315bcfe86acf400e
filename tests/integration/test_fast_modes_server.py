"""A speed mode set the way operators set it (an environment variable) reaches the engine of a
real server: it serves an image chat and its start-up log says what was applied."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from tests.integration.conftest import Server
from tests.support import data_url, make_image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        "x86" not in torch.backends.quantized.supported_engines, reason="no x86 int8 engine"
    ),
]


def test_int8_from_the_environment(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = Server(
        tiny_model_dir,
        tmp_path / "server.log",
        VLM_GATEWAY_MODEL__QUANTIZE="int8",
        VLM_GATEWAY_MODEL__QUANTIZE_HEAD="true",
    )
    try:
        server.wait_ready()
        content = [
            {"type": "image_url", "image_url": {"url": data_url(make_image(320, 256))}},
            {"type": "text", "text": "What is this?"},
        ]
        body = {
            "model": str(tiny_model_dir),
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
        }
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        log = server.log_path.read_text(errors="replace")
        assert "int8 dynamic quantization" in log
        assert "lm_head int8 too" in log
    finally:
        server.stop()
