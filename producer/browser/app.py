"""Routing and the HTTP server of the result browser.

`BrowserApp.respond` maps a request (method, target, headers) to a `Response` and never raises: a missing
run or job is a 404, a malformed parameter a 400, anything else a 500 whose details go to the log only.
`vlmbatch serve` puts it on uvicorn, beside the Batch API (producer/api/server.py).

Routes (GET and HEAD):
    /                           runs, newest first (`?before=RUN_ID` pages back)
    /runs/RUN_ID                a run: `?status=&error=&correct=` filter its results, `after`/`before` page
    /jobs/JOB_ID                a job
    /jobs/JOB_ID/images/INDEX   that job image's thumbnail (JPEG; a placeholder when it cannot be shown)
    /api/runs, /api/runs/RUN_ID the same run summaries as JSON, for scripts (browser/json_status.py)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.local_roots import LocalRoots, source_root
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.browser import json_status, queries
from vlmbatch.producer.browser.auth import Access
from vlmbatch.producer.browser.charts import errors_by_type, tokens_over_time, trace_lengths
from vlmbatch.producer.browser.job_page import job_page
from vlmbatch.producer.browser.layout import style_source
from vlmbatch.producer.browser.pages import message_page, run_page, runs_page
from vlmbatch.producer.browser.queries import CORRECTNESS, Correctness, NotFound, ResultFilter
from vlmbatch.producer.browser.thumbnails import Thumbnailer
from vlmbatch.producer.reports.stats import accuracy_line, sample_stats
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.database import open_readonly_ledger
from vlmbatch.schema.ledger.recent import recent_finishes

log = logging.getLogger(__name__)

# Runs up to this many jobs show their accuracy on their page: it is an aggregate over every standing
# sample, and a page view must cost the same at 10^7 jobs (larger runs point at `vlmbatch stats`).
ACCURACY_ON_PAGE_MAX_JOBS = 100_000

MAX_PAGE_SIZE = 500
RUNS_PER_PAGE = 20
# Longer than any stored error type (the column is 32 characters).
_MAX_ERROR_TYPE_CHARS = 32
_MAX_ID_DIGITS = 18
_CSP = (
    "default-src 'none'; img-src 'self'; style-src {style}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_JSON = "application/json"
_TOKEN_IN_LOGS = re.compile(r"(token=)[^&\s\"]*", re.IGNORECASE)


class BadRequest(ValueError):
    """A request parameter is malformed."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def html_response(status: int, document: str, *headers: tuple[str, str]) -> Response:
    return Response(status, document.encode("utf-8", "replace"), headers=(("Cache-Control", "no-store"), *headers))


