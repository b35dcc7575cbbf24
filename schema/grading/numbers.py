"""The `numeric` grader, and numbers inside boxes (`boxed`): the number an answer gives, canonical, and
whether two agree within a tolerance."""

from __future__ import annotations

import math
import re
from typing import Final

from vlmbatch.schema.grading.latex import extract_boxed, normalize_latex, plain_latex
from vlmbatch.schema.grading.text import ANSWER_MARKER, fold_unicode

# Relative tolerance absorbs rounding in the last printed digits ("0.333333" for 1/3); the absolute one
# only lets answers of zero match references of zero without a relative scale.
DEFAULT_REL_TOL: Final = 1e-6
DEFAULT_ABS_TOL: Final = 1e-9
# No real answer has more digits than this; longer runs are noise, and capping them keeps float() cheap.
MAX_DIGITS: Final = 100

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
_ANSWER_STATEMENT: Final = re.compile(ANSWER_MARKER, re.VERBOSE)
_LATEX_THOUSANDS: Final = re.compile(r"(?<=[0-9])(?:\{,\}|\\,)(?=[0-9]{3}(?![0-9]))")


def extract_number(text: str) -> str | None:
    """The number the text answers, canonical (no units, currency, `%` or thousands separators;
    `\\frac{3}{4}` as "3/4"; "3 \\times 10^{8}" as "3e8"), or None.

    Which number: the last one in the last `\\boxed{}` if there is a box (None if the box holds none);
    else the first after the last answer statement ("The answer is 12 cm, i.e. 120 mm" gives 12);
    else the last number in the text. "45%" reads as 45, so it equals a reference of "45", not "0.45".
    Not handled: spaces as thousands separators ("1 234") and decimal commas ("3,5" reads as 3 and 5).
    """
    text = _LATEX_THOUSANDS.sub(",", fold_unicode(text))
    boxed = extract_boxed(text)
    if boxed is not None:
        return _last_number(boxed)
    statements = list(_ANSWER_STATEMENT.finditer(text))
    if statements:
        for match in _NUMBER.finditer(text, statements[-1].end()):
            if (number := _canonical_number(match)) is not None:
                return number
    return _last_number(text)


def final_answer_text(text: str) -> str | None:
    """The final answer as the text states it, for a symbolic comparison: the last `\\boxed{}`'s content,
    else the rest of the line after the last answer statement, else the last line; None when empty."""
    text = fold_unicode(text).strip()
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    statements = list(_ANSWER_STATEMENT.finditer(text))
    start = statements[-1].end() if statements else text.rfind("\n") + 1
    line = text[start:].split("\n", 1)[0].strip().rstrip(".").strip()
    return line or None


def numbers_agree(
    answer: str, reference: str, *, rel_tol: float = DEFAULT_REL_TOL, abs_tol: float = DEFAULT_ABS_TOL
) -> bool:
    """Whether two texts state the same number (as `extract_number` reads them), within tolerance.
    False when either states none."""
    left, right = extract_number(answer), extract_number(reference)
    if left is None or right is None:
        return False
    return numbers_agree_within(left, right, rel_tol=rel_tol, abs_tol=abs_tol)


def numbers_agree_within(left: str, right: str, *, rel_tol: float, abs_tol: float) -> bool:
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


_NAMED_VALUE: Final = re.compile(r"[A-Za-z]{1,10}[ \t]*+=")
# What may surround a lone number for it to still be that number: units, currency, percent, degrees.
_UNITS: Final = re.compile(r"(?:[A-Za-z%°$€£¥.\s]|(?<=[A-Za-z])/(?=[A-Za-z]))*+")


def boxed_agree(answer: str, reference: str, *, rel_tol: float, abs_tol: float) -> bool:
    answer_value, reference_value = _lone_number(answer), _lone_number(reference)
    if answer_value is not None and reference_value is not None:
        return math.isclose(answer_value, reference_value, rel_tol=rel_tol, abs_tol=abs_tol)
    return normalize_latex(answer) == normalize_latex(reference)


def _lone_number(content: str) -> float | None:
    """The value of content that is one number with at most units around it ("12 \\text{cm}", "45\\%",
    "x = 5"); None for anything else ("\\sqrt{2}", "(1, 2)", "2^{10}")."""
    content = plain_latex(_LATEX_THOUSANDS.sub(",", fold_unicode(content)))
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
