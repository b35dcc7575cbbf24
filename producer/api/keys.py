"""Who may call the Batch API: the keys of `VLMBATCH_API_KEYS` (comma-separated, as given) and of
`VLMBATCH_API_KEYS_FILE` (one `sha256:<hex>` per line, so the file holds no usable key), offered as
`Authorization: Bearer <key>`. Without any key, only requests for our own loopback host pass."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from vlmbatch.producer.api.errors import ApiError
from vlmbatch.producer.api.same_origin import cross_origin_refusal
from vlmbatch.producer.browser.auth import Access

_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")


class KeySettings(Protocol):
    """The settings that name the keys (Settings has them)."""

    @property
    def api_keys(self) -> SecretStr | None: ...

    @property
    def api_keys_file(self) -> Path | None: ...


class KeyFileError(ValueError):
    """The file of hashed API keys cannot be read or holds a line that is no `sha256:<hex>`."""


@dataclass(frozen=True)
class ApiKeys:
    plain: tuple[bytes, ...] = ()
    # SHA-256 digests of the keys of the keys file.
    hashed: tuple[bytes, ...] = ()

    @classmethod
    def from_settings(cls, settings: KeySettings) -> ApiKeys:
        """The keys `settings` name. Raises KeyFileError for a missing, unreadable or malformed keys file."""
        raw = settings.api_keys.get_secret_value() if settings.api_keys else ""
        plain = tuple(key.strip().encode() for key in raw.split(",") if key.strip())
        hashed = read_key_file(settings.api_keys_file) if settings.api_keys_file else ()
        return cls(plain=plain, hashed=hashed)

    def __bool__(self) -> bool:
        return bool(self.plain or self.hashed)

    def accepts(self, offered: str) -> bool:
        """Whether `offered` is one of the keys. Every key is compared, each in constant time: which key
        matched (or how nearly) does not leak through the time taken."""
        given = offered.encode()
        digest = hashlib.sha256(given).digest()
        matches = sum(hmac.compare_digest(given, key) for key in self.plain)
        return matches + sum(hmac.compare_digest(digest, key) for key in self.hashed) > 0


def read_key_file(path: Path) -> tuple[bytes, ...]:
    """The digests of a keys file: `sha256:<64 hex digits>` per line; blank lines and `#` comments are
    skipped. Raises KeyFileError naming the file (and the line) that is wrong, or a file with no key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KeyFileError(f"cannot read the API keys file {path}: {reason}") from None
    digests = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        found = _HASHED.fullmatch(entry)
        if found is None:
            raise KeyFileError(f"{path}, line {number}: expected sha256:<64 hex digits> (the key's SHA-256)")
        digests.append(bytes.fromhex(found.group(1)))
    if not digests:  # served as if no keys were set, /v1 would be open to whoever reaches it
        raise KeyFileError(f"the API keys file {path} holds no key")
    return tuple(digests)


def hashed_key(key: str) -> str:
    """The keys file's line for `key`."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class RequireApiKey:
    """Refuses (401, OpenAI's shape) a request whose `Authorization: Bearer` is none of `keys`; with no
    keys, only requests for our own (loopback) host pass (`serve` then serves the API on loopback only), and
    none that a web page of another origin sent (api/same_origin.py)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, *, bound_host: str) -> None:
        self._app = app
        self._keys = keys
        # Without keys, only requests for our own (loopback) host, as the browser does: a web page
        # elsewhere cannot reach the API through DNS rebinding.
        self._host_check = Access(None, bound_host=bound_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self._refusal(Headers(scope=scope))
            if error is not None:
                await error.response()(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _refusal(self, headers: Headers) -> ApiError | None:
        if not self._keys:
            verdict = self._host_check.check(
                query_token=None, authorization=None, cookie=None, host=headers.get("host")
            )
            if not verdict.allowed:
                return ApiError(403, verdict.reason, code="forbidden_host")
            # The Host check stops DNS rebinding only: a page elsewhere can still send simple requests here.
            return cross_origin_refusal(headers)
        scheme, _, given = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not self._keys.accepts(given.strip()):
            return ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return None
