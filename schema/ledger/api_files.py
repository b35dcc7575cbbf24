"""The Batch API's file rows, listed as OpenAI's `GET /v1/files` pages them (newest first by default)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.tables import ApiFile


def list_files(
    session: Session, *, purpose: str | None, after_id: int | None, limit: int, ascending: bool
) -> list[ApiFile]:
    """Up to `limit` files of `purpose` (all when None) after the file `after_id` in order of creation
    (ids grow with it), newest first unless `ascending`; detached from the session."""
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
    rows = list(session.scalars(query))
    for row in rows:
        session.expunge(row)
    return rows
