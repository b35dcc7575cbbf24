"""`/v1/files`: batch input files uploaded by clients, and the output and error files of batches. Bytes
live in one folder under the home (`<home>/api_files`); the ledger's `api_files` rows say what they are."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.producer.api.errors import ApiError, not_found
from vlmbatch.producer.api.ids import file_id, parse_file_id
from vlmbatch.schema.ledger.api_files import FileRow, delete_file, get_file, list_files, record_file
from vlmbatch.schema.ledger.api_uploads import recorded_paths

UPLOAD_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
# Multipart framing and the `purpose` field around the file's own bytes.
FORM_OVERHEAD = 64 * 1024
_COPY_CHUNK = 1024 * 1024
UPLOAD_NAME = "input.jsonl"
# An upload folder with no file row this old was left by a server that died mid-upload.
ORPHAN_AGE_SECONDS = 3600.0
_ORPHAN_CHUNK = 500
_MAX_FILENAME = 500
# OpenAI's bounds on `GET /v1/files?limit=` (and its default: the SDK pages on with `after`).
MAX_LIST_FILES = 10_000

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class TooLarge(Exception):
    """The request body passed the upload limit."""


def limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive` that raises TooLarge once the body passes `limit` bytes, so a huge upload (chunked, or
    with a lying Content-Length) is cut off while it streams rather than spooled to disk whole."""
    seen = 0

    async def bounded() -> MutableMapping[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge
        return message

    return bounded


def epoch(moment: datetime | None) -> int | None:
    """Seconds since the epoch of a stored (naive UTC) time."""
    return None if moment is None else int(moment.replace(tzinfo=UTC).timestamp())


def file_object(row: FileRow) -> dict[str, Any]:
    """OpenAI's file object."""
    return {
        "id": file_id(row.id),
        "object": "file",
        "bytes": row.bytes,
        "created_at": epoch(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


class FileStore:
    """The API's files: rows in the ledger, bytes in `folder`."""

    def __init__(self, sessions: sessionmaker[Session], folder: Path, *, max_bytes: int) -> None:
        self.sessions, self.folder, self.max_bytes = sessions, folder, max_bytes

    def save_upload(self, upload: IO[bytes], filename: str) -> dict[str, Any]:
        """Copy an uploaded file into the folder (at most `max_bytes`) and record it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        # A folder of its own: relative image paths in the file (confined to its folder) reach no other file.
        name = Path(tempfile.mkdtemp(dir=self.folder, prefix="upload-")) / UPLOAD_NAME
        size = 0
        try:
            with name.open("wb") as out:
                while chunk := upload.read(_COPY_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise too_large(self.max_bytes)
                    out.write(chunk)
        except BaseException:
            shutil.rmtree(name.parent, ignore_errors=True)
            raise
        return file_object(self.record(name, filename[:_MAX_FILENAME] or "upload.jsonl", UPLOAD_PURPOSE, size))

    def remove_orphans(self, *, older_than: float = ORPHAN_AGE_SECONDS) -> int:
        """Delete upload folders no file row records (an upload cut off by a crash), left for
        `older_than` seconds (another server on this home may be mid-upload); how many were removed."""
        if not self.folder.is_dir():
            return 0
        cutoff = time.time() - older_than
        removed = 0
        folders = (p for p in self.folder.glob("upload-*") if p.is_dir() and p.stat().st_mtime < cutoff)
        for chunk in iter(lambda: list(islice(folders, _ORPHAN_CHUNK)), []):
            with self.sessions() as session:
                kept = recorded_paths(session, (str(folder / UPLOAD_NAME) for folder in chunk))
            for folder in chunk:
                if str(folder / UPLOAD_NAME) not in kept:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        return removed

    def record(self, path: Path, filename: str, purpose: str, size: int) -> FileRow:
        with self.sessions() as session, session.begin():
            return record_file(session, filename=filename, purpose=purpose, size=size, path=str(path))

    def page(self, *, purpose: str | None, after: str | None, limit: int, order: str) -> dict[str, Any]:
        """OpenAI's file list: `limit` files (1 to MAX_LIST_FILES) of `purpose` after the file `after`, newest
        first unless `order` is `asc`. Raises ApiError (400) for a parameter out of range."""
        if not 1 <= limit <= MAX_LIST_FILES:
            raise ApiError(400, f"limit must be between 1 and {MAX_LIST_FILES}", param="limit")
        if order not in ("asc", "desc"):
            raise ApiError(400, "order must be asc or desc", param="order")
        after_id = parse_file_id(after) if after else None
        with self.sessions() as session:
            ascending = order == "asc"
            rows = list_files(session, purpose=purpose, after_id=after_id, limit=limit + 1, ascending=ascending)
        data = [file_object(row) for row in rows[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(rows) > limit,
        }

    def get(self, public_id: str) -> FileRow:
        row_id = parse_file_id(public_id)
        with self.sessions() as session:
            row = get_file(session, file_id=row_id)
        if row is None:
            raise not_found("file", public_id)
        return row

    def delete(self, public_id: str) -> dict[str, Any]:
        row = self.get(public_id)
        with self.sessions() as session, session.begin():
            delete_file(session, file_id=row.id)
        path = Path(row.path)
        path.unlink(missing_ok=True)
        if path.parent.name.startswith("upload-"):
            shutil.rmtree(path.parent, ignore_errors=True)
        return {"id": public_id, "object": "file", "deleted": True}


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the file is larger than the limit of {limit} bytes", param="file", code="file_too_large")
