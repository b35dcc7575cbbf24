"""A run page's charts as server-side SVG (no script, no network at view time): output tokens/s over
time, the trace-length histogram and errors by type. Bars only; every label is escaped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from markupsafe import Markup, escape

from vlmbatch.schema.ledger.recent import Finish

WIDTH, HEIGHT, PAD = 360, 120, 18
BINS = 20


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], *, unit: str) -> Markup:
    """An SVG bar chart; an empty one says so."""
    head = (
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT + 2 * PAD}" width="{WIDTH}" '
        f'height="{HEIGHT + 2 * PAD}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f'<text x="0" y="12" class="chart-title">{escape(title)}</text>'
    )
    if not values or max(values) <= 0:
        return Markup(head + f'<text x="0" y="{PAD + 20}" class="muted">nothing yet</text></svg>')
    top = max(values)
    width = WIDTH / len(values)
    bars = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        height = HEIGHT * value / top
        bars.append(
            f'<rect class="bar" x="{i * width:.1f}" y="{PAD + HEIGHT - height:.1f}" width="{max(width - 1, 1):.1f}" '
            f'height="{height:.1f}"><title>{escape(label)}: {value:,.0f} {escape(unit)}</title></rect>'
        )
    axis = (
        f'<text x="0" y="{HEIGHT + 2 * PAD - 2}" class="muted">{escape(labels[0])}</text>'
        f'<text x="{WIDTH}" y="{HEIGHT + 2 * PAD - 2}" text-anchor="end" class="muted">{escape(labels[-1])}</text>'
        f'<text x="{WIDTH}" y="12" text-anchor="end" class="muted">max {top:,.0f} {escape(unit)}</text>'
    )
    return Markup(head + "".join(bars) + axis + "</svg>")


def tokens_over_time(finishes: Sequence[Finish]) -> Markup:
    """Output tokens per second of the latest finishes, in BINS equal slices of their span."""
    title = "Output tokens/s (latest finishes)"
    if len(finishes) < 2:
        return bar_chart(title, [], [], unit="tok/s")
    start, end = finishes[0].finished_at, finishes[-1].finished_at
    span = max((end - start).total_seconds(), 1.0)
    sums = [0.0] * BINS
    for finish in finishes:
        index = min(int(BINS * (finish.finished_at - start).total_seconds() / span), BINS - 1)
        sums[index] += finish.completion_tokens
    labels = [f"{start:%H:%M:%S}", *[""] * (BINS - 2), f"{end:%H:%M:%S}"]
    return bar_chart(title, labels, [s / (span / BINS) for s in sums], unit="tok/s")


def trace_lengths(finishes: Sequence[Finish]) -> Markup:
    """How many of the latest finishes had a trace of each length (BINS equal bins up to the longest)."""
    lengths = [f.reasoning_tokens if f.reasoning_tokens is not None else f.completion_tokens for f in finishes]
    title = "Trace length, tokens (latest finishes)"
    if not lengths:
        return bar_chart(title, [], [], unit="jobs")
    longest = max(max(lengths), 1)
    counts = [0] * BINS
    for length in lengths:
        counts[min(BINS * length // (longest + 1), BINS - 1)] += 1
    labels = ["0", *[""] * (BINS - 2), f"{longest:,}"]
    return bar_chart(title, labels, counts, unit="jobs")


def errors_by_type(errors: dict[str, int]) -> Markup:
    ranked = Counter(errors).most_common()
    return bar_chart("Failed jobs by error type", [e for e, _ in ranked], [n for _, n in ranked], unit="jobs")
