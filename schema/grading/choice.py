"""The `choice` grader: which option letter an answer chose (A to E, or as many letters as the job's
options: MMMU has up to nine), by its letter or by the option's text."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from vlmbatch.schema.grading.latex import TEXT_WRAPPER, extract_boxed
from vlmbatch.schema.grading.text import ANSWER_MARKER, fold_unicode, normalize_exact

CHOICE_LETTERS: Final = "ABCDE"
# Letters an options column can name; more options than this are not a multiple-choice question.
MAX_OPTION_LETTERS: Final = "ABCDEFGHIJ"
# An options column longer than this is not parsed (ast.literal_eval's cost grows with its input).
MAX_OPTIONS_CHARS: Final = 20_000

# --- Multiple choice -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Patterns:
    statement: re.Pattern[str]
    bare_letter: re.Pattern[str]
    leading_letter: re.Pattern[str]
    option_line: re.Pattern[str]
    letter_mention: re.Pattern[str]


@functools.cache
def _patterns(letters: str) -> _Patterns:
    upper, lower = f"[{letters}]", f"[{letters.lower()}]"
    # A capital is a letter unless a word goes on ("Both"); a lowercase one only when nothing but
    # punctuation follows ("is a." but not "is a cat"), since "a" is also the article.
    letter = rf"""
        (?: (?P<upper>{upper})(?![A-Za-z0-9])
          | (?P<lower>{lower})(?=[ \t]*+(?:$|[\n.,;:!?)\]]))
        )
    """
    statement = rf"""
        (?: {ANSWER_MARKER}
          | \b(?i:option|choice)(?:[ \t]++(?i:is)\b[ \t]*+:?+ | [ \t]*+:)
          | \b(?i:i)(?:[ \t]*+['\u2019](?i:d|ll) | [ \t]++(?i:would|will))?+
            [ \t]++(?i:choose|pick|select|go[ \t]++with)\b
        )
        \s{{0,8}}+ [(\[]?+ [ \t]*+ (?:(?i:option|choice)[ \t]++)?+
        {letter}
    """
    return _Patterns(
        statement=re.compile(statement, re.VERBOSE),
        bare_letter=re.compile(rf"[(\[]?+{letter}[)\]]?+[.:]?+", re.VERBOSE),
        leading_letter=re.compile(rf"(?:\((?P<paren>{upper}|{lower})\)|(?P<upper>{upper})[).:])(?=\s)"),
        option_line=re.compile(rf"^[ \t]*+(?:\((?P<paren>{upper})\)|(?P<upper>{upper})[).:])(?=\s)", re.MULTILINE),
        letter_mention=re.compile(
            rf"\((?P<paren>{upper})\)|\b(?i:option|choice)[ \t]++(?P<upper>{upper})(?![A-Za-z0-9])"
        ),
    )


_ANSWER_STATEMENT: Final = re.compile(ANSWER_MARKER, re.VERBOSE)
_MARKDOWN: Final = re.compile(r"\*\*|__|[$`]")


def parse_options(value: object) -> tuple[str, ...] | None:
    """A job's options from its metadata: a list, or a Python-list string as MMMU ships it
    (`"['cat', 'dog']"`). None when it is neither, is empty, or names more options than there are letters."""
    if isinstance(value, str):
        if len(value) > MAX_OPTIONS_CHARS or not value.lstrip().startswith(("[", "(")):
            return None
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    if not isinstance(value, list | tuple) or not value or len(value) > len(MAX_OPTION_LETTERS):
        return None
    if not all(isinstance(option, str | int | float) and not isinstance(option, bool) for option in value):
        return None
    return tuple(str(option) for option in value)


def choice_letters(options: Sequence[str] | None) -> str:
    """The letters a question's options go by: A to E without options, else one per option."""
    if options is None or len(options) <= len(CHOICE_LETTERS):
        return CHOICE_LETTERS
    return MAX_OPTION_LETTERS[: len(options)]


def extract_choice(text: str, options: Sequence[str] | None = None) -> str | None:
    """The multiple-choice letter (returned uppercase) that the text answers, or None.

    Evidence is taken in this order, the first that yields a letter winning:
    1. the last `\\boxed{}` when it holds a letter (`\\boxed{C}`, `\\boxed{\\text{(C)}}`);
    2. the last explicit statement: "the answer is C", "Answer: (d)", "答案是C", "the correct option is B",
       "I choose A" (so "A is wrong, B is wrong, the answer is D" gives D);
    3. a last line that is only a letter: "B", "(B)", "B)", "B.", "**b**";
    4. a letter opening the text: "C. blue", "(B) because ...", unless several lines open with different
       letters (then the text lists the options rather than answering);
    5. a single letter mentioned as "(C)" or "option C", when no other letter is mentioned that way;
    6. with `options`: the text of exactly one option, stated as the box, the answer statement, the last
       line or the whole text ("The answer is the red car." gives the letter of "red car").
    Lowercase letters count only where they cannot be the article "a": bare, in brackets, or followed by
    punctuation. So "A cat sits on a mat" has no answer. The letters are A to E, or one per option.
    """
    patterns = _patterns(choice_letters(options))
    text = _MARKDOWN.sub("", fold_unicode(text))
    boxed = extract_boxed(text)
    if boxed is not None and (letter := _choice_in_box(boxed, patterns)) is not None:
        return letter
    statements = list(patterns.statement.finditer(text))
    if statements:
        return _letter_of(statements[-1])
    stripped = text.strip()
    last_line = stripped.rsplit("\n", 1)[-1].strip()
    if (bare := patterns.bare_letter.fullmatch(last_line)) is not None:
        return _letter_of(bare)
    leading = patterns.leading_letter.match(stripped + "\n")
    if leading is not None and not _lists_options(stripped, patterns):
        return _letter_of(leading)
    mentioned = {_letter_of(mention) for mention in patterns.letter_mention.finditer(text)}
    if len(mentioned) == 1:
        return mentioned.pop()
    return None if not options else _option_stated(stripped, boxed, options)


def _option_stated(text: str, boxed: str | None, options: Sequence[str]) -> str | None:
    """The letter of the one option whose text the answer states (normalized like the exact grader)."""
    by_text: dict[str, set[str]] = {}
    for letter, option in zip(MAX_OPTION_LETTERS, options, strict=False):
        by_text.setdefault(normalize_exact(option), set()).add(letter)
    by_text.pop("", None)
    statements = list(_ANSWER_STATEMENT.finditer(text))
    stated = text[statements[-1].end() :].split("\n", 1)[0] if statements else None
    last_line = text.rsplit("\n", 1)[-1]
    for candidate in (boxed, stated, last_line, text):
        if candidate is None:
            continue
        letters = by_text.get(normalize_exact(TEXT_WRAPPER.sub(r"\1", candidate)))
        if letters is not None:
            return next(iter(letters)) if len(letters) == 1 else None
    return None


def _choice_in_box(content: str, patterns: _Patterns) -> str | None:
    content = TEXT_WRAPPER.sub(r"\1", content).strip()
    match = patterns.bare_letter.fullmatch(content) or patterns.leading_letter.match(content + "\n")
    return None if match is None else _letter_of(match)


def _lists_options(text: str, patterns: _Patterns) -> bool:
    return len({_letter_of(line) for line in patterns.option_line.finditer(text)}) > 1


def _letter_of(match: re.Match[str]) -> str:
    groups = match.groupdict()
    letter = groups.get("upper") or groups.get("lower") or groups.get("paren") or ""
    return letter.upper()
