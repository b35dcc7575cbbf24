"""Grading a sampled answer against a job's reference answer, so distillation keeps only correct traces.

Four graders, picked per run: `choice` (a multiple-choice letter A to E), `numeric` (a number, within a
tolerance), `exact` (normalized text) and `boxed` (the last `\\boxed{...}`, compared as a number when
both sides are one, as normalized text otherwise). Each extracts the model's answer from the answer
part of an output (the text after `</think>`; `worker.output.split_trace` separates it) and compares
it with the reference, which is parsed the same way.

Every pattern is linear in the input: bounded or possessive quantifiers only, and each pass over the
text is a single regex scan, so a 100,000-character answer costs milliseconds, not minutes.

Unicode: full-width forms (U+FF01 to U+FF5E: letters, brackets, colons, digits), every Unicode decimal
digit (Arabic-Indic, Devanagari, ...) and the minus sign U+2212 are folded to ASCII before choices and
numbers are extracted. Superscripts are not decimal digits, so "10" followed by a superscript two stays 10.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Final, Literal

GraderName = Literal["choice", "numeric", "exact", "boxed"]
GRADERS: Final[tuple[GraderName, ...]] = ("choice", "numeric", "exact", "boxed")

CHOICE_LETTERS: Final = "ABCDE"
# Relative tolerance absorbs rounding in the last printed digits ("0.333333" for 1/3); the absolute one
# only lets answers of zero match references of zero without a relative scale.
DEFAULT_REL_TOL: Final = 1e-6
DEFAULT_ABS_TOL: Final = 1e-9
# No real answer has more digits than this; longer runs are noise, and capping them keeps float() cheap.
MAX_DIGITS: Final = 100


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
        correct = _numbers_agree(extracted, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    elif grader == "boxed":
        correct = _boxed_agree(extracted, expected, rel_tol=rel_tol, abs_tol=abs_tol)
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
        expected = extract_boxed(reference) if _BOX_OPEN.search(reference) else (reference.strip() or None)
    else:
        raise ValueError(f"unknown grader {grader!r}; expected one of {', '.join(GRADERS)}")
    if expected is None:
        raise ValueError(f"the {grader} grader cannot use reference {reference[:80]!r}")
    return expected


# --- Unicode folding -----------------------------------------------------------------------------------

_MINUS_SIGNS: Final = "\u2212\ufe63"


@functools.lru_cache(maxsize=4096)
def _fold_codepoint(codepoint: int) -> int:
    if 0xFF01 <= codepoint <= 0xFF5E:  # full-width ASCII
        return codepoint - 0xFEE0
    if codepoint == 0x3000:  # ideographic space
        return 0x20
    char = chr(codepoint)
    if char in _MINUS_SIGNS:
        return ord("-")
    digit = unicodedata.decimal(char, None)
    return codepoint if digit is None else ord("0") + digit


class _FoldTable:
    """A `str.translate` table computed per code point, instead of a dict over all of Unicode."""

    def __getitem__(self, codepoint: int) -> int:
        return _fold_codepoint(codepoint)


def _fold_unicode(text: str) -> str:
    return text if text.isascii() else text.translate(_FoldTable())


# --- Boxed ---------------------------------------------------------------------------------------------

_BOX_OPEN: Final = re.compile(r"\\(?:boxed|fbox)[ \t]*+\{")
_BRACE: Final = re.compile(r"\\[{}]|[{}]")


def extract_boxed(text: str) -> str | None:
    """The stripped content of the last `\\boxed{...}` or `\\fbox{...}`, nested braces included.

    Returns None when there is no box, when the last one is empty, or when its braces never balance
    (a truncated answer): an earlier box is then not used, since the model moved past it.
    Escaped braces (`\\{`, `\\}`) do not count towards the balance.
    """
    openings = list(_BOX_OPEN.finditer(text))
    if not openings:
        return None
    opening = openings[-1]
    depth = 1
    for brace in _BRACE.finditer(text, opening.end()):
        token = brace.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return text[opening.end() : brace.start()].strip() or None
    return None


# --- Multiple choice -----------------------------------------------------------------------------------

_UPPER: Final = f"[{CHOICE_LETTERS}]"
_LOWER: Final = f"[{CHOICE_LETTERS.lower()}]"
# A capital is a letter unless a word goes on ("Both"); a lowercase one only when nothing but punctuation
# follows ("is a." but not "is a cat"), since "a" is also the article.
_LETTER: Final = rf"""
    (?: (?P<upper>{_UPPER})(?![A-Za-z0-9])
      | (?P<lower>{_LOWER})(?=[ \t]*+(?:$|[\n.,;:!?)\]]))
    )
