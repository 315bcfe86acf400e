"""Files and PDFs through the openai SDK against real servers (tiny model): the Files API,
``file`` parts by id and inline, cache reuse on a follow-up, restarts, keys, and one PostgreSQL
store shared by two gateway processes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.conftest import Server
from tests.postgres import postgres_server
from tests.support import image_bytes, make_image, make_pdf

pytestmark = pytest.mark.integration

PDF = make_pdf(make_image(400, 520, seed=5), make_image(520, 400, seed=6))
PNG = image_bytes(make_image(320, 256, seed=7))


def client(server: Server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


def ask(model: str, *parts: dict[str, Any], history: list[Any] | None = None, **kw: Any) -> Any:
    messages = [
        *(history or []),
        {"role": "user", "content": [*parts, {"type": "text", "text": "Summarise it."}]},
    ]
    return {"model": model, "messages": messages, "max_tokens": 4, "temperature": 0, **kw}


@pytest.fixture
def started(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(name: str, **env: str) -> Server:
        server = Server(tiny_model_dir, tmp_path / f"{name}.log", **env)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def test_files_api_and_file_parts(server: Server, tiny_model_dir: Path) -> None:
    sdk, model = client(server), str(tiny_model_dir)
    doc = sdk.files.create(file=("report.pdf", PDF), purpose="user_data")
    image = sdk.files.create(file=("photo.png", PNG), purpose="vision")
    assert (doc.object, doc.bytes, doc.filename, doc.status) == (
        "file",
        len(PDF),
        "report.pdf",
        "processed",
    )
    assert {f.id for f in sdk.files.list()} >= {doc.id, image.id}
    assert sdk.files.retrieve(doc.id).filename == "report.pdf"
    assert sdk.files.content(doc.id).read() == PDF

    by_id = sdk.chat.completions.create(**ask(model, {"type": "file", "file": {"file_id": doc.id}}))
    assert by_id.choices[0].finish_reason in ("stop", "length")
    two_pages = by_id.usage.prompt_tokens
    inline = base64.b64encode(PDF).decode()
    part = {
        "type": "file",
        "file": {"file_data": f"data:application/pdf;base64,{inline}", "filename": "r.pdf"},
    }
    assert sdk.chat.completions.create(**ask(model, part)).usage.prompt_tokens == two_pages
    # A follow-up turn about the same document reuses the first turn's work.
    first = ask(model, {"type": "file", "file": {"file_id": doc.id}})
    answer = sdk.chat.completions.create(**first).choices[0].message.content
    history = [*first["messages"], {"role": "assistant", "content": answer}]
    follow = sdk.chat.completions.create(**ask(model, history=history))
    assert follow.usage.prompt_tokens_details.cached_tokens >= two_pages - 8
    image_turn = ask(model, {"type": "image_url", "image_url": {"file_id": image.id}})
    assert sdk.chat.completions.create(**image_turn).usage.prompt_tokens > 0

    assert sdk.files.delete(doc.id).deleted
    with pytest.raises(openai.NotFoundError) as gone:
        sdk.chat.completions.create(**ask(model, {"type": "file", "file": {"file_id": doc.id}}))
    assert gone.value.body["param"] == "messages[0].content[0].file.file_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("notes.txt", b"just text"), purpose="user_data")
    assert bad.value.body["code"] == "invalid_file"  # type: ignore[index]


def test_files_survive_a_restart_and_keys_stay_apart(started: Any, tmp_path: Path) -> None:
    env = {"VLM_GATEWAY_FILES__DATA_DIR": str(tmp_path / "store"), "VLM_GATEWAY_API_KEYS": "ka,kb"}
    first = started("first", **env)
    kept = client(first, "ka").files.create(file=("photo.png", PNG), purpose="vision")
    first.stop()
    again = started("again", **env)
    assert [f.id for f in client(again, "ka").files.list()] == [kept.id]
    assert client(again, "kb").files.list().data == []
    with pytest.raises(openai.NotFoundError):
        client(again, "kb").files.retrieve(kept.id)
    with pytest.raises(openai.AuthenticationError):
        client(again, "wrong").files.list()


def test_two_gateways_share_one_postgres_store(started: Any, tiny_model_dir: Path) -> None:
    with postgres_server() as url:
        env = {"VLM_GATEWAY_FILES__STORE": "postgres", "VLM_GATEWAY_FILES__POSTGRES_URL": url}
        one, two = started("one", **env), started("two", **env)
        doc = client(one).files.create(file=("report.pdf", PDF), purpose="user_data")
        assert client(two).files.retrieve(doc.id).bytes == len(PDF)
        answer = client(two).chat.completions.create(
            **ask(str(tiny_model_dir), {"type": "file", "file": {"file_id": doc.id}})
        )
        assert answer.usage.prompt_tokens > 0
        assert url not in one.log() + two.log()  # the URL (with its password) is never logged
