"""Several workers per host: each gets a disjoint group of GPUs and a tensor-parallel size to match."""

from __future__ import annotations

import pytest

from vlmbatch.worker.process.launcher import parse_gpus, plan_workers


@pytest.mark.parametrize(
    ("spec", "gpus"),
    [("0,1,2,3", ["0", "1", "2", "3"]), ("0-3", ["0", "1", "2", "3"]), ("0-1,4,6-7", ["0", "1", "4", "6", "7"])],
)
def test_gpu_lists_and_ranges(spec: str, gpus: list[str]) -> None:
    assert parse_gpus(spec) == gpus


@pytest.mark.parametrize("spec", ["0,0", "3-1", "a"])
def test_bad_gpu_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_gpus(spec)


@pytest.mark.parametrize(("per_worker", "groups"), [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_eight_gpus_split_into_disjoint_groups(per_worker: int, groups: int) -> None:
    plans = plan_workers(
        parse_gpus("0-7"), per_worker=per_worker, base_env={"KEEP": "1"}, worker_id_prefix="host", metrics_port=9400
    )
    assert len(plans) == groups
    seen: list[str] = []
    for index, plan in enumerate(plans):
        visible = plan.env["CUDA_VISIBLE_DEVICES"].split(",")
        assert len(visible) == per_worker == int(plan.env["VLMBATCH_TENSOR_PARALLEL_SIZE"])
        assert plan.env["VLMBATCH_WORKER_ID"] == f"host-w{index}"
        assert plan.env["VLMBATCH_METRICS_PORT"] == str(9400 + index)
        assert plan.env["KEEP"] == "1"
        seen.extend(visible)
    assert sorted(seen, key=int) == [str(i) for i in range(8)]  # every GPU once


def test_gpus_that_do_not_split_evenly_are_refused() -> None:
    with pytest.raises(ValueError, match="do not split"):
        plan_workers(["0", "1", "2"], per_worker=2, base_env={}, worker_id_prefix="h", metrics_port=None)
