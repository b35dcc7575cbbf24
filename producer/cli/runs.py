"""`vlmbatch status`."""

from __future__ import annotations

import json
import sys
import time

import click
from sqlalchemy import select

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context
from vlmbatch.producer.cli.render import progress_line, status_block, table
from vlmbatch.producer.reports.stats import run_accounting
from vlmbatch.schema.contracts.models import StatusReport
from vlmbatch.schema.ledger.liveness import workers_alive
from vlmbatch.schema.ledger.runs import get_run
from vlmbatch.schema.ledger.status import run_progress, run_status
from vlmbatch.schema.ledger.tables import Run


@cli.command("status")
@click.argument("run", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--watch", is_flag=True, help="Redraw a progress bar until the run is done.")
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True, help="Watch refresh, s.")
def status_command(run: str | None, as_json: bool, watch: bool, interval: float) -> None:
    """Counts per state and per error type, rate and ETA, for RUN (an id or a name) or for every run."""
    ctx = load_context()
    with ctx.sessions() as session:
        if run is None:
            runs = list(session.scalars(select(Run).order_by(Run.id)))
            reports = [run_status(session, r.id) for r in runs]
            if as_json:
                click.echo(json.dumps([r.model_dump() for r in reports]))
                return
            rows = [
                (r.id, r.name, rep.total, *(rep.counts[s] for s in rep.counts), _steering(rep))
                for r, rep in zip(runs, reports, strict=True)
            ]
            headers = ["id", "name", "total", *(reports[0].counts if reports else []), "priority / paused"]
            click.echo(table(headers, rows) if rows else "no runs yet")
            return
        target = get_run(session, run)
    if as_json and not watch:
        with ctx.sessions() as session:
            click.echo(run_status(session, target.id).model_dump_json())
        return
    if not watch:
        with ctx.sessions() as session:
            cost = run_accounting(session, target.id).all_attempts
            workers = workers_alive(session)
            click.echo(status_block(target.name, run_progress(session, target.id), cost, workers))
        return
    while True:
        with ctx.sessions() as session:
            progress = run_progress(session, target.id)
        if as_json:
            click.echo(progress.report.model_dump_json())
        else:
            end = "\n" if progress.finished or not sys.stdout.isatty() else ""
            click.echo("\r" + progress_line(target.name, progress), nl=bool(end))
        if progress.finished:
            return
        time.sleep(interval)


def _steering(report: StatusReport) -> str:
    place = f"{report.priority}" + (f" x{report.weight}" if report.weight != 1 else "")
    if report.paused:
        return place + (
            ", breaker tripped" if (report.pause_reason or "").startswith("circuit breaker") else ", paused"
        )
    return place
