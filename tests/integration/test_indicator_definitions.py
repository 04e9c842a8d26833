"""Indicator definitions in PostgreSQL through the CLI: versions, compare, roll back, emergency
mode and a preview over stored readings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

from rules.indicators import Catalogue
from services.local.postgres import LocalPostgres
from tests.integration.conftest import ROOT, fresh_database, stack_env

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(env: dict[str, str], *args: str) -> str:
    done = cli(env, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_versions_rollback_emergency_and_preview(postgres: LocalPostgres, tmp_path: Path) -> None:
    db = fresh_database(postgres)
    env = stack_env("127.0.0.1:1", db, "defs")
    assert "43 of 43 indicators changed" in ok(env, "indicators", "load", "--reason", "initial")
    # Loading the same catalogue again changes nothing.
    assert "0 of 43" in ok(env, "indicators", "load", "--reason", "again")
    listed = ok(env, "indicators", "list")
    assert "water.waterlogging_depth" in listed
    assert listed.startswith("version 43")

    # Tighten one indicator: only it gets a new version.
    document = yaml.safe_load((ROOT / "rules/catalogue/indicators.yaml").read_text("utf-8"))
    for item in document["indicators"]:
        if item["code"] == "water.waterlogging_depth":
            item["thresholds"]["blue"] = 8
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    assert "1 of 43" in ok(env, "indicators", "load", "--file", str(changed), "--reason", "rainy")
    history = ok(env, "indicators", "history", "water.waterlogging_depth").splitlines()
    assert [line.split()[0] for line in history] == ["44", "1"]
    assert "rainy" in history[0]
    diff = ok(env, "indicators", "compare", "water.waterlogging_depth", "1", "44")
    assert (
        diff.strip() == "thresholds: {'blue': 10.0, 'yellow': 20.0, 'orange': 30.0, "
        "'red': 50.0} -> {'blue': 8.0, 'yellow': 20.0, 'orange': 30.0, 'red': 50.0}"
    )
    assert "as version 45" in ok(
        env, "indicators", "rollback", "water.waterlogging_depth", "1", "--reason", "too noisy"
    )
    with psycopg.connect(db) as conn:
        live = conn.execute(
            "SELECT definition FROM indicator_versions WHERE code = %s ORDER BY version DESC "
            "LIMIT 1",
            ("water.waterlogging_depth",),
        ).fetchone()
    assert live is not None
    assert live[0]["thresholds"]["blue"] == 10
    missing = cli(env, "indicators", "rollback", "water.waterlogging_depth", "999", "--reason", "x")
    assert missing.returncode != 0
    assert "no version 999" in missing.stderr

    # Bad definitions are refused with the field at fault, and nothing is stored.
    for item in document["indicators"]:
        item["thresholds"]["blue"] = 1e9 if item["direction"] == "above" else -1e9
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    refused = cli(env, "indicators", "load", "--file", str(bad), "--reason", "oops")
    assert refused.returncode != 0
    assert "thresholds" in refused.stderr

    assert "version 46" in ok(env, "emergency", "d-chaoyang", "on", "--reason", "暴雨红色预警")
    with psycopg.connect(db) as conn:
        audit = conn.execute("SELECT scope, active, reason FROM emergency_switches").fetchall()
    assert audit == [("d-chaoyang", True, "暴雨红色预警")]

    # Preview over stored readings: one device floods for 3 minutes.
    with psycopg.connect(db) as conn:
        conn.execute(
            "INSERT INTO readings (ts, reading_id, device_id, metric, value, unit, ingested_at) "
            "SELECT '2026-07-01T00:00:00Z'::timestamptz + make_interval(mins => m), "
            "gen_random_uuid(), 'dev-1', 'waterlogging_depth', "
            "CASE WHEN m BETWEEN 10 AND 12 THEN 35 ELSE 2 END, 'cm', now() "
            "FROM generate_series(0, 59) AS m"
        )
    out = ok(
        env,
        "indicators",
        "preview",
        "water.waterlogging_depth",
        "--start",
        "2026-07-01 00:00:00",
        "--end",
        "2026-07-01 01:00:00",
    )
    lines = out.splitlines()
    assert lines[0] == "60 windows, 2 transitions"
    assert "firing" in lines[1]
    assert "orange" in lines[1]
    assert "resolved" in lines[2]
    expected = Catalogue.from_yaml().by_code["water.waterlogging_depth"]
    assert expected.thresholds.orange == 30


def test_api_changes_need_admin_and_are_versioned(postgres: LocalPostgres, workdir: Path) -> None:
    import httpx

    from services.local.processes import free_port
    from tests.integration.conftest import serving

    port = free_port()
    env = stack_env(
        "127.0.0.1:1", fresh_database(postgres), "defsapi", CITY_VITALS_API__PORT=str(port)
    )
    ok(env, "indicators", "load", "--reason", "initial")
    key = ok(env, "keys", "issue", "--name", "ops", "--scope", "admin").strip()
    admin = {"Authorization": f"Bearer {key}"}
    with serving("api", env, port, workdir / "defs-api.log") as url, httpx.Client() as http:
        live = http.get(f"{url}/api/v1/indicators").json()
        assert live["version"] == 43
        assert len(live["indicators"]) == 43
        definition = next(i for i in live["indicators"] if i["code"] == "traffic.road_speed")
        tighter = {**definition, "for_seconds": 600}
        body = {"definition": tighter, "reason": "peak hours"}
        assert http.put(f"{url}/api/v1/indicators/traffic.road_speed", json=body).status_code == 401
        put = http.put(f"{url}/api/v1/indicators/traffic.road_speed", json=body, headers=admin)
        assert put.status_code == 201, put.text
        assert put.json() == {"version": 44}
        # A bad definition is a 422 naming the field, never stored.
        bad = {"definition": {**definition, "thresholds": {}}, "reason": "x"}
        refused = http.put(f"{url}/api/v1/indicators/traffic.road_speed", json=bad, headers=admin)
        assert refused.status_code == 422
        assert "thresholds" in refused.text
        diff = http.get(
            f"{url}/api/v1/indicators/traffic.road_speed/compare", params={"old": 8, "new": 44}
        )
        assert diff.status_code == 200, diff.text
        assert diff.json() == {"for_seconds": {"old": 300, "new": 600}}
        back = http.post(
            f"{url}/api/v1/indicators/traffic.road_speed/rollback",
            json={"version": 8, "reason": "undo"},
            headers=admin,
        )
        assert back.json() == {"version": 45}
        versions = http.get(f"{url}/api/v1/indicators/traffic.road_speed/versions").json()
        assert [v["version"] for v in versions] == [45, 44, 8]
        # Found by the fuzz drill: a NUL in a reason was a 500 (PostgreSQL text cannot hold it).
        nul = http.post(
            f"{url}/api/v1/emergency",
            json={"scope": "city", "active": True, "reason": "台风\u0000"},
            headers=admin,
        )
        assert nul.status_code == 422, nul.text
        assert "reason" in nul.text
        switched = http.post(
            f"{url}/api/v1/emergency",
            json={"scope": "city", "active": True, "reason": "台风"},
            headers=admin,
        )
        assert switched.status_code == 201
        state = http.get(f"{url}/api/v1/emergency").json()
        assert [(s["scope"], s["active"], s["reason"]) for s in state] == [("city", True, "台风")]
        assert state[0]["changed_by"].startswith("key:")
        window = {"start": "2026-07-01T00:00:00Z", "end": "2026-06-01T00:00:00Z"}
        wrong = http.post(
            f"{url}/api/v1/indicators/preview", json={"definition": tighter, **window}
        )
        assert wrong.status_code == 422
        assert "end" in wrong.text
