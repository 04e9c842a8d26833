"""The device registry's records."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from schemas.base import LINE_PATTERN, Code, Contract, Number


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # its readings are refused (dead-lettered) until enabled again


class DeviceUpsert(Contract):
    """A device as registered or re-registered (the whole record; absent fields are cleared)."""

    device_id: Code
    device_type: Code = Field(description="e.g. waterlogging_gauge, rain_gauge, air_quality.")
    lon: Annotated[Number, Field(ge=-180, le=180)] | None = None
    lat: Annotated[Number, Field(ge=-90, le=90)] | None = None
    grid: Code | None = None
    street: Code | None = None
    district: Code | None = None
    owner_department: Annotated[str, Field(max_length=64, pattern=LINE_PATTERN)] | None = None
    status: DeviceStatus = DeviceStatus.ACTIVE


class DeviceRead(DeviceUpsert):
    updated_at: datetime
    updated_by: str


class DevicePage(Contract):
    items: list[DeviceRead]
    total: int
    limit: int
    offset: int


class StatusChange(Contract):
    status: DeviceStatus


class ImportResult(Contract):
    registered: int = Field(description="Devices created or updated.")
