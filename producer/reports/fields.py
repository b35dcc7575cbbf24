"""The exported fields: one table from which the JSONL record, the Parquet schema and the SQL selection
of `export` are all derived (a field added here appears in every format; tests check the record type)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

# How a field is typed in Parquet; `json` is free-form (stored as JSON text), `timings` a struct of floats.
ArrowType = Literal["string", "int64", "bool", "float64", "strings", "json"]


@dataclass(frozen=True)
class ExportField:
    name: str
    arrow: ArrowType
    # The column it is read from, "<entity>.<attribute>" of the ledger (schema.ledger.export_reads); None
    # for the run's own fields, added to every record.
    source: str | None


TIMING_FIELDS = ("queue_wait_s", "fetch_s", "decode_s", "generation_s", "first_token_s")

FIELDS: tuple[ExportField, ...] = (
    ExportField("run", "string", None),
    ExportField("run_id", "int64", None),
    ExportField("job_id", "int64", "result.job_id"),
    ExportField("attempt_id", "int64", "result.attempt_id"),
    ExportField("sample_index", "int64", "result.sample_index"),
    ExportField("images", "strings", "job.images"),
    ExportField("question", "string", "job.question"),
    # The system turn the job was sent with: its own (`JobParams.system`, an OpenAI batch line's), else
    # the run's `--system-prompt`; None without one. Read from the job's params, completed per record.
    ExportField("system", "string", "job.params"),
    ExportField("reference", "string", "job.reference"),
    ExportField("metadata", "json", "job.meta"),
    ExportField("state", "string", "job.state"),
    ExportField("answer", "string", "result.answer"),
    ExportField("reasoning", "string", "result.reasoning"),
    ExportField("raw_text", "string", "result.raw_text"),
    ExportField("finish_reason", "string", "result.finish_reason"),
    ExportField("trace_closed", "bool", "result.trace_closed"),
    ExportField("prompt_tokens", "int64", "attempt.prompt_tokens"),
    ExportField("completion_tokens", "int64", "result.completion_tokens"),
    ExportField("reasoning_tokens", "int64", "result.reasoning_tokens"),
    ExportField("answer_tokens", "int64", "result.answer_tokens"),
    ExportField("extracted_answer", "string", "result.extracted_answer"),
    ExportField("correct", "bool", "result.correct"),
    # Whether the answer met the run's constraint (--choices, --json-schema); None without one.
    ExportField("valid", "bool", "result.valid"),
    ExportField("grader", "string", "result.grader"),
    ExportField("grader_version", "string", "result.grader_version"),
    # The thinking budget closed the trace (the sample still answered); None when the run set no budget.
    ExportField("thinking_capped", "bool", "result.thinking_capped"),
    ExportField("gpu_seconds", "float64", "attempt.gpu_seconds"),
    # SHA-256 of each image's bytes as the worker read them, in `images` order; None before it was recorded.
    ExportField("image_hashes", "strings", "attempt.image_hashes"),
)
# Read flat, exported nested under "timings".
TIMINGS: tuple[ExportField, ...] = tuple(ExportField(name, "float64", f"attempt.{name}") for name in TIMING_FIELDS)
# What the SQL selection reads, in order: every field with a source, then the timings.
SELECTED: tuple[ExportField, ...] = tuple(f for f in FIELDS if f.source is not None) + TIMINGS


class Timings(TypedDict):
    queue_wait_s: float | None
    fetch_s: float | None
    decode_s: float | None
    generation_s: float | None
    first_token_s: float | None


class ExportRecord(TypedDict):
    """One standing sample with its job and attempt: a `jsonl` line (export.py's docstring). Its keys are
    FIELDS' names plus `timings`, in that order (tests/unit/test_export_fields.py holds them together)."""

    run: str
    run_id: int
    job_id: int
    attempt_id: int
    sample_index: int
    images: list[str]
    question: str
    system: str | None
    reference: str | None
    metadata: dict[str, Any] | None
    state: str
    answer: str
    reasoning: str | None
    raw_text: str
    finish_reason: str | None
    trace_closed: bool
    prompt_tokens: int | None
    completion_tokens: int
    reasoning_tokens: int | None
    answer_tokens: int | None
    extracted_answer: str | None
    correct: bool | None
    valid: bool | None
    grader: str | None
    grader_version: str | None
    thinking_capped: bool | None
    gpu_seconds: float | None
    image_hashes: list[str] | None
    timings: Timings


@functools.cache
def parquet_schema() -> Any:
    """The `parquet` format's Arrow schema (a `pyarrow.Schema`), derived from FIELDS."""
    # pyarrow is imported here, not at module level: every `vlmbatch` command imports the export CLI, and
    # pyarrow would add a quarter of a second to each start.
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
        "float64": pa.float64(),
        "strings": pa.list_(pa.string()),
        "json": pa.string(),
    }
    columns = [(f.name, types[f.arrow]) for f in FIELDS]
    columns.append(("timings", pa.struct([(f.name, types[f.arrow]) for f in TIMINGS])))
    return pa.schema(columns)
