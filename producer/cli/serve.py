"""`vlmbatch serve`: the read-only result browser and, under /v1, the OpenAI-compatible Batch API."""

from __future__ import annotations

import ipaddress

import click

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context

API_OFF = "listening beyond loopback needs VLMBATCH_API_KEYS or VLMBATCH_API_KEYS_FILE for /v1"


@cli.command("serve")
@click.option("--host", help="Address to listen on [env VLMBATCH_BROWSER_HOST; default 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [env VLMBATCH_BROWSER_PORT; default 8800].")
@click.option(
    "--token",
    help="Require this token on every request (?token= or Authorization: Bearer) "
    "[env VLMBATCH_BROWSER_TOKEN, which keeps it out of the process list].",
)
@click.option("--loglevel", default="INFO", show_default=True)
def serve_command(host: str | None, port: int | None, token: str | None, loglevel: str) -> None:
    """Browse runs, failures and results (traces, images, attempts) in a web browser, read-only; and
    serve the OpenAI Batch API (files, batches) under /v1 on the same port."""
    from vlmbatch.producer.api.app import api_off, build_api
    from vlmbatch.producer.api.keys import ApiKeys, KeyFileError
    from vlmbatch.producer.api.server import build_server_app, listening_socket, serve
    from vlmbatch.producer.browser.app import build_app
    from vlmbatch.producer.browser.auth import MIN_TOKEN_CHARS
    from vlmbatch.worker.telemetry.log_format import configure_logging

    ctx = load_context(browser_host=host, browser_port=port, browser_token=token)
    settings = ctx.settings
    configure_logging(loglevel, fmt=settings.log_format)
    secret = settings.browser_token.get_secret_value() if settings.browser_token else None
    secret = secret or None
    if secret is None and not _is_loopback(settings.browser_host):
        raise click.UsageError(
            f"listening on {settings.browser_host} shows every result to the network: set a token "
            "(VLMBATCH_BROWSER_TOKEN or --token), or listen on 127.0.0.1"
        )
    if secret is not None and len(secret.strip()) < MIN_TOKEN_CHARS:
        raise click.UsageError(
            f"the token must have at least {MIN_TOKEN_CHARS} characters besides white space "
            "(python -c 'import secrets; print(secrets.token_urlsafe())' makes one)"
        )
    # The browser only reads; the Batch API writes batches and submits runs (the schema is brought to head).
    # Without keys the API is for this host alone: on any other address it stays off (the pages still serve).
    try:
        keys = ApiKeys.from_settings(settings)
    except KeyFileError as exc:
        raise click.UsageError(str(exc)) from None
    api_on = bool(keys) or _is_loopback(settings.browser_host)
    api = build_api(settings, sessions=ctx.sessions, publisher=ctx.publisher()) if api_on else api_off(API_OFF)
    app = build_server_app(build_app(settings, token=secret), api)
    try:
        sock = listening_socket(settings.browser_host, settings.browser_port)
    except OSError as exc:
        raise click.UsageError(
            f"cannot listen on {settings.browser_host}:{settings.browser_port}: {exc.strerror}"
        ) from None
    bound_host, bound_port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    click.echo(
        f"vlmbatch browser on http://{shown}:{bound_port}/, Batch API on http://{shown}:{bound_port}/v1 (Ctrl-C stops)"
    )
    if not api_on:
        click.echo(f"the Batch API is off: {API_OFF}")
    if secret is not None:
        click.echo("every request needs the token: ?token=... once in a browser, or Authorization: Bearer ...")
    serve(app, sock, log_level=loglevel)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
