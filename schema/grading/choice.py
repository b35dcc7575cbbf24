"""The `choice` grader: which option letter (A to E) an answer chose."""

from __future__ import annotations

import re
from typing import Final

from vlmbatch.schema.grading.latex import TEXT_WRAPPER, extract_boxed
from vlmbatch.schema.grading.text import ANSWER_MARKER, fold_unicode

CHOICE_LETTERS: Final = "ABCDE"

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
_CHOICE_STATEMENT: Final = re.compile(
    rf"""
    (?: {ANSWER_MARKER}
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
    text = _MARKDOWN.sub("", fold_unicode(text))
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
    content = TEXT_WRAPPER.sub(r"\1", content).strip()
    match = _BARE_LETTER.fullmatch(content) or _LEADING_LETTER.match(content + "\n")
    return None if match is None else _letter_of(match)


def _lists_options(text: str) -> bool:
    return len({_letter_of(line) for line in _OPTION_LINE.finditer(text)}) > 1


def _letter_of(match: re.Match[str]) -> str:
    groups = match.groupdict()
    letter = groups.get("upper") or groups.get("lower") or groups.get("paren") or ""
    return letter.upper()
