"""Scenarios the simulated city can be put through, started on command. Pure (numpy).

Each scenario changes readings as it unfolds (``progress`` runs 0 → 1 over its duration) and
multiplies the rate of some 12345 categories; an outage silences devices instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class ScenarioName(StrEnum):
    TYPHOON = "typhoon"  # rain, then waterlogging, then a surge of flooding tickets
    CANTON_FAIR = "canton_fair"  # 广交会 at Pazhou: crowds and slow roads
    CHUNYUN = "chunyun"  # 春运 at the railway stations: crowds
    POLLUTION = "pollution"  # an air-pollution episode, citywide
    OUTAGE = "outage"  # one district's sensors go quiet


DESCRIPTIONS = {
    ScenarioName.TYPHOON: "台风: rainfall up to ~80 mm/h, then waterlogging in low-lying grids, "
    "then a surge of 排水防涝 tickets",
    ScenarioName.CANTON_FAIR: "广交会: crowds at Pazhou (海珠区琶洲), roads around it slow down",
    ScenarioName.CHUNYUN: "春运: crowds at the railway stations",
    ScenarioName.POLLUTION: "空气污染: AQI climbs citywide, 环境污染 tickets rise",
    ScenarioName.OUTAGE: "传感器故障: every sensor of one district stops reporting",
}


@dataclass(frozen=True, slots=True)
class Running:
    """A scenario in progress: which, since when (epoch seconds), for how long."""

    name: ScenarioName
    started_at: float
    minutes: float = 30.0
    district: str = "tianhe"  # for the outage

    def progress(self, t: Floats) -> Floats:
        out: Floats = np.clip((t - self.started_at) / (self.minutes * 60.0), 0.0, 1.0)
        return out

    def active(self, t: float) -> bool:
        return self.started_at <= t < self.started_at + self.minutes * 60.0


@dataclass(frozen=True, slots=True)
class Targets:
    """Masks over the city's devices that scenarios act on."""

    metric: npt.NDArray[np.str_]
    district: npt.NDArray[np.str_]
    street: npt.NDArray[np.str_]
    low_lying: Bools  # waterlogging gauges that flood first
    # When each floods, as a fraction of the scenario after the first: drainage differs.
    flood_lag: Floats
    station: Bools
    fair: Bools


def _ramp(p: Floats, start: float, full: float) -> Floats:
    """0 before ``start``, rising to 1 at ``full`` (fractions of the scenario)."""
    out: Floats = np.clip((p - start) / (full - start), 0.0, 1.0)
    return out


def adjust(running: Running, targets: Targets, idx: npt.NDArray[np.int64], t: Floats,
           values: Floats) -> Floats:  # fmt: skip
    """The readings of devices ``idx`` at times ``t`` under the scenario."""
    p = running.progress(t)
    metric = targets.metric[idx]
    out = values.copy()
    match running.name:
        case ScenarioName.TYPHOON:
            rain = metric == "rainfall_1h"
            out[rain] += 80.0 * _ramp(p[rain], 0.0, 0.3)
            flood = (metric == "waterlogging_depth") & targets.low_lying[idx]
            out[flood] += 55.0 * _ramp(p[flood] - targets.flood_lag[idx][flood], 0.2, 0.6)
            roads = metric == "road_speed"
            out[roads] *= 1.0 - 0.6 * _ramp(p[roads], 0.2, 0.6)
        case ScenarioName.CANTON_FAIR:
            fair = targets.fair[idx]
            crowd = fair & (metric == "crowd_density")
            out[crowd] += 3.8 * _ramp(p[crowd], 0.0, 0.2)
            roads = fair & (metric == "road_speed")
            out[roads] *= 1.0 - 0.8 * _ramp(p[roads], 0.0, 0.2)
        case ScenarioName.CHUNYUN:
            crowd = targets.station[idx] & (metric == "crowd_density")
            out[crowd] += 4.2 * _ramp(p[crowd], 0.0, 0.3)
        case ScenarioName.POLLUTION:
            air = metric == "aqi"
            out[air] += 220.0 * _ramp(p[air], 0.0, 0.5)
        case ScenarioName.OUTAGE:
            pass  # readings are withheld instead: see ``silenced``
    return out


def silenced(running: Running, targets: Targets, idx: npt.NDArray[np.int64]) -> Bools:
    """Which of the devices ``idx`` send nothing under the scenario."""
    if running.name is ScenarioName.OUTAGE:
        quiet: Bools = targets.district[idx] == running.district
        return quiet
    return np.zeros(len(idx), dtype=bool)


def ticket_surge(running: Running, progress: float) -> dict[str, float]:
    """Multipliers on the rate of 12345 categories (by category code) at this point."""
    match running.name:
        case ScenarioName.TYPHOON:
            return {"drainage": 1.0 + 60.0 * min(1.0, max(0.0, (progress - 0.3) / 0.3)),
                    "greening": 1.0 + 10.0 * progress}  # fmt: skip
        case ScenarioName.CANTON_FAIR:
            return {"traffic": 8.0, "sanitation": 3.0}
        case ScenarioName.CHUNYUN:
            return {"safety": 6.0, "traffic": 3.0}
        case ScenarioName.POLLUTION:
            return {"pollution": 1.0 + 20.0 * progress}
        case ScenarioName.OUTAGE:
            return {}
