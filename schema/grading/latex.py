"""LaTeX in answers: the last `\\boxed{...}`, and LaTeX reduced to plain text for comparison."""

from __future__ import annotations

import re
from typing import Final

from vlmbatch.schema.grading.text import fold_unicode, normalize_text

# --- Boxed ---------------------------------------------------------------------------------------------

BOX_OPEN: Final = re.compile(r"\\(?:boxed|fbox)[ \t]*+\{")
_BRACE: Final = re.compile(r"\\[{}]|[{}]")


def extract_boxed(text: str) -> str | None:
    """The stripped content of the last `\\boxed{...}` or `\\fbox{...}`, nested braces included.

    Returns None when there is no box, when the last one is empty, or when its braces never balance
    (a truncated answer): an earlier box is then not used, since the model moved past it.
    Escaped braces (`\\{`, `\\}`) do not count towards the balance.
    """
    openings = list(BOX_OPEN.finditer(text))
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


TEXT_WRAPPER: Final = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|operatorname|rm)[ \t]*+\{([^{}]*+)\}")
_LATEX_NOISE: Final = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|\\[!,;: ]|\$")
_DEGREES: Final = re.compile(r"\^[ \t]*+(?:\\circ|\{[ \t]*+\\circ[ \t]*+\})")
_OPERATOR_SPACE: Final = re.compile(r"\s*+([,;:()\[\]{}=+\-*/^_<>])\s*+")


def plain_latex(content: str) -> str:
    content = _DEGREES.sub("°", _LATEX_NOISE.sub("", content))
    for _ in range(3):  # unwraps \text{\textbf{x}} from the inside out
        content = TEXT_WRAPPER.sub(r"\1", content)
    return content


def normalize_latex(content: str) -> str:
    # Collapsing whitespace first keeps the operator pattern linear on long runs of spaces.
    content = " ".join(plain_latex(fold_unicode(content)).split())
    content = _OPERATOR_SPACE.sub(r"\1", content)
    return normalize_text(content, drop_article=False)
