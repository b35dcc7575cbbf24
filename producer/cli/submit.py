"""`vlmbatch submit` and `vlmbatch run`."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import CommandContext, load_context
from vlmbatch.producer.cli.options import (
    build_run_settings,
    column_choice,
    engine_options,
    engine_settings,
    reject_policy,
    resolve_questions,
    run_options,
    with_engine_args,
)
from vlmbatch.producer.cli.render import progress_line, table, terminal_safe
from vlmbatch.producer.sources.base import source_notes
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import PromptTemplate
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.models import SubmitReport
from vlmbatch.schema.ledger.runs import get_run
from vlmbatch.schema.ledger.status import run_progress, run_status
from vlmbatch.worker.transport.publisher import NullPublisher, Publisher


def _submit(ctx: CommandContext, source_uri: str, flags: dict[str, Any], publisher: Publisher) -> SubmitReport:
    questions = resolve_questions(flags["question"], flags["question_file"], flags["questions_file"])
    settings = build_run_settings(ctx.settings.model, **flags)
    template = PromptTemplate.from_file(flags["prompt_template"]) if flags["prompt_template"] else None
    source = open_source(
        source_uri,
        question=None,
        questions=questions,
        prompt_template=template,
        s3_endpoint_url=ctx.settings.s3_endpoint_url,
        columns=column_choice(flags),
        stage_to=flags["stage_to"] or ctx.settings.resolved_stage_to(),
        local_roots=ctx.settings.resolved_local_roots(),
        max_image_bytes=ctx.settings.max_image_bytes,
        config=flags["dataset_config"],
        split=flags["dataset_split"],
    )
    # The run's default name depends on everything that shapes its prompts.
    prompt_identity = "\n".join(questions) + (f"\n{template.text}" if template else "")
    # A dataset's config and split, when named, are other runs than its default's.
    for flag in ("dataset_config", "dataset_split"):
        prompt_identity += f"\n{flag}={flags[flag]}" if flags[flag] else ""
    report = submit(
        sessions=ctx.sessions,
        publisher=publisher,
        source=source,
        settings=settings,
        queue=ctx.settings.queue,
        run_name=flags["run_name"],
        question=prompt_identity or None,
        policy=reject_policy(flags),
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


@cli.command("submit")
@click.argument("source")
@run_options
def submit_command(source: str, **flags: Any) -> None:
    """Submit SOURCE (a folder, an s3://bucket/prefix, a .jsonl/.csv/.parquet manifest, a Parquet with
    embedded images, WebDataset .tar shards (a file, a {00000..00009} pattern, a folder or prefix), or an
    OpenAI batch .jsonl) as jobs: one per image (or row) and question.

    Submitting the same source again adds nothing: jobs are unique per run, images and question."""
    ctx = load_context(queue=flags["queue"])
    _check_broker(ctx.settings.resolved_broker_url())
    report = _submit(ctx, source, flags, ctx.publisher())
    if flags["as_json"]:
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
def run_command(source: str, engine_arg: tuple[str, ...], **flags: Any) -> None:
    """Submit SOURCE, then work the run in this process until it is done (no broker needed)."""
    from vlmbatch.worker.pipeline.admission import WorkerStopping
    from vlmbatch.worker.process.main import run_embedded

    ctx = load_context(
        queue=flags["queue"],
        model=flags["model"],
        # The engine serves this run: its limits are the run's.
        max_tiles=flags["max_tiles"],
        max_images_per_prompt=flags["max_images"],
        **engine_settings(flags),
    )
    # Checked before anything is submitted: a refused engine argument leaves no run behind.
    ctx.settings = with_engine_args(ctx.settings, engine_arg)
    if flags["stage_to"]:  # where this run's images are staged is where its worker reads them
        ctx.settings = ctx.settings.model_copy(update={"stage_to": flags["stage_to"]})
    report = _submit(ctx, source, flags, NullPublisher())
    with ctx.sessions() as session:
        name = get_run(session, report.run).name
    interactive = sys.stderr.isatty() and not flags["as_json"]
    if not flags["as_json"]:
        click.echo(
            f"run {report.run} ({terminal_safe(name)}): {report.submitted} new jobs, {report.skipped} already there",
            err=True,
        )
    started = time.monotonic()

    def tick() -> None:
        if interactive:
            with ctx.sessions() as session:
                click.echo("\r" + progress_line(name, run_progress(session, report.run)), nl=False, err=True)

    try:
        pipeline = run_embedded(ctx.settings, run_id=report.run, on_tick=tick)
    except WorkerStopping as exc:  # the engine or a background task died; its jobs were handed back
        click.echo(f"\nerror: the worker stopped ({exc}); `vlmbatch run` again resumes the run", err=True)
        sys.exit(3)
    if interactive:
        click.echo("", err=True)
    with ctx.sessions() as session:
        status = run_status(session, report.run)
    if flags["as_json"]:
        click.echo(status.model_dump_json())
        return
    click.echo(_summary(ctx, report.run, time.monotonic() - started, pipeline.counters.completion_tokens))


def _summary(ctx: CommandContext, run_id: int, elapsed: float, tokens: int) -> str:
    from vlmbatch.producer.reports.results import result_rows

    with ctx.sessions() as session:
        rows = result_rows(session, run_id, limit=50)
        status = run_status(session, run_id)
    lines = [
        table(
            ["job", "image", "status", "error", "tokens", "answer"],
            [(r.job_id, r.image, r.state, r.error_type, r.tokens, r.answer_preview) for r in rows],
        ),
        "",
        " ".join(f"{state} {n}" for state, n in status.counts.items() if n)
        + (f" | errors {json.dumps(status.errors)}" if status.errors else ""),
        f"{status.total} jobs in {elapsed:.1f}s, {tokens} tokens generated by this process",
    ]
    if status.total > len(rows):
        lines.insert(1, f"(first {len(rows)} of {status.total} jobs; `vlmbatch export` writes them all)")
    return "\n".join(lines)
