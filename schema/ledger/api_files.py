"""The Batch API's file rows: recorded, read, deleted, and listed as OpenAI's `GET /v1/files` pages them
(newest first by default). Their bytes live in the server's files folder (producer/api/files.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.tables import ApiFile


@dataclass(frozen=True)
class FileRow:
    """A file of the Batch API: an uploaded batch input (`purpose` "batch") or a batch's output or error
    file ("batch_output"); its bytes at `path`."""

    id: int
    filename: str
    purpose: str
    bytes: int
    path: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: ApiFile) -> FileRow:
        return cls(row.id, row.filename, row.purpose, row.bytes, row.path, row.created_at)


def record_file(session: Session, *, filename: str, purpose: str, size: int, path: str) -> FileRow:
    """Record a file (in the caller's transaction); the row as stored."""
    row = ApiFile(filename=filename, purpose=purpose, bytes=size, path=path)
    session.add(row)
    session.flush()
    return FileRow.from_row(row)


def get_file(session: Session, *, file_id: int) -> FileRow | None:
    """The file `file_id`; None when there is none."""
    row = session.get(ApiFile, file_id)
    return None if row is None else FileRow.from_row(row)


def delete_file(session: Session, *, file_id: int) -> None:
    """Delete the file's row, if it is still there (in the caller's transaction)."""
    found = session.get(ApiFile, file_id)
    if found is not None:
        session.delete(found)


def list_files(
    session: Session, *, purpose: str | None, after_id: int | None, limit: int, ascending: bool
) -> list[FileRow]:
    """Up to `limit` files of `purpose` (all when None) after the file `after_id` in order of creation
    (ids grow with it), newest first unless `ascending`."""
    query = select(ApiFile).limit(limit)
    if purpose is not None:
        query = query.where(ApiFile.purpose == purpose)
    if ascending:
        query = query.order_by(ApiFile.id)
        if after_id is not None:
            query = query.where(ApiFile.id > after_id)
    else:
        query = query.order_by(ApiFile.id.desc())
        if after_id is not None:
            query = query.where(ApiFile.id < after_id)
    return [FileRow.from_row(row) for row in session.scalars(query)]
