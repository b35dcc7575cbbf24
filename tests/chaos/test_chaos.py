"""The chaos suite's short version (CI): real worker processes, private Redis and PostgreSQL servers that
get restarted, workers killed and frozen past their leases, hostile inputs. Every job must end exactly
once in its expected state. The full version is `make chaos` (README, Development)."""

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
    )
    lines: list[str] = []
    report = run_chaos(config, log=lines.append)
    rendered = report.render()
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
