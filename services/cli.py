"""The ``city-vitals`` command: one subcommand per service, and one for the whole local stack."""

from __future__ import annotations

import asyncio
import getpass
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import uvicorn
from pydantic import ValidationError

from schemas.base import describe_errors
from services.config import Settings
from services.runtime import collect_for_throughput, exit_with_parent

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    AsyncConn = AsyncConnection[Any]

T = TypeVar("T")


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _run_until_signalled(main: Callable[[asyncio.Event], Awaitable[object]]) -> None:
    """Run an async service until SIGINT or SIGTERM, then let it finish its batch and stop."""
    collect_for_throughput()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


def _serve(app: object, host: str, port: int, log_level: str) -> None:
    collect_for_throughput()
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False)  # type: ignore[arg-type]


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """city-vitals: the city's vital signs, alerts and events (一网统管).

    Settings come from CITY_VITALS_* environment variables, e.g.
    CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS and CITY_VITALS_DB__URL.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.UsageError(f"invalid settings:\n{exc}") from exc
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aiokafka", "alembic.runtime.plugins", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = settings


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where PostgreSQL data and logs live (kept between runs).",
)
@click.option("--fresh", is_flag=True, help="Delete the data directory first.")
@click.option("--simulate/--no-simulate", default=None, help="Run the simulated city feed.")
@click.pass_context
def local(ctx: click.Context, data_dir: Path | None, fresh: bool, simulate: bool | None) -> None:
    """Run the whole platform locally: broker, PostgreSQL, services and a simulated feed."""
    from services.local.stack import run

    settings = _settings(ctx)
    sys.exit(
        run(
            settings,
            data_dir=data_dir,
            fresh=fresh,
            simulate=settings.local.simulate if simulate is None else simulate,
        )
    )


@main.command()
@click.pass_context
def ingest(ctx: click.Context) -> None:
    """Serve the ingest HTTP API (readings onto Kafka)."""
    from ingest.app import create_app

    settings = _settings(ctx)
    _serve(create_app(settings), settings.ingest.host, settings.ingest.port, settings.log_level)


@main.command()
@click.pass_context
def api(ctx: click.Context) -> None:
    """Serve the platform API (alerts, readings) for the screens."""
    from services.api.app import create_app

    settings = _settings(ctx)
    _serve(create_app(settings), settings.api.host, settings.api.port, settings.log_level)


@main.command()
@click.pass_context
def rules(ctx: click.Context) -> None:
    """Run the rules engine (readings in, alert transitions out)."""
    from rules.consumer import run

    settings = _settings(ctx)
    _run_until_signalled(lambda stop: run(settings, stop))


@main.command("mqtt-bridge")
@click.pass_context
def mqtt_bridge(ctx: click.Context) -> None:
    """Forward readings that devices publish over MQTT to Kafka (QoS 1, acknowledged only
    once Kafka has them)."""
    from ingest.mqtt import run

    settings = _settings(ctx)
    _run_until_signalled(lambda stop: run(settings, stop))


@main.command()
@click.option(
    "--migrate/--no-migrate", "apply", default=True, help="Apply schema migrations before starting."
)
@click.option(
    "--role",
    type=click.Choice(["readings", "alerts", "events"]),
    default=None,
    help="Run only this consumer (to scale roles apart); without it, each runs in a child "
    "process of this one.",
)
@click.option("--exit-with", type=int, default=None, hidden=True)
@click.pass_context
def writer(ctx: click.Context, apply: bool, role: str | None, exit_with: int | None) -> None:
    """Run the storage writer (readings, alerts, indicator values, tickets and dead letters
    into PostgreSQL)."""
    from services.db import migrate
    from services.storage.writer import run

    settings = _settings(ctx)
    if exit_with is not None:
        exit_with_parent(exit_with)
    if apply:
        migrate(settings.db)
    _run_until_signalled(lambda stop: run(settings, stop, role))


@main.command("migrate")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def migrate_command(ctx: click.Context, revision: str) -> None:
    """Apply database migrations up to a revision."""
    from services.db import current_revision, migrate

    settings = _settings(ctx)
    migrate(settings.db, revision)
    click.echo(f"database at revision {current_revision(settings.db)}")


@main.command()
@click.option("--rate", type=float, default=None, help="Readings per second.")
@click.option("--url", default=None, help="Ingest base URL (default: the configured one).")
@click.option("--seed", type=int, default=12345, show_default=True)
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File holding the ingest API key (default: CITY_VITALS_LOCAL__GATEWAY_KEY).",
)
@click.option(
    "--control",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Scenario control file (default: DATA_DIR/scenario.json).",
)
@click.option("--tickets/--no-tickets", default=True, help="Also file 12345 calls over Open311.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--interval",
    type=click.FloatRange(0.01, 1.0),
    default=1.0,
    show_default=True,
    help="Seconds between posts; each posts what the devices measured since the last.",
)
@click.option(
    "--frames/--objects",
    default=True,
    show_default=True,
    help="Post frames (readings column by column) or JSON arrays of reading objects.",
)
@click.pass_context
def simulate(
    ctx: click.Context,
    rate: float | None,
    url: str | None,
    seed: int,
    key_file: Path | None,
    control: Path | None,
    tickets: bool,
    concurrency: int,
    interval: float,
    frames: bool,
) -> None:
    """Feed the ingest service with the simulated city (readings and 12345 calls)."""
    from ingest import simulator

    settings = _settings(ctx)
    target = url or f"http://{settings.ingest.host}:{settings.ingest.port}"
    if key_file is not None:
        key: str | None = key_file.read_text(encoding="utf-8").strip()
    else:
        secret = settings.local.gateway_key
        key = secret.get_secret_value() if secret else None
    _run_until_signalled(
        lambda stop: simulator.run(
            target,
            rate=rate or settings.local.simulate_rate,
            stop=stop,
            seed=seed,
            key=key,
            control=control or _data_dir(settings) / "scenario.json",
            tickets=tickets,
            concurrency=concurrency,
            interval=interval,
            frames=frames,
        )
    )


def _data_dir(settings: Settings) -> Path:
    from services.local.stack import default_data_dir

    return settings.local.data_dir or default_data_dir()


@main.group()
def scenario() -> None:
    """Put the simulated city through a scenario (typhoon, canton_fair, chunyun, pollution,
    outage); the running simulator picks it up within a second."""


@scenario.command("list")
def scenario_list() -> None:
    """The scenarios and what they do."""
    from ingest.city.scenarios import DESCRIPTIONS

    for name, text in DESCRIPTIONS.items():
        click.echo(f"{name.value:<12} {text}")


@scenario.command("start")
@click.argument("name")
@click.option("--minutes", type=click.FloatRange(0.1, 24 * 60), default=30.0, show_default=True)
@click.option("--district", default="tianhe", show_default=True, help="For the outage.")
@click.option("--control", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_context
def scenario_start(
    ctx: click.Context, name: str, minutes: float, district: str, control: Path | None
) -> None:
    """Start a scenario now."""
    import time

    from ingest.city.geography import DISTRICTS
    from ingest.city.scenarios import Running, ScenarioName
    from ingest.simulator import write_control

    try:
        chosen = ScenarioName(name)
    except ValueError:
        names = ", ".join(n.value for n in ScenarioName)
        raise click.BadParameter(f"unknown scenario {name!r}; one of {names}") from None
    if district not in DISTRICTS:
        raise click.BadParameter(f"unknown district {district!r}; one of {', '.join(DISTRICTS)}")
    path = control or _data_dir(_settings(ctx)) / "scenario.json"
    write_control(path, Running(chosen, time.time(), minutes, district))
    click.echo(f"{chosen.value} started for {minutes:g} minutes ({path})")


@scenario.command("stop")
@click.option("--control", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_context
def scenario_stop(ctx: click.Context, control: Path | None) -> None:
    """Stop the running scenario."""
    path = control or _data_dir(_settings(ctx)) / "scenario.json"
    path.unlink(missing_ok=True)
    click.echo("scenario stopped")


@main.group()
def keys() -> None:
    """Issue, list and revoke API keys (the first admin key is issued here)."""


@keys.command("issue")
@click.option("--name", required=True, help="Who or what holds the key.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="readings:write, tickets:write, pii:read or admin (repeatable).",
)
@click.option("--device", "device_id", default=None, help="Bind the key to one device.")
@click.pass_context
def keys_issue(
    ctx: click.Context, name: str, scopes: tuple[str, ...], device_id: str | None
) -> None:
    """Issue a key and print it (shown once)."""
    from services.auth.models import ApiKeyCreate
    from services.auth.service import issue

    try:
        request = ApiKeyCreate.model_validate(
            {"name": name, "scopes": list(scopes), "device_id": device_id}
        )
    except ValidationError as exc:
        raise click.BadParameter(describe_errors(exc)) from exc
    issued = _with_db(ctx, lambda conn: issue(conn, request=request, by=f"cli:{getpass.getuser()}"))
    click.echo(f"key_id {issued.key_id} scopes {','.join(issued.scopes)}", err=True)
    click.echo(issued.key)


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """List keys (never their secrets)."""
    from services.auth.service import list_

    for key in _with_db(ctx, lambda conn: list_(conn)):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        scopes = ",".join(key.scopes)
        click.echo(f"{key.key_id}  {state:<24} {scopes:<32} {key.device_id or '-':<20} {key.name}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by its id."""
    from services.auth.service import revoke

    revoked = _with_db(ctx, lambda conn: revoke(conn, key_id=key_id, by=f"cli:{getpass.getuser()}"))
    if revoked is None:
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"revoked {key_id}")


