"""The `vlmbatch` command line: one console script, one module per command group."""

from __future__ import annotations

import sys

import click

from vlmbatch.schema.errors import VlmbatchError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """vlmbatch: push image+question jobs through a vision-language reasoning model, with a SQL ledger
    that never loses or duplicates a result."""


def main() -> None:
    from vlmbatch.producer.cli import db, demo, ops, outputs, runs, serve, submit, work  # noqa: F401  (registers the commands)

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except VlmbatchError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
