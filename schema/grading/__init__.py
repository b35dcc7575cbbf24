"""Grading a sampled answer against a job's reference answer, so distillation keeps only correct traces.

Four graders, picked per run: `choice` (a multiple-choice letter A to E), `numeric` (a number, within a
tolerance), `exact` (normalized text) and `boxed` (the last `\\boxed{...}`, compared as a number when
both sides are one, as normalized text otherwise). Each extracts the model's answer from the answer
part of an output (the text after `</think>`; `schema.reasoning.split_trace` separates it) and compares
it with the reference, which is parsed the same way.

Every pattern is linear in the input: bounded or possessive quantifiers only, and each pass over the
text is a single regex scan, so a 100,000-character answer costs milliseconds, not minutes.

Unicode: full-width forms (U+FF01 to U+FF5E: letters, brackets, colons, digits), every Unicode decimal
digit (Arabic-Indic, Devanagari, ...) and the minus sign U+2212 are folded to ASCII before choices and
numbers are extracted. Superscripts are not decimal digits, so "10" followed by a superscript two stays 10.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Final

from vlmbatch.schema.grading.choice import CHOICE_LETTERS, extract_choice
from vlmbatch.schema.grading.latex import BOX_OPEN, extract_boxed
from vlmbatch.schema.grading.numbers import (
    DEFAULT_ABS_TOL,
    DEFAULT_REL_TOL,
    MAX_DIGITS,
    boxed_agree,
    extract_number,
    numbers_agree,
    numbers_agree_within,
)
from vlmbatch.schema.grading.text import normalize_exact
from vlmbatch.schema.models import GraderName

GRADERS: Final[tuple[GraderName, ...]] = typing.get_args(GraderName)


@dataclass(frozen=True, slots=True)
class Grade:
    """What a grader found in an answer and whether it agrees with the reference.

    `correct` is None when the job has no reference (nothing to grade against; `extracted` is still
    filled in, so the ledger records what the model answered). With a reference, an answer from which
    nothing could be extracted has `extracted=None` and `correct=False`.
    """

    extracted: str | None
    correct: bool | None


def grade(
    grader: GraderName,
    answer: str,
    reference: str | None,
    *,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> Grade:
    """Grade `answer` (the text after `</think>`) against `reference` with the named grader.

    `rel_tol` and `abs_tol` apply to numeric comparisons (the `numeric` grader, and `boxed` when both
    sides are numbers). Raises ValueError for an unknown grader or a reference the grader cannot use
    (see `normalize_reference`): a bad reference is a data error, not a wrong answer.
    """
    extracted = extract_answer(grader, answer)
    if reference is None:
        return Grade(extracted=extracted, correct=None)
    expected = normalize_reference(grader, reference)
    if extracted is None:
        return Grade(extracted=None, correct=False)
    if grader == "numeric":
        correct = numbers_agree_within(extracted, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    elif grader == "boxed":
        correct = boxed_agree(extracted, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    else:
        correct = extracted == expected
    return Grade(extracted=extracted, correct=correct)


def extract_answer(grader: GraderName, answer: str) -> str | None:
    """The answer as the grader reads it, or None when there is none. Raises ValueError for an unknown
    grader."""
    if grader == "choice":
        return extract_choice(answer)
    if grader == "numeric":
        return extract_number(answer)
    if grader == "exact":
        return normalize_exact(answer) or None
    if grader == "boxed":
        return extract_boxed(answer)
    raise ValueError(f"unknown grader {grader!r}; expected one of {', '.join(GRADERS)}")


def normalize_reference(grader: GraderName, reference: str) -> str:
    """The reference in the form the grader compares: a letter, a number, normalized text, or the
    content of a boxed reference (a reference without `\\boxed` is used as written).

    Raises ValueError when the grader cannot use it (a choice reference without a letter, a numeric one
    without a number, an empty one). Producers should call this when submitting jobs, so that a bad
    reference is refused before any inference is spent on it.
    """
    if grader == "choice":
        expected = extract_choice(reference)
    elif grader == "numeric":
        expected = extract_number(reference)
    elif grader == "exact":
        expected = normalize_exact(reference) or None
    elif grader == "boxed":
        expected = extract_boxed(reference) if BOX_OPEN.search(reference) else (reference.strip() or None)
    else:
        raise ValueError(f"unknown grader {grader!r}; expected one of {', '.join(GRADERS)}")
    if expected is None:
        raise ValueError(f"the {grader} grader cannot use reference {reference[:80]!r}")
    return expected


__all__ = [
    "CHOICE_LETTERS",
    "DEFAULT_ABS_TOL",
    "DEFAULT_REL_TOL",
    "GRADERS",
    "MAX_DIGITS",
    "Grade",
    "GraderName",
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "extract_number",
    "grade",
    "normalize_exact",
    "normalize_reference",
    "numbers_agree",
]
