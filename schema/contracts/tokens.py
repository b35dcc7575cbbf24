"""Claim tokens: what a broker message means.

A message carries no job ids. It is a token asking a worker of its queue to claim up to N queued jobs
(N = `jobs_per_message`) of that queue's runs from the ledger: the highest priority first, a priority shared
by weight, each run's oldest first (schema.ledger.claims.QueueClaimer, schema.ledger.shares; FOR UPDATE SKIP
LOCKED on ix_jobs_run_state_id). Why, rather than messages naming their jobs:

- A lost token loses no work and a duplicated one duplicates none. The jobs stay `queued` in the
  ledger whatever happens to the messages; a spare token claims other jobs, or nothing.
- Reconciliation compares two counts instead of two sets (worker/transport/reconciler.py): the queue's
  queued jobs, from the run counters, against the jobs its tokens cover (waiting: LLEN; delivered to a
  live worker: the unacknowledged hash, as large as the fleet's prefetch). The deficit is published.
  Reading every message of a ten-million-job queue to learn which ids it holds is what this replaces.
- Submitting publishes one token per N jobs without reading the new ids back.

What stays as it was: the queue's length tracks the work remaining (KEDA scales on it), Flower shows one
`run_jobs` task per token, a task acknowledges its token once its jobs are claimed (then leases protect
them), a retry after a backoff is a token published with a countdown, and expired leases have one owner
(schema.ledger.reconcile). What changes: which jobs a token claims is the ledger's choice (each run's oldest
claimable first), so jobs that share an image, adjacent in id order, are still claimed together. A paused or
held run's queued jobs are owed no token.

A message that is not a token (a list of job ids, the format before tokens) counts as a token for as
many jobs, so that messages published by an older producer are still worked.
"""

from __future__ import annotations

# The most jobs one token may ask for: a larger claim would hold a transaction for too long.
MAX_TOKEN_JOBS = 1000


def token_jobs(argument: object) -> int | None:
    """How many jobs the message's argument asks for, or None when it is not one of our messages."""
    if type(argument) is int and 1 <= argument <= MAX_TOKEN_JOBS:
        return argument
    if isinstance(argument, list) and argument and all(type(i) is int for i in argument):
        return min(len(argument), MAX_TOKEN_JOBS)
    return None
