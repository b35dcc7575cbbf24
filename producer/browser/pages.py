"""The runs list and a run's page (progress, error breakdown, filtered results), as HTML.

Every value from the ledger is untrusted (file names come from users, answers from the model) and goes
through `markup.render`, which escapes it. The job page lives in `job_page.py`.
"""

from __future__ import annotations

from vlmbatch.producer.browser.layout import (
    MISSING,
    facts,
    images_label,
    number,
    page,
    progress_bar,
    state_badge,
    state_counts,
    when,
)
from vlmbatch.producer.browser.markup import Safe, href, join, render
from vlmbatch.producer.browser.queries import CORRECTNESS, ErrorGroup, JobPage, JobRow, ResultFilter, RunSummary
from vlmbatch.producer.reports.display import duration
from vlmbatch.schema.models import RunSettings
from vlmbatch.schema.states import JobState


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


def runs_page(summaries: list[RunSummary], *, next_before: int | None) -> Safe:
    """Every run (newest first) with its progress, counts per state, rate and ETA."""
    if not summaries:
        return page("Runs", Safe("<h1>Runs</h1><p>No runs yet: <code>vlmbatch submit</code> creates one.</p>"))
    rows = join(_run_row(summary) for summary in summaries)
    older = render('<div class="pager"><a href="{url}">Older runs →</a></div>', url=href("/", before=next_before))
    body = render(
        '<h1>Runs</h1><div class="scroll"><table id="runs"><thead><tr><th>Run</th><th>Model</th>'
        '<th>Created (UTC)</th><th>Progress</th><th>Jobs by state</th><th class="num">Jobs/s</th>'
        '<th class="num">ETA</th></tr></thead><tbody>{rows}</tbody></table></div>{older}',
        rows=rows,
        older=older if next_before is not None else "",
    )
    return page("Runs", body)


def _run_row(summary: RunSummary) -> Safe:
    run, progress = summary.run, summary.progress
    status = ""
    if run.cancelled_at is not None:
        status = "cancelled"
    elif progress.finished:
        status = "finished"
    return render(
        '<tr class="run"><td><a href="{url}">{name}</a> <span class="muted">#{id} {status}</span></td>'
        "<td>{model}</td><td>{created}</td><td>{bar}</td><td>{counts}</td>"
        '<td class="num">{rate}</td><td class="num">{eta}</td></tr>',
        url=run_path(run.id),
        name=run.name,
        id=run.id,
        status=status,
        model=run.model,
        created=when(run.created_at),
        bar=progress_bar(progress.done, progress.report.total),
        counts=state_counts(progress.report.counts, run_path(run.id)),
        rate=number(progress.jobs_per_second),
        eta=duration(progress.eta_seconds),
    )


def run_page(
    summary: RunSummary, groups: list[ErrorGroup], results: JobPage, *, where: ResultFilter, limit: int
) -> Safe:
    """A run: its settings and progress, its failures by error type, and a page of its results."""
    run, progress = summary.run, summary.progress
    body = join(
        [
            render('<h1>Run {name} <span class="muted">#{id}</span></h1>', name=run.name, id=run.id),
            _run_facts(summary),
            render(
                "<h2>Progress</h2><p>{bar}</p><p>{counts}</p>",
                bar=progress_bar(progress.done, progress.report.total),
                counts=state_counts(progress.report.counts, run_path(run.id)),
            ),
            _error_breakdown(run.id, groups),
            _results(run.id, results, where=where, errors=list(progress.report.errors), limit=limit),
        ]
    )
    return page(f"Run {run.name}", body, crumbs=[(run.name, run_path(run.id))])


def _run_facts(summary: RunSummary) -> Safe:
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
    pairs.append(("Rate", f"{number(progress.jobs_per_second)} jobs/s"))
    pairs.append(("ETA", duration(progress.eta_seconds)))
    return facts(pairs)


def _error_breakdown(run_id: int, groups: list[ErrorGroup]) -> Safe:
    if not groups:
        return Safe('<h2 id="errors">Errors</h2><p class="muted">No failed jobs.</p>')
    most = max(group.jobs for group in groups)
    rows = join(
        render(
            '<tr class="error-group"><td><a href="{url}#results" class="error">{error}</a></td>'
            '<td class="num">{jobs}</td><td><meter class="errors" value="{jobs_raw}" max="{most}"></meter></td>'
            "<td>{examples}</td></tr>",
            url=href(run_path(run_id), status=JobState.FAILED.value, error=group.error_type),
            error=group.error_type,
            jobs=number(group.jobs),
            jobs_raw=group.jobs,
            most=most,
            examples=join((_example(row) for row in group.examples), "<br>"),
        )
        for group in groups
    )
    return render(
        '<h2 id="errors">Errors</h2><div class="scroll"><table><thead><tr><th>Error type</th>'
        '<th class="num">Jobs</th><th></th><th>Examples</th></tr></thead><tbody>{rows}</tbody></table></div>',
        rows=rows,
    )


