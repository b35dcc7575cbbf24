"""Capacity is taken in whole batches, so concurrent claimers cannot deadlock on partial holdings."""

from __future__ import annotations

import asyncio

from vlmbatch.worker.pipeline.capacity import Capacity


def test_batches_wait_for_whole_capacity_instead_of_holding_parts() -> None:
    async def scenario() -> list[str]:
        capacity = Capacity(4)
        order: list[str] = []

        async def claimer(name: str, n: int) -> None:
            await capacity.take(n)
            order.append(name)
            await asyncio.sleep(0.01)
            await capacity.give(n)

        await asyncio.wait_for(asyncio.gather(*(claimer(f"c{i}", 3) for i in range(4))), timeout=5)
        return order

    assert sorted(asyncio.run(scenario())) == ["c0", "c1", "c2", "c3"]


def test_take_free_never_waits_and_never_overdraws() -> None:
    async def scenario() -> tuple[int, int, int]:
        capacity = Capacity(5)
        first = capacity.take_free(3)
        second = capacity.take_free(10)
        return first, second, capacity.free

    assert asyncio.run(scenario()) == (3, 2, 0)


def test_a_request_larger_than_the_capacity_takes_all_of_it() -> None:
    async def scenario() -> int:
        capacity = Capacity(2)
        await asyncio.wait_for(capacity.take(10), timeout=1)
        return capacity.free

    assert asyncio.run(scenario()) == 0


def test_time_share_charges_each_request_its_share_of_the_engine(monkeypatch: object) -> None:
    import vlmbatch.worker.pipeline.capacity as capacity_module

    clock = iter([0.0, 0.0, 2.0, 6.0, 8.0])  # init, a enters, b enters, a leaves, b leaves
    monkeypatch.setattr(capacity_module.time, "monotonic", lambda: next(clock))  # type: ignore[attr-defined]
    share = capacity_module.TimeShare()
    a = share.enter()
    b = share.enter()
    a_seconds = share.leave(a)
    b_seconds = share.leave(b)
    # a: alone for 2 s, then shares 4 s with b; b: 4 s shared, then alone for 2 s.
    assert (a_seconds, b_seconds) == (4.0, 4.0)
    assert a_seconds + b_seconds == 8.0  # the engine's whole busy time, no more
