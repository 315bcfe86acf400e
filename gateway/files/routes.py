"""The Files API: upload, list, retrieve, download and delete the caller's own files.

Only images and PDFs are accepted, judged from their bytes; a PDF is opened (in the renderer's
bounded process) on upload, so an encrypted or malformed one is refused then rather than in a
later chat request. Each API key sees only its own files (without keys, all clients share one
owner). Uploads are ``multipart/form-data``, which a browser may send to any origin without a
CORS preflight, so a request naming an ``Origin`` outside ``server.cors_origins`` is refused: a
web page cannot fill a local gateway's store.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from typing import Annotated, Any, Literal
from urllib.parse import quote

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException, ValidationException
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.errors import (
    ClientDisconnected,
    FileNotFound,
    FileTooLarge,
    InvalidRequest,
    InvalidValue,
    RequestTimeout,
    StorageQuotaExceeded,
    UnsupportedMediaType,
)
from gateway.files.attach import Attachments
from gateway.files.content import PDF, sniff_file
from gateway.files.protocol import FileDeleted, FileList, FileObject, file_object
from gateway.files.store import NewFile, QuotaExceeded, Store
from gateway.http.auth import caller_of
from gateway.state import GatewayState

__all__ = ("FilesController",)

PURPOSES = ("user_data", "vision")
"""OpenAI's purposes for files used as model input; the others (fine-tune, batch, assistants,
evals) name features this server does not have."""
_EXPIRY_S = (3600, 30 * 24 * 3600)  # OpenAI's bounds on expires_after.seconds
_UPLOAD_PAGES = 100_000  # an upload is only checked to open; pages are limited per request
_FILENAME_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/]')


def _owner(request: Request[Any, Any, Any]) -> str:
    return caller_of(request).tenant


def _missing(file_id: str) -> FileNotFound:
    return FileNotFound(f"No such File object: {file_id[:64]}", param="file_id")


class FilesController(Controller):
    path = "/v1/files"

    @post(status_code=200, summary="Upload a file (an image or a PDF) for use in chat")
    async def upload(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[Store],
        files: NamedDependency[Attachments],
        gw: NamedDependency[GatewayState],
    ) -> FileObject:
        _same_origin(request, gw.settings.server.cors_origins)
        form = await _read_form(request, gw.settings.server.body_timeout_s)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidValue(
                "The upload needs a 'file' part with the file's content.", param="file"
            )
        purpose = form.get("purpose")
        if purpose not in PURPOSES:
            raise InvalidValue(
                f"'purpose' must be one of {', '.join(PURPOSES)}: this server stores files for "
                "use as model input.",
                param="purpose",
            )
        now = int(time.time())
        expires_at = _expiry(form, now)
        limit = files.config.max_file_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise FileTooLarge(
                f"The file is larger than {limit} bytes (files.max_file_bytes).", param="file"
            )
        media_type = sniff_file(data, param="file")
        if media_type == PDF:
            await files.renderer.inspect(
                data, max_pages=_UPLOAD_PAGES, with_text=False, param="file"
            )
        new = NewFile(
            owner=_owner(request),
            filename=_filename(upload.filename),
            purpose=str(purpose),
            media_type=media_type,
            data=data,
            created_at=now,
            expires_at=expires_at,
        )
        try:
            record = await store.add_file(new, quota_bytes=files.config.quota_bytes)
        except QuotaExceeded as exc:
            raise StorageQuotaExceeded(
                f"Storing this file would exceed this key's {exc.quota} bytes of files "
                f"({exc.used} in use). Delete files you no longer need.",
                param="file",
            ) from None
        return file_object(record)

    @get(summary="List the caller's files")
    async def list_files(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[Store],
        purpose: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10000)] = 10000,
        after: Annotated[str | None, QueryParameter(max_length=128)] = None,
        order: FromQuery[Literal["asc", "desc"]] = "desc",
    ) -> FileList:
        # One more than asked, to say whether there is a next page.
        records = await store.list_files(
            _owner(request),
            now=int(time.time()),
            purpose=purpose,
            limit=limit + 1,
            after=after,
            order=order,
        )
        data = [file_object(r) for r in records[:limit]]
        return FileList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=len(records) > limit,
        )

    @get("/{file_id:str}", summary="Retrieve a file's metadata")
    async def retrieve(
        self, request: Request[Any, Any, Any], store: NamedDependency[Store], file_id: FromPath[str]
    ) -> FileObject:
        record = await store.get_file(_owner(request), file_id, now=int(time.time()))
        if record is None:
            raise _missing(file_id)
        return file_object(record)

    @get("/{file_id:str}/content", summary="Download a file's content")
    async def content(
        self, request: Request[Any, Any, Any], store: NamedDependency[Store], file_id: FromPath[str]
    ) -> Response[bytes]:
        owner, now = _owner(request), int(time.time())
        record = await store.get_file(owner, file_id, now=now)
        data = await store.read_file(owner, file_id, now=now) if record else None
        if record is None or data is None:
            raise _missing(file_id)
        return Response(
            data,
            media_type=record.media_type,
            headers={
                # Served as a download of the sniffed type: a browser never renders it in place.
                "Content-Disposition": _disposition(record.filename),
                "X-Content-Type-Options": "nosniff",
            },
        )

    @delete("/{file_id:str}", status_code=200, summary="Delete a file")
    async def remove(
        self, request: Request[Any, Any, Any], store: NamedDependency[Store], file_id: FromPath[str]
    ) -> FileDeleted:
        if not await store.delete_file(_owner(request), file_id):
            raise _missing(file_id)
        return FileDeleted(id=file_id, deleted=True)


def _same_origin(request: Request[Any, Any, Any], allowed: tuple[str, ...]) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin not in allowed and "*" not in allowed:
        raise InvalidRequest(
            "Uploads from web pages are accepted only from the origins in server.cors_origins.",
            param="file",
        )


async def _read_form(request: Request[Any, Any, Any], timeout_s: float) -> Any:
    media_type, _ = request.content_type
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType(
            "Upload files as multipart/form-data with the fields 'file' and 'purpose'."
        )
    try:
        async with asyncio.timeout(timeout_s):
            return await request.form()
    except TimeoutError:
        raise RequestTimeout(f"The upload did not arrive within {timeout_s:g} s.") from None
    except ValidationException:
        raise InvalidRequest("The multipart body is malformed.", param="file") from None
    except InternalServerException:
        raise ClientDisconnected("The client closed the connection.") from None


def _expiry(form: Any, now: int) -> int | None:
    anchor = form.get("expires_after[anchor]")
    seconds = form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    low, high = _EXPIRY_S
    try:
        value = int(str(seconds))
    except ValueError:
        value = -1
    if anchor != "created_at" or not low <= value <= high:
        raise InvalidValue(
            f"'expires_after' needs anchor 'created_at' and seconds between {low} and {high}.",
            param="expires_after",
        )
    return now + value


def _disposition(filename: str) -> str:
    """``attachment`` with an ASCII name for old clients and the exact one (RFC 6266)."""
    fallback = filename.encode("ascii", "replace").decode().replace("?", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _filename(name: str | None) -> str:
    """The upload's name, for listing and the download header: its last path component, with
    control characters, quotes and slashes removed, at most 255 characters."""
    base = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = _FILENAME_UNSAFE.sub("", base).strip()[:255]
    return clean or "upload"
