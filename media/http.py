"""http(s) images, fetched by the worker itself and guarded (URLs are never handed to the engine).

Every hop (the first request and each of at most `MAX_REDIRECTS` redirects) is resolved by DNS, refused
when any address is private, loopback, link-local or otherwise not global (`input.forbidden`, unless
`http_allow_private`), and then connected to *that* address (the Host header and TLS SNI keep the
name), so a second DNS answer cannot slip an internal address in between check and use. Bodies are
streamed under the byte cap, and one deadline holds over each whole download (connect, headers and
body: media/deadline.py); `X-Robots-Tag: noai` / `noimageai` opt an image out (`input.opted_out`); 429,
5xx and timeouts are retried with exponential backoff, then fail `storage.transient` (which the pipeline
retries again later, up to the run's cap). At most `per_host` requests per host are in flight from one
process.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from vlmbatch.media.deadline import DeadlineBackend, deadline_transport
from vlmbatch.schema.contracts.errors import (
    InputForbidden,
    InputNotFound,
    InputOptedOut,
    InputTooLarge,
    InputUnsupported,
    StorageTransient,
)

if TYPE_CHECKING:
    from vlmbatch.schema.contracts.settings import Settings

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
_OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})

Resolver = Callable[[str, int], list[str]]
# IPv6 forms that embed an IPv4 address in their last 32 bits (RFC 6052 NAT64, RFC 7915 SIIT, RFC 4291
# IPv4-compatible), and RFC 8215's local-use NAT64 prefix.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


@dataclass(frozen=True)
class HttpOptions:
    """The guards of one process's http(s) fetches (from Settings, `http_*`)."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 120.0
    attempts: int = 3
    per_host: int = 4
    user_agent: str = "vlmbatch"
    honour_opt_out: bool = True
    allow_private: bool = False
    # First backoff between tries; doubled each time (with jitter), at most 8 s.
    backoff_seconds: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpOptions:
        return cls(
            connect_timeout=settings.http_connect_timeout_seconds,
            read_timeout=settings.http_read_timeout_seconds,
            total_timeout=settings.http_total_timeout_seconds,
            attempts=settings.http_attempts,
            per_host=settings.http_per_host_connections,
            user_agent=settings.http_user_agent,
            honour_opt_out=settings.http_honour_opt_out,
            allow_private=settings.http_allow_private,
        )


