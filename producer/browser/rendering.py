"""The browser's Jinja2 environment: templates in `templates/`, autoescaped (MarkupSafe) everywhere.

Model output, file names, questions and error messages are all untrusted; a template only ever prints
them through `{{ }}`, which escapes `&<>"'`. Nothing is marked safe but macro output and the package's
own style sheet. C0 control characters (invalid in HTML text) are shown as U+FFFD."""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from urllib.parse import unquote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from vlmbatch.producer.browser import layout
from vlmbatch.producer.reports.display import duration
from vlmbatch.schema.contracts.states import JobState

# C0 controls other than tab, newline and carriage return, and DEL: invalid in HTML text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _printable(value: object) -> object:
    """What `{{ value }}` prints (before autoescape): None as nothing, control characters replaced."""
    if isinstance(value, Markup):
        return value
    return "" if value is None else _CONTROL.sub("\ufffd", str(value))


def href(path: str, **params: object) -> str:
    """A same-site URL: `path` with the non-empty `params` as its query (escaped where printed)."""
    query = urlencode({k: str(v) for k, v in params.items() if v is not None and v != ""})
    return f"{path}?{query}" if query else path


def cut(text: str | None, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many more there are."""
    text = text or ""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… {len(text) - limit:,} more characters (vlmbatch export has the whole text)"


def pretty_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True)


def shown_uri(uri: str) -> str:
    """An image URI as a person reads it (a `file://` URI's percent-encoding decoded)."""
    return unquote(uri) if uri.startswith("file://") else uri


@functools.cache
def environment() -> Environment:
    """The one environment of the browser's templates (built on first use, never at import)."""
    env = Environment(
        loader=PackageLoader("vlmbatch.producer.browser", "templates"),
        autoescape=True,
        finalize=_printable,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        number=layout.number,
        seconds=layout.seconds,
        when=layout.when,
        duration=duration,
        image_name=layout.image_name,
        images_label=layout.images_label,
        cut=cut,
        pretty_json=pretty_json,
        sorted_json=lambda value: json.dumps(value, sort_keys=True),
        shown_uri=shown_uri,
    )
    env.globals.update(
        href=href,
        MISSING=layout.MISSING,
        MAX_TEXT_CHARS=layout.MAX_TEXT_CHARS,
        JOB_STATES=[state.value for state in JobState],
    )
    return env


def render(template: str, /, **context: Any) -> str:
    """The page `template` (a file of templates/) rendered with `context`; every value autoescaped."""
    style = Markup(layout.style_sheet())  # our own file: its hash is in the CSP
    return environment().get_template(template).render(style=style, **context)
