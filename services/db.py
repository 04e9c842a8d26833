"""PostgreSQL access: connection helpers and schema migrations (Alembic)."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg_pool import AsyncConnectionPool

from services.config import DatabaseSettings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """The same database URL spelled for SQLAlchemy's psycopg 3 dialect (used by Alembic)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def alembic_config(url: str) -> Config:
    """Alembic configuration built in code: no alembic.ini to keep in step."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would read '%' in passwords as syntax.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def migrate(db: DatabaseSettings, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (idempotent; safe on every start)."""
    config = alembic_config(db.url.get_secret_value())
    # The storage migration picks TimescaleDB or plain PostgreSQL from this and the server.
    config.attributes["use_timescaledb"] = db.use_timescaledb
    command.upgrade(config, revision)


def current_revision(db: DatabaseSettings) -> str | None:
    """The revision the database is at, None before the first migration."""
    with psycopg.connect(db.url.get_secret_value()) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return row[0] if row else None


def make_pool(db: DatabaseSettings) -> AsyncConnectionPool:
    """An async pool, not yet opened (``await pool.open()`` in the lifespan)."""
    return AsyncConnectionPool(
        db.url.get_secret_value(),
        min_size=db.pool_min_size,
        max_size=db.pool_max_size,
        timeout=db.acquire_timeout,
        open=False,
        kwargs={"autocommit": True},
    )
