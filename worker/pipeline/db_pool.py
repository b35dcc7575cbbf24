"""The pipeline's database calls: blocking SQLAlchemy work run on a small thread pool, off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from vlmbatch.schema.ledger.database import transaction

log = logging.getLogger(__name__)
T = TypeVar("T")

# Claims, outcome writes and lease renewals run side by side.
DB_THREADS = 3
# A database restart or failover passes well within this; past it a retried call fails.
DB_RETRY_SECONDS = 120.0


class DatabasePool:
    def __init__(self, sessions: sessionmaker[Session], *, retry_seconds: float = DB_RETRY_SECONDS) -> None:
        self.sessions = sessions
        self._retry_seconds = retry_seconds
        self._pool = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="vlmbatch-db")

    async def transaction(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in one transaction on the pool."""
        return await self.blocking(partial(_in_transaction, self.sessions, fn))

    async def blocking(self, fn: Callable[[], T], *, retry: bool = False) -> T:
        """Run `fn()` on the pool. With `retry`, a lost connection is retried with jittered exponential
        backoff for up to `retry_seconds` (an outcome must not be dropped because the database restarted
        or failed over), then raised: a database that keeps refusing must not hold jobs forever while
        the heartbeat keeps their leases alive."""
        loop = asyncio.get_running_loop()
        if not retry:
            return await loop.run_in_executor(self._pool, fn)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((OperationalError, InterfaceError)),
            stop=stop_after_delay(self._retry_seconds),
            wait=wait_exponential_jitter(initial=0.5, max=10.0),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await loop.run_in_executor(self._pool, fn)
        raise AssertionError("tenacity neither returned nor raised")  # pragma: no cover

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def _in_transaction(sessions: sessionmaker[Session], fn: Callable[[Session], T]) -> T:
    with transaction(sessions) as session:
        return fn(session)
