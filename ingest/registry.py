"""Which devices may send: the registry's view in ingest, refreshed in the background.

``check_devices`` is pure; ``DeviceRegistry`` keeps a snapshot of the ``devices`` table in
memory (a check per reading must not query the database) and refreshes it every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest.batch import Accepted, Columns, Rejection, Sorted
from schemas.readings import PLACE_KEYS, LocationRecord
from services.devices.models import DeviceRead, DeviceStatus
from services.devices.service import snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    active: bool
    place: dict[str, Any] = field(default_factory=dict)  # registered location fields that are set

    @classmethod
    def of(cls, device: DeviceRead) -> DeviceEntry:
        place = {k: getattr(device, k) for k in PLACE_KEYS if getattr(device, k) is not None}
        return cls(active=device.status is DeviceStatus.ACTIVE, place=place)


def check_devices(result: Sorted, devices: Mapping[str, DeviceEntry]) -> Sorted:
    """Refuse readings of unknown or disabled devices; fill the location a reading leaves out
    from the registry (what the device itself says wins)."""
    readings = result.accepted
    if isinstance(readings, Columns):
        # A frame: each of its devices looked up once, nothing to change in the usual case.
        entries = [devices.get(d) for d in set(readings.device_id)]
        if all(e is not None and e.active for e in entries) and (
            readings.placed() or not any(e.place for e in entries if e is not None)
        ):
            return result
    kept: list[Accepted] = []
    out = Sorted(kept, list(result.rejected))
    for accepted in readings:
        entry = devices.get(accepted.device_id)
        if entry is None or not entry.active:
            why = "is not registered" if entry is None else "is disabled in the registry"
            reason = f"device_id: device {accepted.device_id!r} {why}"
            out.rejected.append(Rejection(accepted.position, reason, accepted.record))
            continue
        if not accepted.placed and entry.place:
            given = accepted.location or {}
            missing = {k: v for k, v in entry.place.items() if given.get(k) is None}
            if missing:
                filled = cast(LocationRecord, {**given, **missing})
                accepted = accepted._replace(location=filled)
        kept.append(accepted)
    return out


class RegistryUnavailable(Exception):
    """The registry has not been read yet (the database is away): nothing can be checked."""


class DeviceRegistry:
    """An in-memory snapshot of the device registry, refreshed every ``interval`` seconds."""

    def __init__(self, pool: AsyncConnectionPool, *, interval: float) -> None:
        self.pool = pool
        self.interval = interval
        self.devices: dict[str, DeviceEntry] | None = None

    def current(self) -> Mapping[str, DeviceEntry]:
        if self.devices is None:
            raise RegistryUnavailable("the device registry could not be read yet")
        return self.devices

    async def refresh(self) -> None:
        async with self.pool.connection() as conn:
            devices = await snapshot(conn)
        self.devices = {d.device_id: DeviceEntry.of(d) for d in devices}

    async def run(self) -> None:
        """Refresh until cancelled; a failed refresh keeps the last snapshot."""
        while True:
            try:
                await self.refresh()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("device registry not refreshed (database unavailable): %s", exc)
            await asyncio.sleep(self.interval)
