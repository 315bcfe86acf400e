"""File content parts in chat (in-process app, FakeAdapter): uploads by id, inline PDFs, limits."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.base import ImageInput
from tests.api.conftest import MODEL, ClientFactory
from tests.api.test_files import PNG, error_of, upload
from tests.support import make_image, make_pdf
from tests.unit.files.pdf_samples import text_pdf

PDF = make_pdf(make_image(600, 800), make_image(800, 600, seed=1))


def ask(*parts: dict[str, Any], text: str = "Read this document.") -> dict[str, Any]:
    content = [{"type": "text", "text": text}, *parts]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}]}


def file_part(**file: str) -> dict[str, Any]:
    return {"type": "file", "file": file}


def inline_pdf(data: bytes = PDF) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    return file_part(file_data=f"data:application/pdf;base64,{encoded}", filename="doc.pdf")


@pytest.fixture
def files_dir(tmp_path: Path) -> dict[str, Any]:
    return {"data_dir": str(tmp_path / "files")}


async def chat(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body)


def images_seen(adapter: Any) -> list[ImageInput]:
    request = adapter.requests[-1]
    return [p for m in request.messages for p in m.content if isinstance(p, ImageInput)]


async def test_uploaded_image_and_pdf_by_id(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    async with make_client(files=files_dir) as (client, adapter):
        image_id = (await upload(client)).json()["id"]
        pdf_id = (await upload(client, PDF, "doc.pdf", "user_data")).json()["id"]
        by_id = await chat(client, ask({"type": "image_url", "image_url": {"file_id": image_id}}))
        assert by_id.status_code == 200, by_id.text
        assert len(images_seen(adapter)) == 1
        pages = await chat(client, ask(file_part(file_id=pdf_id)))
        assert pages.status_code == 200, pages.text
        first, second = images_seen(adapter)
        # Portrait then landscape page, drawn at the document task's resolution.
        assert first.size[0] < first.size[1]
        assert second.size[0] > second.size[1]
        inline = await chat(client, ask(inline_pdf()))
        assert [i.digest for i in images_seen(adapter)] == [first.digest, second.digest]
        assert inline.status_code == 200
        as_file = await chat(client, ask(file_part(file_id=image_id)))
        assert as_file.status_code == 200
        assert len(images_seen(adapter)) == 1


async def test_page_limit_is_checked_before_rendering(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    async with make_client(files={**files_dir, "pdf_max_pages": 3}) as (client, adapter):
        response = await chat(client, ask(inline_pdf(), inline_pdf()))
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "too_many_pages"
        assert error["param"] == "messages[0].content[2].file"
        assert adapter.requests == []


async def test_text_layer_goes_with_its_page(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    pdf = text_pdf(["Invoice 4711", "Total 12.00"])
    async with make_client(files={**files_dir, "pdf_text_layer": True}) as (client, adapter):
        response = await chat(client, ask(inline_pdf(pdf)))
        assert response.status_code == 200, response.text
        content = adapter.requests[-1].messages[-1].content
        kinds = [type(p).__name__ for p in content]
        assert kinds == ["str", "ImageInput", "str"]
        assert "Text layer of page 1" in str(content[2])
        assert "Invoice 4711" in str(content[2])


@pytest.mark.parametrize(
    ("part", "status", "code", "param"),
    [
        (
            file_part(file_id="file-000000000000000000000000"),
            404,
            "file_not_found",
            "messages[0].content[1].file.file_id",
        ),
        (file_part(), 400, "invalid_value", "messages[0].content[1].file"),
        (
            file_part(file_id="file-1", file_data="AAAA"),
            400,
            "invalid_value",
            "messages[0].content[1].file",
        ),
        (
            file_part(file_data="not base64!"),
            400,
            "invalid_file",
            "messages[0].content[1].file.file_data",
        ),
        (
            file_part(file_data=base64.b64encode(b"plain text").decode()),
            400,
            "invalid_file",
            "messages[0].content[1].file",
        ),
        (
            file_part(file_data=base64.b64encode(b"%PDF-1.4 broken").decode()),
            400,
            "invalid_file",
            "messages[0].content[1].file",
        ),
        (
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/a.png", "file_id": "f"}},
            400,
            "invalid_value",
            "messages[0].content[1].image_url",
        ),
        (
            {"type": "image_url", "image_url": {"detail": "low"}},
            400,
            "invalid_value",
            "messages[0].content[1].image_url",
        ),
    ],
)
async def test_bad_file_parts(
    make_client: ClientFactory,
    files_dir: dict[str, Any],
    part: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    async with make_client(files=files_dir) as (client, adapter):
        response = await chat(client, ask(part))
        assert response.status_code == status, response.text
        assert (error_of(response)["code"], error_of(response)["param"]) == (code, param)
        assert adapter.requests == []
        assert (await chat(client, ask())).status_code == 200  # and it keeps serving


async def test_pdf_by_image_url_and_files_outside_user_turns(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    async with make_client(files=files_dir) as (client, _):
        pdf_id = (await upload(client, PDF, "doc.pdf", "user_data")).json()["id"]
        wrong = await chat(client, ask({"type": "image_url", "image_url": {"file_id": pdf_id}}))
        assert wrong.status_code == 400
        assert error_of(wrong)["param"] == "messages[0].content[1].image_url"
        body = ask()
        body["messages"].insert(0, {"role": "system", "content": [file_part(file_id=pdf_id)]})
        system = await chat(client, body)
        assert system.status_code == 400
        assert error_of(system)["param"] == "messages[0].content[0].file"


async def test_stored_image_obeys_the_image_byte_cap(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    async with make_client(files=files_dir, guard={"max_image_bytes": len(PNG) - 1}) as (
        client,
        _,
    ):
        image_id = (await upload(client)).json()["id"]
        response = await chat(
            client, ask({"type": "image_url", "image_url": {"file_id": image_id}})
        )
        assert response.status_code == 413
        assert error_of(response)["param"] == "messages[0].content[1].image_url"
