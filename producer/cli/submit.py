"""`vlmbatch submit` and `vlmbatch run`."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.asked_options import AskedOptions
from vlmbatch.producer.cli.context import CommandContext, load_context
from vlmbatch.producer.cli.engine_options import EngineOptions, engine_options, with_engine_args
from vlmbatch.producer.cli.options import FiniteFloat, option_group
from vlmbatch.producer.cli.progress import BarStream, ProgressDisplay
from vlmbatch.producer.cli.render import table, terminal_safe
from vlmbatch.producer.cli.run_options import (
    OutputOptions,
    RunOptions,
    SamplingOptions,
    build_run_settings,
    run_options,
)
from vlmbatch.producer.cli.source_options import SourceOptions
from vlmbatch.producer.sources.base import Source, source_empty_message, source_notes
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.models import RunSettings, SubmitReport
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.runs import Schedule, get_run
from vlmbatch.schema.ledger.status import run_progress, run_status
from vlmbatch.worker.telemetry.log_format import configure_logging
from vlmbatch.worker.telemetry.progress_log import Every
from vlmbatch.worker.transport.publisher import NullPublisher, Publisher

if TYPE_CHECKING:
    from vlmbatch.worker.pipeline.pipeline import Pipeline


@dataclass(frozen=True)
class SubmitOptions:
    """Every flag of a submit (`submit`, `run`), by group."""

    asked: AskedOptions
    reading: SourceOptions
    run: RunOptions
    sampling: SamplingOptions
    output: OutputOptions


@dataclass(frozen=True)
class DryRunOptions:
    dry_run: bool
    preview: int
    rate: float | None


def _open(ctx: CommandContext, source_uri: str, given: SubmitOptions) -> tuple[Source, RunSettings, str]:
    """The source, the run's settings and what else names the run; one-line errors for bad flags."""
    prompting = given.asked.prompting()
    settings = build_run_settings(ctx.settings.model, asked=given.asked, run=given.run, sampling=given.sampling)
    reading = given.reading
    source = open_source(
        source_uri,
        prompting=prompting,
        stores=ObjectStores.from_settings(ctx.settings),
        columns=reading.columns(),
        stage_to=reading.stage_to or ctx.settings.resolved_stage_to(),
        local_roots=ctx.settings.resolved_local_roots(),
        max_image_bytes=ctx.settings.max_image_bytes,
        config=reading.dataset_config,
        split=reading.dataset_split,
    )
    # The run's default name depends on everything that shapes its prompts, and on the dataset's choice.
    return source, settings, prompting.identity() + reading.dataset_choice()


def _submit(
    ctx: CommandContext, source_uri: str, given: SubmitOptions, publisher: Callable[[], Publisher]
) -> SubmitReport:
    """Submit SOURCE; `publisher` is built only once the flags and the source passed their checks (an
    embedded broker creates its files)."""
    source, settings, name_basis = _open(ctx, source_uri, given)
    # A source with no row at all is refused before the ledger or the broker is touched (nothing written),
    # in the line submit would give: what was looked for and what was found. One row is read.
    if next(iter(source.rows()), None) is None:
        raise click.UsageError(source_empty_message(source))
    report = submit(
        sessions=ctx.sessions,
        publisher=publisher(),
        source=source,
        settings=settings,
        queue=ctx.settings.queue,
        run_name=given.run.run_name,
        name_basis=name_basis or None,
        schedule=Schedule(priority=given.run.priority, weight=given.run.weight),
        policy=given.reading.reject_policy(),
    )
    for note in [*source_notes(source), *submit_notes(report)]:
        click.echo(note, err=True)
    return report


def submit_notes(report: SubmitReport) -> list[str]:
    """What the submit report says besides its counts: rejected rows (the first ones), images no
    placeholder placed."""
    notes = []
    if report.rejected:
        notes.append(
            f"{report.rejected} row(s) rejected, not submitted (`vlmbatch export {report.run} --format rejects` "
            "lists them all):"
        )
        notes.extend(f"  {terminal_safe(r.where)}: {terminal_safe(r.reason)}" for r in report.first_rejects[:10])
    if report.unplaced:
        notes.append(f"{report.unplaced} row(s) place fewer images than they have: the others go before the text")
    return notes


