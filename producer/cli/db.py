"""`vlmbatch db upgrade`."""

from __future__ import annotations

import click

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context
from vlmbatch.schema.ledger.database import current_revision, make_engine, upgrade


@cli.group("db")
def db_group() -> None:
    """The ledger's schema."""


@db_group.command("upgrade")
def upgrade_command() -> None:
    """Create or migrate the database schema to the current version."""
    ctx = load_context(auto_migrate=False)
    engine = make_engine(ctx.settings.resolved_database_url())
    upgrade(engine)
    click.echo(f"database at revision {current_revision(engine)}")
