"""`vlmbatch export` and `vlmbatch stats`: what users came for, the traces and the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context
from vlmbatch.producer.cli.render import table, terminal_safe
from vlmbatch.producer.reports.dataset import DatasetFolderRefused, DatasetOptions, check_dataset_folder
from vlmbatch.producer.reports.export import (
    EXPORT_FORMATS,
    ExportFilter,
    ExportFormat,
    ExportReport,
    default_errors_path,
    export_run,
)
from vlmbatch.producer.reports.joined import DEFAULT_SHARD_ROWS, JOIN_EXTRAS, JoinOptions, export_joined
from vlmbatch.producer.reports.records import FINISH_KINDS, ONE_PER_JOB, OnePerJob
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


def _finish_kinds(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    kinds = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in FINISH_KINDS]
    if not kinds or unknown:
        raise click.BadParameter(f"give finish kinds ({', '.join(FINISH_KINDS)})", param_hint="--finish")
    return kinds


_DATASET_FORMATS = ("sft", "internvl")


@cli.command("export")
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="jsonl", show_default=True)
@click.option(
    "--out",
    "out_text",
    required=True,
    help="File to write (replaced once complete); for sft and internvl, the dataset folder; for "
    "--join-source, a folder or s3://bucket/prefix/.",
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
@click.option("--min-trace-tokens", type=click.IntRange(0), help="Drop samples with fewer reasoning tokens than this.")
@click.option("--finish", help=f"Keep samples of these finish kinds, comma-separated ({', '.join(FINISH_KINDS)}).")
@click.option(
    "--one-per-job",
    type=click.Choice(ONE_PER_JOB),
    default="all",
    show_default=True,
    help="Of a sampled job's samples: all, the first, or the best (correct, then stopped, then shortest trace).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(1),
    help="sft/internvl: records per file (default: one file); --join-source: rows per file.",
)
@click.option(
    "--images-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="sft/internvl: write the images here instead of DIR/images.",
)
@click.option(
    "--image-root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="sft/internvl: name local images relative to this folder and copy nothing.",
)
@click.option(
    "--join-source",
    is_flag=True,
    help="parquet: one row per source row, in source order, with its columns and one answer column per question.",
)
@click.option("--join-columns", help=f"--join-source: also these per question ({', '.join(JOIN_EXTRAS)}).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export_command(
    run: str,
    fmt: ExportFormat,
    out_text: str,
    errors_out: Path | None,
    statuses: str | None,
    only_correct: bool,
    max_trace_tokens: int | None,
    min_trace_tokens: int | None,
    finish: str | None,
    one_per_job: OnePerJob,
    shard_size: int | None,
    images_dir: Path | None,
    image_root: Path | None,
    join_source: bool,
    join_columns: str | None,
    as_json: bool,
) -> None:
    """Write the standing samples of RUN's jobs (an id or a name) to --out: jsonl (every field), parquet
    (typed columns), sft or internvl (a dataset folder for fine-tuning: records, images, LLaMA-Factory's
    dataset_info.json, InternVL's meta; one record per sample), openai (the OpenAI Batch output file,
    one line per job, and its error file of failed jobs and rejected lines), or rejects (the source rows
    recorded at submit instead of submitted)."""
    if join_source or join_columns is not None:
        if images_dir is not None or image_root is not None or errors_out is not None:
            raise click.UsageError("--images-dir, --image-root and --errors-out do not apply to --join-source")
        selection = _selection(fmt, statuses, only_correct, max_trace_tokens, min_trace_tokens, finish, one_per_job)
        _export_joined(run, fmt, out_text, selection, join_columns, shard_size, as_json)
        return
    out = Path(out_text)
    _check_output(fmt, out, shard_size=shard_size, images_dir=images_dir, image_root=image_root)
    if fmt == "openai":
        errors_out = errors_out or default_errors_path(out)
        if errors_out.resolve() == out.resolve():
            raise click.BadParameter("must differ from --out", param_hint="--errors-out")
    elif errors_out is not None:
        raise click.UsageError("--errors-out only applies to --format openai")
    filters = (statuses, max_trace_tokens, min_trace_tokens, finish)
    if fmt == "rejects" and (only_correct or one_per_job != "all" or any(f is not None for f in filters)):
        raise click.UsageError("--format rejects lists the rows rejected at submit: no job filter applies")
    selection = _selection(fmt, statuses, only_correct, max_trace_tokens, min_trace_tokens, finish, one_per_job)
    ctx = load_context()
    with ctx.sessions() as session:
        target = get_run(session, run)
    settings = ctx.settings
    dataset = DatasetOptions(
        shard_size=shard_size,
        images_dir=images_dir,
        image_root=image_root,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
    )
    report = export_run(
        ctx.sessions,
        run=target,
        fmt=fmt,
        out=out,
        errors_out=errors_out,
        selection=selection,
        store=ObjectStores.from_settings(settings) if fmt in _DATASET_FORMATS else None,
        dataset=dataset,
    )
    _echo_report(report, target_id=target.id, target_name=target.name, as_json=as_json)


def _selection(
    fmt: ExportFormat,
    statuses: str | None,
    only_correct: bool,
    max_trace_tokens: int | None,
    min_trace_tokens: int | None,
    finish: str | None,
    one_per_job: OnePerJob,
) -> ExportFilter:
    default = ",".join(s.value for s in JobState if s.terminal) if fmt == "openai" else JobState.SUCCEEDED.value
    if min_trace_tokens is not None and max_trace_tokens is not None and min_trace_tokens > max_trace_tokens:
        raise click.UsageError("--min-trace-tokens is over --max-trace-tokens")
    return ExportFilter(
        states=_finished_states(statuses or default),
        only_correct=only_correct,
        max_trace_tokens=max_trace_tokens,
        min_trace_tokens=min_trace_tokens,
        finish=_finish_kinds(finish),
        one_per_job=one_per_job,
    )


def _export_joined(
    run: str,
    fmt: ExportFormat,
    out: str,
    selection: ExportFilter,
    join_columns: str | None,
    shard_size: int | None,
    as_json: bool,
) -> None:
    """`--join-source`: checked before anything is written, then written (joined.py)."""
    if fmt != "parquet":
        raise click.UsageError("--join-source and --join-columns apply to --format parquet")
    extras = tuple(part.strip() for part in (join_columns or "").split(",") if part.strip())
    if any(extra not in JOIN_EXTRAS for extra in extras):
        raise click.BadParameter(f"give some of {', '.join(JOIN_EXTRAS)}", param_hint="--join-columns")
    if not out.startswith("s3://") and Path(out).exists() and not Path(out).is_dir():
        raise click.BadParameter(f"{out} is a file; --join-source writes a folder of parts", param_hint="--out")
    ctx = load_context()
    with ctx.sessions() as session:
        target = get_run(session, run)
    options = JoinOptions(extras=extras, shard_rows=shard_size or DEFAULT_SHARD_ROWS)
    s3 = ObjectStores.from_settings(ctx.settings).s3 if out.startswith("s3://") else None
    report = export_joined(ctx.sessions, run=target, out=out, selection=selection, options=options, s3=s3)
    if as_json:
        payload = {"run": target.id, "format": "parquet", "path": out, "rows": report.rows, "files": report.files}
        click.echo(json.dumps(payload))
    else:
        click.echo(
            f"run {target.id} ({terminal_safe(target.name)}): wrote {report.rows} source rows "
            f"({report.questions} question(s) each) in {len(report.files)} files to {out} (parquet, joined)"
        )


def _check_output(
    fmt: ExportFormat, out: Path, *, shard_size: int | None, images_dir: Path | None, image_root: Path | None
) -> None:
    """Refuse (exit 2) an --out or a dataset flag that does not fit the format, before anything is written."""
    dataset_flags = {"--shard-size": shard_size, "--images-dir": images_dir, "--image-root": image_root}
    given = [name for name, value in dataset_flags.items() if value is not None]
    if fmt not in _DATASET_FORMATS:
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply to --format sft and internvl")
        if out.is_dir():
            raise click.BadParameter(f"{out} is a folder; --format {fmt} writes a file", param_hint="--out")
        return
    if images_dir is not None and image_root is not None:
        raise click.UsageError("give --images-dir or --image-root, not both")
    try:
        check_dataset_folder(out)
    except DatasetFolderRefused as exc:
        raise click.BadParameter(exc.message, param_hint="--out") from exc


def _echo_report(report: ExportReport, *, target_id: int, target_name: str, as_json: bool) -> None:
    fmt = report.format
    for line in report.skipped_shown:
        click.echo(f"left out: {terminal_safe(line)}", err=True)
    if report.skipped > len(report.skipped_shown):
        click.echo(f"left out: … and {report.skipped - len(report.skipped_shown)} more samples", err=True)
    if as_json:
        click.echo(json.dumps(_report_payload(report)))
    elif fmt in _DATASET_FORMATS:
        click.echo(
            f"run {target_id} ({terminal_safe(target_name)}): wrote {report.rows} samples in "
            f"{len(report.shards)} files and {report.images_written} new images to {report.path} ({fmt})"
            + (f"; {report.skipped} samples left out" if report.skipped else "")
        )
    elif report.errors_path is not None:
        click.echo(
            f"run {target_id} ({target_name}): wrote {report.rows} jobs to {report.path} and "
            f"{report.errors} failed jobs to {report.errors_path} (openai)"
        )
    else:
        what = "rejected rows" if fmt == "rejects" else "samples"
        click.echo(
            f"run {target_id} ({terminal_safe(target_name)}): wrote {report.rows} {what} to {report.path} ({fmt})"
        )


def _report_payload(report: ExportReport) -> dict[str, object]:
    payload: dict[str, object] = {
        "run": report.run_id,
        "format": report.format,
        "path": str(report.path),
        "rows": report.rows,
    }
    if report.errors_path is not None:
        payload |= {"errors_path": str(report.errors_path), "errors": report.errors}
    if report.format in _DATASET_FORMATS:
        payload |= {
            "shards": [str(path) for path in report.shards],
            "images_written": report.images_written,
            "skipped": report.skipped,
        }
    return payload


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
        f"{tr.jobs} of {tr.finished_jobs} finished jobs ({_percent(tr.job_rate) or '-'}); "
        + ", ".join(f"{kind} {n}" for kind, n in tr.by_finish.items()),
    ]
    if stats.thinking_capped.samples:
        capped = stats.thinking_capped
        blocks.append(f"thinking budget spent (answered, not truncated): {capped.samples} samples, {capped.jobs} jobs")
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
