"""Settings: documented, and strict where a silent default would hide a misconfiguration."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vlmbatch.schema.contracts.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented_in_the_readme(field: str) -> None:
    assert f"VLMBATCH_{field.upper()}" in README.read_text()


def test_production_refuses_the_embedded_defaults() -> None:
    with pytest.raises(ValidationError, match="VLMBATCH_DATABASE_URL, VLMBATCH_BROKER_URL"):
        Settings(environment="production")
    Settings(environment="production", database_url="postgresql+psycopg://db/x", broker_url="redis://r:6379/0")


def test_a_heartbeat_beats_at_least_twice_per_lease() -> None:
    with pytest.raises(ValidationError, match=r"VLMBATCH_HEARTBEAT_SECONDS \(90\) must be at most half"):
        Settings(heartbeat_seconds=90, lease_seconds=120)
    Settings(heartbeat_seconds=60, lease_seconds=120)


def test_the_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path / 'vlmbatch.db'}"
    assert settings.resolved_broker_url() == f"sqla+sqlite:///{tmp_path / 'broker.db'}"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMBATCH_MAX_NUM_SEQS", "64")
    monkeypatch.setenv("VLMBATCH_BROKER_URL", "redis://r:6379/0")
    settings = Settings()
    assert (settings.max_num_seqs, settings.resolved_inflight_jobs()) == (64, 128)
    assert settings.resolved_broker_url() == "redis://r:6379/0"
