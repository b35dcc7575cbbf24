"""What the keyless Batch API refuses of web pages: a browser sends a page's "simple" requests (a form
POST, `text/plain` or no body) to any address, loopback included, without asking first, and such a
request carries the page's `Origin` and `Sec-Fetch-Site`. Without API keys, a request from another origin
(`Origin` not this server's own, or `Sec-Fetch-Site` `cross-site` / `same-site`) is refused with 403, and a
JSON body must say `Content-Type: application/json` (which a page cannot send without a CORS preflight,
which the API never grants). A local process that is no browser sends neither header: it is not stopped."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers

from vlmbatch.producer.api.errors import ApiError

_FOREIGN_FETCH = frozenset({"cross-site", "same-site"})
JSON_TYPE = "application/json"


def cross_origin_refusal(headers: Headers) -> ApiError | None:
    """403 for a request a web page of another origin sent; None otherwise."""
    if (headers.get("sec-fetch-site") or "").strip().lower() in _FOREIGN_FETCH:
        return _refused("the Batch API without keys answers no request from another site")
    origin = headers.get("origin")
    if origin is not None and not _is_own(origin, headers.get("host")):
        return _refused(f"the Batch API without keys answers no request from another origin ({origin[:100]})")
    return None


def require_json(headers: Headers) -> None:
    """Raise ApiError 415 unless the body is declared `application/json`."""
    declared = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if declared != JSON_TYPE:
        raise ApiError(
            415, f"the request body must be sent as Content-Type: {JSON_TYPE}", code="unsupported_media_type"
        )


def _is_own(origin: str, host: str | None) -> bool:
    # `Origin: null` (a sandboxed frame, a file:// page) is no origin of ours either.
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme == "http" and bool(host) and parts.netloc.lower() == (host or "").strip().lower()


def _refused(message: str) -> ApiError:
    return ApiError(403, message, code="cross_origin_request")
