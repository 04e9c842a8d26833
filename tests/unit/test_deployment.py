"""docker-compose.yml and deploy/ stay in step with the CLI and the settings they set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import main
from services.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_compose_service_runs_a_real_subcommand() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {name: s for name, s in compose["services"].items() if s.get("build")}
    assert set(ours) == {"migrate", "ingest", "rules", "writer", "api", "mqtt-bridge"}
    for name, service in ours.items():
        command = service["command"][0]
        assert command in main.commands, f"{name} runs unknown subcommand {command!r}"
        env = service["environment"]
        assert env["CITY_VITALS_ENV"] == "production"
        assert env["CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "deploy").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    files = {p.name for p in (ROOT / "deploy").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_every_kubernetes_container_runs_a_real_subcommand() -> None:
    workloads = [d for d in manifests() if d["kind"] in {"Deployment", "Job"}]
    commands = set()
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            commands.add(container["args"][0])
            assert {"configMapRef": {"name": "city-vitals"}} in container["envFrom"]
    assert commands == {"migrate", "ingest", "rules", "writer", "api", "mqtt-bridge"}
    assert commands <= set(main.commands)


def test_kubernetes_settings_are_valid_but_refused_until_the_placeholder_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env: dict[str, str] = {}
    for doc in manifests():
        if doc["kind"] == "ConfigMap":
            env.update(doc["data"])
        if doc["kind"] == "Secret":
            env.update(doc["stringData"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="placeholder password"):
        Settings()
    monkeypatch.setenv(
        "CITY_VITALS_DB__URL", env["CITY_VITALS_DB__URL"].replace("REPLACE-ME", "s3cret")
    )
    assert Settings().kafka.replication_factor == 3