def _dry_run(ctx: CommandContext, source_uri: str, given: SubmitOptions, dry: DryRunOptions) -> None:
    from vlmbatch.producer.cli.dry_run import dry_run, report_lines
    from vlmbatch.producer.submit import reference_check

    source, settings, _ = _open(ctx, source_uri, given)
    result = dry_run(source, settings, preview=dry.preview, check=reference_check(settings))
    if not result.jobs:
        raise click.UsageError(f"{source_uri} holds no jobs: no image (or row) was found there")
    if given.output.as_json:
        click.echo(json.dumps(result.summary(settings)))
    else:
        click.echo("\n".join(report_lines(result, settings, rate=dry.rate)))


dry_run_options = option_group(
    "dry",
    DryRunOptions,
    [
        click.option("--dry-run", is_flag=True, help="Validate SOURCE and show the run; write nothing."),
        click.option("--preview", type=click.IntRange(0), default=3, show_default=True, help="Dry run: prompts shown."),
        click.option("--rate", type=FiniteFloat(0, min_open=True), help="Dry run: jobs/s, for a GPU-time guess."),
    ],
)


@cli.command("submit")
@click.argument("source")
@run_options
@dry_run_options
def submit_command(
    source: str,
    asked: AskedOptions,
    reading: SourceOptions,
    run: RunOptions,
    sampling: SamplingOptions,
    output: OutputOptions,
    dry: DryRunOptions,
) -> None:
    """Submit SOURCE (a folder, an s3://bucket/prefix, a .jsonl/.csv/.parquet manifest, a Parquet with
    embedded images, WebDataset .tar shards (a file, a {00000..00009} pattern, a folder or prefix), or an
    OpenAI batch .jsonl) as jobs: one per image (or row) and question.

    Submitting the same source again adds nothing: jobs are unique per run, images and question."""
    given = SubmitOptions(asked=asked, reading=reading, run=run, sampling=sampling, output=output)
    ctx = load_context(queue=run.queue)
    if dry.dry_run:
        _dry_run(ctx, source, given, dry)
        return
    _check_broker(ctx.settings.resolved_broker_url())
    report = _submit(ctx, source, given, ctx.publisher)
    if output.as_json:
        click.echo(report.model_dump_json())
    else:
        click.echo(f"run {report.run}: {report.submitted} jobs submitted, {report.skipped} already there")


def _check_broker(url: str) -> None:
    """Refuse, before anything is written, a Redis broker that answers but refuses us (a database index it
    does not have). One that is down is no refusal: the jobs go into the ledger, and are published later."""
    if not url.startswith(("redis://", "rediss://")):
        return
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except redis.exceptions.ResponseError as exc:
        raise click.UsageError(f"the broker refuses this connection: {exc}") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return


