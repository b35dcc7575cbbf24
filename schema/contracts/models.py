"""Pydantic models for what crosses a boundary: run settings, job specs, status reports."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlmbatch.schema.contracts.states import JobState

# Skywork-R1V3's own recommendation (model card): sample, don't decode greedily.
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95
DEFAULT_REPETITION_PENALTY = 1.05
# Long enough for most R1V3 traces while leaving room for the prompt in a 32k context.
DEFAULT_MAX_TOKENS = 16384
DEFAULT_MODEL = "Skywork/Skywork-R1V3-38B"

GraderName = Literal["choice", "numeric", "exact", "boxed"]


class RepetitionDetection(BaseModel):
    """vLLM's n-gram repetition detection (`SamplingParams.repetition_detection`, vLLM >= 0.17; the same
    field names): a sample stops, finish `repetition`, once its last `min_count` blocks of some length
    between `min_pattern_size` and `max_pattern_size` tokens are identical. vLLM checks every running
    request after every step, in Python: the cost grows with `max_pattern_size - min_pattern_size`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_pattern_size: int = Field(ge=1, le=4096)
    # 0 is vLLM's "from 1".
    min_pattern_size: int = Field(0, ge=0, le=4096)
    min_count: int = Field(ge=2, le=1000)

    @model_validator(mode="after")
    def _sizes_in_order(self) -> RepetitionDetection:
        if self.min_pattern_size > self.max_pattern_size:
            raise ValueError("min_pattern_size must not exceed max_pattern_size")
        return self


# Presets by name (`--repetition-detection reasoning`). `reasoning`: loops of a reasoning trace are phrases
# to paragraphs repeated word for word (16 to 256 tokens); four repeats before a stop so that separator
# runs, ellipses and short formula rows (under 16 tokens a period) never trigger it. A starting point, not
# a value tuned on R1V3's own traces; its at most 1,024 tokens of loop before the stop are small beside a
# 16k budget.
REPETITION_PRESETS: dict[str, RepetitionDetection] = {
    "reasoning": RepetitionDetection(min_pattern_size=16, max_pattern_size=256, min_count=4),
}


class SamplingSettings(BaseModel):
    """How each job of a run is sampled (passed to vLLM's SamplingParams)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=5.0)
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0)
    repetition_penalty: float = Field(DEFAULT_REPETITION_PENALTY, gt=0.0, le=5.0)
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, le=1_000_000)
    # Samples per job, generated as one request with vLLM's `n` (the prompt is prefilled once).
    samples: int = Field(1, ge=1, le=256)
    # Benchmarks only: generate exactly max_tokens tokens.
    ignore_eos: bool = False
    # Stop a looping sample early (finish `repetition`); None: off, as in vLLM.
    repetition_detection: RepetitionDetection | None = None
    # vLLM's `thinking_token_budget`: at most this many tokens inside `<think>`, then `</think>` is forced
    # and the model answers (the result is flagged `thinking_capped`); None: unbounded.
    thinking_token_budget: int | None = Field(None, ge=0, le=1_000_000)


# RunSettings fields added after the first release (see `RunSettings.fingerprint`), and SamplingSettings ones.
_LATER_FIELDS = ("system_prompt",)
_LATER_SAMPLING_FIELDS = ("repetition_detection", "thinking_token_budget")


class RunSettings(BaseModel):
    """Everything a run fixes for all its jobs. Stored as JSON on the run row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL
    sampling: SamplingSettings = SamplingSettings()
    max_images_per_prompt: int = Field(4, ge=1, le=64)
    # InternVL dynamic tiling: at most this many 448 px tiles per image (plus the thumbnail).
    max_tiles: int = Field(12, ge=1, le=40)
    # Attempts a job may use before it is failed for good (a poison job that keeps killing workers).
    max_attempts: int = Field(3, ge=1, le=100)
    # Retries of transient errors (S3 throttling, database disconnects) before the job fails.
    max_transient_retries: int = Field(5, ge=0, le=100)
    grader: GraderName | None = None
    # Keep sampling a job until this many graded-correct samples exist (None: one attempt).
    accept: int | None = Field(None, ge=1, le=1000)
    choices: tuple[str, ...] | None = None
    json_schema: dict[str, Any] | None = None
    # The system turn of every job (a job's own `JobParams.system` replaces it).
    system_prompt: str | None = None

    def fingerprint(self) -> str:
        """A short stable hash of the settings, used to name runs and detect conflicting reuse."""
        settings = self.model_dump(mode="json")
        # Fields added since runs were first named are left out while unset: default names stay the same.
        for name in _LATER_FIELDS:
            if settings[name] is None:
                del settings[name]
        for name in _LATER_SAMPLING_FIELDS:
            if settings["sampling"][name] is None:
                del settings["sampling"][name]
        payload = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


