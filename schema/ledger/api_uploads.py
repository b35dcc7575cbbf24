"""Which upload files of the Batch API the ledger records: what a server start keeps of its files folder."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.tables import ApiFile


def recorded_paths(session: Session, paths: Iterable[str]) -> set[str]:
    """Those of `paths` that some file row points at."""
    wanted = list(paths)
    if not wanted:
        return set()
    return set(session.scalars(select(ApiFile.path).where(ApiFile.path.in_(wanted))))
