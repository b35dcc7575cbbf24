"""`/v1/batches`: a batch is a run. Creating one submits its input file (producer.submit with the OpenAI
batch source) in the background; a malformed file ends the batch `failed` with `errors.data` naming its
lines, and nothing is queued. No job is published while the batch is `validating`: a cancel (or the
deadline) may still come, and then every job the submit inserted is cancelled unpublished. Once no job of
the run is queued or running, the run's `openai` export becomes the batch's output and error files (once:
a lock in this process, and a conditional update in the ledger), off the request: the batch reads
`finalizing` meanwhile. The batch object itself is built in batch_object.py."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.staging import Stager
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.api.batch_input import line_errors, metadata_pairs, metadata_schedule
from vlmbatch.producer.api.batch_object import batch_object, completion_window
from vlmbatch.producer.api.errors import ApiError, not_found
from vlmbatch.producer.api.files import OUTPUT_PURPOSE, UPLOAD_PURPOSE, FileStore
from vlmbatch.producer.api.ids import batch_id, parse_batch_id
from vlmbatch.producer.reports.export import ExportFilter, export_run
from vlmbatch.producer.sources.base import RejectPolicy
from vlmbatch.producer.sources.openai_batch import CHAT_URLS, OpenAIBatchSource
from vlmbatch.producer.submit import publish_run, submit
from vlmbatch.schema.contracts.errors import BrokerUnavailable, RunNotFound, SourceError
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger import api_batches
from vlmbatch.schema.ledger.api_files import FileRow, get_file
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.enqueue import mark_published_named
from vlmbatch.schema.ledger.resubmit import cancel_run
from vlmbatch.schema.ledger.runs import RunView, Schedule, find_run, get_run
from vlmbatch.schema.ledger.status import run_status
from vlmbatch.worker.transport.publisher import Publisher

log = logging.getLogger(__name__)

SUBMIT_THREADS = 2
MAX_LIST_LIMIT = 100
# How often the server looks for batches past their deadline that nobody reads.
EXPIRY_PASS_SECONDS = 60.0
# An expired batch's unfinished requests in its error file: OpenAI's code and message.
EXPIRED_ERROR = ("batch_expired", "This request could not be executed before the completion window expired.")
_CANCELLABLE = ("validating", "in_progress", "cancelling")


class BatchSettings(Protocol):
    """What a batch's submit reads of the settings (Settings has them): the model and queue of its run,
    where its `data:` images are staged."""

    @property
    def model(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def s3_endpoint_url(self) -> str | None: ...

    @property
    def max_image_bytes(self) -> int: ...

    def resolved_stage_to(self) -> str: ...


@dataclass
class BatchService:
    sessions: sessionmaker[Session]
    publisher: Publisher
    files: FileStore
    settings: BatchSettings

    def __post_init__(self) -> None:
        self._finalizing = threading.Lock()
        # Submits run here, off the request: a large file answers `validating` at once, then `in_progress`.
        self._submits = ThreadPoolExecutor(max_workers=SUBMIT_THREADS, thread_name_prefix="batch-submit")
        self._submitting_lock = threading.Lock()
        self._submitting: set[int] = set()
        self._expiry_pass: threading.Thread | None = None

    # -- requests ----------------------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a batch of an uploaded file, whose submit as a run starts in the background; the batch
        object (`validating` until the submit is done)."""
        endpoint = body.get("endpoint")
        if endpoint != CHAT_URLS[0]:
            raise ApiError(400, f"endpoint {endpoint!r}: only {CHAT_URLS[0]}", param="endpoint")
        window = completion_window(body.get("completion_window"))
        metadata = metadata_pairs(body.get("metadata"))
        metadata_schedule(metadata)  # refused now, not after the upload was read
        given = body.get("input_file_id")
        if not isinstance(given, str):
            raise ApiError(400, "input_file_id must be a file id", param="input_file_id")
        upload = self.files.get(given)
        if upload.purpose != UPLOAD_PURPOSE:
            raise ApiError(400, f"{given} is not a batch input file", param="input_file_id")
        with self.sessions() as session, session.begin():
            row_id = api_batches.create_batch(
                session,
                input_file_id=upload.id,
                endpoint=endpoint,
                completion_window=body["completion_window"],
                metadata=metadata,
                window=window,
            )
        self._start_submit(row_id, upload)
        return self.retrieve(batch_id(row_id))

    def retrieve(self, public_id: str) -> dict[str, Any]:
        row_id = parse_batch_id(public_id)
        self._start_expiry_pass()
        # Expiry is enforced on every read too, before the status is computed: whoever polls sees the
        # deadline to the second; the periodic pass covers batches nobody polls (they hold GPUs).
        self._expire_if_due(row_id)
        self._resume_submit(row_id)
        # Off the request too: a large run's export takes a while; meanwhile the batch reads `finalizing`.
        self._submits.submit(self._finalize_if_done, row_id)
        with self.sessions() as session:
            row = api_batches.get_batch(session, batch_id=row_id)
            if row is None:
                raise not_found("batch", public_id)
            return batch_object(session, row)

    def page(self, *, after: str | None, limit: int) -> dict[str, Any]:
        """Batches newest first, `limit` of them after the batch `after` (OpenAI's cursor paging)."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ApiError(400, f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit")
        before = parse_batch_id(after, param="after") if after else None
        with self.sessions() as session:
            ids = api_batches.batch_ids(session, before=before, limit=limit + 1)
        page = [self.retrieve(batch_id(i)) for i in ids[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ids) > limit,
        }

    def cancel(self, public_id: str) -> dict[str, Any]:
        """Cancel the batch: its run's queued and running jobs end `cancelled` (schema.ledger.resubmit.cancel_run);
        a `validating` batch is marked, and its submit cancels every job it inserted, none published."""
        current = self.retrieve(public_id)
        if current["status"] not in _CANCELLABLE:
            raise ApiError(409, f"Cannot cancel a batch with status {current['status']}.", code="batch_not_cancellable")
        row_id = parse_batch_id(public_id)
        with self.sessions() as session, session.begin():
            api_batches.cancel_batch(session, batch_id=row_id)
        return self.retrieve(public_id)

    # -- the deadline ------------------------------------------------------------------------------------

    def expire_due(self) -> int:
        """Expire every batch past its deadline with work unfinished; how many were expired."""
        with self.sessions() as session:
            due = api_batches.due_batch_ids(session)
        return sum(self._expire_if_due(row_id) for row_id in due)

    def _expire_if_due(self, row_id: int) -> bool:
        """Past its deadline, a batch with jobs still queued or running (or still validating) expires: those
        jobs are cancelled (no worker takes them; running ones are aborted), what finished stays."""
        with self.sessions() as session:  # a read first: most reads find nothing due, and take no write lock
            row = api_batches.get_batch(session, batch_id=row_id)
            now = database_now(session)
            if row is None or row.expires_at is None or row.expires_at > now or not row.is_open:
                return False
            if row.run_id is not None:
                counts = run_status(session, row.run_id).counts
                if not (counts[JobState.QUEUED.value] or counts[JobState.RUNNING.value]):
                    return False  # everything ran, if late: the batch completes
        with self.sessions() as session, session.begin():
            if not api_batches.expire_batch(session, batch_id=row_id, now=now):
                return False  # cancelled, failed or finished meanwhile
        log.info("batch %s expired: its completion window passed with work unfinished", batch_id(row_id))
        return True

    def _start_expiry_pass(self) -> None:
        # Started on first use (not when the app is built): apps built and dropped start no thread.
        with self._submitting_lock:
            if self._expiry_pass is not None:
                return
            self._expiry_pass = threading.Thread(target=self._expire_periodically, name="batch-expiry", daemon=True)
        self._expiry_pass.start()

    def _expire_periodically(self) -> None:
        stop = threading.Event()
        while not stop.wait(EXPIRY_PASS_SECONDS):
            try:
                self.expire_due()
            except Exception:  # the next pass tries again
                log.exception("the batch expiry pass failed")

    # -- submitting --------------------------------------------------------------------------------------

    def _resume_submit(self, row_id: int) -> None:
        """Submit again a batch left `validating` (the server stopped during its submit): submits are
        idempotent (the run is named after the batch, jobs are unique per run), so what went in stays once."""
        with self.sessions() as session:
            row = api_batches.get_batch(session, batch_id=row_id)
            if row is None or row.run_id is not None or row.failed_at is not None or row.finished_at is not None:
                return
            upload = get_file(session, file_id=row.input_file_id)
        if upload is None:
            self._fail(
                row_id, [{"code": "invalid_file", "message": "the input file was deleted", "param": None, "line": None}]
            )
            return
        self._start_submit(row_id, upload)

    def _start_submit(self, row_id: int, upload: FileRow) -> None:
        with self._submitting_lock:
            if row_id in self._submitting:
                return  # this process is submitting it already
            self._submitting.add(row_id)
        self._submits.submit(self._submit, row_id, upload)

    def _submit(self, row_id: int, upload: FileRow) -> None:
        try:
            self._submit_once(row_id, upload)
        except Exception:
            log.exception("batch %s: the submit failed", batch_id(row_id))
            self._end_failed_submit(row_id)
        finally:
            with self._submitting_lock:
                self._submitting.discard(row_id)

    def _end_failed_submit(self, row_id: int) -> None:
        """A submit that failed unexpectedly ends its batch (no read validates it again): `failed`, or as a
        cancel or expiry asked; any job it inserted is cancelled, none having been published."""
        try:
            if self._stopped(row_id):
                self._end_unaccepted(row_id)
                return
            with self.sessions() as session, session.begin(), suppress(RunNotFound):
                cancel_run(session, run_id=get_run(session, batch_id(row_id)).id)
            message = "the server failed to submit the file; its log has the details"
            self._fail(row_id, [{"code": "server_error", "message": message, "param": None, "line": None}])
        except Exception:  # the ledger itself is failing: the batch stays `validating`, its next read retries
            log.exception("batch %s: ending the failed submit failed", batch_id(row_id))

    def _fail(self, row_id: int, errors: list[dict[str, Any]]) -> None:
        with self.sessions() as session, session.begin():
            api_batches.fail_batch(session, batch_id=row_id, errors=errors)

    def _submit_once(self, row_id: int, upload: FileRow) -> None:
        settings = self.settings
        # Only the stager writes (to a local folder or S3): the upload itself is a local file.
        stores = ObjectStores(s3_endpoint_url=settings.s3_endpoint_url)
        stager = Stager(settings.resolved_stage_to(), stores=stores, max_bytes=settings.max_image_bytes)
        # The source remembers the `data:` images it staged: the submit that follows decodes none again.
        source = OpenAIBatchSource(upload.path, stager=stager)
        errors = line_errors(source)
        if self._stopped(row_id):  # cancelled or expired while its lines were checked
            self._end_unaccepted(row_id)
            return
        run_id: int | None = None
        name = batch_id(row_id)
        if not errors and self._name_taken(name, source.uri):
            message = f"a run named {name} that is not this batch's exists (made before such names were reserved)"
            errors = [{"code": "invalid_request", "message": message, "param": None, "line": None}]
        if not errors:
            try:
                run_id = submit(
                    sessions=self.sessions,
                    publisher=HeldPublisher(self.sessions, run_name=name),
                    held=True,  # no worker claims its jobs until the batch is accepted
                    source=source,
                    settings=RunSettings(model=self.settings.model),
                    queue=self.settings.queue,
                    run_name=name,
                    schedule=self._schedule(row_id),
                    policy=RejectPolicy(),  # a bad request is a line of the error file, as OpenAI answers it
                ).run
            except SourceError as exc:
                errors = [{"code": "invalid_request", "message": str(exc), "param": None, "line": None}]
        if errors or run_id is None:
            self._fail(row_id, errors)
            return
        if self._accept(row_id, run_id):
            try:
                publish_run(self.sessions, self.publisher, queue=self.settings.queue, run_id=run_id)
            except BrokerUnavailable as exc:  # the jobs are in the ledger; workers or the reconciler publish them
                log.warning("batch %s: %s", batch_id(row_id), exc)

    def _schedule(self, row_id: int) -> Schedule:
        with self.sessions() as session:
            row = api_batches.get_batch(session, batch_id=row_id)
            return metadata_schedule(row.metadata if row is not None else None)

    def _name_taken(self, name: str, source: str) -> bool:
        """Whether another run holds the batch's name: its jobs and answers are not the batch's to take.
        (`--run` refuses batch ids now; a ledger may hold one from before.)"""
        with self.sessions() as session:
            try:
                return get_run(session, name).source != source
            except RunNotFound:
                return False

    def _stopped(self, row_id: int) -> bool:
        with self.sessions() as session:
            row = api_batches.get_batch(session, batch_id=row_id)
            return row is None or row.cancelling_at is not None or row.expired_at is not None

    def _accept(self, row_id: int, run_id: int) -> bool:
        """Give the batch its run unless it was cancelled or expired while validating; then (in the same
        transaction, so no message can go out in between) every job the submit inserted is cancelled."""
        with self.sessions() as session, session.begin():
            return api_batches.accept_batch(session, batch_id=row_id, run_id=run_id)

    def _end_unaccepted(self, row_id: int) -> None:
        """End a batch cancelled or expired before its submit: with the run a submit cut short by a restart
        left (all its jobs cancelled, files written as for any run), or as it is, with no files."""
        with self.sessions() as session, session.begin():
            api_batches.end_unaccepted_batch(session, batch_id=row_id, run_name=batch_id(row_id))

    # -- output files ------------------------------------------------------------------------------------

    def _finalize_if_done(self, row_id: int) -> None:
        """Write the output and error files of a batch whose run has no queued or running job left."""
        if not self._finalizing.acquire(blocking=False):
            return  # another thread is writing a batch's files; a later read tries again
        try:
            with self.sessions() as session:
                row = api_batches.get_batch(session, batch_id=row_id)
                if row is None or row.run_id is None or row.finished_at is not None:
                    return
                counts = run_status(session, row.run_id).counts
                if counts[JobState.QUEUED.value] or counts[JobState.RUNNING.value]:
                    return
                run = find_run(session, run_id=row.run_id)
                assert run is not None
                expired = row.expired_at is not None
            with self.sessions() as session, session.begin():
                api_batches.mark_finalizing(session, batch_id=row_id)
            self._export(row_id, run, expired=expired)
        except Exception:  # the batch stays `finalizing`; its next read tries again
            log.exception("batch %s: writing its output files failed", batch_id(row_id))
        finally:
            self._finalizing.release()

    def _export(self, row_id: int, run: RunView, *, expired: bool) -> None:
        folder = self.files.folder
        folder.mkdir(parents=True, exist_ok=True)
        name = batch_id(row_id)
        out, errors_out = folder / f"{name}_output.jsonl", folder / f"{name}_errors.jsonl"
        every_finished = ExportFilter(states=tuple(s for s in JobState if s.terminal))
        report = export_run(
            self.sessions,
            run=run,
            fmt="openai",
            out=out,
            errors_out=errors_out,
            selection=every_finished,
            cancelled_as=EXPIRED_ERROR if expired else None,
        )
        # As OpenAI does: no output file when no request succeeded, no error file when none failed.
        output = self._keep(out, f"{name}_output.jsonl", report.rows)
        failed = self._keep(errors_out, f"{name}_errors.jsonl", report.errors)
        with self.sessions() as session, session.begin():
            api_batches.finish_batch(session, batch_id=row_id, output_file_id=output, error_file_id=failed)

    def _keep(self, path: Path, filename: str, lines: int) -> int | None:
        if not lines:
            path.unlink(missing_ok=True)
            return None
        return self.files.record(path, filename, OUTPUT_PURPOSE, path.stat().st_size).id


class HeldPublisher:
    """What a batch's submit publishes with: nothing, while the batch is `validating` (it is published
    once accepted, producer.submit.publish_run). It marks the run as just published, so that the
    reconciler's grace keeps it off the jobs of a submit still under way."""

    def __init__(self, sessions: sessionmaker[Session], *, run_name: str) -> None:
        self._sessions, self._run_name = sessions, run_name

    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        with self._sessions() as session, session.begin():
            mark_published_named(session, run_name=self._run_name)
        return 0
