"""Indicator definitions API: live catalogue, versions, changes, roll back, emergency mode,
preview. Reads are open like the history API; changes need an admin key and are audited."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import AwareDatetime, BaseModel, Field, model_validator

from rules.indicators import Indicator
from schemas.alerts import AlertTransition
from schemas.base import TEXT_PATTERN, Code
from services.api.deps import ConnDep
from services.auth.deps import AdminDep
from services.indicators import store

router = APIRouter(prefix="/api/v1", tags=["indicators"])

CodePath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,127}$")]
# Stored in PostgreSQL text, which cannot hold NUL: refused here with a reason, not a 500.
Reason = Annotated[str, Field(min_length=1, max_length=500, pattern=TEXT_PATTERN)]
MAX_PREVIEW_DAYS = 31


class Change(BaseModel):
    definition: Indicator
    reason: Reason


class Rollback(BaseModel):
    version: int = Field(ge=1)
    reason: Reason


class EmergencySwitch(BaseModel):
    scope: Code = Field(description="A district code, or 'city' for the whole city.")
    active: bool
    reason: Reason


class PreviewRequest(BaseModel):
    definition: Indicator
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _range(self) -> PreviewRequest:
        if not self.start < self.end:
            raise ValueError("end: must be after start")
        if (self.end - self.start).days > MAX_PREVIEW_DAYS:
            raise ValueError(f"end: at most {MAX_PREVIEW_DAYS} days after start")
        return self


class PreviewAnswer(BaseModel):
    windows: int
    breaching_windows: int
    transitions: list[AlertTransition]


def _who(admin: Any) -> str:
    return f"key:{admin.key_id}"


@router.get("/indicators", summary="The live indicator definitions")
async def list_indicators(conn: ConnDep) -> dict[str, object]:
    version, catalogue = await store.current(conn)
    return {"version": version, "indicators": list(catalogue.by_code.values())}


@router.get("/indicators/{code}/versions", summary="Every version of one indicator")
async def versions(conn: ConnDep, code: CodePath) -> list[dict[str, object]]:
    found = await store.history(conn, code)
    if not found:
        raise HTTPException(404, f"no indicator {code}")
    return [
        {
            "version": v.version,
            "changed_at": v.changed_at,
            "changed_by": v.changed_by,
            "reason": v.reason,
            "definition": v.definition,
        }
        for v in found
    ]


@router.get("/indicators/{code}/compare", summary="Fields that differ between two versions")
async def compare(conn: ConnDep, code: CodePath, old: int, new: int) -> dict[str, object]:
    found = {v.version: v for v in await store.history(conn, code)}
    for version in (old, new):
        if version not in found:
            raise HTTPException(404, f"{code} has no version {version}")
    diff = store.compare(found[old].definition, found[new].definition)
    return {field: {"old": a, "new": b} for field, (a, b) in diff.items()}


@router.put("/indicators/{code}", status_code=201, summary="Change or add one indicator")
async def change(conn: ConnDep, admin: AdminDep, code: CodePath, body: Change) -> dict[str, int]:
    if body.definition.code != code:
        raise HTTPException(422, f"definition.code {body.definition.code!r} is not {code!r}")
    version = await store.put(conn, body.definition, code=code, by=_who(admin), reason=body.reason)
    return {"version": version}


@router.post("/indicators/{code}/rollback", status_code=201, summary="Make a version live again")
async def rollback(
    conn: ConnDep, admin: AdminDep, code: CodePath, body: Rollback
) -> dict[str, int]:
    version = await store.rollback(conn, code, body.version, by=_who(admin), reason=body.reason)
    if version is None:
        raise HTTPException(404, f"{code} has no version {body.version}")
    return {"version": version}


@router.get("/emergency", summary="Emergency mode (平急) per district or city")
async def emergency_state(conn: ConnDep) -> list[dict[str, object]]:
    return [vars_of(s) for s in await store.emergency(conn)]


def vars_of(switch: store.Switch) -> dict[str, object]:
    return {name: getattr(switch, name) for name in switch.__slots__}


@router.post("/emergency", status_code=201, summary="Switch emergency mode on or off")
async def switch_emergency(conn: ConnDep, admin: AdminDep, body: EmergencySwitch) -> dict[str, int]:
    version = await store.set_emergency(
        conn, body.scope, active=body.active, by=_who(admin), reason=body.reason
    )
    return {"version": version}


@router.post("/indicators/preview", summary="Alerts a definition would have raised")
async def preview(conn: ConnDep, body: PreviewRequest) -> PreviewAnswer:
    try:
        result = await store.backtest(conn, body.definition, body.start, body.end)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return PreviewAnswer(
        windows=len(result.windows),
        breaching_windows=int((result.levels > 0).sum()),
        transitions=result.transitions,
    )
