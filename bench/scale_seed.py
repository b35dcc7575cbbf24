"""Seeding for bench/scale.py: a run's ledger grown by SQL before the real submit of its last jobs.

A 10^7-job submit takes about an hour on 2 cores, so at sizes above `--seed-above` the run is first grown
to N - SUBMITTED queued jobs by `INSERT ... SELECT ... FROM generate_series` in PostgreSQL, rows shaped as
`vlmbatch submit` writes them (schema/ledger/enqueue.py `_MOVE_STAGED`): the manifest's image, a question of
their own ("... seeded view i"), the input_key that JobSpec.input_key() gives those (checked on one row),
the run counters raised in the same transactions. No ON CONFLICT: a seeded key meeting another key fails
the seeding. Then `vlmbatch reconcile --grace 0` publishes their claim tokens (the project's own path for
queued jobs that no token covers), and the last SUBMITTED jobs go into the same run by the real `vlmbatch
submit --run NAME`, which reuses a run of that name whose settings are the ones its flags give.

  python bench/scale_seed.py --jobs 1000000     # time seeding alone (fresh database, dropped after)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control_plane import REDIS, env_for, flush_redis, fresh_database, timed  # noqa: E402
from tests.processes import VLMBATCH  # noqa: E402

# Seeded rows per transaction (each commits its counters with its rows).
SEED_CHUNK = 1_000_000
# A seeded job's question; `%s` is its number. No manifest row of bench/scale.py asks this.
SEED_QUESTION = "What is shown in seeded view %s?"

# As schema/ledger/enqueue.py _MOVE_STAGED writes a staged row, but from generate_series; input_key as
# JobSpec.input_key() computes it for one spec of these images and this question: the first 32 hex
# digits of the SHA-256 of the length-prefixed parts (`prefix` holds the image part).
_SEED = """
INSERT INTO jobs (run_id, input_key, images, question, reference, metadata, params, state, attempt_count,
                  attempt_base, transient_failures, accepted_samples, created_at, queued_at)
SELECT :run_id, left(encode(sha256(convert_to(CAST(:prefix AS text) || length(q) || ':' || q, 'UTF8')), 'hex'), 32),
       CAST(:images AS json), q, :reference, CAST(:metadata AS json), CAST(:params AS json), 'queued',
       0, 0, 0, 0,
       now() AT TIME ZONE 'utc', clock_timestamp() AT TIME ZONE 'utc'
FROM (SELECT format(CAST(:question AS text), i) AS q FROM generate_series(CAST(:first AS bigint), :last) AS i) AS seeded
"""


@dataclass
class Seeded:
    run_id: int
    jobs: int
    insert_s: float  # the INSERTs and their counters
    statistics_s: float  # schema.ledger.enqueue.refresh_statistics
    reconcile_s: float  # `vlmbatch reconcile --grace 0`, publishing the seeded jobs' tokens
    tokens: int  # the queue's length after it

    @property
    def total_s(self) -> float:
        return self.insert_s + self.statistics_s + self.reconcile_s


def submit_params(manifest: Path, submit_args: Sequence[str]) -> dict[str, Any]:
    """The parameters `vlmbatch submit MANIFEST SUBMIT_ARGS` parses, by its own click command."""
    from vlmbatch.producer.cli.submit import submit_command

    return dict(submit_command.make_context("submit", [str(manifest), *submit_args]).params)


def create_run(sessions: Any, *, manifest: Path, submit_args: Sequence[str], queue: str) -> tuple[int, Any]:
    """The run that `vlmbatch submit MANIFEST SUBMIT_ARGS` will reuse (its --run name, the settings its
    flags give), and the manifest's first job spec, as submit reads it."""
    from vlmbatch.media.stores import ObjectStores
    from vlmbatch.producer.cli.asked_options import AskedOptions
    from vlmbatch.producer.cli.options import group_of
    from vlmbatch.producer.cli.run_options import RunOptions, SamplingOptions, build_run_settings
    from vlmbatch.producer.sources.open import open_source
    from vlmbatch.schema.ledger.runs import get_or_create_run

    params = submit_params(manifest, submit_args)
    asked, run = group_of(AskedOptions, params), group_of(RunOptions, params)
    assert run.run_name and run.model, "the seeded run needs --run and --model"
    settings = build_run_settings(run.model, asked=asked, run=run, sampling=group_of(SamplingOptions, params))
    source = open_source(str(manifest), prompting=asked.prompting(), stores=ObjectStores())
    template = next(iter(source.specs()))
    with sessions() as session, session.begin():
        run_row = get_or_create_run(session, name=run.run_name, settings=settings, queue=queue, source=source.uri)
        return run_row.id, template


