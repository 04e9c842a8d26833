"""The simulated city's devices and their readings, vectorised with numpy.

Every device has a daily rhythm (the hour of day in Guangzhou, UTC+8), noise and bounds;
readings for many devices at many instants are computed in one go, and written straight to
JSON bytes from per-device prefixes, so the generator itself reaches hundreds of thousands of
readings per second. The same seed gives the same devices and the same readings for the same
instants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import orjson

from ingest.city import geography, scenarios
from ingest.city.geography import Grid
from schemas.readings import PLACE_KEYS

# metric, unit, device type, per grid (0: one per street), base, daily amplitude, peak hour,
# rush-hour dip, noise, lowest, highest
KINDS: list[tuple[str, str, str, int, float, float, float, float, float, float, float]] = [
    ("waterlogging_depth", "cm", "waterlogging_gauge", 1, 1.5, 0.0, 0, 0, 0.4, 0.0, 200.0),
    ("rainfall_1h", "mm", "rain_gauge", 0, 0.5, 0.3, 15, 0, 0.3, 0.0, 300.0),
    ("aqi", "AQI", "air_quality_monitor", 1, 55.0, 15.0, 20, 0, 5.0, 5.0, 500.0),
    ("road_speed", "km/h", "road_speed_detector", 3, 46.0, 4.0, 3, 22.0, 3.0, 2.0, 90.0),
    ("cover_tilt", "deg", "manhole_cover_sensor", 3, 0.5, 0.0, 0, 0, 0.2, 0.0, 90.0),
    ("crowd_density", "p/m2", "crowd_counter", 1, 0.5, 0.4, 15, 0, 0.08, 0.0, 8.0),
    ("grid_load", "%", "power_meter", 1, 55.0, 18.0, 19, 0, 3.0, 0.0, 120.0),
    ("gas_pressure", "kPa", "gas_pressure_sensor", 0, 2.2, 0.1, 19, 0, 0.05, 0.0, 10.0),
]  # fmt: skip

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    metric: str
    unit: str
    device_type: str
    grid: Grid


class City:
    """Guangzhou's simulated devices, and how to make their readings."""

    def __init__(self, seed: int = 12345) -> None:
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.grids = geography.grids()
        devices: list[Device] = []
        params: list[tuple[float, ...]] = []
        for k, (metric, unit, dtype, per_grid, base, amp, peak, rush, noise, lo, hi) in enumerate(
            KINDS
        ):
            for grid in self.grids:
                count = per_grid if per_grid else (1 if grid.code.endswith("-g01") else 0)
                for n in range(count):
                    devices.append(
                        Device(f"{grid.code}-{dtype}-{n + 1}", metric, unit, dtype, grid)
                    )
                    # Each device a little different from its neighbours.
                    params.append(
                        (k, base * rng.uniform(0.85, 1.15), amp, peak, rush, noise, lo, hi)
                    )
        self.devices = devices
        p = np.array(params, dtype=np.float64)
        self.kind = p[:, 0].astype(np.int64)
        self.base, self.amp, self.peak, self.rush = p[:, 1], p[:, 2], p[:, 3], p[:, 4]
        self.noise, self.lo, self.hi = p[:, 5], p[:, 6], p[:, 7]
        street = np.array([d.grid.street.code for d in devices])
        self.targets = scenarios.Targets(
            metric=np.array([d.metric for d in devices]),
            district=np.array([d.grid.street.district for d in devices]),
            street=street,
            low_lying=rng.random(len(devices)) < 0.2,
            flood_lag=rng.uniform(0.0, 0.2, len(devices)),
            station=np.isin(street, geography.STATIONS),
            fair=street == geography.CANTON_FAIR,
        )
        # Gateways here send each reading with its place (the registry would fill it too).
        self._prefix = [
            orjson.dumps(
                {
                    "device_id": d.device_id,
                    "metric": d.metric,
                    "unit": d.unit,
                    "location": {
                        "lon": d.grid.lon,
                        "lat": d.grid.lat,
                        "grid": d.grid.code,
                        "street": d.grid.street.code,
                        "district": d.grid.street.district,
                    },
                }
            )[:-1]
            + b',"value":'
            for d in devices
        ]
        # The same, column by column, for frames: each device's id and place, as arrays of
        # the objects (picked by index in C: a list comprehension a column cost the simulator
        # ~0.2 us a reading, beside the stack it loads).
        self._ids = np.array([d.device_id for d in devices], dtype=object)
        self._metric = np.array([d.metric for d in devices], dtype=object)
        self._unit = np.array([d.unit for d in devices], dtype=object)
        self._place = {
            "lon": np.array([d.grid.lon for d in devices], dtype=object),
            "lat": np.array([d.grid.lat for d in devices], dtype=object),
            "grid": np.array([d.grid.code for d in devices], dtype=object),
            "street": np.array([d.grid.street.code for d in devices], dtype=object),
            "district": np.array([d.grid.street.district for d in devices], dtype=object),
        }
        self.cursor = 0

    def values(
        self, idx: Ints, t: Floats, running: scenarios.Running | None = None, *, salt: int = 0
    ) -> Floats:
        """Readings of devices ``idx`` at epoch seconds ``t``; the noise is drawn from the
        seed, the instants and ``salt``, so the same call gives the same values."""
        hour = (t / 3600.0 + 8.0) % 24.0  # Guangzhou local time
        daily = self.amp[idx] * np.cos(2 * np.pi * (hour - self.peak[idx]) / 24.0)
        rush = self.rush[idx] * (
            np.exp(-(((hour - 8.5) / 1.2) ** 2)) + np.exp(-(((hour - 18.0) / 1.5) ** 2))
        )
        seed = [self.seed, salt, int(t[0] * 1000) if len(t) else 0, len(t)]
        noise = np.random.default_rng(seed).standard_normal(len(idx)) * self.noise[idx]
        values = self.base[idx] + daily - rush + noise
        if running is not None:
            values = scenarios.adjust(running, self.targets, idx, t, values)
        out: Floats = np.clip(values, self.lo[idx], self.hi[idx])
        return out

    def next_devices(self, count: int) -> Ints:
        """The next ``count`` devices in turn (each reports every len(devices)/rate seconds)."""
        idx = (self.cursor + np.arange(count, dtype=np.int64)) % len(self.devices)
        self.cursor = int((self.cursor + count) % len(self.devices))
        return idx

    def _readings(
        self, now: float, count: int, running: scenarios.Running | None, span: float
    ) -> tuple[Ints, Floats, Floats]:
        """The next ``count`` devices' readings spread over the ``span`` seconds before ``now``
        (at most one second): devices, instants (epoch s) and values."""
        idx = self.next_devices(count)
        offsets = (np.arange(count, dtype=np.float64) - count) / max(count, 1)
        t = now + offsets * min(max(span, 0.0), 1.0)
        if running is not None:
            keep = ~scenarios.silenced(running, self.targets, idx)
            idx, t = idx[keep], t[keep]
        return idx, t, self.values(idx, t, running)

    def frame(
        self,
        now: float,
        count: int,
        running: scenarios.Running | None = None,
        *,
        span: float = 1.0,
    ) -> bytes:
        """The readings ``body`` makes, as a frame (``schemas.readings.ReadingFrame``): what
        a gateway posts column by column."""
        idx, t, values = self._readings(now, count, running, span)
        if not len(idx):
            return b""
        second = int(now) - 1
        millis = np.clip(((t - second) * 1000).astype(np.int64), 0, 1999)
        devices, place = np.unique(idx, return_inverse=True)
        frame = {
            "device_id": self._ids[idx].tolist(),
            "metric": self._metric[idx].tolist(),
            "unit": self._unit[idx].tolist(),
            "ts": ((second * 1000 + millis) * 1000).tolist(),
            "value": np.round(values, 2).tolist(),
            "place": place.tolist(),
            "places": {key: self._place[key][devices].tolist() for key in PLACE_KEYS},
        }
        return orjson.dumps(frame)

    def body(
        self,
        now: float,
        count: int,
        running: scenarios.Running | None = None,
        *,
        span: float = 1.0,
    ) -> bytes:
        """A JSON array of ``count`` readings spread over the ``span`` seconds before ``now``
        (at most one second)."""
        idx, t, values = self._readings(now, count, running, span)
        second = int(now) - 1
        # The second before now's and now's, written once each: readings in the current second
        # (millis from 1000) take the second; writing it per reading was a third of what the
        # simulator spent.
        stamps = (_second_text(second), _second_text(second + 1))
        millis = np.clip(((t - second) * 1000).astype(np.int64), 0, 1999)
        parts = [
            self._prefix[i]
            + f"{v:.2f}".encode()
            + b',"ts":"'
            + stamps[ms // 1000]
            + f".{ms % 1000:03d}Z".encode()
            + b'"}'
            for i, v, ms in zip(idx.tolist(), values.tolist(), millis.tolist(), strict=True)
        ]
        return b"[" + b",".join(parts) + b"]"


def _second_text(second: int) -> bytes:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()
