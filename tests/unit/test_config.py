"""Settings: nested environment variables and refusal of development defaults in production."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from services.config import Settings, to_env


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("CITY_VITALS_KAFKA__ENABLE_IDEMPOTENCE", "true")
    monkeypatch.setenv("CITY_VITALS_DB__URL", "postgresql://u:p@tsdb:5432/city")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka.enable_idempotence is True
    assert settings.db.url.get_secret_value() == "postgresql://u:p@tsdb:5432/city"
    assert "p@tsdb" not in repr(settings)


def test_production_refuses_the_development_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITY_VITALS_ENV", "production")
    with pytest.raises(ValidationError, match="CITY_VITALS_DB__URL must be set"):
        Settings()
    monkeypatch.setenv("CITY_VITALS_DB__URL", "postgresql://u:REPLACE-ME@tsdb:5432/city")
    with pytest.raises(ValidationError, match="placeholder password"):
        Settings()
    monkeypatch.setenv("CITY_VITALS_DB__URL", "postgresql://u:p@tsdb:5432/city")
    with pytest.raises(ValidationError, match="BOOTSTRAP_SERVERS must be set"):
        Settings()
    monkeypatch.setenv("CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    assert Settings().env == "production"


def test_unknown_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITY_VITALS_KAFKA__BOOTSTRAP", "typo:9092")
    with pytest.raises(ValidationError, match="bootstrap"):
        Settings()


def test_settings_survive_the_trip_through_a_child_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CITY_VITALS_DB__URL", "postgresql://u:p%40ss@db:5432/city")
    monkeypatch.setenv("CITY_VITALS_API__PORT", "9100")
    monkeypatch.setenv("CITY_VITALS_LOCAL__SIMULATE", "false")
    monkeypatch.setenv("CITY_VITALS_RULES__CATALOGUE", "/etc/city/indicators.yaml")
    original = Settings()
    for key in [k for k in os.environ if k.startswith("CITY_VITALS_")]:
        monkeypatch.delenv(key)
    for key, value in to_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_the_local_stack_gives_its_embedded_broker_one_partition_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.local.stack import stack_settings

    local = stack_settings(Settings())
    assert local.kafka.partitions == 1
    assert to_env(local)["CITY_VITALS_KAFKA__PARTITIONS"] == "1"  # what its services get
    monkeypatch.setenv("CITY_VITALS_LOCAL__BROKER_PARTITIONS", "2")
    assert stack_settings(Settings()).kafka.partitions == 2
    monkeypatch.setenv("CITY_VITALS_KAFKA__PARTITIONS", "4")  # set: kept
    assert stack_settings(Settings()).kafka.partitions == 4
    monkeypatch.delenv("CITY_VITALS_KAFKA__PARTITIONS")
    monkeypatch.setenv("CITY_VITALS_LOCAL__EMBEDDED_BROKER", "false")  # someone else's broker
    assert stack_settings(Settings()).kafka.partitions == Settings().kafka.partitions == 3
