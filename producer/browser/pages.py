"""The runs list, a run's page (progress, error breakdown, filtered results) and the message page: the
values each template shows, rendered by rendering.py (autoescaped: every value from the ledger is
untrusted, file names come from users, answers from the model). The job page lives in `job_page.py`."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

from vlmbatch.producer.browser.layout import number, when
from vlmbatch.producer.browser.queries import CORRECTNESS, ErrorGroup, JobPage, ResultFilter, RunSummary
from vlmbatch.producer.browser.rendering import render
from vlmbatch.producer.reports.display import duration
from vlmbatch.schema.contracts.models import RunSettings


def run_path(run_id: int) -> str:
    return f"/runs/{run_id}"


def job_path(job_id: int) -> str:
    return f"/jobs/{job_id}"


def filter_params(where: ResultFilter) -> dict[str, object]:
    """The query parameters that select `where` on a run's page."""
    return {
        "status": where.state.value if where.state else None,
        "error": where.error_type,
        "correct": where.correctness,
    }


def runs_page(summaries: list[RunSummary], *, next_before: int | None) -> str:
    """Every run (newest first) with its progress, counts per state, rate and ETA."""
    return render(
        "runs.html",
        title="Runs",
        summaries=summaries,
        next_before=next_before,
        run_path=run_path,
        run_status=_run_status,
    )


def _run_status(summary: RunSummary) -> str:
    if summary.run.cancelled_at is not None:
        return "cancelled"
    return "finished" if summary.progress.finished else ""


def run_page(
    summary: RunSummary,
    groups: list[ErrorGroup],
    results: JobPage,
    *,
    where: ResultFilter,
    limit: int,
    accuracy: str | None = None,
    charts: Sequence[Markup] = (),
) -> str:
    """A run: its settings and progress (and a graded run's accuracy), its failures by error type, and a
    page of its results."""
    run = summary.run
    errors = summary.progress.report.errors
    facts = _run_facts(summary) + ([("Accuracy", accuracy)] if accuracy else [])
    return render(
        "run.html",
        title=f"Run {run.name}",
        crumbs=[(run.name, run_path(run.id))],
        summary=summary,
        run_facts=facts,
        charts=charts,
        groups=groups,
        results=results,
        where=where,
        limit=limit,
        error_options=sorted({*errors, *([where.error_type] if where.error_type else [])}),
        correctness_options=list(CORRECTNESS),
        pager_params=filter_params(where) | {"limit": limit},
        run_path=run_path,
        job_path=job_path,
    )


def _run_facts(summary: RunSummary) -> list[tuple[str, object]]:
    run, progress = summary.run, summary.progress
    pairs: list[tuple[str, object]] = [("Model", run.model), ("Created (UTC)", when(run.created_at))]
    if run.source:
        pairs.append(("Source", run.source))
    try:
        settings = RunSettings.model_validate(run.settings)
    except ValueError:  # a run written by another version: show what is stored
        pairs.append(("Settings", run.settings))
    else:
        s = settings.sampling
        pairs.append(
            (
                "Sampling",
                f"temperature {s.temperature}, top_p {s.top_p}, repetition_penalty {s.repetition_penalty}, "
                f"max_tokens {s.max_tokens:,}, {s.samples} sample(s) per job",
            )
        )
        if settings.grader:
            accept = f", accept {settings.accept}" if settings.accept else ""
            pairs.append(("Grader", f"{settings.grader}{accept}"))
        if settings.choices:
            pairs.append(("Choices", ", ".join(settings.choices)))
    if run.cancelled_at is not None:
        pairs.append(("Cancelled (UTC)", when(run.cancelled_at)))
    if progress.duration_seconds is not None:
        pairs.append(
            ("Took", f"{duration(progress.duration_seconds)} ({number(progress.mean_jobs_per_second)} jobs/s)")
        )
    else:
        pairs.append(("Rate", f"{number(progress.jobs_per_second)} jobs/s"))
        pairs.append(("ETA", duration(progress.eta_seconds)))
    return pairs


def message_page(title: str, message: str) -> str:
    """A page that only says something (not found, bad request, forbidden): no details of the server."""
    return render("message.html", title=title, message=message)