class BrowserApp:
    """The browser's pages over one read-only ledger."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        thumbnails: Thumbnailer,
        access: Access,
        page_size: int,
        local_roots: Sequence[Path] = (),
    ) -> None:
        self._sessions = sessions
        self._thumbnails = thumbnails
        self._local_roots = tuple(local_roots)
        self._access = access
        self._page_size = page_size
        self._routes: list[tuple[re.Pattern[str], Callable[..., Response]]] = [
            (re.compile(r"/"), self._runs),
            (re.compile(r"/runs/(\d{1,18})"), self._run),
            (re.compile(r"/jobs/(\d{1,18})"), self._job),
            (re.compile(r"/jobs/(\d{1,18})/images/(\d{1,4})"), self._image),
            (re.compile(r"/api/runs"), self._runs_json),
            (re.compile(r"/api/runs/(\d{1,18})"), self._run_json),
        ]

    def respond(self, target: str, headers: Mapping[str, str]) -> Response:
        """The response to a GET of `target` (path and query) with `headers`. Never raises."""
        split = urlsplit(target)
        params = {name: values[-1] for name, values in parse_qs(split.query).items()}
        by_name = {name.lower(): value for name, value in headers.items()}
        verdict = self._access.check(
            query_token=params.pop("token", None),
            authorization=by_name.get("authorization"),
            cookie=by_name.get("cookie"),
            host=by_name.get("host"),
        )
        if not verdict.allowed:
            challenge = (("WWW-Authenticate", 'Bearer realm="vlmbatch"'),) if verdict.status == 401 else ()
            title = "Token required" if verdict.status == 401 else "Forbidden"
            return html_response(verdict.status, message_page(title, verdict.reason), *challenge)
        response = self._route(split.path, params)
        if verdict.set_cookie is not None:
            response = Response(
                response.status,
                response.body,
                response.content_type,
                (*response.headers, ("Set-Cookie", verdict.set_cookie)),
            )
        return response

    def _route(self, path: str, params: dict[str, str]) -> Response:
        if path.startswith("/api/"):
            return self._route_json(path, params)
        try:
            for pattern, handler in self._routes:
                match = pattern.fullmatch(path)
                if match:
                    return handler(params, *(int(group) for group in match.groups()))
            return html_response(404, message_page("Not found", "No page has this address."))
        except NotFound as exc:
            return html_response(404, message_page("Not found", str(exc)))
        except BadRequest as exc:
            return html_response(400, message_page("Bad request", str(exc)))
        except Exception:
            log.exception("browser: %s failed", path)
            return html_response(500, message_page("Internal error", "This page failed; the server log says why."))

    def _route_json(self, path: str, params: dict[str, str]) -> Response:
        status, message = 404, "no such address"
        try:
            for pattern, handler in self._routes:
                match = pattern.fullmatch(path)
                if match:
                    return handler(params, *(int(group) for group in match.groups()))
        except NotFound as exc:
            message = str(exc)
        except BadRequest as exc:
            status, message = 400, str(exc)
        except Exception:
            log.exception("browser: %s failed", path)
            status, message = 500, "this request failed; the server log says why"
        return Response(status, json_status.error_document(status, message), _JSON, (("Cache-Control", "no-store"),))

    def _runs_json(self, params: dict[str, str]) -> Response:
        before = _int_param(params, "before")
        with self._sessions() as session:
            summaries, next_before = queries.list_runs(session, before=before, limit=RUNS_PER_PAGE)
            body = json_status.runs_document(summaries, next_before=next_before)
        return Response(200, body, _JSON, (("Cache-Control", "no-store"),))

    def _run_json(self, params: dict[str, str], run_id: int) -> Response:
        with self._sessions() as session:
            body = json_status.run_document(queries.get_run(session, run_id))
        return Response(200, body, _JSON, (("Cache-Control", "no-store"),))

    def _runs(self, params: dict[str, str]) -> Response:
        before = _int_param(params, "before")
        with self._sessions() as session:
            summaries, next_before = queries.list_runs(session, before=before, limit=RUNS_PER_PAGE)
            document = runs_page(summaries, next_before=next_before)
        return html_response(200, document)

    def _run(self, params: dict[str, str], run_id: int) -> Response:
        where = _result_filter(params)
        limit = min(_int_param(params, "limit") or self._page_size, MAX_PAGE_SIZE)
        after, before = _int_param(params, "after"), _int_param(params, "before")
        if after is not None and before is not None:
            raise BadRequest("give after or before, not both")
        with self._sessions() as session:
            summary = queries.get_run(session, run_id)
            groups = queries.error_groups(session, run_id, summary.progress.report.errors)
            results = queries.job_page(
                session, run_id, where, limit=limit, after=after, before=before, counts=summary.progress.report
            )
            accuracy = _accuracy(session, summary)
            finishes = recent_finishes(session, run_id)
            charts = [
                tokens_over_time(finishes),
                trace_lengths(finishes),
                errors_by_type(summary.progress.report.errors),
            ]
            document = run_page(summary, groups, results, where=where, limit=limit, accuracy=accuracy, charts=charts)
        return html_response(200, document)

    def _job(self, params: dict[str, str], job_id: int) -> Response:
        with self._sessions() as session:
            document = job_page(queries.get_job(session, job_id))
        return html_response(200, document)

    def _image(self, params: dict[str, str], job_id: int, index: int) -> Response:
        # Only a URI the ledger holds is ever fetched: the request names a job, never a location.
        with self._sessions() as session:
            uri, source = queries.job_image(session, job_id, index)
        thumbnail = self._thumbnails.thumbnail(uri, LocalRoots.of([source_root(source), *self._local_roots]))
        headers: tuple[tuple[str, str], ...]
        if thumbnail.error is not None:
            headers = (("Cache-Control", "no-store"), ("X-Vlmbatch-Thumbnail", f"placeholder; error={thumbnail.error}"))
        else:
            headers = (("Cache-Control", "private, max-age=86400"),)
        return Response(200, thumbnail.jpeg, "image/jpeg", headers)


def _int_param(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    # ASCII digits only: "²".isdigit() is true, and int("²") raises.
    if not (value.isascii() and value.isdigit()) or len(value) > _MAX_ID_DIGITS or int(value) < 1:
        raise BadRequest(f"{name} must be a positive whole number")
    return int(value)


def _result_filter(params: dict[str, str]) -> ResultFilter:
    state = params.get("status") or None
    if state is not None and state not in {s.value for s in JobState}:
        raise BadRequest(f"status must be one of {', '.join(s.value for s in JobState)}")
    error_type = params.get("error") or None
    if error_type is not None and len(error_type) > _MAX_ERROR_TYPE_CHARS:
        raise BadRequest("error is not an error type")
    correctness: Correctness | None = None
    wanted = params.get("correct") or None
    if wanted is not None:
        if wanted not in CORRECTNESS:
            raise BadRequest(f"correct must be one of {', '.join(CORRECTNESS)}")
        correctness = CORRECTNESS[CORRECTNESS.index(wanted)]
    return ResultFilter(
        state=JobState(state) if state else None,
        error_type=error_type,
        correctness=correctness,
    )


def build_app(settings: Settings, *, token: str | None) -> BrowserApp:
    """The browser over the ledger and object stores that `settings` name."""
    _, sessions = open_readonly_ledger(settings.resolved_database_url())
    thumbnails = Thumbnailer(
        ObjectStores.from_settings(settings),
        max_px=settings.browser_thumbnail_px,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    access = Access(token, bound_host=settings.browser_host)
    return BrowserApp(
        sessions=sessions,
        thumbnails=thumbnails,
        access=access,
        page_size=settings.browser_page_size,
        local_roots=settings.resolved_local_roots(),
    )


def security_headers() -> tuple[tuple[str, str], ...]:
    """The headers every browser page carries: a strict CSP, no sniffing, no referrer, no framing."""
    return (
        ("Content-Security-Policy", _CSP.format(style=style_source())),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    )


def redacted(text: str) -> str:
    """`text` with any `token=` value masked: request lines must not put the token in logs."""
    return _TOKEN_IN_LOGS.sub(r"\1***", text)


def _accuracy(session: Session, summary: queries.RunSummary) -> str | None:
    """A graded run's accuracy for its page (None for an ungraded run)."""
    if (summary.run.settings or {}).get("grader") is None:
        return None
    if summary.progress.report.total > ACCURACY_ON_PAGE_MAX_JOBS:
        return (
            f"`vlmbatch stats {summary.run.id}` (computed on demand for runs over {ACCURACY_ON_PAGE_MAX_JOBS:,} jobs)"
        )
    return accuracy_line(sample_stats(session, summary.run.id))
