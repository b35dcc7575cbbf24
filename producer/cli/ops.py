"""`vlmbatch resubmit`, `cancel` and `reconcile`: steering work after the fact."""

from __future__ import annotations

import json
from dataclasses import replace

import click
from sqlalchemy.orm import Session

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context
from vlmbatch.producer.cli.render import table
from vlmbatch.schema.contracts.errors import RETRYABLE_ERRORS, ErrorType
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.resubmit import Truncated, cancel_run, resubmit_jobs, select_for_resubmit, truncated_jobs
from vlmbatch.schema.ledger.runs import get_run
from vlmbatch.schema.ledger.shares import rejoin


def _states(value: str) -> list[JobState]:
    try:
        return [JobState(part.strip()) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@cli.command("resubmit")
@click.argument("run")
@click.option(
    "--status",
    "statuses",
    help="States to resubmit, e.g. failed,truncated [default: failed jobs of the retryable error types].",
)
@click.option(
    "--error-type",
    "error_types",
    multiple=True,
    type=click.Choice([e.value for e in ErrorType]),
    help="Only failed jobs with this error type (repeatable); any type may be named.",
)
@click.option("--max-tokens", type=click.IntRange(1), help="A new max_tokens for the new attempts.")
@click.option(
    "--restart",
    is_flag=True,
    help="Start the new attempts from token 0 instead of continuing the tokens kept (truncated at max_tokens, "
    "or a failed attempt's last checkpoint); needed for jobs stopped by repetition detection.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be resubmitted, change nothing.")
@click.option("--json", "as_json", is_flag=True)
def resubmit_command(
    run: str,
    statuses: str | None,
    error_types: tuple[str, ...],
    max_tokens: int | None,
    restart: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Queue new attempts for RUN's jobs in the given states (and error types), keeping all history. Bare,
    only failed jobs whose error may pass on another attempt (storage.transient, timeout, engine.oom,
    engine.dead, internal); it lists what it left out and why. Truncated jobs (`--status truncated`)
    continue from their tokens with a larger --max-tokens; --restart regenerates them."""
    ctx = load_context()
    bare = statuses is None and not error_types
    states = _states(statuses or JobState.FAILED.value)
    if bare:
        error_types = tuple(e.value for e in RETRYABLE_ERRORS)
    if JobState.QUEUED in states or JobState.RUNNING in states:
        raise click.BadParameter("only finished jobs can be resubmitted", param_hint="--status")
    with ctx.sessions() as session:
        target = get_run(session, run)
        selection = select_for_resubmit(session, run_id=target.id, states=states, error_types=error_types)
        left_out = _left_out(session, target.id) if bare else []
        if JobState.TRUNCATED in states:
            truncated = truncated_jobs(session, job_ids=selection.job_ids)
            _check_continuation(truncated, max_tokens=max_tokens, restart=restart)
            left_out += _truncated_left_out(truncated, restart=restart)
            skipped = truncated.refused | (set() if restart else set(truncated.repetition))
            selection = replace(selection, job_ids=[j for j in selection.job_ids if j not in skipped])
    queued: list[int] = []
    if not dry_run and selection.job_ids:
        with ctx.sessions() as session, session.begin():
            queued = resubmit_jobs(session, job_ids=selection.job_ids, max_tokens=max_tokens, restart=restart)
            rejoin(session, run_id=target.id)  # back among the active runs: level with them, not owed
        ctx.publisher().publish(target.queue, len(queued))
    groups = [
        {"status": state, "error_type": error_type, "jobs": n}
        for (state, error_type), n in sorted(selection.groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    ]
    if as_json:
        payload = {
            "run": target.id,
            "dry_run": dry_run,
            "selected": len(selection.job_ids),
            "resubmitted": len(queued),
            "groups": groups,
            "job_ids": selection.job_ids,
            "left_out": [{"status": st, "error_type": e, "jobs": n, "why": why} for st, e, n, why in left_out],
        }
        click.echo(json.dumps(payload))
        return
    click.echo(table(["status", "error type", "jobs"], [(g["status"], g["error_type"], g["jobs"]) for g in groups]))
    verb = "would resubmit" if dry_run else "resubmitted"
    click.echo(f"\nrun {target.id}: {verb} {len(selection.job_ids) if dry_run else len(queued)} jobs")
    for state, error_type, n, why in left_out:
        click.echo(f"left out: {n} {state} jobs{f' ({error_type})' if error_type else ''}: {why}")
    if queued and ctx.settings.uses_embedded_files():
        click.echo(
            f"embedded ledger: the re-queued jobs run when `vlmbatch run` works run {target.id} again (the same "
            "SOURCE and flags), or a `vlmbatch worker` on this ledger takes them"
        )


def _check_continuation(truncated: Truncated, *, max_tokens: int | None, restart: bool) -> None:
    """Continuing `length`-truncated jobs needs a budget larger than the tokens they hold (one line)."""
    if restart or not truncated.length:
        return
    if max_tokens is None or max_tokens <= truncated.kept:
        given = "none" if max_tokens is None else str(max_tokens)
        raise click.BadParameter(
            f"{len(truncated.length)} truncated jobs continue from up to {truncated.kept} tokens: give a larger "
            f"--max-tokens (given: {given}), or --restart to regenerate them",
            param_hint="--max-tokens",
        )


def _truncated_left_out(truncated: Truncated, *, restart: bool) -> list[tuple[str, str | None, int, str]]:
    rows: list[tuple[str, str | None, int, str]] = []
    if truncated.context:
        why = "hit the model's context limit: more tokens cannot fit, not resubmitted"
        rows.append((JobState.TRUNCATED.value, "context", len(truncated.context), why))
    if truncated.repetition and not restart:
        why = "stopped as a loop: a continuation would loop again; `--restart` regenerates them"
        rows.append((JobState.TRUNCATED.value, "repetition", len(truncated.repetition), why))
    return rows


def _left_out(session: Session, run_id: int) -> list[tuple[str, str | None, int, str]]:
    """What a bare resubmit does not take: permanent failures and truncated jobs, with the reason."""
    others = select_for_resubmit(session, run_id=run_id, states=[JobState.FAILED, JobState.TRUNCATED])
    retryable = {e.value for e in RETRYABLE_ERRORS}
    rows = []
    for (state, error_type), n in sorted(others.groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        if state == JobState.FAILED.value and error_type not in retryable:
            why = f"permanent for the same input; fix it, then `--error-type {error_type}`"
            rows.append((state, error_type, n, why))
        elif state == JobState.TRUNCATED.value:
            rows.append((state, None, n, "truncated jobs only when asked: `--status truncated --max-tokens N`"))
    return rows


@cli.command("cancel")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True)
def cancel_command(run: str, as_json: bool) -> None:
    """Cancel RUN's queued and running jobs (running ones end `cancelled` within a heartbeat)."""
    ctx = load_context()
    with ctx.sessions() as session, session.begin():
        target = get_run(session, run)
        cancelled = cancel_run(session, run_id=target.id)
    if as_json:
        click.echo(json.dumps({"run": target.id, "queued": cancelled.queued, "running": cancelled.running}))
    else:
        click.echo(f"run {target.id}: cancelled {cancelled.queued} queued and {cancelled.running} running jobs")


@cli.command("reconcile")
@click.argument("run", required=False)
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds after a run's last publication before its queued jobs count as lacking claim tokens.",
)
@click.option("--json", "as_json", is_flag=True)
def reconcile_command(run: str | None, grace: float, as_json: bool) -> None:
    """Requeue jobs whose lease expired and publish claim tokens for queued jobs the broker lost (for
    RUN's queue, or all queues)."""
    from vlmbatch.worker.transport.reconciler import reconcile

    ctx = load_context()
    run_id = None
    if run is not None:
        with ctx.sessions() as session:
            run_id = get_run(session, run).id
    report = reconcile(
        sessions=ctx.sessions,
        publisher=ctx.publisher(),
        broker_url=ctx.settings.resolved_broker_url(),
        jobs_per_message=ctx.settings.jobs_per_message,
        run_id=run_id,
        grace_seconds=grace,
        unacked_stale_seconds=ctx.settings.unacked_stale_seconds,
    )
    payload = {
        "leases_requeued": report.leases_requeued,
        "leases_failed": report.leases_failed,
        "republished": report.republished,
    }
    click.echo(json.dumps(payload) if as_json else " ".join(f"{k}={v}" for k, v in payload.items()))
