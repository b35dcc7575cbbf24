"""`vlmbatch status`."""

from __future__ import annotations

import json
import sys
import time

import click
from sqlalchemy.orm import Session

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import CommandContext, load_context
from vlmbatch.producer.cli.progress import BarStream, ProgressDisplay
from vlmbatch.producer.cli.render import status_block, table
from vlmbatch.producer.reports.display import preview
from vlmbatch.producer.reports.stats import run_accounting
from vlmbatch.schema.ledger.liveness import model_unserved, workers_alive
from vlmbatch.schema.ledger.runs import get_run
from vlmbatch.schema.ledger.status import list_runs, run_progress, run_status
from vlmbatch.worker.telemetry.log_format import configure_logging
from vlmbatch.worker.telemetry.progress_log import Every


@cli.command("status")
@click.argument("run", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--watch", is_flag=True, help="Redraw a progress bar until the run is done.")
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True, help="Watch refresh, s.")
@click.option(
    "--progress-every",
    type=click.FloatRange(0, min_open=True),
    help="Watch, stderr not a terminal: seconds between progress lines [default 30].",
)
def status_command(run: str | None, as_json: bool, watch: bool, interval: float, progress_every: float | None) -> None:
    """Counts per state and per error type, rate and ETA, for RUN (an id or a name) or for every run."""
    ctx = load_context(progress_every=progress_every)
    with ctx.sessions() as session:
        if run is None:
            _list_runs(session, as_json=as_json)
            return
        target = get_run(session, run)
        unserved = model_unserved(session, target.id)
    if as_json and not watch:
        with ctx.sessions() as session:
            click.echo(run_status(session, target.id).model_dump_json())
        return
    if not watch:
        with ctx.sessions() as session:
            cost = run_accounting(session, target.id).all_attempts
            workers = workers_alive(session)
            click.echo(status_block(target.name, run_progress(session, target.id), cost, workers))
        if unserved:
            click.echo(f"warning: {unserved}")
        return
    if unserved:
        click.echo(f"warning: {unserved}", err=True)
    _watch(ctx, target.id, target.name, as_json=as_json, interval=interval)


def _watch(ctx: CommandContext, run_id: int, name: str, *, as_json: bool, interval: float) -> None:
    configure_logging(fmt=ctx.settings.log_format, stream=sys.stdout)
    display = ProgressDisplay(
        name,
        stream=BarStream(sys.stdout),
        interactive=sys.stdout.isatty(),
        every=Every(ctx.settings.progress_every),
        clock=time.monotonic,
    )
    while True:
        with ctx.sessions() as session:
            progress = run_progress(session, run_id)
            workers = workers_alive(session)
        if as_json:
            click.echo(progress.report.model_dump_json())
        else:
            display.update(progress, workers=workers)
        if progress.finished:
            display.close()
            return
        time.sleep(interval)


def _list_runs(session: Session, *, as_json: bool) -> None:
    listings = list_runs(session)
    reports = [run_status(session, r.run_id) for r in listings]
    if as_json:
        click.echo(json.dumps([r.model_dump() for r in reports]))
        return
    rows = [
        (
            r.run_id,
            r.name,
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.model,
            preview(r.question, 40),
            rep.total,
            *(rep.counts[s] for s in rep.counts),
        )
        for r, rep in zip(listings, reports, strict=True)
    ]
    headers = ["id", "name", "created (UTC)", "model", "question", "total", *(reports[0].counts if reports else [])]
    click.echo(table(headers, rows) if rows else "no runs yet")