"""
# "The answer is", "Answer:", "answer would be", "答案是": shared by the choice and numeric graders.
_ANSWER_MARKER: Final = r"""
    (?: \b(?i:answer)
        (?: [ \t]++(?i:is|was|would[ \t]++be|should[ \t]++be|must[ \t]++be|will[ \t]++be)\b[ \t]*+:?+
          | [ \t]*+[:=] )
      | 答案[ \t]*+(?:是|为|:|=)
    )
"""
_CHOICE_STATEMENT: Final = re.compile(
    rf"""
    (?: {_ANSWER_MARKER}
      | \b(?i:option|choice)(?:[ \t]++(?i:is)\b[ \t]*+:?+ | [ \t]*+:)
      | \b(?i:i)(?:[ \t]*+['\u2019](?i:d|ll) | [ \t]++(?i:would|will))?+[ \t]++(?i:choose|pick|select|go[ \t]++with)\b
    )
    \s{{0,8}}+ [(\[]?+ [ \t]*+ (?:(?i:option|choice)[ \t]++)?+
    {_LETTER}
    """,
    re.VERBOSE,
)
_BARE_LETTER: Final = re.compile(rf"[(\[]?+{_LETTER}[)\]]?+[.:]?+", re.VERBOSE)
_LEADING_LETTER: Final = re.compile(rf"(?:\((?P<paren>{_UPPER}|{_LOWER})\)|(?P<upper>{_UPPER})[).:])(?=\s)")
_OPTION_LINE: Final = re.compile(rf"^[ \t]*+(?:\((?P<paren>{_UPPER})\)|(?P<upper>{_UPPER})[).:])(?=\s)", re.MULTILINE)
_LETTER_MENTION: Final = re.compile(
    rf"\((?P<paren>{_UPPER})\)|\b(?i:option|choice)[ \t]++(?P<upper>{_UPPER})(?![A-Za-z0-9])"
)
_MARKDOWN: Final = re.compile(r"\*\*|__|[$`]")
_TEXT_WRAPPER: Final = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|operatorname|rm)[ \t]*+\{([^{}]*+)\}")


def extract_choice(text: str) -> str | None:
    """The multiple-choice letter (A to E, returned uppercase) that the text answers, or None.

    Evidence is taken in this order, the first that yields a letter winning:
    1. the last `\\boxed{}` when it holds a letter (`\\boxed{C}`, `\\boxed{\\text{(C)}}`);
    2. the last explicit statement: "the answer is C", "Answer: (d)", "答案是C", "the correct option is B",
       "I choose A" (so "A is wrong, B is wrong, the answer is D" gives D);
    3. a last line that is only a letter: "B", "(B)", "B)", "B.", "**b**";
    4. a letter opening the text: "C. blue", "(B) because ...", unless several lines open with different
       letters (then the text lists the options rather than answering);
    5. a single letter mentioned as "(C)" or "option C", when no other letter is mentioned that way.
    Lowercase letters count only where they cannot be the article "a": bare, in brackets, or followed by
    punctuation. So "A cat sits on a mat" has no answer.
    """
    text = _MARKDOWN.sub("", _fold_unicode(text))
    boxed = extract_boxed(text)
    if boxed is not None and (letter := _choice_in_box(boxed)) is not None:
        return letter
    statements = list(_CHOICE_STATEMENT.finditer(text))
    if statements:
        return _letter_of(statements[-1])
    stripped = text.strip()
    last_line = stripped.rsplit("\n", 1)[-1].strip()
    if (bare := _BARE_LETTER.fullmatch(last_line)) is not None:
        return _letter_of(bare)
    if (leading := _LEADING_LETTER.match(stripped + "\n")) is not None and not _lists_options(stripped):
        return _letter_of(leading)
    mentioned = {_letter_of(mention) for mention in _LETTER_MENTION.finditer(text)}
    return mentioned.pop() if len(mentioned) == 1 else None


def _choice_in_box(content: str) -> str | None:
    content = _TEXT_WRAPPER.sub(r"\1", content).strip()
    match = _BARE_LETTER.fullmatch(content) or _LEADING_LETTER.match(content + "\n")
    return None if match is None else _letter_of(match)


def _lists_options(text: str) -> bool:
    return len({_letter_of(line) for line in _OPTION_LINE.finditer(text)}) > 1


def _letter_of(match: re.Match[str]) -> str:
    groups = match.groupdict()
    letter = groups.get("upper") or groups.get("lower") or groups.get("paren") or ""
    return letter.upper()


# --- Numbers -------------------------------------------------------------------------------------------

_DIGITS: Final = rf"[0-9]{{1,{MAX_DIGITS}}}+"
# Digits glued to a word ("x2", "v1.5") or written as an exponent or subscript ("cm^2", "x_{1}") are not
# numbers of their own.
_NOT_A_TAIL: Final = r"(?<![A-Za-z0-9_.^])(?<!\^\{)(?<!_\{)"
_NUMBER: Final = re.compile(
    rf"""
      (?P<frac_sign>(?<![A-Za-z0-9_)\]}}])-[ \t]*+)?+
      \\[dt]?frac
      (?: [ \t]*+\{{[ \t]*+(?P<frac_num>-?{_DIGITS}(?:\.{_DIGITS})?+)[ \t]*+\}}
          [ \t]*+\{{[ \t]*+(?P<frac_den>-?{_DIGITS}(?:\.{_DIGITS})?+)[ \t]*+\}}
        | (?P<short_num>[0-9])(?P<short_den>[0-9])(?![0-9]) )
    |
      (?P<sign>(?<![A-Za-z0-9_)\]}}])[-+])?+
      (?:[$€£¥][ \t]*+)?+
      {_NOT_A_TAIL}
      # Comma groups of exactly three digits are thousands ("1,234,567"); "1, 2, 3" and "1,2,3" are lists.
      (?P<int>[0-9]{{1,3}}+(?:,[0-9]{{3}})++(?![0-9]) | {_DIGITS}(?![0-9]) | (?=\.[0-9]))
      (?P<dec>\.{_DIGITS}(?![0-9]))?+
      (?P<exp>[eE][-+]?+[0-9]{{1,3}}+(?![0-9]))?+
      (?: [ \t]*+(?:\\times|\\cdot|\u00d7|[x*])[ \t]*+10[ \t]*+\^[ \t]*+
          (?:\{{[ \t]*+(?P<pow>[-+]?+[0-9]{{1,3}}+)[ \t]*+\}} | (?P<pow_bare>[-+]?+[0-9]{{1,3}}+)(?![0-9])) )?+
      (?: [ \t]*+/[ \t]*+(?P<den>{_DIGITS}(?:\.{_DIGITS})?+)(?![0-9]) )?+
    """,
    re.VERBOSE,
)
_ANSWER_STATEMENT: Final = re.compile(_ANSWER_MARKER, re.VERBOSE)
_LATEX_THOUSANDS: Final = re.compile(r"(?<=[0-9])(?:\{,\}|\\,)(?=[0-9]{3}(?![0-9]))")


def extract_number(text: str) -> str | None:
    """The number the text answers, canonical (no units, currency, `%` or thousands separators;
    `\\frac{3}{4}` as "3/4"; "3 \\times 10^{8}" as "3e8"), or None.

    Which number: the last one in the last `\\boxed{}` if there is a box (None if the box holds none);
    else the first after the last answer statement ("The answer is 12 cm, i.e. 120 mm" gives 12);
    else the last number in the text. "45%" reads as 45, so it equals a reference of "45", not "0.45".
    Not handled: spaces as thousands separators ("1 234") and decimal commas ("3,5" reads as 3 and 5).
    """
    text = _LATEX_THOUSANDS.sub(",", _fold_unicode(text))
    boxed = extract_boxed(text)
    if boxed is not None:
        return _last_number(boxed)
    statements = list(_ANSWER_STATEMENT.finditer(text))
    if statements:
        for match in _NUMBER.finditer(text, statements[-1].end()):
            if (number := _canonical_number(match)) is not None:
                return number
    return _last_number(text)


def numbers_agree(
    answer: str, reference: str, *, rel_tol: float = DEFAULT_REL_TOL, abs_tol: float = DEFAULT_ABS_TOL
) -> bool:
    """Whether two texts state the same number (as `extract_number` reads them), within tolerance.
    False when either states none."""
    left, right = extract_number(answer), extract_number(reference)
    if left is None or right is None:
        return False
    return _numbers_agree(left, right, rel_tol=rel_tol, abs_tol=abs_tol)


def _numbers_agree(left: str, right: str, *, rel_tol: float, abs_tol: float) -> bool:
    left_value, right_value = _to_float(left), _to_float(right)
    if left_value is None or right_value is None:
        return False
    return math.isclose(left_value, right_value, rel_tol=rel_tol, abs_tol=abs_tol)


def _last_number(text: str) -> str | None:
    for match in reversed(list(_NUMBER.finditer(text))):
        if (number := _canonical_number(match)) is not None:
            return number
    return None


def _canonical_number(match: re.Match[str]) -> str | None:
    """The matched number as a string `_to_float` reads, or None when it is no number (`\\frac{1}{0}`)."""
    if match.group("frac_num") is not None or match.group("short_num") is not None:
        numerator = match.group("frac_num") or match.group("short_num")
        denominator = match.group("frac_den") or match.group("short_den")
        negative = (match.group("frac_sign") is not None) ^ numerator.startswith("-") ^ denominator.startswith("-")
        number = f"{'-' if negative else ''}{numerator.lstrip('-')}/{denominator.lstrip('-')}"
    else:
        integer, decimals = match.group("int").replace(",", ""), match.group("dec") or ""
        if not integer and not decimals:
            return None
        number = f"{'-' if match.group('sign') == '-' else ''}{integer or '0'}{decimals}"
        number += match.group("exp") or ""
        power = match.group("pow") or match.group("pow_bare")
        if power is not None:
            number += f"e{power}"
        if match.group("den") is not None:
            number += f"/{match.group('den')}"
    return number if _to_float(number) is not None else None


def _to_float(number: str) -> float | None:
    numerator, _, denominator = number.partition("/")
    try:
        value = float(numerator)
        if denominator:
            divisor = float(denominator)
            if divisor == 0:
                return None
            value /= divisor
    except (ValueError, OverflowError):  # "1e3e8": an exponent written twice
        return None
    return None if math.isnan(value) else value


# --- Boxed comparison ----------------------------------------------------------------------------------

_LATEX_NOISE: Final = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|\\[!,;: ]|\$")
_DEGREES: Final = re.compile(r"\^[ \t]*+(?:\\circ|\{[ \t]*+\\circ[ \t]*+\})")
_OPERATOR_SPACE: Final = re.compile(r"\s*+([,;:()\[\]{}=+\-*/^_<>])\s*+")
_NAMED_VALUE: Final = re.compile(r"[A-Za-z]{1,10}[ \t]*+=")
# What may surround a lone number for it to still be that number: units, currency, percent, degrees.
_UNITS: Final = re.compile(r"(?:[A-Za-z%°$€£¥.\s]|(?<=[A-Za-z])/(?=[A-Za-z]))*+")


def _boxed_agree(answer: str, reference: str, *, rel_tol: float, abs_tol: float) -> bool:
    answer_value, reference_value = _lone_number(answer), _lone_number(reference)
    if answer_value is not None and reference_value is not None:
        return math.isclose(answer_value, reference_value, rel_tol=rel_tol, abs_tol=abs_tol)
    return _normalize_latex(answer) == _normalize_latex(reference)


def _lone_number(content: str) -> float | None:
    """The value of content that is one number with at most units around it ("12 \\text{cm}", "45\\%",
    "x = 5"); None for anything else ("\\sqrt{2}", "(1, 2)", "2^{10}")."""
    content = _plain_latex(_LATEX_THOUSANDS.sub(",", _fold_unicode(content)))
    content = content.replace("\\%", "%").replace("\\$", "$").strip()
    if (name := _NAMED_VALUE.match(content)) is not None:
        content = content[name.end() :]
    matches = list(_NUMBER.finditer(content))
    if len(matches) != 1:
        return None
    number = matches[0]
    if not _UNITS.fullmatch(content[: number.start()] + " " + content[number.end() :]):
        return None
    canonical = _canonical_number(number)
    return None if canonical is None else _to_float(canonical)


def _plain_latex(content: str) -> str:
    content = _DEGREES.sub("°", _LATEX_NOISE.sub("", content))
    for _ in range(3):  # unwraps \text{\textbf{x}} from the inside out
        content = _TEXT_WRAPPER.sub(r"\1", content)
    return content


def _normalize_latex(content: str) -> str:
    # Collapsing whitespace first keeps the operator pattern linear on long runs of spaces.
    content = " ".join(_plain_latex(_fold_unicode(content)).split())
    content = _OPERATOR_SPACE.sub(r"\1", content)
    return _normalize_text(content, drop_article=False)


# --- Exact ---------------------------------------------------------------------------------------------

# Straight, curly, guillemet and CJK corner quotes, plus markdown emphasis and whitespace.
_QUOTES_AND_MARKUP: Final = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb\u300c\u300d\u300e\u300f*_ \t\r\n\f\v"
# NFKC has already folded full-width punctuation; the ideographic full stop has no ASCII form.
_TRAILING_PUNCTUATION: Final = ".,;:!?\u3002"
_ANSWER_LABEL: Final = re.compile(r"(?:final[ \t]++)?+answer[ \t]*+:[ \t]*+")
_ARTICLE: Final = re.compile(r"(?:the|an|a)\s++")


def normalize_exact(text: str) -> str:
    """The text as the exact grader compares it: Unicode NFKC, case-folded, without markdown bold,
    surrounding quotes, trailing punctuation, a leading "Answer:" label or a leading article ("the", "a",
    "an"), with runs of whitespace collapsed to one space. "" when nothing is left.

    `"The Eiffel Tower."` and `**eiffel tower**` both normalize to "eiffel tower"; "A" stays "a" (an
    article needs a word after it).
    """
    return _normalize_text(text, drop_article=True)


def _normalize_text(text: str, *, drop_article: bool) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().replace("**", "").replace("__", "")
    text = " ".join(text.split())
    for _ in range(2):  # a second pass for what the first uncovers: "Answer: 'the blue one'."
        text = text.strip(_QUOTES_AND_MARKUP).rstrip(_TRAILING_PUNCTUATION + _QUOTES_AND_MARKUP)
        if (label := _ANSWER_LABEL.match(text)) is not None:
            text = text[label.end() :]
        if drop_article and (article := _ARTICLE.match(text)) is not None:
            text = text[article.end() :]
    return text
