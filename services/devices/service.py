"""Device registry queries and changes."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from services.devices.models import DevicePage, DeviceRead, DeviceStatus, DeviceUpsert
from services.paging import Filters, page

Conn = AsyncConnection[tuple[object, ...]]

FIELDS = (
    "device_id",
    "device_type",
    "lon",
    "lat",
    "grid",
    "street",
    "district",
    "owner_department",
    "status",
)
_COLUMNS = sql.SQL(", ").join(sql.Identifier(f) for f in (*FIELDS, "updated_at", "updated_by"))


async def upsert_many(conn: Conn, *, devices: Sequence[DeviceUpsert], by: str) -> int:
    """Register or update devices in one transaction; returns how many."""
    if not devices:
        return 0
    rows = [(*(d.model_dump(mode="json")[f] for f in FIELDS), by) for d in devices]
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staging_devices "
            "(LIKE devices INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        async with cur.copy(
            f"COPY staging_devices ({', '.join(FIELDS)}, updated_by) FROM STDIN"
        ) as copy:
            for row in rows:
                await copy.write_row(row)
        updates = ", ".join(f"{f} = EXCLUDED.{f}" for f in FIELDS[1:])
        await cur.execute(
            f"INSERT INTO devices ({', '.join(FIELDS)}, updated_by, updated_at) "
            f"SELECT DISTINCT ON (device_id) {', '.join(FIELDS)}, updated_by, now() "
            f"FROM staging_devices ORDER BY device_id "
            f"ON CONFLICT (device_id) DO UPDATE SET {updates}, "
            "updated_by = EXCLUDED.updated_by, updated_at = now()"
        )
    return len({d.device_id for d in devices})


async def list_(
    conn: Conn,
    *,
    district: str | None,
    device_type: str | None,
    status: DeviceStatus | None,
    limit: int,
    offset: int,
) -> DevicePage:
    """Registered devices matching the filters, by id."""
    filters = Filters().equal(
        [("district", district), ("device_type", device_type), ("status", status)]
    )
    rows, total = await page(
        conn,
        table="devices",
        columns=_COLUMNS,
        filters=filters,
        order="device_id",
        limit=limit,
        offset=offset,
    )
    return DevicePage(
        items=[DeviceRead.model_validate(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


async def set_status(
    conn: Conn, *, device_id: str, status: DeviceStatus, by: str
) -> DeviceRead | None:
    """Enable or disable a device; None when it is not registered."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "UPDATE devices SET status = %s, updated_by = %s, updated_at = now() "
                "WHERE device_id = %s RETURNING {}"
            ).format(_COLUMNS),
            (status.value, by, device_id),
        )
        row = await cur.fetchone()
    return DeviceRead.model_validate(row) if row else None


async def snapshot(conn: Conn) -> list[DeviceRead]:
    """Every registered device (what ingest keeps in memory)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql.SQL("SELECT {} FROM devices").format(_COLUMNS))
        return [DeviceRead.model_validate(r) for r in await cur.fetchall()]
