"""One deadline over a whole http(s) download: connect, TLS, the request, the response's headers and its
body. httpx's timeouts bound each socket operation alone, so a server that trickles a header byte every
few seconds never trips them; here every socket operation of the calling thread waits at most until the
thread's current deadline (`DeadlineBackend.until`), then fails as a timeout."""

from __future__ import annotations

import threading
import time
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpcore
import httpx


class _Current(threading.local):
    # The monotonic time the calling thread's download must end by; None outside a download.
    at: float | None = None


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, each wait cut at the calling thread's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._current = _Current()

    @contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Socket operations of this thread, inside the block, end by `deadline` (time.monotonic)."""
        before, self._current.at = self._current.at, deadline
        try:
            yield
        finally:
            self._current.at = before

    def bounded(self, timeout: float | None, timed_out: type[Exception]) -> float | None:
        """`timeout`, cut to what is left before the deadline; raises `timed_out` once it has passed."""
        at = self._current.at
        if at is None:
            return timeout
        left = at - time.monotonic()
        if left <= 0:
            raise timed_out("the download's deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        wait = self.bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, wait, local_address, socket_options), self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        wait = self.bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, wait, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner, self._backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        wait = self._backend.bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, wait), self._backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


def deadline_transport(backend: DeadlineBackend) -> httpx.HTTPTransport:
    """httpx's own transport (its error mapping) over httpcore's pool on `backend`'s sockets."""
    transport = httpx.HTTPTransport(trust_env=False)
    limits = httpx.Limits()
    # httpx's transport takes no network backend; the httpcore pool under it does.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport
