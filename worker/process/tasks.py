"""The one Celery task: a claim token (schema/contracts/tokens.py) asks this worker's pipeline to claim
up to N queued jobs of its queue.

The task returns (and its message is acknowledged) once its jobs are claimed: from then on each job is
protected by its lease in the database, not by the message (docs/ARCHITECTURE.md: Redis is only
transport)."""

from __future__ import annotations

import logging
import time

from celery import Celery
from celery.exceptions import Reject
from sqlalchemy.exc import DBAPIError

from vlmbatch.schema.contracts.tokens import token_jobs
from vlmbatch.worker.pipeline.admission import WorkerStopping
from vlmbatch.worker.pipeline.pipeline import Pipeline
from vlmbatch.worker.transport.celery_app import RUN_JOBS_TASK

log = logging.getLogger(__name__)
# How long a task waits before handing back a message it could not claim because the database failed.
CLAIM_RETRY_PAUSE_S = 1.0


def register_tasks(app: Celery, pipeline: Pipeline) -> None:
    @app.task(name=RUN_JOBS_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_jobs(token: object) -> int:
        jobs = token_jobs(token)
        if jobs is None:
            # A malformed message can never succeed: drop it rather than redeliver it forever.
            raise Reject(f"malformed message: expected a claim token, got {type(token).__name__}", requeue=False)
        try:
            return pipeline.admit(jobs)
        except WorkerStopping as exc:
            raise Reject(str(exc), requeue=True) from exc
        except DBAPIError as exc:
            # The ledger is unreachable (restarting, failing over): put the message back and slow down,
            # rather than acknowledging a claim that never happened.
            log.warning("could not claim %d jobs (%s); message requeued", jobs, type(exc).__name__)
            time.sleep(CLAIM_RETRY_PAUSE_S)
            raise Reject(str(exc), requeue=True) from exc
