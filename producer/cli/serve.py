"""`vlmbatch serve`: the read-only result browser."""

from __future__ import annotations

import ipaddress

import click

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context


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
    """Browse runs, failures and results (traces, images, attempts) in a web browser, read-only."""
    from vlmbatch.producer.browser.app import build_app, make_server
    from vlmbatch.producer.browser.auth import MIN_TOKEN_CHARS
    from vlmbatch.schema.database import open_ledger
    from vlmbatch.worker.process.log_format import configure_logging

    settings = load_context(browser_host=host, browser_port=port, browser_token=token).settings
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
    # The browser itself only reads; the schema is brought to head first, like every other command.
    engine, _ = open_ledger(settings.resolved_database_url(), auto_migrate=settings.auto_migrate)
    engine.dispose()
    server = make_server(build_app(settings, token=secret), settings.browser_host, settings.browser_port)
    bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    click.echo(f"vlmbatch browser on http://{shown}:{bound_port}/ (Ctrl-C stops)")
    if secret is not None:
        click.echo("every request needs the token: ?token=... once in a browser, or Authorization: Bearer ...")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
