"""A heartbeat that finds the engine dead (vLLM's `errored`) stops the worker, even when no request ever
surfaces the death: one that reached the engine after its core died can wait forever."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from vlmbatch.schema.contracts.errors import EngineDead
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.base import EngineStats
from vlmbatch.worker.pipeline.inflight import Attempts, StopState
from vlmbatch.worker.pipeline.leases import Heartbeat


class _DeadEngine:
    model = "m"

    def stats(self) -> EngineStats:
        return EngineStats(running=3, waiting=0, dead="EngineCore encountered an issue")

    def progress(self) -> int:
        return 0


def test_a_beat_that_finds_the_engine_dead_declares_it_fatal() -> None:
    state = StopState()
    heartbeat = Heartbeat(
        settings=Settings(heartbeat_seconds=0.2, lease_seconds=60),  # type: ignore[call-arg]
        identity=cast(Any, None),
        worker_id="w",
        engine=cast(Any, _DeadEngine()),
        db=cast(Any, None),  # never reached: the beat stops before renewing
        metrics=cast(Any, None),
        attempts=Attempts(),
        state=state,
    )
    asyncio.run(asyncio.wait_for(heartbeat.run(), timeout=10))
    assert isinstance(state.fatal, EngineDead)
    assert "EngineCore encountered an issue" in str(state.fatal)
    assert state.closing