def seed_jobs(sessions: Any, *, run_id: int, template: Any, jobs: int, log: bool = True) -> tuple[float, float]:
    """Grow run `run_id` by `jobs` queued jobs over `template`'s images; return the seconds of the
    INSERTs (with their counters) and of refreshing the statistics."""
    from sqlalchemy import text

    from vlmbatch.schema.contracts.models import JobSpec
    from vlmbatch.schema.contracts.states import JobState
    from vlmbatch.schema.ledger.counters import Bucket, CountDeltas
    from vlmbatch.schema.ledger.enqueue import refresh_statistics, staged_row

    assert template.params is None and not (template.meta or {}).get("custom_id"), "not part of the seeded key"
    _, images, _, reference, metadata, params, _ = staged_row(template)
    prefix = f"{len(template.images)}|" + "".join(f"{len(p)}:{p}" for p in template.images)
    started = time.perf_counter()
    for first in range(1, jobs + 1, SEED_CHUNK):
        last = min(jobs, first + SEED_CHUNK - 1)
        values = {"run_id": run_id, "prefix": prefix, "images": images, "reference": reference}
        values |= {"metadata": metadata, "params": params, "question": SEED_QUESTION, "first": first, "last": last}
        with sessions() as session, session.begin():
            inserted = session.execute(text(_SEED), values).rowcount
            assert inserted == last - first + 1, (inserted, first, last)
            deltas = CountDeltas()  # as a submit counts its jobs: in the transaction that inserts them
            deltas.add(Bucket.of(run_id, JobState.QUEUED.value), inserted)
            deltas.apply(session)
        if log:
            print(f"  seeded {last:,} jobs, {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    insert_s = time.perf_counter() - started
    with sessions() as session:
        row = session.execute(
            text("SELECT input_key, question FROM jobs WHERE run_id = :r ORDER BY id LIMIT 1"), {"r": run_id}
        )
        key, question = row.one()
    assert key == JobSpec(images=template.images, question=question).input_key(), (key, question)
    started = time.perf_counter()
    with sessions() as session, session.begin():
        # The function submit calls after its bulk load, not an ANALYZE of our own: whether and how a
        # grown ledger gets fresh statistics is the project's rule (ANALYZE_GROWTH), which the issue
        # wants applied with no manual step, so the seeded ledger must get exactly what a submit gives.
        refresh_statistics(session, inserted=jobs)
    return insert_s, time.perf_counter() - started


def publish_seeded(env: dict[str, str], *, queue: str, jobs: int, jobs_per_message: int) -> tuple[float, int]:
    """`vlmbatch reconcile --grace 0`: tokens for the seeded jobs, which none covers yet; return its
    wall seconds and the queue's length, checked against what the seeded jobs need."""
    import redis

    wall, _, out = timed([*VLMBATCH, "reconcile", "--grace", "0", "--json"], env)
    assert json.loads(out)["republished"] == jobs, out
    tokens = int(redis.Redis.from_url(REDIS).llen(queue))
    assert tokens == math.ceil(jobs / jobs_per_message), (tokens, jobs)
    return wall, tokens


def seed_ledger(
    db: str, env: dict[str, str], *, manifest: Path, submit_args: Sequence[str], queue: str, jobs: int, per_message: int
) -> Seeded:
    """A run of `jobs` seeded jobs with their tokens, ready for `vlmbatch submit MANIFEST SUBMIT_ARGS`."""
    from vlmbatch.schema.ledger.database import open_ledger

    engine, sessions = open_ledger(db, auto_migrate=False)
    try:
        run_id, template = create_run(sessions, manifest=manifest, submit_args=submit_args, queue=queue)
        insert_s, statistics_s = seed_jobs(sessions, run_id=run_id, template=template, jobs=jobs)
    finally:
        engine.dispose()
    reconcile_s, tokens = publish_seeded(env, queue=queue, jobs=jobs, jobs_per_message=per_message)
    return Seeded(run_id, jobs, insert_s, statistics_s, reconcile_s, tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description="Time seeding alone: " + __doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=SEED_CHUNK, help="jobs to seed")
    args = parser.parse_args()
    from bench.scale import MESSAGE_JOBS, QUEUE, SUBMIT_ARGS, drop_database, write_manifest

    flush_redis()
    db = fresh_database()
    env = env_for(db, VLMBATCH_ENGINE="fake", VLMBATCH_MODEL="fake-model")
    try:
        with tempfile.TemporaryDirectory(prefix="vlmbatch-seed-") as folder:
            manifest = write_manifest(Path(folder), 1)
            args_ = [*SUBMIT_ARGS, "--run", "seed-only"]
            seeded = seed_ledger(
                db, env, manifest=manifest, submit_args=args_, queue=QUEUE, jobs=args.jobs, per_message=MESSAGE_JOBS
            )
    finally:
        drop_database(db)
    print(
        f"seeded {seeded.jobs:,} jobs in {seeded.total_s:.1f} s: INSERTs {seeded.insert_s:.1f} s "
        f"({seeded.jobs / seeded.insert_s:,.0f} jobs/s), refresh_statistics {seeded.statistics_s:.1f} s, "
        f"reconcile {seeded.reconcile_s:.1f} s ({seeded.tokens:,} tokens)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
