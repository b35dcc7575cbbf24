"""What `vlmbatch serve` runs on uvicorn: the Batch API under /v1 and, on every other path, the result
browser's pages (its `BrowserApp.respond`, with its security headers, Host check and token)."""

from __future__ import annotations

import logging
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmbatch.producer.browser.app import BrowserApp, redacted, security_headers

log = logging.getLogger(__name__)


def build_server_app(browser: BrowserApp, api: ASGIApp) -> Starlette:
    """One application: `/v1/...` is the Batch API, anything else a browser page."""

    async def page(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        answer = await run_in_threadpool(browser.respond, target, dict(request.headers.items()))
        response = Response(answer.body, status_code=answer.status, media_type=answer.content_type)
        for name, value in (*security_headers(), *answer.headers):
            response.headers.append(name, value)
        return response

    return Starlette(
        routes=[Mount("/v1", app=api), Route("/{path:path}", page, methods=["GET", "HEAD"])],
        middleware=[Middleware(AccessLog)],
    )


class AccessLog:
    """One log line per request, its `token=` masked (uvicorn's own access log would print it)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + (f"?{query}" if query else "")
            client = (scope.get("client") or ("-",))[0]
            log.info('%s "%s %s" %s', client, scope["method"], redacted(target), status)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) (port 0: any free one), so the address is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    return sock


def serve(app: ASGIApp, sock: socket.socket, *, log_level: str) -> None:
    """Serve `app` on `sock` until interrupted (uvicorn handles Ctrl-C and SIGTERM gracefully)."""
    config = uvicorn.Config(
        app, log_level=log_level.lower(), access_log=False, server_header=False, proxy_headers=False
    )
    uvicorn.Server(config).run(sockets=[sock])