def _example(row: JobRow) -> Safe:
    return render(
        '<a href="{url}">#{id} {image}</a> <span class="muted">{message}</span>',
        url=job_path(row.id),
        id=row.id,
        image=images_label(row.images),
        message=row.error_preview or "",
    )


def _results(run_id: int, results: JobPage, *, where: ResultFilter, errors: list[str], limit: int) -> Safe:
    rows = join(_result_row(row) for row in results.rows)
    empty = '<tr><td colspan="7" class="muted">No jobs match.</td></tr>'
    return render(
        '<h2 id="results">Results</h2>{form}<div class="scroll"><table id="results-table"><thead><tr>'
        '<th>Job</th><th>Image</th><th>State</th><th class="num">Attempts</th><th class="num">Tokens</th>'
        "<th>Correct</th><th>Answer or error</th></tr></thead><tbody>{rows}</tbody></table></div>{pager}",
        form=_filter_form(run_id, where, errors, limit),
        rows=rows or Safe(empty),
        pager=_pager(run_id, results, where, limit),
    )


def _result_row(row: JobRow) -> Safe:
    if row.error_type:
        outcome = render(
            '<span class="error">{error}</span> <span class="muted">{message}</span>',
            error=row.error_type,
            message=row.error_preview or "",
        )
    else:
        outcome = render("{answer}", answer=row.answer_preview if row.answer_preview is not None else MISSING)
    return render(
        '<tr class="job" data-job="{id}"><td><a href="{url}">#{id}</a></td><td>{image}</td><td>{state}</td>'
        '<td class="num">{attempts}</td><td class="num">{tokens}</td><td>{correct}</td><td>{outcome}</td></tr>',
        id=row.id,
        url=job_path(row.id),
        image=images_label(row.images),
        state=state_badge(row.state),
        attempts=row.attempts,
        tokens=number(row.completion_tokens),
        correct=_correct_cell(row),
        outcome=outcome,
    )


def _correct_cell(row: JobRow) -> Safe:
    if row.samples == 0:
        return render('<span class="muted">{missing}</span>', missing=MISSING)
    if row.graded == 0:
        return Safe('<span class="c-ungraded">ungraded</span>')
    kind = "correct" if row.correct else "incorrect"
    return render(
        '<span class="c-{kind}">{correct}/{samples} correct</span>', kind=kind, correct=row.correct, samples=row.samples
    )


def _select(name: str, label: str, options: list[str], chosen: str | None) -> Safe:
    items = [render('<option value="">any</option>')]
    for option in options:
        selected = " selected" if option == chosen else ""
        items.append(
            render('<option value="{value}"{selected}>{value}</option>', value=option, selected=Safe(selected))
        )
    return render(
        '<label>{label}<select name="{name}">{items}</select></label>', label=label, name=name, items=join(items)
    )


def _filter_form(run_id: int, where: ResultFilter, errors: list[str], limit: int) -> Safe:
    error_options = sorted({*errors, *([where.error_type] if where.error_type else [])})
    return render(
        '<form class="filters" method="get" action="{action}#results">{status}{error}{correct}'
        '<input type="hidden" name="limit" value="{limit}"><button type="submit">Filter</button>'
        ' <a href="{action}#results">clear</a></form>',
        action=run_path(run_id),
        status=_select("status", "Status", [s.value for s in JobState], where.state.value if where.state else None),
        error=_select("error", "Error type", error_options, where.error_type),
        correct=_select("correct", "Correctness", list(CORRECTNESS), where.correctness),
        limit=limit,
    )


def _pager(run_id: int, results: JobPage, where: ResultFilter, limit: int) -> Safe:
    params = filter_params(where) | {"limit": limit}
    links = []
    if results.prev_before is not None:
        url = href(run_path(run_id), **params, before=results.prev_before)
        links.append(render('<a rel="prev" href="{url}#results">← Previous</a>', url=url))
    if results.next_after is not None:
        url = href(run_path(run_id), **params, after=results.next_after)
        links.append(render('<a rel="next" href="{url}#results">Next →</a>', url=url))
    return render('<div class="pager">{links}</div>', links=join(links))


def message_page(title: str, message: str) -> Safe:
    """A page that only says something (not found, bad request, forbidden): no details of the server."""
    return page(title, render("<h1>{title}</h1><p>{message}</p>", title=title, message=message))
