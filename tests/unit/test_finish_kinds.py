"""How a sample ended, as the outcome contract names it: vLLM's finish reasons against the job's limits,
a loop stopped by repetition detection, a capped thinking budget; and the attempt's outcome from them."""

from __future__ import annotations

import click
import pytest
from pydantic import ValidationError

from vlmbatch.producer.cli.run_options import repetition_detection
from vlmbatch.schema.contracts.finish import finish_kind
from vlmbatch.schema.contracts.models import (
    REPETITION_PRESETS,
    JobParams,
    RepetitionDetection,
    RunSettings,
    SamplingSettings,
)
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.worker.engines.base import Completion
from vlmbatch.worker.pipeline.output import attempt_outcome, to_sample


def test_length_before_max_tokens_is_the_context_limit() -> None:
    assert finish_kind("length", num_tokens=100, max_tokens=100) == "length"
    assert finish_kind("length", num_tokens=40, max_tokens=100) == "context"
    assert finish_kind("repetition", num_tokens=40, max_tokens=100) == "repetition"
    assert finish_kind("stop", num_tokens=40, max_tokens=100) == "stop"


def test_a_stopped_loop_or_a_context_stop_truncates_the_attempt_unless_another_sample_answered() -> None:
    sampling = SamplingSettings(max_tokens=64)
    loop = to_sample(0, Completion("again again again", 48, "repetition"), opened_by_prompt=True, sampling=sampling)
    context = to_sample(1, Completion("long trace", 30, "length"), opened_by_prompt=True, sampling=sampling)
    answered = to_sample(2, Completion("t</think>a", 3, "stop"), opened_by_prompt=True, sampling=sampling)
    assert (loop.finish_reason, context.finish_reason, answered.finish_reason) == ("repetition", "context", "stop")
    assert attempt_outcome([loop]) == AttemptOutcome.TRUNCATED
    assert attempt_outcome([loop, context]) == AttemptOutcome.TRUNCATED
    assert attempt_outcome([loop, answered]) == AttemptOutcome.SUCCEEDED


def test_a_trace_closed_on_its_thinking_budget_succeeds_flagged_capped() -> None:
    sampling = SamplingSettings(thinking_token_budget=8)
    # vLLM counts the prompt's newline after `<think>`: seven tokens of trace, the forced `</think>`, the answer.
    capped = to_sample(
        0, Completion("t " * 7 + "</think>a", 10, "stop", reasoning_tokens=8), opened_by_prompt=True, sampling=sampling
    )
    short = to_sample(
        1, Completion("t t</think>a", 5, "stop", reasoning_tokens=3), opened_by_prompt=True, sampling=sampling
    )
    assert (capped.thinking_capped, capped.finish_reason, capped.answer) == (True, "stop", "a")
    assert short.thinking_capped is False
    assert attempt_outcome([capped]) == AttemptOutcome.SUCCEEDED
    unbounded = to_sample(
        0, Completion("t</think>a", 3, "stop", reasoning_tokens=2), opened_by_prompt=True, sampling=SamplingSettings()
    )
    assert unbounded.thinking_capped is None


def test_repetition_detection_takes_vllms_fields_and_refuses_what_vllm_refuses() -> None:
    assert REPETITION_PRESETS["reasoning"].model_dump() == {
        "max_pattern_size": 256,
        "min_pattern_size": 16,
        "min_count": 4,
    }
    with pytest.raises(ValidationError, match="min_count"):
        RepetitionDetection(max_pattern_size=8, min_count=1)
    with pytest.raises(ValidationError, match="must not exceed"):
        RepetitionDetection(max_pattern_size=8, min_pattern_size=9, min_count=3)


def test_the_flag_takes_a_preset_off_or_vllms_object_and_refuses_anything_else_in_one_line() -> None:
    assert repetition_detection("reasoning") == REPETITION_PRESETS["reasoning"]
    assert repetition_detection("off") is None
    given = repetition_detection('{"max_pattern_size": 32, "min_count": 3}')
    assert given == RepetitionDetection(max_pattern_size=32, min_count=3)
    with pytest.raises(click.UsageError, match="preset"):
        repetition_detection("loops")
    with pytest.raises(click.UsageError, match="min_count"):
        repetition_detection('{"max_pattern_size": 32, "min_count": 1}')


def test_a_jobs_own_limits_take_the_place_of_the_runs() -> None:
    run = SamplingSettings(repetition_detection=REPETITION_PRESETS["reasoning"], thinking_token_budget=4096)
    own = JobParams(repetition_detection=RepetitionDetection(max_pattern_size=8, min_count=5), thinking_token_budget=10)
    merged = own.sampling(run)
    assert (merged.repetition_detection, merged.thinking_token_budget) == (own.repetition_detection, 10)
    assert JobParams().sampling(run) == run


def test_runs_without_the_new_limits_keep_their_names_and_runs_with_them_get_new_ones() -> None:
    # The fingerprint of RunSettings(model="m") before repetition detection and thinking budgets existed.
    assert RunSettings(model="m").fingerprint() == LEGACY_FINGERPRINT
    with_loops = RunSettings(model="m", sampling=SamplingSettings(repetition_detection=REPETITION_PRESETS["reasoning"]))
    with_budget = RunSettings(model="m", sampling=SamplingSettings(thinking_token_budget=1000))
    assert len({LEGACY_FINGERPRINT, with_loops.fingerprint(), with_budget.fingerprint()}) == 3


LEGACY_FINGERPRINT = "5adb04e01c"  # computed with the code of main before this change
