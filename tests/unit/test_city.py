"""The simulated city (pure): geography, devices, rhythms, scenarios, calls, determinism."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import orjson
import pytest

from ingest.batch import sort_items
from ingest.city import geography
from ingest.city.model import City
from ingest.city.scenarios import Running, ScenarioName
from ingest.city.tickets import draw_calls
from schemas.base import utcnow
from services.tickets.open311 import ticket_from_form

T = 1_795_000_000.0  # a fixed instant


@pytest.fixture(scope="module")
def city() -> City:
    return City(seed=7)


def test_guangzhou_s_eleven_districts_with_thousands_of_devices_of_eight_types(city: City) -> None:
    assert len(geography.DISTRICTS) == 11
    assert {d.grid.street.district for d in city.devices} == set(geography.DISTRICTS)
    assert len({d.metric for d in city.devices}) >= 8
    assert len(city.devices) >= 2000
    assert len({d.device_id for d in city.devices}) == len(city.devices)


def test_every_simulated_reading_passes_the_contract(city: City) -> None:
    items = orjson.loads(city.body(T, 3000))
    result = sort_items(items)
    assert not result.rejected
    assert len(result.accepted) == 3000


def test_the_same_seed_gives_the_same_city_and_readings() -> None:
    a, b, c = City(seed=1), City(seed=1), City(seed=2)
    assert a.body(T, 500) == b.body(T, 500)
    assert City(seed=1).body(T, 500) != c.body(T, 500)


def test_roads_slow_down_at_rush_hour(city: City) -> None:
    roads = np.array([i for i, d in enumerate(city.devices) if d.metric == "road_speed"])
    rush = T - (T % 86400) + 0.5 * 3600  # 08:30 in Guangzhou (UTC+8)
    night = rush - 6 * 3600  # 02:30
    slow = city.values(roads, np.full(len(roads), rush)).mean()
    free = city.values(roads, np.full(len(roads), night)).mean()
    assert slow < free - 10


def mean_of(
    city: City, metric: str, running: Running | None, where: np.ndarray | None = None
) -> float:
    idx = np.array([i for i, d in enumerate(city.devices) if d.metric == metric])
    if where is not None:
        idx = idx[where[idx]]
    return float(city.values(idx, np.full(len(idx), T), running).mean())


def test_a_typhoon_brings_rain_then_floods_low_lying_streets(city: City) -> None:
    early = Running(ScenarioName.TYPHOON, started_at=T - 60, minutes=30)
    late = Running(ScenarioName.TYPHOON, started_at=T - 25 * 60, minutes=30)
    low = city.targets.low_lying
    assert mean_of(city, "rainfall_1h", late) > 60
    assert mean_of(city, "waterlogging_depth", early, low) < 10  # rain first...
    assert mean_of(city, "waterlogging_depth", late, low) > 40  # ...then the water
    assert mean_of(city, "waterlogging_depth", late, ~low) < 10


def test_the_canton_fair_crowds_pazhou_only(city: City) -> None:
    fair = Running(ScenarioName.CANTON_FAIR, started_at=T - 600, minutes=60)
    assert mean_of(city, "crowd_density", fair, city.targets.fair) > 3
    assert mean_of(city, "crowd_density", fair, ~city.targets.fair) < 1.5


def test_an_outage_silences_one_district(city: City) -> None:
    outage = Running(ScenarioName.OUTAGE, started_at=T - 60, minutes=10, district="haizhu")
    by_id = {d.device_id: d for d in city.devices}
    sent = orjson.loads(city.body(T, len(city.devices), outage))
    districts = {by_id[item["device_id"]].grid.street.district for item in sent}
    assert districts == set(geography.DISTRICTS) - {"haizhu"}


def test_calls_are_realistic_and_surge_with_the_typhoon(city: City) -> None:
    calm = draw_calls(np.random.default_rng(1), 3600, city.grids, {})
    assert 1000 < len(calm) < 2300  # about 0.45 calls a second
    stormy = draw_calls(np.random.default_rng(1), 3600, city.grids, {"drainage": 40.0})
    flooding = [c for c in stormy if c["service_code"].startswith("drainage.")]
    assert len(flooding) > 10 * len([c for c in calm if c["service_code"].startswith("drainage.")])
    ticket = ticket_from_form({k: [v] for k, v in calm[0].items()}, utcnow())
    assert ticket.description
    assert ticket.caller.phone is not None
    assert ticket.caller.phone.startswith("1")
    assert len(ticket.caller.phone) == 11


@pytest.mark.parametrize("span", [1.0, 0.2])
def test_a_body_spreads_its_readings_over_the_span_before_now(city: City, span: float) -> None:
    """The simulator posts every ``span`` seconds what the devices measured since its last
    post, so each reading's time falls in that span."""
    times = [
        datetime.fromisoformat(i["ts"]).timestamp()
        for i in orjson.loads(city.body(T, 1000, span=span))
    ]
    assert T - span - 0.002 <= min(times) < T - span + 0.01
    assert max(times) <= T


def test_a_body_across_a_second_boundary_stamps_each_reading_in_its_own_second(
    city: City,
) -> None:
    now = T + 0.4
    times = [
        datetime.fromisoformat(i["ts"]).timestamp()
        for i in orjson.loads(city.body(now, 1000, span=1.0))
    ]
    assert now - 1.0 - 0.002 <= min(times)
    assert max(times) <= now
    assert {int(t) for t in times} == {int(T) - 1, int(T)}
    assert times == sorted(times)  # no reading of the later second stamped with the earlier
