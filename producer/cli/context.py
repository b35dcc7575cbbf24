"""What every command needs, built on demand from settings: the ledger and the broker."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.worker.transport.celery_app import make_celery
from vlmbatch.worker.transport.publisher import Publisher, publisher_for


@dataclass
class CommandContext:
    settings: Settings
    _ledger: tuple[Engine, sessionmaker[Session]] | None = field(default=None, repr=False)
    _celery: Celery | None = field(default=None, repr=False)

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._ledger is None:
            self._ledger = open_ledger(self.settings.resolved_database_url(), auto_migrate=self.settings.auto_migrate)
        return self._ledger[1]

    @property
    def db_engine(self) -> Engine:
        _ = self.sessions
        assert self._ledger is not None
        return self._ledger[0]

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = make_celery(self.settings)
        return self._celery

    def publisher(self) -> Publisher:
        return publisher_for(self.celery, jobs_per_message=self.settings.jobs_per_message)


def load_context(**overrides: object) -> CommandContext:
    """Settings from the environment (and .env), with command-line flags taking precedence."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return CommandContext(settings=Settings(**given))  # type: ignore[arg-type]
