"""Reading results back: one row per job with its outcome and the first sample's answer."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from vlmbatch.producer.reports.display import preview
from vlmbatch.schema.ledger.browser_reads import first_job_outcomes

PREVIEW_CHARS = 40


@dataclass(frozen=True)
class ResultRow:
    job_id: int
    image: str
    question: str
    state: str
    error_type: str | None
    tokens: int | None
    answer_preview: str | None


def result_rows(session: Session, run_id: int, *, limit: int = 50) -> list[ResultRow]:
    rows = []
    for job in first_job_outcomes(session, run_id=run_id, limit=limit):
        image = job.images[0].rsplit("/", 1)[-1] if job.images else "(text only)"
        image += f" (+{len(job.images) - 1})" if len(job.images) > 1 else ""
        shown = preview(job.answer, PREVIEW_CHARS)
        question = preview(job.question, PREVIEW_CHARS) or ""
        rows.append(ResultRow(job.id, image, question, job.state, job.error_type, job.completion_tokens, shown))
    return rows
