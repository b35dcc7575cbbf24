"""The ledger's one lock order, so that writers never deadlock on PostgreSQL.

Every transaction that locks several rows takes job rows first, in ascending id, then the attempts of
those jobs: claims, the outcome writer, a heartbeat taking back jobs, the reconciler, resubmit and
cancel. Two writers whose job sets overlap then queue behind each other instead of each holding what the
other waits for.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.dialect import lock_for_update
from vlmbatch.schema.ledger.tables import Job


def jobs_locked_in_order(session: Session, where: ColumnElement[bool]) -> Select[Any]:
    """A subquery of the ids of the jobs matching `where`, locked in ascending id order on PostgreSQL
    (`FOR NO KEY UPDATE`, the lock an UPDATE takes anyway). Use it as `Job.id.in_(...)` in an UPDATE.
    SQLite's BEGIN IMMEDIATE transaction already serialises writers."""
    ids = select(Job.id).where(where).order_by(Job.id)
    return lock_for_update(ids, session, key_share=True)
