"""A job's page: its images, question and reference, its standing samples (answer, collapsible reasoning
trace, tokens), every attempt's history with tokens and timings, and superseded attempts' samples
(templates/job.html).

Traces are model output (the tiny test model's are noise such as `<|filler_12|>`): escaped like all
else, and cut at `MAX_TRACE_CHARS` so that a 256-sample job of 64k-token traces stays a page.
"""

from __future__ import annotations

from vlmbatch.producer.browser.pages import job_path, run_path
from vlmbatch.producer.browser.queries import JobDetail
from vlmbatch.producer.browser.rendering import render

MAX_TRACE_CHARS = 200_000


def image_path(job_id: int, index: int) -> str:
    return f"{job_path(job_id)}/images/{index}"


def job_page(detail: JobDetail) -> str:
    job, run = detail.job, detail.run
    return render(
        "job.html",
        title=f"Job #{job.id}",
        crumbs=[(run.name, run_path(run.id)), (f"job #{job.id}", job_path(job.id))],
        job=job,
        standing=detail.standing,
        attempts=detail.attempts,
        standing_attempts=detail.standing_attempts,
        superseded=detail.superseded,
        image_path=image_path,
        max_trace=MAX_TRACE_CHARS,
    )
