"""docker-compose.yml stays in step with the CLI and the settings it sets."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_every_service_runs_a_real_subcommand() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {name: s for name, s in compose["services"].items() if s.get("build")}
    assert set(ours) == {"migrate", "ingest", "rules", "writer", "api"}
    for name, service in ours.items():
        command = service["command"][0]
        assert command in main.commands, f"{name} runs unknown subcommand {command!r}"
        env = service["environment"]
        assert env["CITY_VITALS_ENV"] == "production"
        assert env["CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
