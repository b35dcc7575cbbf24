"""Plain-text rendering for the terminal: tables, a progress bar, durations."""

from __future__ import annotations

import re
from collections.abc import Sequence

from vlmbatch.producer.reports.display import duration
from vlmbatch.producer.reports.stats import Totals
from vlmbatch.schema.contracts.errors import ErrorType, is_storage_problem
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.status import Progress

BAR_WIDTH = 30
# Escape sequences (CSI, OSC and other ESC-introduced ones) and every other control character: text
# from a manifest or a model must not move the cursor, retitle the terminal or hide lines.
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` without escape sequences and control characters (tabs and newlines become spaces)."""
    return _ESCAPES.sub("", text.replace("\t", " ").replace("\n", " ").replace("\r", " "))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return terminal_safe(str(value))


def progress_line(name: str, progress: Progress) -> str:
    report = progress.report
    total = max(report.total, 1)
    filled = int(BAR_WIDTH * progress.done / total)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    c = report.counts
    return (
        f"{terminal_safe(name)} [{bar}] {100 * progress.done / total:5.1f}% {progress.done}/{report.total} "
        f"ok {c[JobState.SUCCEEDED.value]} fail {c[JobState.FAILED.value]} "
        f"trunc {c[JobState.TRUNCATED.value]} run {c[JobState.RUNNING.value]} | "
        + (
            f"done in {duration(progress.duration_seconds)}"
            if progress.duration_seconds is not None
            else f"{progress.jobs_per_second:.1f} jobs/s | ETA {duration(progress.eta_seconds)}"
        )
    )


def status_block(name: str, progress: Progress, cost: Totals | None = None, workers: int | None = None) -> str:
    report = progress.report
    lines = [f"run {report.run} ({terminal_safe(name)}): {report.total} jobs"]
    lines.append(table(["state", "jobs"], [(s.value, report.counts[s.value]) for s in JobState]))
    if report.errors:
        lines.append("")
        errors = sorted(report.errors.items(), key=_most_first)
        lines.append(table(["error type", "jobs", "problem"], [(e, n, _problem(e)) for e, n in errors]))
        denied = report.errors.get(ErrorType.STORAGE_DENIED.value)
        if denied:
            lines.append(
                f"storage problem: {denied} jobs were refused by the object store (credentials or permissions); "
                f"fix access, then `vlmbatch resubmit {report.run} --error-type {ErrorType.STORAGE_DENIED.value}`"
            )
    if report.rejected:
        lines.append("")
        lines.append(
            f"{report.rejected} rows rejected at submit (not jobs): `vlmbatch export {report.run} --format rejects`"
        )
    lines.append("")
    if progress.duration_seconds is not None:
        lines.append(
            f"finished: {progress.done} jobs in {duration(progress.duration_seconds)} "
            f"({progress.mean_jobs_per_second or 0:.2f} jobs/s on average)"
        )
    else:
        lines.append(f"rate {progress.jobs_per_second:.2f} jobs/s, ETA {duration(progress.eta_seconds)}")
    if workers is not None:
        lines.append(f"workers alive (heartbeat current, all queues): {workers}")
    if cost is not None:
        lines.append(
            f"cost so far: {cost.attempts} attempts, {cost.prompt_tokens:,} prompt, {cost.reasoning_tokens:,} "
            f"reasoning and {cost.answer_tokens:,} answer tokens, {cost.gpu_seconds:,.1f} GPU-seconds"
        )
    return "\n".join(lines)


def _problem(error_type: str) -> str:
    if is_storage_problem(error_type):
        return "storage"
    return error_type.split(".", 1)[0]


def _most_first(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]
