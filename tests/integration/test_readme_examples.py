"""The README's SDK examples run as written against a real server (URL and model swapped in)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server
from tests.support import image_bytes, make_image

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no '{name}' example"
    return match.group(1)


@pytest.mark.parametrize("name", ["openai", "langchain"])
def test_readme_example_runs(
    name: str, server: Server, tiny_model_dir: Path, tmp_path: Path
) -> None:
    code = example(name)
    assert "http://127.0.0.1:8000/v1" in code
    assert "Qwen/Qwen3-VL-2B-Instruct" in code
    code = code.replace("http://127.0.0.1:8000/v1", f"{server.base_url}/v1")
    code = code.replace("Qwen/Qwen3-VL-2B-Instruct", str(tiny_model_dir))
    (tmp_path / "photo.png").write_bytes(image_bytes(make_image(320, 256)))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_readme_curl_example(server: Server) -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"curl -s http://127\.0\.0\.1:8000(\S+) .*?-d '(\{.*?\})'\n```", text, re.S)
    assert match, "README has no curl example"
    path, body = match.groups()
    request = json.loads(body)
    assert request["model"] == "demo"  # what `make run MODEL=demo` serves
    request["model"] = httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"]
    response = httpx.post(f"{server.base_url}{path}", json=request, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
