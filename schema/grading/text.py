"""Text normalization shared by the graders: Unicode folding, the exact grader's normal form, and the
answer statements ("The answer is ...") the choice and numeric graders look after."""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Final

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


def fold_unicode(text: str) -> str:
    return text if text.isascii() else text.translate(_FoldTable())


# "The answer is", "Answer:", "answer would be", "答案是": shared by the choice and numeric graders.
ANSWER_MARKER: Final = r"""
    (?: \b(?i:answer)
        (?: [ \t]++(?i:is|was|would[ \t]++be|should[ \t]++be|must[ \t]++be|will[ \t]++be)\b[ \t]*+:?+
          | [ \t]*+[:=] )
      | 答案[ \t]*+(?:是|为|:|=)
    )
"""


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
    return normalize_text(text, drop_article=True)


def normalize_text(text: str, *, drop_article: bool) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().replace("**", "").replace("__", "")
    text = " ".join(text.split())
    for _ in range(2):  # a second pass for what the first uncovers: "Answer: 'the blue one'."
        text = text.strip(_QUOTES_AND_MARKUP).rstrip(_TRAILING_PUNCTUATION + _QUOTES_AND_MARKUP)
        if (label := _ANSWER_LABEL.match(text)) is not None:
            text = text[label.end() :]
        if drop_article and (article := _ARTICLE.match(text)) is not None:
            text = text[article.end() :]
    return text
