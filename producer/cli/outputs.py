"""`vlmbatch export` and `vlmbatch stats`: what users came for, the traces and the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context
from vlmbatch.producer.cli.render import table, terminal_safe
from vlmbatch.producer.reports.export import (
    EXPORT_FORMATS,
    ExportFilter,
    ExportFormat,
    default_errors_path,
    export_run,
)
from vlmbatch.producer.reports.stats import PERCENTILES, RunStats, Totals, run_stats
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.runs import get_run


def _finished_states(value: str) -> tuple[JobState, ...]:
    try:
        states = tuple(JobState(part.strip()) for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--status") from exc
    unfinished = [s.value for s in states if not s.terminal]
    if not states or unfinished:
        finished = ", ".join(s.value for s in JobState if s.terminal)
        raise click.BadParameter(f"give finished states ({finished})", param_hint="--status")
    return states


@cli.command("export")
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="jsonl", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write (replaced once complete).",
)
@click.option(
    "--errors-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="openai format: the error file (default: <out>.errors.jsonl).",
)
@click.option(
    "--status",
    "statuses",
    help="Job states, comma-separated. Default: succeeded; every finished state for the openai format.",
)
@click.option("--only-correct", is_flag=True, help="Only samples graded correct.")
@click.option("--max-trace-tokens", type=click.IntRange(0), help="Drop samples with more reasoning tokens than this.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export_command(
    run: str,
    fmt: ExportFormat,
    out: Path,
    errors_out: Path | None,
    statuses: str | None,
    only_correct: bool,
    max_trace_tokens: int | None,
    as_json: bool,
) -> None:
    """Write the standing samples of RUN's jobs (an id or a name) to --out: jsonl (every field), parquet
    (typed columns), sft or internvl (chat records with the trace, for fine-tuning; one per sample), or
    openai (the OpenAI Batch output file, one line per job, and its error file of failed jobs and rejected
    lines), or rejects (the source rows recorded at submit instead of submitted)."""
    if fmt == "openai":
        if only_correct or max_trace_tokens is not None:
            raise click.UsageError("--only-correct and --max-trace-tokens do not apply to --format openai")
        errors_out = errors_out or default_errors_path(out)
        if errors_out.resolve() == out.resolve():
            raise click.BadParameter("must differ from --out", param_hint="--errors-out")
    elif errors_out is not None:
        raise click.UsageError("--errors-out only applies to --format openai")
    if fmt == "rejects" and (statuses or only_correct or max_trace_tokens is not None):
        raise click.UsageError("--format rejects lists the rows rejected at submit: no job filter applies")
    default = ",".join(s.value for s in JobState if s.terminal) if fmt == "openai" else JobState.SUCCEEDED.value
    selection = ExportFilter(
        states=_finished_states(statuses or default), only_correct=only_correct, max_trace_tokens=max_trace_tokens
    )
    ctx = load_context()
    with ctx.sessions() as session:
        target = get_run(session, run)
    report = export_run(ctx.sessions, run=target, fmt=fmt, out=out, errors_out=errors_out, selection=selection)
    if as_json:
        payload: dict[str, object] = {
            "run": report.run_id,
            "format": report.format,
            "path": str(report.path),
            "rows": report.rows,
        }
        if report.errors_path is not None:
            payload |= {"errors_path": str(report.errors_path), "errors": report.errors}
        click.echo(json.dumps(payload))
    elif report.errors_path is not None:
        click.echo(
            f"run {target.id} ({target.name}): wrote {report.rows} jobs to {report.path} and "
            f"{report.errors} failed jobs to {report.errors_path} (openai)"
        )
    else:
        what = "rejected rows" if fmt == "rejects" else "samples"
        click.echo(
            f"run {target.id} ({terminal_safe(target.name)}): wrote {report.rows} {what} to {report.path} ({fmt})"
        )


@cli.command("stats")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats_command(run: str, as_json: bool) -> None:
    """Accept rate, trace lengths, truncation, errors and cost (tokens, GPU-seconds) of RUN."""
    ctx = load_context()
    with ctx.sessions() as session:
        stats = run_stats(session, get_run(session, run))
    click.echo(json.dumps(stats.model_dump(mode="json")) if as_json else stats_block(stats))


def stats_block(stats: RunStats) -> str:
    """The human form of `vlmbatch stats`: a few small tables."""
    s, t, tr = stats.samples, stats.trace_tokens, stats.truncation
    by_state = stats.jobs.by_state
    blocks = [
        f"run {stats.run} ({stats.name}): {stats.jobs.total} jobs",
        table(list(by_state), [list(by_state.values())]),
        table(
            [
                "samples",
                "graded",
                "correct",
                "accept rate",
                "jobs graded",
                "jobs with a correct sample",
                "job accept rate",
            ],
            [
                (
                    s.standing,
                    s.graded,
                    s.correct,
                    _percent(s.accept_rate),
                    s.jobs_graded,
                    s.jobs_with_correct,
                    _percent(s.job_accept_rate),
                )
            ],
        ),
        table(
            ["traces", *(f"p{p} tokens" for p in PERCENTILES), "max tokens", "mean tokens"],
            [(t.samples, t.p50, t.p90, t.p99, t.max, t.mean)],
        ),
        f"truncated: {tr.samples} of {s.standing} samples ({_percent(tr.sample_rate) or '-'}), "
        f"{tr.jobs} of {tr.finished_jobs} finished jobs ({_percent(tr.job_rate) or '-'})",
    ]
    errors = sorted(set(stats.errors.jobs) | set(stats.errors.attempts))
    if errors:
        rows = [(e, stats.errors.jobs.get(e, 0), stats.errors.attempts.get(e, 0)) for e in errors]
        blocks.append(table(["error type", "failed jobs", "attempts"], rows))
    cost = stats.cost
    blocks.append(
        table(
            ["cost", "attempts", "prompt tokens", "reasoning tokens", "answer tokens", "completion tokens", "GPU-s"],
            [_cost_row("all attempts", cost.all_attempts), _cost_row("standing", cost.standing)],
        )
    )
    return "\n\n".join(blocks)


def _cost_row(label: str, totals: Totals) -> tuple[object, ...]:
    return (
        label,
        totals.attempts,
        totals.prompt_tokens,
        totals.reasoning_tokens,
        totals.answer_tokens,
        totals.completion_tokens,
        totals.gpu_seconds,
    )


def _percent(rate: float | None) -> str | None:
    return None if rate is None else f"{100 * rate:.1f}%"
