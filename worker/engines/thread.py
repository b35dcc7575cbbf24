"""Running an engine on an event loop of its own, in a dedicated thread.

vLLM's AsyncLLM processes every engine step's output on the loop it was created on; keeping that loop
free of the pipeline's bookkeeping (claims, writes, leases) means the engine is never kept waiting by
them. The wrapper is itself an Engine, so the pipeline does not know the difference. `owned=False`
leaves the inner engine running at shutdown (tests share one engine between pipelines).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from vlmbatch.worker.engines.base import Engine, EngineStats, Generation, GenerationRequest

T = TypeVar("T")


class EngineThread:
    def __init__(self, inner: Engine, *, owned: bool = True) -> None:
        self.inner = inner
        self._owned = owned
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vlmbatch-engine", daemon=True)
        self._started = False

    @property
    def model(self) -> str:
        return self.inner.model

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._thread.start()
        await self._on_engine_loop(self.inner.start())

    def start_blocking(self) -> None:
        """Start from a thread without an event loop (test fixtures)."""
        if not self._started:
            self._started = True
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self.inner.start(), self._loop).result()

    async def generate(self, request: GenerationRequest) -> Generation:
        return await self._on_engine_loop(self.inner.generate(request))

    async def abort(self, request_id: str) -> None:
        await self._on_engine_loop(self.inner.abort(request_id))

    def stats(self) -> EngineStats:
        return self.inner.stats()

    def progress(self) -> int:
        return self.inner.progress()

    async def shutdown(self) -> None:
        if self._owned:
            await self._on_engine_loop(self.inner.shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)

    def shutdown_blocking(self) -> None:
        asyncio.run_coroutine_threadsafe(self.inner.shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    async def _on_engine_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # cancels the inner coroutine too (vLLM aborts the request)
            raise