@cli.command("run")
@click.argument("source")
@run_options
@engine_options
@dry_run_options
@click.option("--verbose", is_flag=True, default=None, help="vLLM's warnings and errors on the terminal too.")
@click.option(
    "--progress-every",
    type=FiniteFloat(0, min_open=True),
    help="Seconds between progress lines when stderr is not a terminal [default 30].",
)
def run_command(
    source: str,
    asked: AskedOptions,
    reading: SourceOptions,
    run: RunOptions,
    sampling: SamplingOptions,
    output: OutputOptions,
    engine: EngineOptions,
    dry: DryRunOptions,
    verbose: bool | None,
    progress_every: float | None,
) -> None:
    """Submit SOURCE, then work the run in this process until it is done (no broker needed). vLLM's log
    goes to VLMBATCH_HOME/logs/run-ID.log."""
    from vlmbatch.worker.pipeline.admission import WorkerStopping
    from vlmbatch.worker.process.main import run_embedded, start_embedded

    given = SubmitOptions(asked=asked, reading=reading, run=run, sampling=sampling, output=output)
    ctx = load_context(
        queue=run.queue,
        model=run.model,
        # The engine serves this run: its limits are the run's.
        max_tiles=run.max_tiles,
        max_images_per_prompt=run.max_images,
        verbose=verbose,
        progress_every=progress_every,
        **engine.settings(),
    )
    if dry.dry_run:
        _dry_run(ctx, source, given, dry)
        return
    # Checked before anything is submitted: a refused engine argument leaves no run behind.
    ctx.settings = with_engine_args(ctx.settings, engine.engine_arg)
    if reading.stage_to:  # where this run's images are staged is where its worker reads them
        ctx.settings = ctx.settings.model_copy(update={"stage_to": reading.stage_to})
    report = _submit(ctx, source, given, NullPublisher)
    with ctx.sessions() as session:
        name = get_run(session, report.run).name
    settings = ctx.settings
    if settings.log_file is None:
        log_file = (settings.home / "logs" / f"run-{report.run}.log").resolve()
        settings = settings.model_copy(update={"log_file": log_file})
    interactive = sys.stderr.isatty() and not output.as_json
    stream = BarStream()
    configure_logging(
        fmt=settings.log_format,
        log_file=settings.log_file,
        verbose=settings.verbose,
        terminal_format="%(message)s",
        stream=stream,
    )
    if not output.as_json:
        click.echo(
            f"run {report.run} ({terminal_safe(name)}): {report.submitted} new jobs, {report.skipped} already there; "
            f"log {settings.log_file}",
            err=True,
        )
    started = time.monotonic()
    display = ProgressDisplay(
        name,
        stream=stream,
        interactive=interactive,
        every=Every(settings.progress_every),
        clock=time.monotonic,
    )

    def tick(pipeline: Pipeline) -> None:
        if output.as_json:
            return
        with ctx.sessions() as session:
            display.update(run_progress(session, report.run), tokens=pipeline.counters.completion_tokens)

    pipeline: Pipeline | None = None
    try:
        pipeline = start_embedded(settings)
        run_embedded(settings, run_id=report.run, on_tick=tick, pipeline=pipeline)
        tick(pipeline)
    except WorkerStopping as exc:  # the engine or a background task died; its jobs were handed back
        display.close()
        click.echo(f"error: the worker stopped ({exc}); `vlmbatch run` again resumes the run", err=True)
        sys.exit(3)
    except KeyboardInterrupt:
        display.close()
        _interrupted(ctx, report.run, pipeline)
    display.close()
    assert pipeline is not None  # every other way out of the try exits
    with ctx.sessions() as session:
        status = run_status(session, report.run)
    if status.paused:  # by `vlmbatch pause` or its circuit breaker: what ran here has finished
        elapsed, tokens = time.monotonic() - started, pipeline.counters.completion_tokens
        click.echo(status.model_dump_json() if output.as_json else _summary(ctx, report.run, elapsed, tokens))
        click.echo(
            f"run {report.run} is paused: {terminal_safe(status.pause_reason or '')}; "
            f"`vlmbatch resume {report.run}`, then `vlmbatch run` again, finishes it",
            err=True,
        )
        sys.exit(3)
    if output.as_json:
        click.echo(status.model_dump_json())
        return
    click.echo(_summary(ctx, report.run, time.monotonic() - started, pipeline.counters.completion_tokens))


def _interrupted(ctx: CommandContext, run_id: int, pipeline: Pipeline | None) -> None:
    """Ctrl-C: the pipeline stopped and handed its jobs back; say how many, and how to go on."""
    with ctx.sessions() as session:
        left = run_status(session, run_id).counts[JobState.QUEUED.value]
    handed = pipeline.counters.handed_back if pipeline is not None else 0
    resume = shlex.join(["vlmbatch", *sys.argv[1:]])
    click.echo(
        f"interrupted: {handed} jobs in flight were handed back, {left} jobs of run {run_id} are queued; "
        f"`{resume}` resumes the run",
        err=True,
    )
    sys.exit(130)


def _summary(ctx: CommandContext, run_id: int, elapsed: float, tokens: int) -> str:
    from vlmbatch.producer.reports.results import result_rows
    from vlmbatch.producer.reports.stats import accuracy_line, sample_stats

    with ctx.sessions() as session:
        rows = result_rows(session, run_id, limit=50)
        status = run_status(session, run_id)
        graded = (get_run(session, run_id).settings or {}).get("grader") is not None
        accuracy = accuracy_line(sample_stats(session, run_id)) if graded else None
    lines = [
        table(
            ["job", "image", "question", "status", "error", "tokens", "answer"],
            [(r.job_id, r.image, r.question, r.state, r.error_type, r.tokens, r.answer_preview) for r in rows],
        ),
        "",
        " ".join(f"{state} {n}" for state, n in status.counts.items() if n)
        + (f" | errors {json.dumps(status.errors)}" if status.errors else ""),
        f"{status.total} jobs in {elapsed:.1f}s, {tokens} tokens generated by this process",
    ]
    if accuracy:
        lines.append(f"accuracy: {accuracy}")
    if status.total > len(rows):
        lines.insert(1, f"(first {len(rows)} of {status.total} jobs; `vlmbatch export` writes them all)")
    return "\n".join(lines)
