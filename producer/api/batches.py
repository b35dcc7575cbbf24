"""`/v1/batches`: a batch is a run. Creating one submits its input file (producer.submit with the OpenAI
batch source); a malformed file ends the batch `failed` with `errors.data` naming its lines, and nothing
is queued. Status and counts are read from the ledger on every request; once no job of the run is queued
or running, the run's `openai` export becomes the batch's output and error files (once: a lock in this
process, and a conditional update in the ledger), in the background: the batch reads `finalizing` meanwhile."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.staging import Stager
from vlmbatch.producer.api.errors import ApiError, not_found
from vlmbatch.producer.api.files import OUTPUT_PURPOSE, UPLOAD_PURPOSE, FileStore, epoch
from vlmbatch.producer.api.ids import batch_id, file_id, parse_batch_id
from vlmbatch.producer.reports.export import ExportFilter, export_run
from vlmbatch.producer.sources.openai_batch import CHAT_URLS, OpenAIBatchSource
from vlmbatch.producer.submit import submit
from vlmbatch.schema.clock import database_now
from vlmbatch.schema.errors import BrokerUnavailable, SourceError
from vlmbatch.schema.models import RunSettings
from vlmbatch.schema.resubmit import cancel_run
from vlmbatch.schema.runs import get_run
from vlmbatch.schema.settings import Settings
from vlmbatch.schema.states import JobState
from vlmbatch.schema.status import run_status
from vlmbatch.schema.tables import ApiBatch, ApiFile, Run
from vlmbatch.worker.transport.publisher import Publisher

log = logging.getLogger(__name__)

SUBMIT_THREADS = 2
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
# Bad lines listed in `errors.data` at most (the first ones): a million bad lines make a short answer.
MAX_LISTED_ERRORS = 1000
MAX_METADATA_PAIRS = 16
MAX_LIST_LIMIT = 100


@dataclass
class BatchService:
    sessions: sessionmaker[Session]
    publisher: Publisher
    files: FileStore
    settings: Settings

    def __post_init__(self) -> None:
        self._finalizing = threading.Lock()
        # Submits run here, off the request: a large file answers `validating` at once, then `in_progress`.
        self._submits = ThreadPoolExecutor(max_workers=SUBMIT_THREADS, thread_name_prefix="batch-submit")
        self._submitting_lock = threading.Lock()
        self._submitting: set[int] = set()

    # -- requests ----------------------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a batch of an uploaded file, whose submit as a run starts in the background; the batch
        object (`validating` until the submit is done)."""
        endpoint = body.get("endpoint")
        if endpoint != CHAT_URLS[0]:
            raise ApiError(400, f"endpoint {endpoint!r}: only {CHAT_URLS[0]}", param="endpoint")
        window = body.get("completion_window")
        if window not in COMPLETION_WINDOWS:
            raise ApiError(400, f"completion_window {window!r}: only 24h", param="completion_window")
        metadata = _metadata(body.get("metadata"))
        given = body.get("input_file_id")
        if not isinstance(given, str):
            raise ApiError(400, "input_file_id must be a file id", param="input_file_id")
        upload = self.files.get(given)
        if upload.purpose != UPLOAD_PURPOSE:
            raise ApiError(400, f"{given} is not a batch input file", param="input_file_id")
        with self.sessions() as session, session.begin():
            row = ApiBatch(input_file_id=upload.id, endpoint=endpoint, completion_window=window, metadata_=metadata)
            session.add(row)
            session.flush()
            row_id = row.id
        self._start_submit(row_id, upload)
        return self.retrieve(batch_id(row_id))

    def retrieve(self, public_id: str) -> dict[str, Any]:
        row_id = parse_batch_id(public_id)
        self._resume_submit(row_id)
        # Off the request too: a large run's export takes a while; meanwhile the batch reads `finalizing`.
        self._submits.submit(self._finalize_if_done, row_id)
        with self.sessions() as session:
            row = session.get(ApiBatch, row_id)
            if row is None:
                raise not_found("batch", public_id)
            return self._view(session, row)

    def page(self, *, after: str | None, limit: int) -> dict[str, Any]:
        """Batches newest first, `limit` of them after the batch `after` (OpenAI's cursor paging)."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ApiError(400, f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit")
        query = select(ApiBatch.id).order_by(ApiBatch.id.desc()).limit(limit + 1)
        if after:
            query = query.where(ApiBatch.id < parse_batch_id(after, param="after"))
        with self.sessions() as session:
            ids = list(session.scalars(query))
        page = [self.retrieve(batch_id(i)) for i in ids[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ids) > limit,
        }

    def cancel(self, public_id: str) -> dict[str, Any]:
        """Cancel the batch's run: queued and running jobs end `cancelled` (schema.resubmit.cancel_run)."""
        current = self.retrieve(public_id)
        # A `validating` batch has no run to cancel yet (its submit is under way): cancel it once in progress.
        if current["status"] not in ("in_progress", "cancelling"):
            raise ApiError(409, f"Cannot cancel a batch with status {current['status']}.", code="batch_not_cancellable")
        row_id = parse_batch_id(public_id)
        with self.sessions() as session, session.begin():
            row = session.get(ApiBatch, row_id)
            if row is not None and row.run_id is not None:
                cancel_run(session, run_id=row.run_id)
        return self.retrieve(public_id)

    # -- submitting and finishing ------------------------------------------------------------------------

    def _resume_submit(self, row_id: int) -> None:
        """Submit again a batch left `validating` (the server stopped during its submit): submits are
        idempotent (the run is named after the batch, jobs are unique per run), so what went in stays once."""
        with self.sessions() as session:
            row = session.get(ApiBatch, row_id)
            if row is None or row.run_id is not None or row.failed_at is not None:
                return
            upload = session.get(ApiFile, row.input_file_id)
            if upload is not None:
                session.expunge(upload)
        if upload is None:
            self._fail(
                row_id, [{"code": "invalid_file", "message": "the input file was deleted", "param": None, "line": None}]
            )
            return
        self._start_submit(row_id, upload)

    def _start_submit(self, row_id: int, upload: ApiFile) -> None:
        with self._submitting_lock:
            if row_id in self._submitting:
                return  # this process is submitting it already
            self._submitting.add(row_id)
        self._submits.submit(self._submit, row_id, upload)

    def _submit(self, row_id: int, upload: ApiFile) -> None:
        try:
            self._submit_once(row_id, upload)
        except Exception:  # the batch stays `validating`; its next read submits it again
            log.exception("batch %s: the submit failed", batch_id(row_id))
        finally:
            with self._submitting_lock:
                self._submitting.discard(row_id)

    def _fail(self, row_id: int, errors: list[dict[str, Any]]) -> None:
        with self.sessions() as session, session.begin():
            row = session.get(ApiBatch, row_id)
            assert row is not None
            row.errors = {"object": "list", "data": errors}
            row.failed_at = database_now(session)

    def _submit_once(self, row_id: int, upload: ApiFile) -> None:
        stager = Stager(self.settings.resolved_stage_to(), s3_endpoint_url=self.settings.s3_endpoint_url)
        source = OpenAIBatchSource(upload.path, stager=stager)
        errors = _line_errors(source)
        run_id: int | None = None
        if not errors:
            name = batch_id(row_id)
            try:
                run_id = submit(
                    sessions=self.sessions,
                    publisher=self.publisher,
                    source=source,
                    settings=RunSettings(model=self.settings.model),
                    queue=self.settings.queue,
                    run_name=name,
                ).run
            except SourceError as exc:
                errors = [{"code": "invalid_request", "message": str(exc), "param": None, "line": None}]
            except BrokerUnavailable:  # the jobs are in the ledger; workers or the reconciler publish them
                with self.sessions() as session:
                    run_id = get_run(session, name).id
        if errors:
            self._fail(row_id, errors)
            return
        with self.sessions() as session, session.begin():
            row = session.get(ApiBatch, row_id)
            assert row is not None
            row.run_id = run_id

    def _finalize_if_done(self, row_id: int) -> None:
        """Write the output and error files of a batch whose run has no queued or running job left."""
        if not self._finalizing.acquire(blocking=False):
            return  # another thread is writing a batch's files; a later read tries again
        try:
            with self.sessions() as session:
                row = session.get(ApiBatch, row_id)
                if row is None or row.run_id is None or row.finished_at is not None:
                    return
                counts = run_status(session, row.run_id).counts
                if counts[JobState.QUEUED.value] or counts[JobState.RUNNING.value]:
                    return
                run = session.get(Run, row.run_id)
                assert run is not None
                session.expunge(run)
            with self.sessions() as session, session.begin():
                session.execute(
                    update(ApiBatch).where(ApiBatch.id == row_id).values(finalizing_at=database_now(session))
                )
            self._export(row_id, run)
        except Exception:  # the batch stays `finalizing`; its next read tries again
            log.exception("batch %s: writing its output files failed", batch_id(row_id))
        finally:
            self._finalizing.release()

    def _export(self, row_id: int, run: Run) -> None:
        folder = self.files.folder
        folder.mkdir(parents=True, exist_ok=True)
        name = batch_id(row_id)
        out, errors_out = folder / f"{name}_output.jsonl", folder / f"{name}_errors.jsonl"
        every_finished = ExportFilter(states=tuple(s for s in JobState if s.terminal))
        report = export_run(
            self.sessions, run=run, fmt="openai", out=out, errors_out=errors_out, selection=every_finished
        )
        # As OpenAI does: no output file when no request succeeded, no error file when none failed.
        output = self._keep(out, f"{name}_output.jsonl", report.rows)
        failed = self._keep(errors_out, f"{name}_errors.jsonl", report.errors)
        with self.sessions() as session, session.begin():
            session.execute(
                update(ApiBatch)
                .where(ApiBatch.id == row_id, ApiBatch.finished_at.is_(None))
                .values(output_file_id=output, error_file_id=failed, finished_at=database_now(session))
            )

    def _keep(self, path: Any, filename: str, lines: int) -> int | None:
        if not lines:
            path.unlink(missing_ok=True)
            return None
        return self.files.record(path, filename, OUTPUT_PURPOSE, path.stat().st_size).id

    # -- the batch object --------------------------------------------------------------------------------

    def _view(self, session: Session, row: ApiBatch) -> dict[str, Any]:
        total = completed = failed = 0
        run = session.get(Run, row.run_id) if row.run_id is not None else None
        cancelling_at = run.cancelled_at if run is not None else None
        if row.failed_at is not None:
            status = "failed"
        elif run is None:
            status = "validating"
        else:
            report = run_status(session, run.id)
            counts = report.counts
            total = report.total
            completed = counts[JobState.SUCCEEDED.value] + counts[JobState.TRUNCATED.value]
            failed = counts[JobState.FAILED.value] + counts[JobState.CANCELLED.value]
            if row.finished_at is not None:
                status = "cancelled" if cancelling_at is not None else "completed"
            elif cancelling_at is not None:  # until its files are written
                status = "cancelling"
            elif counts[JobState.QUEUED.value] or counts[JobState.RUNNING.value]:
                status = "in_progress"
            else:
                status = "finalizing"
        finished = row.finished_at if cancelling_at is None else None
        return {
            "id": batch_id(row.id),
            "object": "batch",
            "endpoint": row.endpoint,
            "errors": row.errors,
            "input_file_id": file_id(row.input_file_id),
            "completion_window": row.completion_window,
            "status": status,
            "output_file_id": file_id(row.output_file_id) if row.output_file_id is not None else None,
            "error_file_id": file_id(row.error_file_id) if row.error_file_id is not None else None,
            "created_at": epoch(row.created_at),
            "in_progress_at": epoch(run.created_at) if run is not None else None,
            "expires_at": epoch(row.created_at + COMPLETION_WINDOWS.get(row.completion_window, timedelta(hours=24))),
            "finalizing_at": epoch(row.finalizing_at),
            "completed_at": epoch(finished),
            "failed_at": epoch(row.failed_at),
            "expired_at": None,
            "cancelling_at": epoch(cancelling_at),
            "cancelled_at": epoch(row.finished_at) if cancelling_at is not None else None,
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "metadata": row.metadata_,
        }


def _line_errors(source: OpenAIBatchSource) -> list[dict[str, Any]]:
    """OpenAI's `errors.data` entries for the file's malformed lines (the first MAX_LISTED_ERRORS)."""
    errors: list[dict[str, Any]] = []
    lines = 0
    try:
        for where, spec in source.rows():
            lines += 1
            if isinstance(spec, ValueError) and len(errors) < MAX_LISTED_ERRORS:
                number = where.rsplit(" ", 1)[-1]
                line = int(number) if number.isdigit() else None
                errors.append({"code": "invalid_request", "message": str(spec), "param": None, "line": line})
    except SourceError as exc:
        return [{"code": "invalid_file", "message": str(exc), "param": None, "line": None}]
    if not lines:
        return [{"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None}]
    return errors


def _metadata(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_PAIRS
        or not all(_metadata_pair(k, v) for k, v in value.items())
    ):
        raise ApiError(400, "metadata: at most 16 string pairs (keys 64, values 512 characters)", param="metadata")
    return value


def _metadata_pair(key: Any, value: Any) -> bool:
    return isinstance(key, str) and isinstance(value, str) and len(key) <= 64 and len(value) <= 512
