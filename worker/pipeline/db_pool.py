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

from vlmbatch.schema.database import transaction

log = logging.getLogger(__name__)
T = TypeVar("T")

# Claims, outcome writes and lease renewals run side by side.
DB_THREADS = 3


class DatabasePool:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._pool = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="vlmbatch-db")

    async def transaction(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in one transaction on the pool."""
        return await self.blocking(partial(_in_transaction, self.sessions, fn))

    async def blocking(self, fn: Callable[[], T], *, retry: bool = False) -> T:
        """Run `fn()` on the pool; with `retry`, retry lost connections with backoff until it works
        (an outcome must not be dropped because the database restarted or failed over)."""
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                return await loop.run_in_executor(self._pool, fn)
            except (OperationalError, InterfaceError) as exc:
                if not retry:
                    raise
                log.warning("database call failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def _in_transaction(sessions: sessionmaker[Session], fn: Callable[[Session], T]) -> T:
    with transaction(sessions) as session:
        return fn(session)
