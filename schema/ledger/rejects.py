"""Source rows recorded at submit instead of submitted (a missing image, a path outside the allowed
folders, a broken line): one `submit_rejects` row each, counted on the run (`runs.rejected`), so
`status` reads one row whatever their number. A row rejected again by a later submit of the same
source is recorded once (unique per run and position)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.models import RowReject
from vlmbatch.schema.ledger.dialect import insert_ignoring_duplicates
from vlmbatch.schema.ledger.tables import Run, SubmitReject

# Rejects read per query by `iter_rejects`.
PAGE = 5000


def record_rejects(session: Session, *, run_id: int, rejects: Sequence[RowReject]) -> int:
    """Insert the rejects the run does not hold yet and count them on the run; how many were new."""
    if not rejects:
        return 0
    rows = {
        reject.where: {
            "run_id": run_id,
            "position": reject.where,
            "reason": reject.reason,
            "custom_id": reject.custom_id,
        }
        for reject in rejects
    }
    stmt = insert_ignoring_duplicates(
        session, SubmitReject, constraint="uq_submit_rejects_run_position", columns=["run_id", "position"]
    )
    new = len(session.execute(stmt.returning(SubmitReject.id), list(rows.values())).all())
    if new:
        session.execute(update(Run).where(Run.id == run_id).values(rejected=Run.rejected + new))
    return new


def rejected_count(session: Session, run_id: int) -> int:
    return session.scalar(select(Run.rejected).where(Run.id == run_id)) or 0


def iter_rejects(sessions: sessionmaker[Session], run_id: int) -> Iterator[RowReject]:
    """The run's rejects in the order they were recorded, a page per query (memory stays flat)."""
    after = 0
    while True:
        with sessions() as session:
            page = session.execute(
                select(SubmitReject.id, SubmitReject.position, SubmitReject.reason, SubmitReject.custom_id)
                .where(SubmitReject.run_id == run_id, SubmitReject.id > after)
                .order_by(SubmitReject.id)
                .limit(PAGE)
            ).all()
        for _, where, reason, custom_id in page:
            yield RowReject(where=where, reason=reason, custom_id=custom_id)
        if len(page) < PAGE:
            return
        after = page[-1][0]
