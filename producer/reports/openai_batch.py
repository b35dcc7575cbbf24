"""The `openai` export: the OpenAI Batch API's output and error files, so a team that moved here from the
Batch API (or `vllm run-batch`) reads our results with the code it has.

One output line per finished job that has standing samples (succeeded, truncated)::

    {"id": "batch_req_1_7", "custom_id": "request-7",
     "response": {"status_code": 200, "request_id": "req_1_7_9", "body": {
         "id": "chatcmpl-1-7", "object": "chat.completion", "created": 1764581000, "model": "<run's model>",
         "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                      "message": {"role": "assistant", "content": "answer", "reasoning": "trace",
                                  "reasoning_content": "trace", "refusal": null},
                      "vlmbatch_finish_reason": "stop"}],
         "usage": {"prompt_tokens": 300, "completion_tokens": 120, "total_tokens": 420,
                   "completion_tokens_details": {"reasoning_tokens": 100}}}},
     "error": null}

and one error line per failed or cancelled job::

    {"id": "batch_req_1_8", "custom_id": "request-8", "response": null,
     "error": {"code": "input.unreadable", "message": "..."}}

`custom_id` is the one the job came with (`metadata.custom_id`, kept by the OpenAI batch input, or a
manifest's column) while no earlier job of the export took it; a job without one gets `job-<id>`
(identity.CustomIds: every id once across the output and error files). Every sample of a job is one of
its `choices` (`n` > 1, or the rounds of an accept-until-M job), in order. `finish_reason` is `length`
for a sample cut short (finish kinds `length`, `context`, `repetition`) and `stop` otherwise;
`vlmbatch_finish_reason` has the stored kind. A sample whose trace never closed (truncated) has
`content: null`, its partial trace as `reasoning` (and `reasoning_content`) and `finish_reason: "length"`.
`created` is the time of the export (the ledger's own times are in the `jsonl` export).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from vlmbatch.producer.reports.fields import ExportRecord
from vlmbatch.producer.reports.identity import CustomIds
from vlmbatch.producer.reports.records import FailedJob
from vlmbatch.schema.contracts.finish import TRUNCATING
from vlmbatch.schema.contracts.models import RowReject
from vlmbatch.schema.contracts.states import JobState


def output_line(
    run_id: int, model: str, created: int, samples: list[ExportRecord], *, custom_id: str
) -> dict[str, Any]:
    """The output line of one job, from its standing samples (in order; at least one)."""
    first = samples[0]
    job_id = first["job_id"]
    prompt_tokens = sum({s["attempt_id"]: s["prompt_tokens"] or 0 for s in samples}.values())
    completion_tokens = sum(s["completion_tokens"] for s in samples)
    reasoning = [s["reasoning_tokens"] for s in samples if s["reasoning_tokens"] is not None]
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": sum(reasoning)}
    body = {
        "id": f"chatcmpl-{run_id}-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [_choice(index, sample) for index, sample in enumerate(samples)],
        "usage": usage,
    }
    return {
        "id": _line_id(run_id, job_id),
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": f"req_{run_id}_{job_id}_{samples[-1]['attempt_id']}",
            "body": body,
        },
        "error": None,
    }


def error_line(
    run_id: int, job: FailedJob, *, custom_id: str, cancelled_as: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The error line of a failed or cancelled job: its stable error type as `code`; a cancelled job's
    (code, message) is `cancelled_as` when given (an expired batch's `batch_expired`)."""
    code, message = job.error_type or job.state, job.error_message or f"job {job.state}"
    if cancelled_as is not None and job.state == JobState.CANCELLED.value:
        code, message = cancelled_as
    return {
        "id": _line_id(run_id, job.job_id),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def reject_line(run_id: int, reject: RowReject, custom_ids: CustomIds) -> dict[str, Any]:
    """The error line of an input line rejected at submit (it never became a job): OpenAI's own shape
    for a request it refused, with the line's `custom_id` (null when the line had none to read; renamed
    `rejected-<where>` when a job of the export has it)."""
    where = reject.where.replace(" ", "_")
    return {
        "id": f"batch_req_{run_id}_rejected_{where}",
        "custom_id": None if reject.custom_id is None else custom_ids.claim(reject.custom_id, f"rejected-{where}"),
        "response": None,
        "error": {"code": "invalid_request", "message": f"{reject.where}: {reject.reason}"},
    }


def _choice(index: int, sample: ExportRecord) -> dict[str, Any]:
    closed = sample["trace_closed"]
    kind = sample["finish_reason"]
    return {
        "index": index,
        "message": {
            "role": "assistant",
            "content": sample["answer"] if closed else None,
            # vLLM's current name (its ChatMessage since 0.1x), and the older one that earlier readers use.
            "reasoning": sample["reasoning"],
            "reasoning_content": sample["reasoning"],
            "refusal": None,
        },
        # The SDK knows stop, length, tool_calls, content_filter and function_call: every truncating finish
        # (max_tokens, the context, a loop stopped) is `length` there, and vlmbatch's own kind rides beside it.
        "finish_reason": "length" if kind in TRUNCATING else "stop",
        "logprobs": None,
        # vlmbatch's own finish kind (stop, length, context, repetition; null when unknown).
        "vlmbatch_finish_reason": kind,
    }


def _line_id(run_id: int, job_id: int) -> str:
    return f"batch_req_{run_id}_{job_id}"


class OpenAIBatchWriter:
    """Writes output lines, one per job: a job's samples arrive together (records come by job, then
    sample), so only the current job's samples are held."""

    def __init__(self, path: Path, *, run_id: int, model: str, created: int, custom_ids: CustomIds) -> None:
        self._file: IO[str] = path.open("w", encoding="utf-8", newline="\n")
        self._run_id, self._model, self._created = run_id, model, created
        self._custom_ids = custom_ids
        self._job: list[ExportRecord] = []
        self.lines = 0

    def write(self, record: ExportRecord) -> None:
        if self._job and self._job[0]["job_id"] != record["job_id"]:
            self._flush()
        self._job.append(record)

    def _flush(self) -> None:
        if self._job:
            first = self._job[0]
            name = self._custom_ids.of_job(first["job_id"], first["metadata"])
            write_line(self._file, output_line(self._run_id, self._model, self._created, self._job, custom_id=name))
            self.lines += 1
            self._job = []

    def close(self) -> None:
        try:
            self._flush()
        finally:
            self._file.close()


def write_line(file: IO[str], line: dict[str, Any]) -> None:
    file.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
    file.write("\n")
