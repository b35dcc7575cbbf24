"""A job's page: its images, question and reference, its standing samples (answer, collapsible reasoning
trace, tokens), every attempt's history with tokens and timings, and superseded attempts' samples.

Traces are model output (the tiny test model's are noise such as `<|filler_12|>`): escaped like all
else, and cut at `MAX_TRACE_CHARS` so that a 256-sample job of 64k-token traces stays a page.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

from vlmbatch.producer.browser.layout import MISSING, facts, image_name, number, page, seconds, state_badge, when
from vlmbatch.producer.browser.markup import Safe, join, render
from vlmbatch.producer.browser.pages import job_path, run_path
from vlmbatch.producer.browser.queries import JobDetail
from vlmbatch.schema.tables import Attempt, Result

MAX_TRACE_CHARS = 200_000
MAX_TEXT_CHARS = 20_000


def image_path(job_id: int, index: int) -> str:
    return f"{job_path(job_id)}/images/{index}"


def job_page(detail: JobDetail) -> Safe:
    job, run = detail.job, detail.run
    body = join(
        [
            render("<h1>Job #{id} {state}</h1>", id=job.id, state=state_badge(job.state)),
            _images(job.id, job.images),
            _job_facts(detail),
            _standing_samples(detail),
            _attempts(detail.attempts, detail.standing_attempts),
            _superseded_samples(detail),
        ]
    )
    crumbs = [(run.name, run_path(run.id)), (f"job #{job.id}", job_path(job.id))]
    return page(f"Job #{job.id}", body, crumbs=crumbs)


def _images(job_id: int, images: list[str]) -> Safe:
    figures = join(
        render(
            '<figure><a href="{src}"><img class="thumbnail" src="{src}" alt="{name}"></a>'
            "<figcaption>{uri}</figcaption></figure>",
            src=image_path(job_id, index),
            name=image_name(uri),
            uri=unquote(uri) if uri.startswith("file://") else uri,
        )
        for index, uri in enumerate(images)
    )
    return render('<div class="images">{figures}</div>', figures=figures)


def _job_facts(detail: JobDetail) -> Safe:
    job = detail.job
    pairs: list[tuple[str, object]] = [("Question", _pre(job.question))]
    pairs.append(("Reference", _pre(job.reference) if job.reference is not None else MISSING))
    if job.meta:
        pairs.append(("Metadata", _pre(json.dumps(job.meta, ensure_ascii=False, indent=1, sort_keys=True))))
    pairs.append(("State", state_badge(job.state)))
    if job.error_type:
        pairs.append(("Error", render('<span class="error">{error}</span>', error=job.error_type)))
        pairs.append(("Error message", _pre(job.error_message or "")))
    pairs.append(("Attempts", job.attempt_count))
    pairs.append(("Queued (UTC)", when(job.queued_at)))
    pairs.append(("Finished (UTC)", when(job.finished_at)))
    if job.params:
        pairs.append(("Job's own settings", _pre(json.dumps(job.params, ensure_ascii=False, indent=1, sort_keys=True))))
    if job.overrides:
        pairs.append(("Next attempt's overrides", json.dumps(job.overrides, sort_keys=True)))
    return facts(pairs)


def _standing_samples(detail: JobDetail) -> Safe:
    samples = detail.standing
    if not samples:
        return Safe('<h2 id="samples">Samples</h2><p class="muted">No result stands for this job.</p>')
    return render('<h2 id="samples">Samples</h2>{samples}', samples=join(_sample(result) for result in samples))


def _sample(result: Result) -> Safe:
    grade: object = MISSING
    if result.correct is not None:
        grade = render('<span class="c-{kind}">{kind}</span>', kind="correct" if result.correct else "incorrect")
    tokens = (
        f"{number(result.completion_tokens)} completion = {number(result.reasoning_tokens)} reasoning + "
        f"{number(result.answer_tokens)} answer"
    )
    pairs: list[tuple[str, object]] = [
        ("Answer", _pre(result.answer) if result.answer else Safe('<span class="muted">(empty)</span>')),
        ("Extracted", result.extracted_answer if result.extracted_answer is not None else MISSING),
        ("Correct", grade),
        ("Constraint", MISSING if result.valid is None else ("obeyed" if result.valid else "broken")),
        ("Tokens", tokens),
        ("Finish", f"{result.finish_reason or MISSING}; trace {'closed' if result.trace_closed else 'not closed'}"),
    ]
    return render(
        '<section class="sample" id="sample-{attempt}-{index}"><strong>Sample {index}</strong>{facts}'
        '<details class="trace"><summary>Reasoning trace ({chars} characters)</summary>{trace}</details></section>',
        attempt=result.attempt_id,
        index=result.sample_index,
        facts=facts(pairs),
        chars=number(len(result.reasoning or "")),
        trace=_pre(result.reasoning or "", css="trace", limit=MAX_TRACE_CHARS),
    )


def _attempts(attempts: list[Attempt], standing: frozenset[int]) -> Safe:
    if not attempts:
        return Safe('<h2 id="attempts">Attempts</h2><p class="muted">Not attempted yet.</p>')
    rows = join(_attempt_row(attempt, attempt.id in standing) for attempt in attempts)
    return render(
        '<h2 id="attempts">Attempts</h2><div class="scroll"><table id="attempts-table"><thead><tr>'
        '<th class="num">#</th><th>Outcome</th><th>Error</th><th>Worker</th><th>Started (UTC)</th>'
        '<th>Finished (UTC)</th><th class="num">Prompt</th><th class="num">Completion</th>'
        '<th class="num">Reasoning</th><th class="num">Answer</th><th class="num">Queue wait</th>'
        '<th class="num">Fetch</th><th class="num">Decode</th><th class="num">First token</th>'
        '<th class="num">Generation</th><th class="num">GPU·s</th></tr></thead><tbody>{rows}</tbody></table></div>',
        rows=rows,
    )


def _attempt_row(a: Attempt, standing: bool) -> Safe:
    error = Safe(MISSING)
    if a.error_type:
        error = render(
            '<span class="error">{error}</span><br><span class="muted">{message}</span>',
            error=a.error_type,
            message=_cut(a.error_message or "", MAX_TEXT_CHARS),
        )
    overrides = f" overrides {json.dumps(a.overrides, sort_keys=True)}" if a.overrides else ""
    return render(
        '<tr class="attempt"><td class="num">{number}</td><td>{outcome}{mark}<span class="muted">{overrides}</span>'
        "</td><td>{error}</td><td>{worker}</td><td>{started}</td><td>{finished}</td>"
        '<td class="num">{prompt}</td><td class="num">{completion}</td><td class="num">{reasoning}</td>'
        '<td class="num">{answer}</td><td class="num">{queue}</td><td class="num">{fetch}</td>'
        '<td class="num">{decode}</td><td class="num">{first}</td><td class="num">{generation}</td>'
        '<td class="num">{gpu}</td></tr>',
        number=a.number,
        outcome=state_badge(a.outcome),
        mark=Safe(' <span class="muted">(standing)</span>') if standing else "",
        overrides=overrides,
        error=error,
        worker=a.worker,
        started=when(a.started_at),
        finished=when(a.finished_at),
        prompt=number(a.prompt_tokens),
        completion=number(a.completion_tokens),
        reasoning=number(a.reasoning_tokens),
        answer=number(a.answer_tokens),
        queue=seconds(a.queue_wait_s),
        fetch=seconds(a.fetch_s),
        decode=seconds(a.decode_s),
        first=seconds(a.first_token_s),
        generation=seconds(a.generation_s),
        gpu=number(a.gpu_seconds),
    )


def _superseded_samples(detail: JobDetail) -> Safe:
    """Samples of attempts whose result no longer stands (the job was resubmitted since)."""
    numbers = {attempt.id: attempt.number for attempt in detail.attempts}
    sections = [
        render(
            "<details><summary>Samples of attempt #{number} (superseded, {count})</summary>{samples}</details>",
            number=numbers.get(attempt_id, "?"),
            count=len(results),
            samples=join(_sample(result) for result in results),
        )
        for attempt_id, results in detail.results.items()
        if attempt_id not in detail.standing_attempts
    ]
    if not sections:
        return Safe("")
    return render('<h2 id="history">Earlier samples</h2>{sections}', sections=join(sections))


def _pre(text: str, *, css: str = "", limit: int = MAX_TEXT_CHARS) -> Safe:
    return render('<pre class="{css}">{text}</pre>', css=css, text=_cut(text, limit))


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… {len(text) - limit:,} more characters (vlmbatch export has the whole text)"
