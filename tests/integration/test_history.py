"""History on real PostgreSQL: rollup refresh and retention, and the history API over them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import httpx
import psycopg
import pytest

from services.config import StorageSettings
from services.local.postgres import LocalPostgres
from services.local.processes import free_port
from services.storage.scheduled import MARK_CHANGED, apply_retention, maintain, prepare
from services.storage.writer import READING_COLUMNS
from tests.integration.conftest import eventually, fresh_database, serving, stack_env

pytestmark = pytest.mark.integration

# Hour-aligned, so buckets of every size start at START.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
START = NOW - timedelta(hours=3)

CATALOGUE = """
indicators:
  - code: water.depth
    name_zh: 积水深度
    name_en: Waterlogging depth
    domain: water
    unit: cm
    metric: waterlogging_depth
    thresholds: {blue: 10, red: 50}
  - code: water.depth_district
    name_zh: 区积水深度
    name_en: Waterlogging depth per district
    domain: water
    unit: cm
    metric: waterlogging_depth
    scope_level: district
    thresholds: {blue: 10, red: 50}
  - code: traffic.speed
    name_zh: 车速
    name_en: Road speed
    domain: traffic
    unit: km/h
    metric: road_speed
    scope_level: district
    direction: below
    thresholds: {blue: 30, red: 5}
  - code: hotline.flooding
    name_zh: 积水投诉
    name_en: Flooding calls
    domain: hotline
    unit: tickets
    source: tickets
    ticket_categories: [drainage.waterlogging]
    scope_level: district
    aggregation: count
    thresholds: {blue: 2, red: 20}
