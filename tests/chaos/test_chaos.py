"""The chaos suite's short version (CI): real worker processes, private Redis and PostgreSQL servers that
get restarted, workers killed and frozen past their leases, hostile inputs. Every job must end exactly
once in its expected state, and kill -9 loses at most one checkpoint interval of tokens per trace in
flight (issue 26). The full version is `make chaos` (README, Development)."""

from __future__ import annotations

import pytest

from tests.chaos.scenario import ChaosConfig, run_chaos

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def test_every_job_ends_exactly_once_through_every_fault() -> None:
    config = ChaosConfig(
        jobs=400,
        workers=2,
        kills=2,
        stops=1,
        redis_wipes=1,
        postgres_restarts=1,
        client_kills=1,
        lease_seconds=6.0,
        fault_window_s=20.0,
        finish_within_s=120.0,
        # Traces of 800 tokens at 200 tok/s (4 s), checkpointed every 0.5 s: a kill lands mid-trace, and
        # the bound (one interval, 200 tokens) is a quarter of a trace.
        output_tokens=800,
    )
    lines: list[str] = []
    report = run_chaos(config, log=lines.append)
    rendered = report.render()
    print(rendered)  # the fault table and the tokens-lost figure, with `pytest -s`
    assert report.passed, "\n".join([*lines, rendered])
    assert report.lost == 0 and report.duplicates == 0 and not report.wrong_outcome
    assert sum(report.counts.values()) == config.jobs
    assert {name for name, *_ in report.table} >= {
        "kill -9 worker",
        "SIGSTOP past lease",
        "Redis restarted empty",
        "PostgreSQL restarted",
        "broker clients killed",
    }
    # Issue 26: a killed worker loses at most one checkpoint interval per trace in flight, and every
    # continued trace is the uninterrupted one, token for token.
    tokens = report.tokens
    assert tokens is not None
    print("killed traces (job[* before its first checkpoint]:tokens kept+lost):", tokens.per_job())
    assert tokens.lost_per_job, "no kill landed on a trace in flight"
    assert tokens.over_bound == 0, tokens.render()
    assert tokens.resumed_attempts > 0 and tokens.reused_tokens > 0, tokens.render()
    assert not tokens.mismatched_traces and not tokens.mismatched_checkpoints, tokens.render()
    assert tokens.traces_checked == sum(report.counts.get(s, 0) for s in ("succeeded", "truncated"))
