"""The Files API through the whole app (in-process, FakeAdapter): shapes, ownership, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ClientFactory
from tests.support import image_bytes, make_image, make_pdf

PNG = image_bytes(make_image(320, 240))
KEYS = {"api_keys": ("alice-key", "bob-key")}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def upload(
    client: httpx.AsyncClient,
    data: bytes = PNG,
    name: str = "photo.png",
    purpose: str = "vision",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    return await client.post(
        "/v1/files",
        files={"file": (name, data, "application/octet-stream")},
        data={"purpose": purpose, **fields},
        headers=headers,
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture
def files_dir(tmp_path: Path) -> dict[str, Any]:
    return {"data_dir": str(tmp_path / "files")}


async def test_upload_list_retrieve_download_delete(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    pdf = make_pdf(make_image(600, 800), make_image(600, 800, seed=1))
    async with make_client(files=files_dir) as (client, _):
        image = (await upload(client)).json()
        assert image["object"] == "file"
        assert image["id"].startswith("file-")
        assert (image["bytes"], image["filename"], image["purpose"]) == (
            len(PNG),
            "photo.png",
            "vision",
        )
        assert image["status"] == "processed"
        assert "expires_at" not in image
        doc = (await upload(client, pdf, "report.pdf", "user_data")).json()

        listing = (await client.get("/v1/files")).json()
        assert listing["object"] == "list"
        assert not listing["has_more"]
        assert {f["id"] for f in listing["data"]} == {image["id"], doc["id"]}
        page = (await client.get("/v1/files", params={"limit": 1, "order": "asc"})).json()
        assert page["has_more"]
        assert page["first_id"] == page["last_id"]
        rest = (
            await client.get("/v1/files", params={"after": page["last_id"], "order": "asc"})
        ).json()
        assert len(rest["data"]) == 1
        assert rest["data"][0]["id"] != page["first_id"]
        vision = (await client.get("/v1/files", params={"purpose": "vision"})).json()
        assert [f["id"] for f in vision["data"]] == [image["id"]]

        assert (await client.get(f"/v1/files/{doc['id']}")).json() == doc
        content = await client.get(f"/v1/files/{doc['id']}/content")
        assert content.content == pdf
        assert content.headers["content-type"] == "application/pdf"
        assert content.headers["x-content-type-options"] == "nosniff"
        assert content.headers["content-disposition"].startswith(
            'attachment; filename="report.pdf"'
        )

        deleted = await client.delete(f"/v1/files/{doc['id']}")
        assert deleted.json() == {"id": doc["id"], "object": "file", "deleted": True}
        for path in (f"/v1/files/{doc['id']}", f"/v1/files/{doc['id']}/content"):
            gone = await client.get(path)
            assert gone.status_code == 404
            assert error_of(gone)["code"] == "file_not_found"
        assert (await client.delete(f"/v1/files/{doc['id']}")).status_code == 404


async def test_keys_see_only_their_own_files(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    async with make_client(server=KEYS, files=files_dir) as (client, _):
        mine = (await upload(client, headers=auth("alice-key"))).json()
        theirs = auth("bob-key")
        assert (await client.get("/v1/files", headers=theirs)).json()["data"] == []
        for response in (
            await client.get(f"/v1/files/{mine['id']}", headers=theirs),
            await client.get(f"/v1/files/{mine['id']}/content", headers=theirs),
            await client.delete(f"/v1/files/{mine['id']}", headers=theirs),
        ):
            assert response.status_code == 404
            assert error_of(response)["code"] == "file_not_found"
        chat = await client.post(
            "/v1/chat/completions",
            headers=theirs,
            json={
                "model": "fake-vlm",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"file_id": mine["id"]}},
                        ],
                    }
                ],
            },
        )
        assert chat.status_code == 404
        assert error_of(chat)["param"] == "messages[0].content[1].image_url.file_id"
        assert (await client.get("/v1/files", headers=auth("alice-key"))).json()["data"] == [mine]
        assert (await client.get("/v1/files")).status_code == 401


@pytest.mark.parametrize(
    ("data", "fields", "status", "code", "param"),
    [
        (b"hello, world", {}, 400, "invalid_file", "file"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", {}, 400, "invalid_file", "file"),
        (b"%PDF-1.7\nnot really a pdf", {}, 400, "invalid_file", "file"),
        (PNG, {"purpose": "fine-tune"}, 400, "invalid_value", "purpose"),
        (
            PNG,
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
            400,
            "invalid_value",
            "expires_after",
        ),
        (
            PNG,
            {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
            400,
            "invalid_value",
            "expires_after",
        ),
    ],
)
async def test_bad_uploads_are_refused(
    make_client: ClientFactory,
    files_dir: dict[str, Any],
    data: bytes,
    fields: dict[str, str],
    status: int,
    code: str,
    param: str,
) -> None:
    async with make_client(files=files_dir) as (client, _):
        response = await upload(client, data, **fields)
        assert response.status_code == status, response.text
        assert (error_of(response)["code"], error_of(response)["param"]) == (code, param)
        assert (await client.get("/v1/files")).json()["data"] == []


async def test_limits_quota_and_expiry(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    limits = {**files_dir, "max_file_bytes": 2 * len(PNG), "quota_bytes": 3 * len(PNG)}
    async with make_client(files=limits) as (client, _):
        too_big = await upload(client, PNG * 3)
        assert too_big.status_code == 413
        assert error_of(too_big)["code"] == "file_too_large"
        first = (await upload(client)).json()
        await upload(client, image_bytes(make_image(320, 240, seed=2)))
        await upload(client, image_bytes(make_image(320, 240, seed=3)))
        over = await upload(client, image_bytes(make_image(320, 240, seed=4)))
        assert over.status_code == 400
        assert error_of(over)["code"] == "storage_quota_exceeded"
        await client.delete(f"/v1/files/{first['id']}")
        expiring = await upload(
            client, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
        )
        body = expiring.json()
        assert body["expires_at"] == body["created_at"] + 3600


async def test_uploads_are_json_free_and_same_origin(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    async with make_client(files=files_dir) as (client, _):
        as_json = await client.post("/v1/files", json={"purpose": "vision"})
        assert as_json.status_code == 415
        page = await upload(client, headers={"Origin": "https://evil.example"})
        assert page.status_code == 400
        assert error_of(page)["param"] == "file"
        assert (await client.get("/v1/files")).json()["data"] == []
        missing = await client.post(
            "/v1/files", data={"purpose": "vision"}, files={"x": ("a", b"1")}
        )
        assert missing.status_code == 400
        assert error_of(missing)["param"] == "file"


async def test_odd_filenames_are_cleaned(
    make_client: ClientFactory, files_dir: dict[str, Any]
) -> None:
    async with make_client(files=files_dir) as (client, _):
        body = (await upload(client, name='../../etc/pa"ss\r\nwd.png')).json()
        assert body["filename"] == "passwd.png"
        unicode = (await upload(client, name="résumé.png")).json()
        content = await client.get(f"/v1/files/{unicode['id']}/content")
        assert "filename*=UTF-8''r%C3%A9sum%C3%A9.png" in content.headers["content-disposition"]
