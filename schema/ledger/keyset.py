"""Keyset pages of a run's jobs that PostgreSQL's planner cannot turn into a table scan.

`WHERE run_id = :r AND state = :s AND id > :after ORDER BY id LIMIT n` looks served by an index on
(run_id, state, id), but the planner drops the equated columns from the sort order and then prefers
walking the primary key in id order, filtering: its statistics assume the run's queued jobs are spread
evenly over the table, when in fact they sit behind every job already done (and every older run). At
10^7 jobs that walk reads millions of rows for one page.

So on PostgreSQL the same condition is written as a row comparison bounded on both sides:
`(run_id, state, id) >= (:r, :s, :after + 1) AND (run_id, state) <= (:r, :s) ORDER BY run_id, state, id`.
Only the composite index yields that order, and the row comparison starts the index scan exactly at
the key. `>=` rather than `>`: PostgreSQL estimates a row comparison by its first column's operator,
and `run_id > :r` is close to nothing for the newest run, an estimate of one row that made it hash the
whole run for a join. SQLite's planner takes the plain form's index by itself, so it keeps that form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, tuple_
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.dialect import pages_by_row_values
from vlmbatch.schema.ledger.tables import Job


@dataclass(frozen=True)
class Keyset:
    """Jobs whose `prefix` columns equal the given values, paged on `jobs.id`."""

    # (column, value) pairs: the index's leading columns, in its order.
    prefix: Sequence[tuple[Any, Any]]

    def page(
        self,
        stmt: Select[Any],
        *,
        session: Session,
        after: int | None = None,
        before: int | None = None,
        up_to: int | None = None,
    ) -> Select[Any]:
        """`stmt` narrowed to the jobs after the key `after` (and at most `up_to`) in id order or, with
        `before`, those before it in descending id order (the caller reverses them). The caller adds the
        LIMIT."""
        columns = [column for column, _ in self.prefix]
        values = [value for _, value in self.prefix]
        if not pages_by_row_values(session):
            stmt = stmt.where(*(column == value for column, value in self.prefix))
            if before is not None:
                return stmt.where(Job.id < before).order_by(Job.id.desc())
            stmt = stmt.where(Job.id > (after or 0)).order_by(Job.id)
            return stmt if up_to is None else stmt.where(Job.id <= up_to)
        if before is not None:
            bounds = and_(tuple_(*columns, Job.id) <= tuple_(*values, before - 1), tuple_(*columns) >= tuple_(*values))
            return stmt.where(bounds).order_by(*(c.desc() for c in columns), Job.id.desc())
        start = (after or 0) + 1
        # The upper bound as a row value too, so that the index scan stops there (a separate `id <=` would
        # only filter, and the scan would go on to the end of the range).
        end = tuple_(*columns) <= tuple_(*values)
        if up_to is not None:
            end = tuple_(*columns, Job.id) <= tuple_(*values, up_to)
        bounds = and_(tuple_(*columns, Job.id) >= tuple_(*values, start), end)
        return stmt.where(bounds).order_by(*columns, Job.id)
