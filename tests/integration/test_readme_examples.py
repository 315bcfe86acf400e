"""The README's examples run as written against the quickstart's server, ``serve --model demo``
(only the port differs: tests cannot take 8000)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server
from tests.support import image_bytes, make_image, make_pdf

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """What `make run MODEL=demo` starts (the demo model is built into its own cache here)."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    srv = Server(Path("demo"), cache / "server.log", XDG_CACHE_HOME=str(cache))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no '{name}' example"
    return match.group(1)


@pytest.mark.parametrize("name", ["openai", "langchain", "files", "responses"])
def test_readme_example_runs(name: str, demo: Server, tmp_path: Path) -> None:
    code = example(name)
    assert "http://127.0.0.1:8000/v1" in code
    code = code.replace("http://127.0.0.1:8000/v1", f"{demo.base_url}/v1")  # the model name stays
    (tmp_path / "photo.png").write_bytes(image_bytes(make_image(320, 256)))
    (tmp_path / "report.pdf").write_bytes(make_pdf(make_image(850, 1100), make_image(850, 1100, 1)))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_readme_curl_example(demo: Server) -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"curl -s http://127\.0\.0\.1:8000(\S+) .*?-d '(\{.*?\})'\n```", text, re.S)
    assert match, "README has no curl example"
    path, body = match.groups()
    request = json.loads(body)
    assert request["model"] == "demo"  # what `make run MODEL=demo` serves
    response = httpx.post(f"{demo.base_url}{path}", json=request, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
