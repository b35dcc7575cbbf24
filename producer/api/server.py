"""What `vlmbatch serve` runs on uvicorn: the Batch API under /v1 and, on every other path, the result
browser's pages (its `BrowserApp.respond`, with its security headers, Host check and token)."""

from __future__ import annotations

import socket

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from vlmbatch.producer.browser.app import BrowserApp, security_headers


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
    )


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
    config = uvicorn.Config(app, log_level=log_level.lower(), server_header=False, proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])
