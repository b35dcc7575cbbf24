"""How many jobs a worker holds at once (in the engine plus being fetched and decoded).

Slots are taken in whole batches so that concurrent claimers never each hold part of the capacity while
waiting for the rest (a deadlock a plain semaphore allows), and a slot is given back only once its job's
outcome is committed, so a slow database pushes back on claiming instead of piling results up in memory.
"""

from __future__ import annotations

import asyncio
import time


class Capacity:
    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("capacity must be at least 1")
        self.total = total
        self._free = total
        self._changed = asyncio.Condition()

    @property
    def free(self) -> int:
        return self._free

    @property
    def used(self) -> int:
        return self.total - self._free

    async def take(self, n: int) -> None:
        """Wait until `n` slots are free at once, then take them."""
        n = min(n, self.total)
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= n)
            self._free -= n

    def take_free(self, at_most: int) -> int:
        """Take up to `at_most` of the slots free now, without waiting; return how many."""
        n = max(0, min(at_most, self._free))
        self._free -= n
        return n

    async def give(self, n: int) -> None:
        if n <= 0:
            return
        async with self._changed:
            self._free = min(self.total, self._free + n)
            self._changed.notify_all()

    async def wait_for_free(self, n: int, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until at least `n` slots are free."""
        n = min(n, self.total)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._free >= n), timeout)
            except TimeoutError:
                return False
        return True


class TimeShare:
    """Splits engine time between the requests sharing it: while N requests are in the engine, each is
    charged 1/N of the elapsed time. A running clock of the integral of 1/N(t) makes every enter and
    leave O(1): a request's share is the clock's advance between the two."""

    def __init__(self) -> None:
        self._inside = 0
        self._clock = 0.0
        self._last = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        if self._inside:
            self._clock += (now - self._last) / self._inside
        self._last = now

    def enter(self) -> float:
        self._advance()
        self._inside += 1
        return self._clock

    def leave(self, entered_at: float) -> float:
        """Seconds of engine time charged to the request that entered at clock `entered_at`."""
        self._advance()
        self._inside -= 1
        return self._clock - entered_at
