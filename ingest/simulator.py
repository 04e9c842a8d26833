"""A small simulated city feeding the ingest service over HTTP, as real gateways would.

The readings are a pure function of the device, the instant and the seed; the sender only
paces them and posts them. Waterlogging at one low-lying spot rises and drains on a cycle,
so alerts open, escalate and resolve while the demo runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from schemas.base import utcnow
from schemas.readings import Location, SensorReading

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    metric: str
    unit: str
    base: float
    amplitude: float
    period_s: float
    noise: float
    location: Location


# A few real Guangzhou places (approximate coordinates); the full simulated city comes later.
_PLACES = [
    ("tianhe", "linhe", 113.327, 23.146),
    ("yuexiu", "beijingjie", 113.270, 23.129),
    ("haizhu", "pazhou", 113.366, 23.103),
    ("baiyun", "jingxi", 113.268, 23.196),
    ("panyu", "shiqiao", 113.364, 22.938),
]

_KINDS = [
    # metric, unit, base, amplitude, period (s), noise
    ("waterlogging_depth", "cm", 4.0, 3.0, 300.0, 0.5),
    ("rainfall_1h", "mm", 6.0, 5.0, 900.0, 0.8),
    ("road_speed", "km/h", 42.0, 12.0, 600.0, 2.0),
    ("aqi", "AQI", 60.0, 20.0, 1200.0, 3.0),
]


def default_devices() -> list[Device]:
    """Four sensors in each of five districts, plus one flood-prone underpass."""
    devices = [
        Device(
            device_id=f"{district}-{metric}-01",
            metric=metric,
            unit=unit,
            base=base,
            amplitude=amplitude,
            period_s=period,
            noise=noise,
            location=Location(
                lon=lon, lat=lat, grid=f"{street}-g01", street=street, district=district
            ),
        )
        for district, street, lon, lat in _PLACES
        for metric, unit, base, amplitude, period, noise in _KINDS
    ]
    # 广园路隧道-like underpass: floods to red (50+ cm) and drains every two minutes.
    devices.append(
        Device(
            device_id="tianhe-underpass-wl-01",
            metric="waterlogging_depth",
            unit="cm",
            base=27.0,
            amplitude=32.0,
            period_s=120.0,
            noise=0.5,
            location=Location(
                lon=113.331, lat=23.152, grid="linhe-g02", street="linhe", district="tianhe"
            ),
        )
    )
    return devices


def reading_at(device: Device, at: datetime, rng: random.Random) -> SensorReading:
    """The device's reading at an instant: a daily-like wave plus noise, never negative."""
    phase = (at.timestamp() % device.period_s) / device.period_s
    value = (
        device.base + device.amplitude * math.sin(2 * math.pi * phase) + rng.gauss(0, device.noise)
    )
    return SensorReading(
        device_id=device.device_id,
        metric=device.metric,
        value=round(max(value, 0.0), 2),
        unit=device.unit,
        ts=at,
        location=device.location,
    )


async def run(
    ingest_url: str,
    *,
    rate: float,
    stop: asyncio.Event,
    seed: int = 12345,
    devices: list[Device] | None = None,
    key: str | None = None,
) -> int:
    """Post readings to ingest at about ``rate`` per second until stopped; returns how many
    were accepted. Retries a batch the service answered 503 to, as a well-behaved gateway."""
    devices = devices or default_devices()
    rng = random.Random(seed)
    accepted = 0
    cursor = 0
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=ingest_url, timeout=30.0, headers=headers) as client:
        while not stop.is_set():
            now = utcnow()
            count = max(1, round(rate))
            batch = []
            for i in range(count):
                device = devices[cursor % len(devices)]
                cursor += 1
                # Spread over the last second: one device never reports twice at one instant.
                at = now - timedelta(seconds=(count - i) / count)
                batch.append(reading_at(device, at, rng).model_dump(mode="json"))
            try:
                response = await client.post("/api/v1/readings", json=batch)
            except httpx.TransportError as exc:
                log.warning("ingest unreachable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if response.status_code == 503:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code != 202:
                log.error(
                    "ingest refused a simulated batch: %s %s",
                    response.status_code,
                    response.text[:500],
                )
            else:
                accepted += int(response.json()["accepted"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    return accepted
