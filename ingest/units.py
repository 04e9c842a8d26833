"""Canonical units per metric, and conversions from the units devices commonly send.

Pure. The rules catalogue's thresholds are written in the canonical unit, so a gauge that
reports in millimetres must be converted before it is compared with a threshold in cm.
"""

from __future__ import annotations

from collections.abc import Callable

# metric -> canonical unit
CANONICAL: dict[str, str] = {
    "waterlogging_depth": "cm",
    "rainfall_1h": "mm",
    "road_speed": "km/h",
    "aqi": "AQI",
    "crowd_density": "p/m2",
    "grid_load": "%",
    "gas_pressure": "kPa",
    "cover_tilt": "deg",
}

# (from unit, to unit) -> conversion
_CONVERT: dict[tuple[str, str], Callable[[float], float]] = {
    ("mm", "cm"): lambda v: v / 10,
    ("m", "cm"): lambda v: v * 100,
    ("cm", "mm"): lambda v: v * 10,
    ("m/s", "km/h"): lambda v: v * 3.6,
    ("mph", "km/h"): lambda v: v * 1.609344,
    ("Pa", "kPa"): lambda v: v / 1000,
    ("MPa", "kPa"): lambda v: v * 1000,
    ("bar", "kPa"): lambda v: v * 100,
}


class UnitError(ValueError):
    """A unit that cannot be turned into the metric's canonical one."""


def normalise(metric: str, unit: str, value: float) -> tuple[str, float]:
    """The value in the metric's canonical unit; metrics without one pass unchanged."""
    canonical = CANONICAL.get(metric)
    if canonical is None or unit == canonical:
        return unit, value
    convert = _CONVERT.get((unit, canonical))
    if convert is None:
        raise UnitError(f"unit: {unit!r} cannot be converted to {canonical!r} for {metric}")
    return canonical, convert(value)
