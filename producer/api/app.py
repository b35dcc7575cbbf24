"""The Batch API as a Starlette application (mounted under /v1 by `vlmbatch serve`).

Routes: `POST /files`, `GET /files` (`purpose`, `limit`, `after`, `order`), `GET /files/{id}`, `GET
/files/{id}/content`, `DELETE /files/{id}`, `POST /batches`, `GET /batches` (`after`, `limit`), `GET
/batches/{id}`, `POST /batches/{id}/cancel`. Ledger and file work runs in the thread pool; every refusal
is an OpenAI-shaped error (api/errors.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from vlmbatch.producer.api.batches import BatchService, BatchSettings
from vlmbatch.producer.api.errors import ApiError
from vlmbatch.producer.api.files import (
    FORM_OVERHEAD,
    MAX_LIST_FILES,
    UPLOAD_PURPOSE,
    FileStore,
    TooLarge,
    file_object,
    limited_receive,
    too_large,
)
from vlmbatch.producer.api.keys import ApiKeys, KeySettings, RequireApiKey
from vlmbatch.producer.api.same_origin import require_json
from vlmbatch.worker.transport.publisher import Publisher

log = logging.getLogger(__name__)

API_FILES = "api_files"
DEFAULT_LIST_LIMIT = 20
# A JSON request (a batch: a file id, a window, 16 metadata pairs) is a few KB; nothing larger is read.
MAX_JSON_BODY = 64 * 1024
T = TypeVar("T")


class ApiSettings(BatchSettings, KeySettings, Protocol):
    """What the Batch API reads of the settings (Settings has it all): its batches' and keys' settings,
    where uploads are kept and how large they may be, the host it is bound to."""

    @property
    def home(self) -> Path: ...

    @property
    def api_max_file_bytes(self) -> int: ...

    @property
    def browser_host(self) -> str: ...


def build_api(settings: ApiSettings, *, sessions: sessionmaker[Session], publisher: Publisher) -> ASGIApp:
    """The Batch API over the ledger of `sessions`, publishing submitted jobs with `publisher`. Raises
    KeyFileError when the keys file cannot be read."""
    files = FileStore(sessions, (settings.home / API_FILES).resolve(), max_bytes=settings.api_max_file_bytes)
    orphans = files.remove_orphans()
    if orphans:
        log.info("removed %d upload(s) a stopped server left unrecorded", orphans)
    api = _Endpoints(files, BatchService(sessions=sessions, publisher=publisher, files=files, settings=settings))
    routes = [
        Route("/files", api.create_file, methods=["POST"]),
        Route("/files", api.list_files, methods=["GET"]),
        Route("/files/{file_id}", api.get_file, methods=["GET"]),
        Route("/files/{file_id}", api.delete_file, methods=["DELETE"]),
        Route("/files/{file_id}/content", api.file_content, methods=["GET"]),
        Route("/batches", api.create_batch, methods=["POST"]),
        Route("/batches", api.list_batches, methods=["GET"]),
        Route("/batches/{batch_id}", api.get_batch, methods=["GET"]),
        Route("/batches/{batch_id}/cancel", api.cancel_batch, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )
    return RequireApiKey(app, ApiKeys.from_settings(settings), bound_host=settings.browser_host)


class _Endpoints:
    def __init__(self, files: FileStore, batches: BatchService) -> None:
        self.files, self.batches = files, batches

    async def create_file(self, request: Request) -> Response:
        files = self.files
        limit = files.max_bytes + FORM_OVERHEAD
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise too_large(files.max_bytes)
        bounded = Request(request.scope, receive=limited_receive(request.receive, limit))
        try:
            async with bounded.form(max_files=1, max_fields=8) as form:
                purpose, upload = form.get("purpose"), form.get("file")
                if purpose != UPLOAD_PURPOSE:
                    raise ApiError(400, f"purpose {purpose!r}: only {UPLOAD_PURPOSE!r}", param="purpose")
                if not isinstance(upload, UploadFile):
                    raise ApiError(400, "a `file` part is required", param="file")
                created = await run_in_threadpool(files.save_upload, upload.file, upload.filename or "")
        except TooLarge:
            raise too_large(files.max_bytes) from None
        return JSONResponse(created)

    async def list_files(self, request: Request) -> Response:
        query = request.query_params
        given = query.get("limit", str(MAX_LIST_FILES))
        if not given.isdigit():
            raise ApiError(400, "limit must be a whole number", param="limit")
        page = await _call(
            self.files.page,
            purpose=query.get("purpose") or None,
            after=query.get("after"),
            limit=int(given),
            order=query.get("order", "desc"),
        )
        return JSONResponse(page)

    async def get_file(self, request: Request) -> Response:
        row = await run_in_threadpool(self.files.get, request.path_params["file_id"])
        return JSONResponse(file_object(row))

    async def file_content(self, request: Request) -> Response:
        row = await run_in_threadpool(self.files.get, request.path_params["file_id"])
        if not Path(row.path).is_file():
            raise ApiError(404, f"the content of {request.path_params['file_id']} is gone", code="not_found")
        return FileResponse(row.path, media_type="application/jsonl", filename=row.filename)

    async def delete_file(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.files.delete, request.path_params["file_id"]))

    async def create_batch(self, request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(self.batches.create, body))

    async def list_batches(self, request: Request) -> Response:
        given = request.query_params.get("limit", str(DEFAULT_LIST_LIMIT))
        if not (given.isascii() and given.isdigit()):
            raise ApiError(400, "limit must be a whole number", param="limit")
        after = request.query_params.get("after")
        return JSONResponse(await _call(self.batches.page, after=after, limit=int(given)))

    async def get_batch(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.batches.retrieve, request.path_params["batch_id"]))

    async def cancel_batch(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.batches.cancel, request.path_params["batch_id"]))


def api_off(reason: str) -> ASGIApp:
    """What /v1 answers when the API is not served: 403 in OpenAI's shape, with `reason`."""

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await ApiError(403, reason, code="api_disabled").response()(scope, receive, send)

    return refuse


async def _call(function: Callable[..., T], **kwargs: Any) -> T:
    return await run_in_threadpool(function, **kwargs)


async def _json_body(request: Request) -> dict[str, Any]:
    require_json(request.headers)
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_JSON_BODY:
        raise _body_too_large()
    bounded = Request(request.scope, receive=limited_receive(request.receive, MAX_JSON_BODY))
    try:
        body = json.loads(await bounded.body())
    except TooLarge:
        raise _body_too_large() from None
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _body_too_large() -> ApiError:
    return ApiError(413, f"the request body is larger than {MAX_JSON_BODY} bytes", code="request_too_large")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ApiError(exc.status_code, str(exc.detail)).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("batch api: %s %s failed", request.method, request.url.path)
    return ApiError(500, "the server failed to answer; its log has the details").response()