class JobParams(BaseModel):
    """A job's own request settings, kept on the job row (every attempt uses them): per-row sampling from
    a manifest's documented columns, or an OpenAI batch line's system prompt, sampling and answer format.
    Unset fields take the run's settings. Bounds are the run's (`SamplingSettings`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str | None = Field(None, min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # Per-request seed: honoured on GPU builds; vLLM's CPU build dies on it, so its jobs fail there
    # with input.unsupported (see worker/engines/vllm_engine.py).
    seed: int | None = Field(None, ge=0, lt=2**63)
    samples: int | None = Field(None, ge=1, le=256)
    json_schema: dict[str, Any] | None = None
    # vLLM's own request fields, as an OpenAI batch line names them.
    repetition_detection: RepetitionDetection | None = None
    thinking_token_budget: int | None = Field(None, ge=0, le=1_000_000)

    def sampling(self, run: SamplingSettings) -> SamplingSettings:
        """The run's sampling with this job's fields in place of the run's."""
        update = {
            name: value
            for name in (
                "max_tokens",
                "temperature",
                "top_p",
                "samples",
                "repetition_detection",
                "thinking_token_budget",
            )
            if (value := getattr(self, name)) is not None
        }
        return run.model_copy(update=update) if update else run

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))


# Manifest columns that set a job's sampling (documented in the README's manifest section).
SAMPLING_COLUMNS = ("max_tokens", "temperature", "top_p", "seed")


# NUL as JSON writes it: `\u0000` after an even number of backslashes (an odd one would be `\\u0000`,
# a backslash and the text "u0000").
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class JobSpec(BaseModel):
    """One unit of work as a source yields it: image URI(s) (none for a text-only request), a question,
    optional reference and metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    images: tuple[str, ...] = ()
    question: str = Field(min_length=1)
    reference: str | None = None
    meta: dict[str, Any] | None = None
    params: JobParams | None = None

    @field_validator("images")
    @classmethod
    def _images_not_blank(cls, images: tuple[str, ...]) -> tuple[str, ...]:
        if any(not uri.strip() for uri in images):
            raise ValueError("an image URI is empty")
        if any("\x00" in uri for uri in images):
            raise ValueError("an image URI holds a NUL character")
        return images

    @field_validator("question", "reference")
    @classmethod
    def _no_nul(cls, text: str | None) -> str | None:
        # PostgreSQL text cannot hold NUL: refused here, with the row's number, not at insert time.
        if text is not None and "\x00" in text:
            raise ValueError("holds a NUL character")
        return text

    @field_validator("meta")
    @classmethod
    def _storable_meta(cls, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        # What PostgreSQL's JSON refuses at insert (NaN, Infinity, NUL, a lone surrogate), refused here
        # with the row's number instead; and nesting too deep to serialise at all.
        if meta is None:
            return None
        try:
            text = json.dumps(meta, ensure_ascii=False, allow_nan=False)
            text.encode("utf-8")
        except ValueError as exc:  # NaN / Infinity; UnicodeEncodeError is a ValueError too
            reason = "a lone surrogate" if isinstance(exc, UnicodeEncodeError) else "NaN or Infinity"
            raise ValueError(f"metadata holds {reason}, which JSON cannot store") from None
        except RecursionError:
            raise ValueError("metadata nests too deeply") from None
        if _ESCAPED_NUL.search(text):  # PostgreSQL refuses it in json
            raise ValueError("metadata holds a NUL character")
        return meta

    def input_key(self) -> str:
        """The job's identity within a run: a hash of its image URIs and question (docs/ARCHITECTURE.md, job row
        unique per run + images + question). Hashed so that the unique index stays small whatever the
        length of the question; every part is length-prefixed, so no two jobs can collide by splitting
        their text differently. A job's own request settings and an OpenAI batch line's `custom_id` are part
        of its identity when present (two lines of one batch are two jobs)."""
        parts = [*self.images, self.question]
        if self.params is not None:
            parts.append("params:" + self.params.canonical())
        if self.meta is not None and isinstance(self.meta.get("custom_id"), str):
            parts.append("custom_id:" + self.meta["custom_id"])
        payload = f"{len(self.images)}|" + "".join(f"{len(p)}:{p}" for p in parts)
        # 128 bits of SHA-256: no collision in any run a fleet can process, and half the index size.
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


class RowReject(BaseModel):
    """A source row that could not become a job, recorded at submit instead of refusing the whole source:
    where it is (`line 12`, `row 7`, `00001.tar:000000005`), why, and an OpenAI batch line's `custom_id`."""

    model_config = ConfigDict(frozen=True)

    where: str
    reason: str
    custom_id: str | None = None


class SubmitReport(BaseModel):
    run: int
    submitted: int
    skipped: int
    # Rows recorded as rejects (not submitted) by this submit, and the first of them.
    rejected: int = 0
    first_rejects: list[RowReject] = Field(default_factory=list)
    # Rows with images that no placeholder of their text places (they go before the text).
    unplaced: int = 0


class StatusReport(BaseModel):
    """`vlmbatch status --json`: exactly these keys."""

    run: int
    total: int
    counts: dict[str, int]
    errors: dict[str, int]
    # Its place among its queue's runs, and whether it is paused: since when (UTC) and why (a reason
    # starting "circuit breaker" when its breaker tripped).
    priority: int = 0
    weight: int = 1
    paused: bool = False
    paused_since: datetime | None = None
    pause_reason: str | None = None
    breaker_trips: int = 0
    # Source rows recorded as rejects at submit (never jobs): `vlmbatch export RUN --format rejects`.
    rejected: int = 0

    @classmethod
    def empty_counts(cls) -> dict[str, int]:
        return {state.value: 0 for state in JobState}
