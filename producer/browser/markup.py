"""Escaping by construction: every value put into a page goes through `escape` unless it is already
`Safe` (built here from escaped parts). Model output, file names, questions and error messages are all
untrusted; none of them is ever concatenated into HTML raw."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from urllib.parse import urlencode

# C0 controls other than tab, newline and carriage return, and DEL: invalid in HTML text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Safe(str):
    """HTML that is safe to emit as is: literal markup from this package, or escaped text."""

    __slots__ = ()


def escape(value: object) -> Safe:
    """`value` as HTML text: `&<>"'` escaped, control characters shown as U+FFFD. `Safe` passes through."""
    if isinstance(value, Safe):
        return value
    text = "" if value is None else str(value)
    return Safe(html.escape(_CONTROL.sub("\ufffd", text), quote=True))


def render(template: str, /, **values: object) -> Safe:
    """`template` (a literal of this package) with every `{name}` replaced by the escaped value."""
    return Safe(template.format(**{name: escape(value) for name, value in values.items()}))


def join(parts: Iterable[object], separator: str = "") -> Safe:
    """The parts escaped (unless `Safe`) and joined."""
    return Safe(separator.join(escape(part) for part in parts))


def href(path: str, **params: object) -> str:
    """A same-site URL: `path` with the non-empty `params` as its query (to be escaped where used)."""
    query = urlencode({k: str(v) for k, v in params.items() if v is not None and v != ""})
    return f"{path}?{query}" if query else path
