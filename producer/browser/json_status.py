"""The run summaries the browser shows, as JSON for scripts: `/api/runs` (newest first, `?before=RUN_ID`
pages back) and `/api/runs/RUN_ID`. Same access rules as the pages (token, Host check)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from vlmbatch.producer.browser.queries import RunSummary


def run_summary(summary: RunSummary) -> dict[str, Any]:
    """One run: its identity, counts per state and error type, priority and weight, whether it is paused
    (since when, why), throughput and ETA."""
    run, progress = summary.run, summary.progress
    report = progress.report
    return {
        "id": run.id,
        "name": run.name,
        "model": run.model,
        "queue": run.queue,
        "source": run.source,
        "created_at": _iso(run.created_at),
        "cancelled_at": _iso(run.cancelled_at),
        "total": report.total,
        "done": progress.done,
        "finished": progress.finished,
        "counts": report.counts,
        "errors": report.errors,
        "priority": report.priority,
        "weight": report.weight,
        "paused_at": _iso(report.paused_since),
        "pause_reason": report.pause_reason,
        "breaker_trips": report.breaker_trips,
        "jobs_per_second": progress.jobs_per_second,
        "eta_seconds": progress.eta_seconds,
    }


def runs_document(summaries: list[RunSummary], *, next_before: int | None) -> bytes:
    return _encode({"runs": [run_summary(s) for s in summaries], "next_before": next_before})


def run_document(summary: RunSummary) -> bytes:
    return _encode(run_summary(summary))


def error_document(status: int, message: str) -> bytes:
    return _encode({"error": {"status": status, "message": message}})


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat()
