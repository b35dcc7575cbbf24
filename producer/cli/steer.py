"""`vlmbatch pause`, `resume` and `priority`: steering a run among the others of its queue."""

from __future__ import annotations

import json

import click

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context
from vlmbatch.producer.submit import publish_run
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.controls import pause_run, resume_run, run_control, set_schedule
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.runs import get_run


@cli.command("pause")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True)
def pause_command(run: str, as_json: bool) -> None:
    """Pause RUN: its running jobs finish, no worker claims another until `vlmbatch resume`."""
    ctx = load_context()
    with ctx.sessions() as session, session.begin():
        target = get_run(session, run)
        paused = pause_run(session, run_id=target.id)
        running = read_counts(session, target.id).by_state[JobState.RUNNING.value]
    with ctx.sessions() as session:
        control = run_control(session, get_run(session, target.id))
    since = control.paused_at.isoformat(sep=" ", timespec="seconds") if control.paused_at else ""
    if as_json:
        click.echo(json.dumps({"run": target.id, "paused": True, "since": since, "reason": control.pause_reason}))
    elif paused:
        click.echo(f"run {target.id}: paused; {running} running jobs finish, no new one is claimed")
    else:
        click.echo(f"run {target.id}: already paused since {since} ({control.pause_reason})")


@cli.command("resume")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True)
def resume_command(run: str, as_json: bool) -> None:
    """Resume a paused RUN (by `vlmbatch pause` or by its circuit breaker, which closes again)."""
    ctx = load_context()
    with ctx.sessions() as session, session.begin():
        target = get_run(session, run)
        was = run_control(session, target)
        queued = resume_run(session, run_id=target.id)
        queue = target.queue
    # Workers consumed the paused run's tokens and claimed nothing: publish them again.
    publish_run(ctx.sessions, ctx.publisher(), queue=queue, run_id=target.id)
    if as_json:
        click.echo(json.dumps({"run": target.id, "was_paused": was.paused, "queued": queued}))
    elif was.paused:
        click.echo(f"run {target.id}: resumed; {queued} queued jobs")
    else:
        click.echo(f"run {target.id}: was not paused; {queued} queued jobs")


@cli.command("priority", context_settings={"ignore_unknown_options": True})  # a negative PRIORITY
@click.argument("run")
@click.argument("priority", type=click.IntRange(-1000, 1000))
@click.option("--weight", type=click.IntRange(1, 1000), help="Its share of the priority's workers, too.")
@click.option("--json", "as_json", is_flag=True)
def priority_command(run: str, priority: int, weight: int | None, as_json: bool) -> None:
    """Set RUN's PRIORITY (workers take from higher-priority runs of a queue first) and, with --weight,
    its share among the runs of its priority. Takes effect at the workers' next claims."""
    ctx = load_context()
    with ctx.sessions() as session, session.begin():
        target = get_run(session, run)
        set_schedule(session, run_id=target.id, priority=priority, weight=weight)
    with ctx.sessions() as session:
        control = run_control(session, get_run(session, target.id))
    if as_json:
        click.echo(json.dumps({"run": target.id, "priority": control.priority, "weight": control.weight}))
    else:
        click.echo(f"run {target.id}: priority {control.priority}, weight {control.weight}")
