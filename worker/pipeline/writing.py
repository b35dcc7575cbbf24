"""Committing attempt outcomes: a batch in one transaction, and one refused outcome never blocks the rest."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.errors import ErrorType
from vlmbatch.schema.outcomes import AttemptReport, record_outcomes
from vlmbatch.schema.states import AttemptOutcome

log = logging.getLogger(__name__)


def write_reports_safely(sessions: sessionmaker[Session], reports: Sequence[AttemptReport]) -> list[AttemptReport]:
    """Commit `reports` in one transaction; return those written (the others were fenced off).

    A report the database refuses for its content (not for a lost connection, which the caller retries)
    must not block the others: the batch is then written report by report, and a refused one is stored
    as an `internal` failure of its attempt, with the reason, instead of its samples."""
    try:
        with sessions() as session, session.begin():
            return record_outcomes(session, reports)
    except (OperationalError, InterfaceError):
        raise
    except DBAPIError:
        if len(reports) == 1:
            return _write_as_failure(sessions, reports[0])
    written: list[AttemptReport] = []
    for report in reports:
        written.extend(write_reports_safely(sessions, [report]))
    return written


def _write_as_failure(sessions: sessionmaker[Session], report: AttemptReport) -> list[AttemptReport]:
    try:
        with sessions() as session, session.begin():
            record_outcomes(session, [report])
    except (OperationalError, InterfaceError):
        raise
    except DBAPIError as exc:
        log.error("the database refused the outcome of attempt %s: %s", report.attempt_id, exc.orig)
        failure = AttemptReport(
            job_id=report.job_id,
            attempt_id=report.attempt_id,
            outcome=AttemptOutcome.FAILED,
            error_type=ErrorType.INTERNAL,
            error_message=f"the result could not be stored: {type(exc.orig).__name__}: {exc.orig}"[:2000],
            prompt_tokens=report.prompt_tokens,
            timings=report.timings,
        )
        with sessions() as session, session.begin():
            return record_outcomes(session, [failure])
    return [report]