def parsed_http_url(uri: str) -> httpx.URL:
    """`uri` as an http(s) URL with a host. Raises InputUnsupported for one that does not parse (an IPv4
    address in octal, a bad port), so that it fails as a bad input, at submit or in the worker."""
    try:
        url = httpx.URL(uri)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InputUnsupported(f"{uri[:200]}: not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InputUnsupported(f"{uri[:200]}: not an http(s) URL with a host")
    return url


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to. Raises InputNotFound for a name that does not exist."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise InputNotFound(f"{host}: no such host") from exc
        raise StorageTransient(f"{host}: DNS lookup failed ({exc.strerror})") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(address: str) -> bool:
    """Whether `address` is a global unicast address (not private, loopback, link-local, reserved...).
    An IPv6 address that embeds an IPv4 one (mapped, NAT64, 6to4, Teredo, IPv4-compatible, SIIT) is
    judged by the IPv4 address it leads to."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:  # where its IPv4 address sits depends on the local prefix length
            return False
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to (through a translator or a tunnel), if it carries one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client: where the packets go
    last32 = ipaddress.IPv4Address(ip.packed[-4:])
    if ip in _NAT64 or ip in _SIIT:
        return last32
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # `::` and `::1` are no IPv4 addresses
        return last32
    return None


def opted_out(header_values: list[str], user_agent: str) -> bool:
    """Whether `X-Robots-Tag` values forbid AI use for every robot or for ours (`bot: noai`)."""
    ours = user_agent.split("/", 1)[0].strip().lower()
    for value in header_values:
        for token in value.split(","):
            robot, colon, directive = token.rpartition(":")
            if not colon:
                robot, directive = "", token
            robot = robot.strip().lower()
            # Directives are comma-separated, but servers also send them space-separated ("noindex noai").
            said = {word.lower() for word in directive.split()}
            if said & _OPT_OUT_DIRECTIVES and robot in ("", "*", ours):
                return True
    return False


class _HostSlots:
    """At most `limit` holders per host; a host's entry lives only while someone holds or waits for it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._slots: dict[str, tuple[threading.BoundedSemaphore, list[int]]] = {}

    @contextmanager
    def hold(self, host: str) -> Iterator[None]:
        with self._lock:
            semaphore, users = self._slots.setdefault(host, (threading.BoundedSemaphore(self._limit), [0]))
            users[0] += 1
        try:
            with semaphore:
                yield
        finally:
            with self._lock:
                users[0] -= 1
                if users[0] == 0:
                    del self._slots[host]


class HttpImages:
    """The http(s) object store. Thread-safe: one per process, used from the fetch threads."""

    def __init__(
        self,
        options: HttpOptions,
        *,
        resolver: Resolver = resolve_addresses,
        is_allowed: Callable[[str], bool] = is_public_address,
    ) -> None:
        """`resolver` and `is_allowed` (the address policy when private addresses are banned) are seams
        for tests; production uses DNS and `is_public_address`."""
        self._options = options
        self._resolve = resolver
        self._is_allowed = is_allowed
        self._slots = _HostSlots(options.per_host)
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._deadlines = DeadlineBackend()

    def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        """The image's bytes. Raises InputNotFound, InputForbidden, InputOptedOut, InputTooLarge,
        InputUnsupported and, after its tries, StorageTransient."""
        retrying = Retrying(
            stop=stop_after_attempt(self._options.attempts),
            wait=wait_exponential_jitter(initial=self._options.backoff_seconds, max=8.0),
            retry=retry_if_exception_type(StorageTransient),
            reraise=True,
        )
        return retrying(self._fetch_once, uri, max_bytes)

    def _fetch_once(self, uri: str, max_bytes: int) -> bytes:
        deadline = time.monotonic() + self._options.total_timeout
        url = uri
        for _ in range(MAX_REDIRECTS + 1):
            target = parsed_http_url(url)
            address = self._checked_address(uri, target)
            with self._slots.hold(target.host):
                location = self._get(uri, target, address, max_bytes, deadline)
            if isinstance(location, bytes):
                return location
            url = urljoin(url, location)
        raise InputNotFound(f"{uri}: more than {MAX_REDIRECTS} redirects")

    def _checked_address(self, uri: str, target: httpx.URL) -> str:
        port = target.port or (443 if target.scheme == "https" else 80)
        addresses = self._resolve(target.host, port)
        if not addresses:
            raise InputNotFound(f"{uri}: {target.host} has no address")
        if not self._options.allow_private:
            refused = [a for a in addresses if not self._is_allowed(a)]
            if refused:
                raise InputForbidden(
                    f"{uri}: {target.host} resolves to a non-public address ({refused[0]}); "
                    "set VLMBATCH_HTTP_ALLOW_PRIVATE=true for internal stores"
                )
        return addresses[0]

    def _get(self, uri: str, target: httpx.URL, address: str, max_bytes: int, deadline: float) -> bytes | str:
        """One request, pinned to `address`: the body, or the Location of a redirect."""
        pinned = target.copy_with(host=address)
        name = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 literal keeps its brackets
        host_header = name if target.port is None else f"{name}:{target.port}"
        extensions: dict[str, Any] = {"sni_hostname": target.host} if target.scheme == "https" else {}
        headers = {"Host": host_header, "User-Agent": self._options.user_agent}
        try:
            # The deadline holds from the connect on, through headers and body, however they trickle.
            with (
                self._deadlines.until(deadline),
                self._http().stream("GET", pinned, headers=headers, extensions=extensions) as response,
            ):
                return self._read(uri, response, max_bytes, deadline)
        except httpx.TimeoutException as exc:
            if time.monotonic() >= deadline:
                raise StorageTransient(f"{uri}: the download took over {self._options.total_timeout:g} s") from exc
            raise StorageTransient(f"{uri}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise StorageTransient(f"{uri}: {type(exc).__name__}: {exc}") from exc

    def _read(self, uri: str, response: httpx.Response, max_bytes: int, deadline: float) -> bytes | str:
        status = response.status_code
        if status in _REDIRECTS and "location" in response.headers:
            return response.headers["location"]
        if status in _RETRYABLE:
            raise StorageTransient(f"{uri}: HTTP {status}")
        if status in (404, 410):
            raise InputNotFound(f"{uri}: HTTP {status}")
        if status != 200:
            raise InputNotFound(f"{uri}: HTTP {status}")
        if self._options.honour_opt_out and opted_out(
            response.headers.get_list("x-robots-tag"), self._options.user_agent
        ):
            raise InputOptedOut(f"{uri}: the server opts this image out of AI use (X-Robots-Tag)")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise InputTooLarge(f"{uri}: {declared} bytes, over the {max_bytes}-byte limit")
        body = bytearray()
        for chunk in response.iter_bytes():  # as it arrives, so that the deadline is checked on every read
            body += chunk
            if len(body) > max_bytes:
                raise InputTooLarge(f"{uri}: over the {max_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise StorageTransient(f"{uri}: the download took over {self._options.total_timeout:g} s")
        return bytes(body)

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                timeout = httpx.Timeout(
                    connect=self._options.connect_timeout,
                    read=self._options.read_timeout,
                    write=self._options.read_timeout,
                    pool=self._options.total_timeout,
                )
                # No proxies from the environment: the address checked is the address connected to.
                self._client = httpx.Client(
                    timeout=timeout,
                    follow_redirects=False,
                    trust_env=False,
                    transport=deadline_transport(self._deadlines),
                )
            return self._client
