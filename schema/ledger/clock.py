"""The ledger's clock: lease expiry, retry backoff and queue times are all stamped and compared with the
database server's time, so that clock skew between worker hosts cannot eat a lease's margin.

PostgreSQL: `clock_timestamp()` (the statement's real time, not the transaction's start). SQLite lives
in the process that uses it, so its clock is the host's.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.dialect import clock_now
from vlmbatch.schema.ledger.tables import utcnow

_POSTGRES_NOW = text("SELECT clock_timestamp() AT TIME ZONE 'utc'")


def database_now(session: Session) -> datetime:
    """The database's current time as naive UTC (the one representation the ledger stores)."""
    now = clock_now(session)
    return utcnow() if now is None else now
