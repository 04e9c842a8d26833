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
