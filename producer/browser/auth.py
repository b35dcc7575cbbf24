"""Who may read the browser's pages.

With a token, every request presents it: `?token=`, `Authorization: Bearer`, or the cookie set after a
`?token=` visit (so that links and images need not carry it). The cookie holds an HMAC of the token, not
the token itself. Without a token the server binds only to loopback, and requests must name a loopback
host: a web page elsewhere cannot read ours through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

COOKIE = "vlmbatch_token"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Tokens shorter than this are refused at start-up: a browser token guards every model output.
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Verdict:
    """Whether a request may proceed; if not, the status to answer with and why."""

    status: int
    reason: str = ""
    # A Set-Cookie value to send with the response (after a valid `?token=`).
    set_cookie: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200


class Access:
    def __init__(self, token: str | None, *, bound_host: str) -> None:
        self._token = token
        self._cookie = _cookie_value(token) if token else None
        self._hosts = LOOPBACK_HOSTS | {bound_host.strip("[]").lower()}

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    def check(
        self, *, query_token: str | None, authorization: str | None, cookie: str | None, host: str | None
    ) -> Verdict:
        """The verdict on a request from what it presents."""
        if self._token is None or self._cookie is None:
            if _hostname(host) not in self._hosts:
                return Verdict(403, "this server answers requests for its own (loopback) host only")
            return Verdict(200)
        bearer = _bearer(authorization)
        if query_token is not None or bearer is not None:
            given = query_token if query_token is not None else bearer
            assert given is not None
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return Verdict(403, "wrong token")
            set_cookie = None
            if query_token is not None:
                set_cookie = f"{COOKIE}={self._cookie}; Path=/; HttpOnly; SameSite=Strict"
            return Verdict(200, set_cookie=set_cookie)
        presented = _cookie_of(cookie)
        if presented is None:
            return Verdict(401, "a token is required: add ?token=... or an Authorization: Bearer header")
        if not hmac.compare_digest(presented.encode(), self._cookie.encode()):
            return Verdict(403, "wrong token")
        return Verdict(200)


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"vlmbatch browser cookie", hashlib.sha256).hexdigest()


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _cookie_of(header: str | None) -> str | None:
    if not header:
        return None
    try:
        morsel = SimpleCookie(header).get(COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


def _hostname(host: str | None) -> str | None:
    if not host:
        return None
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None
