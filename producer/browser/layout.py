"""The page shell, its style sheet, and the small widgets every page shares (state badges, progress
bars, numbers, times). The pages use no script at all, and no inline style attributes, so the
Content-Security-Policy can forbid both."""

from __future__ import annotations

import base64
import functools
import hashlib
from datetime import datetime
from urllib.parse import unquote

from vlmbatch.producer.browser.markup import Safe, join, render
from vlmbatch.schema.states import JobState

# Shown where a value is missing (an en dash).
MISSING = "\u2013"

STYLE = """
:root { --ok: #1a7f37; --fail: #cf222e; --trunc: #9a6700; --run: #0969da; --muted: #59636e; --line: #d1d9e0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { padding: 10px 24px; border-bottom: 1px solid var(--line); background: #f6f8fa; }
header a { color: inherit; font-weight: 600; text-decoration: none; }
main { padding: 16px 24px 48px; max-width: 1400px; }
h1 { font-size: 20px; margin: 8px 0 12px; } h2 { font-size: 16px; margin: 28px 0 8px; }
a { color: var(--run); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px; border: 1px solid;
  white-space: nowrap; }
.s-succeeded, .c-correct { color: var(--ok); } .s-failed, .c-incorrect { color: var(--fail); }
.s-truncated { color: var(--trunc); } .s-running { color: var(--run); }
.s-queued, .s-cancelled, .c-ungraded { color: var(--muted); }
.counts { display: flex; flex-wrap: wrap; gap: 6px; }
progress { width: 220px; height: 12px; vertical-align: middle; }
meter { width: 140px; vertical-align: middle; }
meter.errors::-webkit-meter-optimum-value { background: var(--fail); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 4px 0; padding: 8px;
  background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; font-size: 13px; }
pre.trace { max-height: 480px; overflow-y: auto; background: #fbfbfb; }
details { margin: 6px 0; } summary { cursor: pointer; color: var(--run); }
.sample { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.images { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figure img { max-width: 512px; max-height: 512px; border: 1px solid var(--line); }
figcaption { font-size: 12px; color: var(--muted); overflow-wrap: anywhere; max-width: 512px; }
form.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: end; margin: 8px 0; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
.pager { display: flex; gap: 16px; margin: 10px 0; }
.error { color: var(--fail); }
"""


@functools.cache
def style_source() -> str:
    """The CSP source that admits exactly the page's style sheet."""
    digest = hashlib.sha256(STYLE.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def page(title: str, body: Safe, *, crumbs: list[tuple[str, str]] | None = None) -> Safe:
    """A whole HTML document. `crumbs`: (label, url) pairs shown after the home link."""
    trail = join(render(' \u203a <a href="{url}">{label}</a>', url=url, label=label) for label, url in crumbs or [])
    return render(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        "<title>{title} · vlmbatch</title><style>{style}</style></head>"
        '<body><header><a href="/">vlmbatch</a>{trail}</header><main>{body}</main></body></html>\n',
        title=title,
        style=Safe(STYLE),
        trail=trail,
        body=body,
    )


def state_badge(state: str) -> Safe:
    return render('<span class="badge s-{state}">{state}</span>', state=state)


def state_counts(counts: dict[str, int], link: str | None = None) -> Safe:
    """A badge per non-empty state with its count; each links to `link` filtered by that state."""
    badges = []
    for state in JobState:
        n = counts.get(state.value, 0)
        if not n:
            continue
        badge = render('<span class="badge s-{state}">{state} {n}</span>', state=state.value, n=number(n))
        if link is not None:
            badge = render('<a href="{url}#results">{badge}</a>', url=f"{link}?status={state.value}", badge=badge)
        badges.append(badge)
    return render('<span class="counts">{badges}</span>', badges=join(badges) or "no jobs")


def progress_bar(done: int, total: int) -> Safe:
    percent = 100.0 * done / total if total else 0.0
    return render(
        '<progress value="{done}" max="{most}"></progress> <span class="muted">{percent}% ({done}/{total})</span>',
        done=done,
        most=total or 1,
        total=total,
        percent=f"{percent:.1f}",
    )


def number(value: int | float | None, digits: int = 2) -> str:
    if value is None:
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f} s"


def when(value: datetime | None) -> str:
    """A stored time (naive UTC) to the second."""
    return MISSING if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def image_name(uri: str) -> str:
    """The file name an image URI ends with (decoded from a `file://` URI's percent-encoding)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1] or uri
    return unquote(name) if uri.startswith("file://") else name


def images_label(images: list[str]) -> str:
    """The first image's file name, and how many more the job has."""
    if not images:
        return MISSING
    more = f" (+{len(images) - 1})" if len(images) > 1 else ""
    return image_name(images[0]) + more


def facts(pairs: list[tuple[str, object]]) -> Safe:
    """A definition list of (label, value) pairs; values are escaped unless `Safe`."""
    items = join(render("<dt>{label}</dt><dd>{value}</dd>", label=label, value=value) for label, value in pairs)
    return render('<dl class="facts">{items}</dl>', items=items)
