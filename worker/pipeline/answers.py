"""What happens to samples after generation: grading against the job's reference, checking the run's
answer constraint, and deciding whether an accept-until-M job needs another sampling round."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

from vlmbatch.schema.contracts.models import JobParams, RunSettings
from vlmbatch.schema.grading import grade, grader_version
from vlmbatch.schema.ledger.claims import ClaimedJob
from vlmbatch.schema.ledger.outcomes import SampleRecord
from vlmbatch.worker.engines.base import AnswerConstraint


@dataclass(frozen=True)
class JobPlan:
    """What a job asks beyond its run, worked out once per attempt: its own request settings (`params`:
    an OpenAI batch line's sampling, system prompt, answer format) and the answer constraint that the
    request enforces and the review checks."""

    params: JobParams | None
    constraint: AnswerConstraint | None

    @classmethod
    def of(cls, job: ClaimedJob, settings: RunSettings) -> JobPlan:
        params = JobParams.model_validate(job.params) if job.params else None
        return cls(params=params, constraint=constraint_of(settings, params))


def constraint_of(settings: RunSettings, params: JobParams | None = None) -> AnswerConstraint | None:
    """The answer constraint of a job: its own JSON schema (an OpenAI batch line's `response_format`),
    else the run's choices or schema."""
    if params is not None and params.json_schema is not None:
        return AnswerConstraint(json_schema=params.json_schema)
    if settings.choices or settings.json_schema:
        return AnswerConstraint(choices=settings.choices, json_schema=settings.json_schema)
    return None


def obeys(answer: str, constraint: AnswerConstraint) -> bool:
    """Whether `answer` is one of the choices, or JSON that matches the schema."""
    if constraint.choices:
        return answer.strip() in constraint.choices
    if constraint.json_schema is not None:
        import jsonschema

        try:
            jsonschema.validate(json.loads(answer), constraint.json_schema)
        except (ValueError, jsonschema.ValidationError):
            return False
    return True


def review(
    samples: Sequence[SampleRecord],
    settings: RunSettings,
    reference: str | None,
    constraint: AnswerConstraint | None = None,
    *,
    options: Sequence[str] | None = None,
) -> list[SampleRecord]:
    """Samples with their constraint check, extracted answer, correctness and grader filled in.

    With a constraint (the run's, or the job's own answer format: JobPlan), an answer that breaks it is
    recorded as invalid and never counts as correct. A sample whose trace never closed has no answer to
    grade. `options` are the job's (the choice grader maps an option's text to its letter). Grading may wait
    on a symbolic comparison (up to `grading.symbolic.SYMBOLIC_TIMEOUT_S`), so call this off the event loop."""
    reviewed = []
    for sample in samples:
        valid = obeys(sample.answer, constraint) if constraint is not None else None
        extracted, correct, grader = None, None, None
        if settings.grader is not None and sample.trace_closed:
            verdict = grade(settings.grader, sample.answer, reference, options=options)
            extracted, correct, grader = verdict.extracted, verdict.correct, settings.grader
        elif constraint is not None and valid:
            extracted = sample.answer.strip()
        if valid is False and correct:
            correct = False
        reviewed.append(
            dataclasses.replace(
                sample,
                extracted_answer=extracted,
                correct=correct,
                valid=valid,
                grader=grader,
                grader_version=None if grader is None else grader_version(grader),
            )
        )
    return reviewed


def needs_more_samples(settings: RunSettings, *, accepted_before: int, accepted_now: int, attempts_used: int) -> bool:
    """Accept-until-M: sample again while fewer than M correct samples exist and attempts remain."""
    if settings.accept is None:
        return False
    return accepted_before + accepted_now < settings.accept and attempts_used < settings.max_attempts