@main.group()
def devices() -> None:
    """The device registry: import, list, enable and disable devices."""


@devices.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def devices_import(ctx: click.Context, path: Path) -> None:
    """Register devices from a JSON array or a CSV file with a header row (device_id,
    device_type, lon, lat, grid, street, district, owner_department, status)."""
    from services.devices.files import read_devices
    from services.devices.service import upsert_many

    try:
        records = read_devices(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    count = _with_db(
        ctx, lambda conn: upsert_many(conn, devices=records, by=f"cli:{getpass.getuser()}")
    )
    click.echo(f"registered {count} devices")


@devices.command("list")
@click.option("--district", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.pass_context
def devices_list(ctx: click.Context, district: str | None, limit: int) -> None:
    """Registered devices."""
    from services.devices.service import list_

    page = _with_db(
        ctx,
        lambda conn: list_(
            conn, district=district, device_type=None, status=None, limit=limit, offset=0
        ),
    )
    for d in page.items:
        click.echo(f"{d.device_id:<32} {d.device_type:<22} {d.status:<9} {d.district or '-'}")
    click.echo(f"{len(page.items)} of {page.total}", err=True)


@devices.command("disable")
@click.argument("device_id")
@click.option("--enable", is_flag=True, help="Enable it again instead.")
@click.pass_context
def devices_disable(ctx: click.Context, device_id: str, enable: bool) -> None:
    """Disable a device (its readings are refused), or enable it with --enable."""
    from services.devices.models import DeviceStatus
    from services.devices.service import set_status

    status = DeviceStatus.ACTIVE if enable else DeviceStatus.DISABLED
    changed = _with_db(
        ctx,
        lambda conn: set_status(
            conn, device_id=device_id, status=status, by=f"cli:{getpass.getuser()}"
        ),
    )
    if changed is None:
        raise click.ClickException(f"device {device_id!r} is not registered")
    click.echo(f"{device_id} is {status.value}")


@main.group()
def tickets() -> None:
    """12345 tickets: bulk import from an existing hotline system."""


@tickets.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check every row, file nothing.")
@click.pass_context
def tickets_import(ctx: click.Context, path: Path, dry_run: bool) -> None:
    """Import a CSV (with a header row) or JSON-lines (.jsonl, .ndjson) export; bad rows are
    listed with their row number, field and reason, the good ones filed."""
    from ingest.gateway import Gateway
    from services.kafka import make_producer, wait_for_broker
    from services.tickets.importer import parse
    from services.tickets.open311 import publish_tickets

    settings = _settings(ctx)
    ndjson = path.suffix.lower() in {".jsonl", ".ndjson"}
    try:
        batch = parse(path.read_text(encoding="utf-8-sig"), ndjson=ndjson)
    except (UnicodeDecodeError, ValueError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    for error in batch.errors:
        click.echo(f"row {error.row}: {error.field}: {error.reason}", err=True)

    async def publish() -> None:
        await wait_for_broker(settings.kafka, patience=10)
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            await publish_tickets(Gateway(settings, producer), batch.tickets)
        finally:
            await producer.stop()

    if batch.tickets and not dry_run:
        asyncio.run(publish())
    verb = "would import" if dry_run else "imported"
    click.echo(f"{verb} {len(batch.tickets)} tickets; {len(batch.errors)} rows refused")
    if batch.errors:
        sys.exit(1)


@main.group()
def deadletters() -> None:
    """List refused records and replay them once the cause is fixed."""


@deadletters.command("list")
@click.option("--source", default=None, help="Only letters from this source.")
@click.option("--pending", is_flag=True, help="Only letters not replayed yet.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.pass_context
def deadletters_list(ctx: click.Context, source: str | None, pending: bool, limit: int) -> None:
    """Newest dead letters first: id, time, source, reason."""
    from services.deadletters.service import list_

    page = _with_db(
        ctx,
        lambda conn: list_(
            conn,
            source=source,
            since=None,
            replayed=False if pending else None,
            limit=limit,
            offset=0,
        ),
    )
    for letter in page.items:
        state = "replayed" if letter.replayed_at else "pending"
        click.echo(
            f"{letter.letter_id:>8}  {letter.received_at:%Y-%m-%d %H:%M:%S}  {state:<8}  "
            f"{letter.source:<22} {letter.reason[:100]}"
        )
    click.echo(f"{len(page.items)} of {page.total}", err=True)


@deadletters.command("replay")
@click.argument("letter_ids", nargs=-1, type=int, required=True)
@click.pass_context
def deadletters_replay(ctx: click.Context, letter_ids: tuple[int, ...]) -> None:
    """Replay letters by id: what passes today's checks goes onto its topic."""
    from ingest.gateway import Gateway
    from services.deadletters.flows import replay
    from services.kafka import make_producer, wait_for_broker

    settings = _settings(ctx)

    async def run(conn: AsyncConn) -> object:
        await wait_for_broker(settings.kafka, patience=10)
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            return await replay(
                conn,
                Gateway(settings, producer),
                letter_ids=list(letter_ids),
                by=f"cli:{getpass.getuser()}",
            )
        finally:
            await producer.stop()

    from services.deadletters.models import ReplayResult

    result = _with_db(ctx, run)
    assert isinstance(result, ReplayResult)
    for item in result.items:
        click.echo(f"{item.letter_id:>8}  {'replayed' if item.replayed else 'not replayed'}: "
                   f"{item.outcome}")  # fmt: skip
    if not all(item.replayed for item in result.items):
        sys.exit(1)


def _with_db(ctx: click.Context, work: Callable[[AsyncConn], Awaitable[T]]) -> T:
    """Run one piece of async database work from a command."""
    import psycopg

    url = _settings(ctx).db.url.get_secret_value()

    async def run() -> T:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await work(conn)

    return asyncio.run(run())


@main.command()
@click.option("--check", is_flag=True, help="Fail if the committed files differ from the models.")
def schemas(check: bool) -> None:
    """Write (or check) the JSON Schema files generated from the contracts."""
    from schemas import registry

    if check:
        drift = registry.drifted()
        if drift:
            raise click.ClickException(
                f"schemas drifted from the models: {', '.join(drift)}; run 'city-vitals schemas'"
            )
        click.echo("schemas match the models")
        return
    for path in registry.write():
        click.echo(f"wrote {path}")


@main.group()
def indicators() -> None:
    """Indicator definitions in PostgreSQL: load, list, history, compare, roll back, preview."""


def _who() -> str:
    return f"cli:{getpass.getuser()}"


@indicators.command("load")
@click.option("--file", "path", type=click.Path(path_type=Path, exists=True), default=None)
@click.option("--reason", required=True, help="Why (kept in the version history).")
@click.pass_context
def indicators_load(ctx: click.Context, path: Path | None, reason: str) -> None:
    """Load a YAML catalogue (the bundled one by default); only changed indicators get a version."""
    from rules.indicators import Catalogue
    from services.indicators import store

    try:
        catalogue = Catalogue.from_yaml(path)
    except (ValidationError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from exc
    changed = _with_db(
        ctx, lambda conn: store.load_catalogue(conn, catalogue, by=_who(), reason=reason)
    )
    click.echo(f"{changed} of {len(catalogue)} indicators changed")


@indicators.command("list")
@click.pass_context
def indicators_list(ctx: click.Context) -> None:
    """The live definitions and the version they are as of."""
    from services.indicators import store

    at, catalogue = _with_db(ctx, store.current)
    click.echo(f"version {at}")
    for code, ind in sorted(catalogue.by_code.items()):
        click.echo(
            f"{code:<44} {ind.scope_level.value:<9} {ind.aggregation.value:<15} {ind.name_zh}"
        )


@indicators.command("history")
@click.argument("code")
@click.pass_context
def indicators_history(ctx: click.Context, code: str) -> None:
    """Every version of one indicator: who, when, why."""
    from services.indicators import store

    for v in _with_db(ctx, lambda conn: store.history(conn, code)):
        state = "retired" if v.definition is None else "defined"
        click.echo(
            f"{v.version:>8} {v.changed_at:%Y-%m-%d %H:%M:%S} {v.changed_by:<20} {state} {v.reason}"
        )


@indicators.command("compare")
@click.argument("code")
@click.argument("old", type=int)
@click.argument("new", type=int)
@click.pass_context
def indicators_compare(ctx: click.Context, code: str, old: int, new: int) -> None:
    """Fields that differ between two versions of one indicator."""
    from services.indicators import store

    found = {v.version: v for v in _with_db(ctx, lambda conn: store.history(conn, code))}
    for version in (old, new):
        if version not in found:
            raise click.ClickException(f"{code} has no version {version}")
    for field, (a, b) in store.compare(found[old].definition, found[new].definition).items():
        click.echo(f"{field}: {a!r} -> {b!r}")


@indicators.command("rollback")
@click.argument("code")
@click.argument("version", type=int)
@click.option("--reason", required=True)
@click.pass_context
def indicators_rollback(ctx: click.Context, code: str, version: int, reason: str) -> None:
    """Make an earlier version live again (as a new version)."""
    from services.indicators import store

    new = _with_db(ctx, lambda conn: store.rollback(conn, code, version, by=_who(), reason=reason))
    if new is None:
        raise click.ClickException(f"{code} has no version {version}")
    click.echo(f"{code} is version {version}'s definition again as version {new}")


@indicators.command("preview")
@click.argument("code")
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="A YAML file with one candidate definition (default: the live one).",
)
@click.option("--start", type=click.DateTime(), required=True, help="UTC.")
@click.option("--end", type=click.DateTime(), required=True, help="UTC.")
@click.pass_context
def indicators_preview(
    ctx: click.Context, code: str, path: Path | None, start: datetime, end: datetime
) -> None:
    """The alerts a definition would have raised over stored readings."""
    import yaml

    from rules.indicators import Indicator
    from rules.preview import Preview
    from services.indicators import store

    given = None if path is None else yaml.safe_load(path.read_text("utf-8"))

    async def work(conn: AsyncConn) -> object:
        if given is None:
            _, catalogue = await store.current(conn)
            if code not in catalogue.by_code:
                raise click.ClickException(f"no live indicator {code}")
            candidate = catalogue.by_code[code]
        else:
            try:
                candidate = Indicator.model_validate(given)
            except ValidationError as exc:
                raise click.BadParameter(describe_errors(exc)) from exc
        return await store.backtest(
            conn, candidate, start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)
        )

    result = _with_db(ctx, work)
    assert isinstance(result, Preview)
    click.echo(f"{len(result.windows)} windows, {len(result.transitions)} transitions")
    for t in result.transitions:
        click.echo(
            f"{t.observed_at:%Y-%m-%d %H:%M} {t.scope_id:<20} {t.kind.value:<14} "
            f"{t.level.value if t.level else '-':<7} {t.value:g}"
        )


@main.command()
@click.argument("scope")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--reason", required=True)
@click.pass_context
def emergency(ctx: click.Context, scope: str, state: str, reason: str) -> None:
    """Switch emergency mode (平急切换) on or off for a district, or 'city' for all of it."""
    from services.indicators import store

    version = _with_db(
        ctx,
        lambda conn: store.set_emergency(
            conn, scope, active=state == "on", by=_who(), reason=reason
        ),
    )
    click.echo(f"emergency {state} for {scope} (version {version})")


if __name__ == "__main__":
    main()
