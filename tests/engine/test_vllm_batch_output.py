"""The `openai` export read by vLLM's own batch classes (`vllm run-batch`'s `BatchRequestOutput`): every
output line parses, and the trace is where vLLM's `ChatMessage` keeps it, `message.reasoning`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.training_runs import RUNS
from vlmbatch.producer.reports.export import ExportFilter, export_run
from vlmbatch.schema.contracts.states import TERMINAL_STATES

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


def test_vllm_reads_the_openai_export_with_the_trace_as_message_reasoning(sqlite_url: str, tmp_path: Path) -> None:
    from vlmbatch.worker.engines import vllm_compat

    vllm_compat.install()
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    sessions, run = RUNS["openai-n2"](sqlite_url, tmp_path)
    out = tmp_path / "o.jsonl"
    export_run(sessions, run=run, fmt="openai", out=out, selection=ExportFilter(states=tuple(TERMINAL_STATES)))
    jsonl = tmp_path / "all.jsonl"
    export_run(sessions, run=run, fmt="jsonl", out=jsonl)
    traces = {
        (r["metadata"]["custom_id"], r["sample_index"]): r["reasoning"]
        for r in map(json.loads, jsonl.read_text().splitlines())
    }
    lines = [BatchRequestOutput.model_validate_json(line) for line in out.read_text().splitlines()]
    assert sorted(line.custom_id for line in lines) == ["req-0", "req-1", "req-2"]
    for line in lines:
        assert line.response is not None and line.error is None
        choices = line.response.body.choices  # type: ignore[union-attr]
        assert len(choices) == 2
        for choice in choices:
            assert choice.message.reasoning == traces[(line.custom_id, choice.index)] and choice.message.reasoning
