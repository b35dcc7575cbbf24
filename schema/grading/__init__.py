"""Grading a sampled answer against a job's reference answer, so distillation keeps only correct traces.

Four graders, picked per run: `choice` (a multiple-choice letter A to E, or one per option of the job's
`options` metadata column, stated as the letter or as the option's text), `numeric` (a number, within a
tolerance), `exact` (normalized text) and `boxed` (the last `\\boxed{...}`, compared as a number when
both sides are one, as normalized text otherwise). Each extracts the model's answer from the answer
part of an output (the text after `</think>`; `schema.contracts.reasoning.split_trace` separates it) and compares
it with the reference, which is parsed the same way.

`boxed` and `numeric` then ask Hugging Face `math-verify` whatever our own comparison did not show equal:
the box's content (`boxed`), or the stated final answer (`numeric`: `final_answer_text`), against the
reference, symbolically (`\\frac{1}{2}` = 0.5, `\\sqrt{2}/2` = `\\frac{\\sqrt2}{2}`, intervals, sets).
`symbolic.py` says how that is bounded in length and time. Each graded result records the grader's
name and `grader_version` (ours, and math-verify's where it took part).

Every pattern is linear in the input: bounded or possessive quantifiers only, and each pass over the
text is a single regex scan, so a 100,000-character answer costs milliseconds, not minutes.

Unicode: full-width forms (U+FF01 to U+FF5E: letters, brackets, colons, digits), every Unicode decimal
digit (Arabic-Indic, Devanagari, ...) and the minus sign U+2212 are folded to ASCII before choices and
numbers are extracted. Superscripts are not decimal digits, so "10" followed by a superscript two stays 10.
"""

from __future__ import annotations

import functools
import importlib.metadata
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from vlmbatch.schema.contracts.models import GraderName
from vlmbatch.schema.grading.choice import CHOICE_LETTERS, extract_choice, parse_options
from vlmbatch.schema.grading.latex import BOX_OPEN, extract_boxed
from vlmbatch.schema.grading.numbers import (
    DEFAULT_ABS_TOL,
    DEFAULT_REL_TOL,
    MAX_DIGITS,
    boxed_agree,
    extract_number,
    final_answer_text,
    numbers_agree,
    numbers_agree_within,
)
from vlmbatch.schema.grading.symbolic import MATH_VERIFY_VERSION, symbolically_equal
from vlmbatch.schema.grading.text import normalize_exact

GRADERS: Final[tuple[GraderName, ...]] = typing.get_args(GraderName)
_SYMBOLIC: Final[frozenset[GraderName]] = frozenset({"boxed", "numeric"})


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
    options: Sequence[str] | None = None,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> Grade:
    """Grade `answer` (the text after `</think>`) against `reference` with the named grader.

    `options` are the question's options (the `choice` grader maps an option's text to its letter and
    reads as many letters as there are options). `rel_tol` and `abs_tol` apply to numeric comparisons
    (the `numeric` grader, and `boxed` when both sides are numbers). Raises ValueError for an unknown
    grader or a reference the grader cannot use (see `normalize_reference`): a bad reference is a data
    error, not a wrong answer.
    """
    extracted = extract_answer(grader, answer, options=options)
    if reference is None:
        return Grade(extracted=extracted, correct=None)
    expected = normalize_reference(grader, reference, options=options)
    if extracted is None:
        return Grade(extracted=None, correct=False)
    if grader == "numeric":
        correct = numbers_agree_within(extracted, expected, rel_tol=rel_tol, abs_tol=abs_tol)
        if not correct and (stated := final_answer_text(answer)) is not None:
            correct = symbolically_equal(stated, reference)
    elif grader == "boxed":
        correct = boxed_agree(extracted, expected, rel_tol=rel_tol, abs_tol=abs_tol)
        correct = correct or symbolically_equal(extracted, expected)
    else:
        correct = extracted == expected
    return Grade(extracted=extracted, correct=correct)


@functools.cache
def grader_version(grader: GraderName) -> str:
    """What graded a result, recorded with it: our package's version, and math-verify's for the graders
    that use it (a later version may grade the same answer differently)."""
    ours = f"vlmbatch {importlib.metadata.version('vlmbatch')}"
    return f"{ours}; math-verify {MATH_VERIFY_VERSION}" if grader in _SYMBOLIC else ours


def extract_answer(grader: GraderName, answer: str, *, options: Sequence[str] | None = None) -> str | None:
    """The answer as the grader reads it, or None when there is none. Raises ValueError for an unknown
    grader."""
    if grader == "choice":
        return extract_choice(answer, options)
    if grader == "numeric":
        return extract_number(answer)
    if grader == "exact":
        return normalize_exact(answer) or None
    if grader == "boxed":
        return extract_boxed(answer)
    raise ValueError(f"unknown grader {grader!r}; expected one of {', '.join(GRADERS)}")


def normalize_reference(grader: GraderName, reference: str, *, options: Sequence[str] | None = None) -> str:
    """The reference in the form the grader compares: a letter, a number, normalized text, or the
    content of a boxed reference (a reference without `\\boxed` is used as written).

    Raises ValueError when the grader cannot use it (a choice reference without a letter, a numeric one
    without a number, an empty one). Producers should call this when submitting jobs, so that a bad
    reference is refused before any inference is spent on it.
    """
    if grader == "choice":
        expected = extract_choice(reference, options)
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
    "final_answer_text",
    "grade",
    "grader_version",
    "normalize_exact",
    "normalize_reference",
    "numbers_agree",
    "parse_options",
    "symbolically_equal",
]