"""

# (device, district): readings every 30 s for three hours, value = minute index + device offset.
DEVICES = [("wl-1", "yuexiu", 0.0), ("wl-2", "yuexiu", 100.0), ("wl-3", "tianhe", 200.0)]


def rows() -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for device, district, base in DEVICES:
        for i in range(3 * 60 * 2):
            ts = START + timedelta(seconds=30 * i)
            out.append(
                (
                    ts,
                    uuid.uuid4(),
                    device,
                    "waterlogging_depth",
                    base + i // 2,
                    "cm",
                    None,
                    None,
                    district,
                    None,
                    None,
                    ts,
                )
            )
    for device, district, speed in (
        ("rs-1", "yuexiu", 42.0),
        ("rs-2", "yuexiu", 12.0),
        ("rs-3", "tianhe", 55.0),
    ):
        out.append(
            (
                NOW - timedelta(minutes=2),
                uuid.uuid4(),
                device,
                "road_speed",
                speed,
                "km/h",
                None,
                None,
                district,
                None,
                None,
                NOW,
            )
        )
    return out


def load(url: str, data: list[tuple[object, ...]]) -> None:
    """Store reading rows as the writer does: copied, their minute buckets marked changed."""
    columns = ", ".join(READING_COLUMNS)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY readings ({columns}) FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
        minutes = {cast(datetime, row[0]).replace(second=0, microsecond=0) for row in data}
        cur.execute(MARK_CHANGED, (sorted(minutes),))


def run_maintenance(url: str, now: datetime, storage: StorageSettings | None = None) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            assert await maintain(conn, storage or StorageSettings(), now=now)

    asyncio.run(go())


@pytest.fixture(scope="module")
def db(postgres: LocalPostgres) -> str:
    url = fresh_database(postgres)
    load(url, rows())
    # Refresh as of 40 minutes ago: the last 40 minutes must come from raw readings.
    run_maintenance(url, NOW - timedelta(minutes=40))
    return url


@pytest.fixture(scope="module")
def api(db: str, workdir: Path) -> Iterator[str]:
    catalogue = workdir / "history-catalogue.yaml"
    catalogue.write_text(CATALOGUE, encoding="utf-8")
    port = free_port()
    env = stack_env(
        "127.0.0.1:1",
        db,
        "history",
        CITY_VITALS_API__PORT=str(port),
        CITY_VITALS_RULES__CATALOGUE=str(catalogue),
    )
    with serving("api", env, port, workdir / "history-api.log") as url:
        yield url


def test_minute_rollup_matches_raw_readings(db: str) -> None:
    with psycopg.connect(db) as conn:
        mark = conn.execute(
            "SELECT refreshed_to FROM rollup_watermarks WHERE rollup = 'readings_1m'"
        ).fetchone()
        assert mark is not None
        assert mark[0] == NOW - timedelta(minutes=40)
        diff = conn.execute(
            """
            SELECT count(*) FROM (
              SELECT date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01+00') b, device_id,
                     count(*) n, sum(value) s, min(value) lo, max(value) hi,
                     (array_agg(value ORDER BY ts DESC))[1] last, max(ts) last_ts
              FROM readings WHERE metric = 'waterlogging_depth' AND ts < %s GROUP BY 1, 2
              EXCEPT
              SELECT bucket, device_id, samples, total, min_value, max_value, last_value,
                     last_ts
              FROM readings_1m
            ) missing
            """,
            (mark[0],),
        ).fetchone()
        assert diff == (0,)
        hours = conn.execute("SELECT count(DISTINCT bucket) FROM readings_1h").fetchone()
        assert hours is not None
        assert hours[0] >= 2


def test_late_data_of_any_age_is_taken_into_the_rollups(postgres: LocalPostgres) -> None:
    url = fresh_database(postgres)
    t = NOW - timedelta(hours=2, minutes=30)
    load(url, [(t, uuid.uuid4(), "d", "aqi", 10.0, "AQI", None, None, "x", None, None, t)])
    run_maintenance(url, NOW)
    # Two and a half hours late: in a bucket of each rollup computed long ago.
    late = t + timedelta(seconds=10)
    load(url, [(late, uuid.uuid4(), "d", "aqi", 30.0, "AQI", None, None, "x", None, None, NOW)])
    run_maintenance(url, NOW + timedelta(minutes=1))
    with psycopg.connect(url) as conn:
        minute = conn.execute(
            "SELECT samples, total, last_value FROM readings_1m WHERE bucket = %s",
            (t.replace(second=0),),
        ).fetchone()
        hour = conn.execute(
            "SELECT samples, total FROM readings_1h WHERE bucket = %s",
            (t.replace(minute=0, second=0),),
        ).fetchone()
        marks = conn.execute("SELECT count(*) FROM rollup_dirty").fetchone()
    assert minute == (2, 40.0, 30.0)
    assert hour == (2, 40.0)
    assert marks == (0,)  # every mark taken


def test_retention_deletes_only_what_is_past_it(postgres: LocalPostgres) -> None:
    url = fresh_database(postgres)
    old, recent = NOW - timedelta(days=10), NOW - timedelta(days=1)
    load(
        url,
        [
            (ts, uuid.uuid4(), "d", "aqi", 1.0, "AQI", None, None, None, None, None, ts)
            for ts in (old, old, recent)
        ],
    )

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await apply_retention(conn, StorageSettings(readings_retention_days=5), now=NOW)

    assert asyncio.run(go()) == 2
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (1,)


def test_device_series_across_rollup_and_raw_tail(api: str, client: httpx.Client) -> None:
    got = client.get(
        f"{api}/api/v1/history/series",
        params={
            "indicator": "water.depth",
            "scope_id": "wl-2",
            "start": START.isoformat(),
            "end": NOW.isoformat(),
            "bucket": "5m",
            "aggregation": "max",
        },
    )
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["source"] == "readings_1m"
    points = body["points"]
    assert len(points) == 36
    # Each 5-minute bucket holds minutes k..k+4, value 100 + minute: the max is 100 + k + 4.
    for n, point in enumerate(points):
        assert point["samples"] == 10
        assert point["value"] == 100 + 5 * n + 4
    means = client.get(
        f"{api}/api/v1/history/series",
        params={
            "indicator": "water.depth",
            "scope_id": "wl-1",
            "start": START.isoformat(),
            "end": NOW.isoformat(),
            "bucket": "1h",
        },
    ).json()
    assert [p["value"] for p in means["points"]] == [29.5, 89.5, 149.5]
    assert means["source"] == "readings_1h"


def test_district_series_aggregates_its_devices(api: str, client: httpx.Client) -> None:
    got = client.get(
        f"{api}/api/v1/history/series",
        params={
            "indicator": "water.depth_district",
            "scope_id": "yuexiu",
            "start": START.isoformat(),
            "end": (START + timedelta(hours=1)).isoformat(),
            "bucket": "1h",
            "aggregation": "count",
        },
    ).json()
    assert [(p["value"], p["samples"]) for p in got["points"]] == [(240.0, 240)]


def test_latest_shows_the_worst_device_per_scope(api: str, client: httpx.Client) -> None:
    got = client.get(
        f"{api}/api/v1/history/latest",
        params=[
            ("indicator", "traffic.speed"),
            ("indicator", "water.depth_district"),
            ("since_minutes", 240),
        ],
    )
    assert got.status_code == 200, got.text
    items = {
        (i["indicator"], i["scope_id"]): (i["value"], i["device_id"]) for i in got.json()["items"]
    }
    # Speed breaches downwards: the slowest road in the district is the one to show.
    assert items[("traffic.speed", "yuexiu")] == (12.0, "rs-2")
    assert items[("traffic.speed", "tianhe")] == (55.0, "rs-3")
    assert items[("water.depth_district", "yuexiu")] == (100 + 179, "wl-2")
    assert items[("water.depth_district", "tianhe")] == (200 + 179, "wl-3")


@pytest.mark.parametrize(
    ("path", "params", "status", "reason"),
    [
        ("series", {"indicator": "nope.nothing", "scope_id": "x"}, 404, "unknown indicator"),
        ("series", {"indicator": "water.depth"}, 422, "scope_id is required"),
        (
            "series",
            {
                "indicator": "water.depth",
                "scope_id": "x",
                "start": NOW.isoformat(),
                "end": (NOW - timedelta(hours=1)).isoformat(),
            },
            422,
            "must be after start",
        ),
        (
            "series",
            {
                "indicator": "water.depth",
                "scope_id": "x",
                "bucket": "1m",
                "start": (NOW - timedelta(days=30)).isoformat(),
            },
            422,
            "exceed the limit",
        ),
        (
            "series",
            {"indicator": "water.depth", "scope_id": "x", "start": "2026-11-01T00:00:00"},
            422,
            "timezone",
        ),
        ("series", {"indicator": "water.depth", "scope_id": "x", "bucket": "7m"}, 422, "bucket"),
        ("latest", {"indicator": "nope.nothing"}, 404, "unknown indicator"),
        ("latest", {"indicator": "hotline.flooding"}, 422, "counts 12345 tickets"),
        ("series", {"indicator": "hotline.flooding", "scope_id": "x"}, 422, "counts 12345"),
        ("latest", {}, 422, "indicator"),
        ("alerts", {"start": NOW.isoformat(), "end": START.isoformat()}, 422, "after start"),
        ("alerts", {"limit": 5000}, 422, "limit"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    api: str, client: httpx.Client, path: str, params: dict[str, object], status: int, reason: str
) -> None:
    got = client.get(f"{api}/api/v1/history/{path}", params=params)  # type: ignore[arg-type]
    assert got.status_code == status, got.text
    assert reason in got.text


def test_alert_history_filters_and_pages(db: str, api: str, client: httpx.Client) -> None:
    with psycopg.connect(db) as conn:
        for i in range(5):
            conn.execute(
                "INSERT INTO alert_transitions (transition_id, alert_id, seq, kind, indicator, "
                "scope_level, scope_id, level, previous_level, value, threshold, occurrences, "
                "opened_at, observed_at) VALUES (%s, %s, 1, 'firing', 'water.depth', 'device', "
                "%s, 'red', NULL, 60, 50, 1, %s, %s)",
                (uuid.uuid4(), uuid.uuid4(), f"wl-{i % 2}", START, START + timedelta(minutes=i)),
            )
    page = client.get(
        f"{api}/api/v1/history/alerts", params={"scope_id": "wl-1", "limit": 1}
    ).json()
    assert page["total"] == 2
    assert len(page["items"]) == 1
    assert page["items"][0]["observed_at"].startswith(
        (START + timedelta(minutes=3)).isoformat()[:16]
    )


def test_upkeep_vacuums_readings_on_its_round_and_autovacuum_only_falls_back(
    postgres: LocalPostgres,
) -> None:
    url = fresh_database(postgres)
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT layout FROM storage_layout").fetchone() != ("plain",):
            pytest.skip("TimescaleDB's own jobs keep its chunks")
    load(url, rows()[:50])

    def readings_state() -> tuple[object, ...] | None:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT c.reloptions, s.last_vacuum IS NOT NULL, s.last_analyze IS NOT NULL "
                "FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid "
                "WHERE c.relname = 'readings'"
            ).fetchone()

    async def upkeep(storage: StorageSettings, *rounds: datetime) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await prepare(conn, storage)
            for now in rounds:
                assert await maintain(conn, storage, now=now)

    # Rounds at 10:21:40 and 10:29:40 do not vacuum the table (the first analyses it, never
    # analysed before: the rollup's plan needs statistics); the one at 10:30:40 vacuums it.
    day = NOW.replace(hour=10)
    asyncio.run(upkeep(StorageSettings(), day.replace(minute=21, second=40)))
    state = readings_state()
    assert state is not None
    options, vacuumed, analyzed = state
    assert "autovacuum_analyze_threshold=10000000" in cast(list[str], options)
    assert (vacuumed, analyzed) == (False, True)
    asyncio.run(upkeep(StorageSettings(), *(day.replace(minute=m, second=40) for m in (29, 30))))
    eventually(lambda: (state := readings_state()) is not None and state[1:] == (True, True))
    # Without upkeep's vacuum, autovacuum's defaults again.
    asyncio.run(upkeep(StorageSettings(readings_vacuum_minutes=None)))
    assert readings_state() == (None, True, True)
