"""Device registry endpoints (administrators change it; any key holder may not)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Query

from schemas.base import CODE_PATTERN
from services.api.deps import MAX_PAGE_SIZE, ConnDep
from services.auth.deps import AdminDep
from services.devices import service
from services.devices.models import (
    DevicePage,
    DeviceRead,
    DeviceStatus,
    DeviceUpsert,
    ImportResult,
    StatusChange,
)

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])

OptionalCode = Annotated[str | None, Query(max_length=64, pattern=CODE_PATTERN)]


@router.put("", response_model=ImportResult, summary="Register or update devices")
async def register_devices(
    conn: ConnDep,
    admin: AdminDep,
    body: Annotated[list[DeviceUpsert], Body(min_length=1, max_length=10_000)],
) -> ImportResult:
    """Create or replace device records (1 to 10,000 at once); ingest sees them within
    seconds."""
    count = await service.upsert_many(conn, devices=body, by=f"key:{admin.key_id}")
    return ImportResult(registered=count)


@router.get("", response_model=DevicePage, summary="List devices")
async def list_devices(
    conn: ConnDep,
    admin: AdminDep,
    district: OptionalCode = None,
    device_type: OptionalCode = None,
    status: DeviceStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> DevicePage:
    """Registered devices, by id."""
    return await service.list_(
        conn, district=district, device_type=device_type, status=status, limit=limit, offset=offset
    )


@router.patch(
    "/{device_id}",
    response_model=DeviceRead,
    summary="Enable or disable a device",
    responses={404: {"description": "No such device."}},
)
async def change_status(
    conn: ConnDep,
    admin: AdminDep,
    device_id: Annotated[str, Path(max_length=64, pattern=CODE_PATTERN)],
    body: StatusChange,
) -> DeviceRead:
    """A disabled device's readings are refused (dead-lettered) until it is enabled again."""
    device = await service.set_status(
        conn, device_id=device_id, status=body.status, by=f"key:{admin.key_id}"
    )
    if device is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    return device
