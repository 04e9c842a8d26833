"""The core imports no I/O library, and nothing connects or reads settings at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest

IO_LIBRARIES = ("aiokafka", "psycopg", "fastapi", "httpx", "uvicorn", "sqlalchemy")


@pytest.mark.parametrize(
    "module",
    [
        "rules.alerts",
        "rules.engine",
        "rules.windows",
        "rules.indicators",
        "ingest.batch",
        "schemas.registry",
    ],
)
def test_pure_core_imports_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"loaded = sorted(m for m in {IO_LIBRARIES!r} if m in sys.modules)\n"
        "print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "module",
    ["services.cli", "services.api.app", "ingest.app", "rules.consumer", "services.storage.writer"],
)
def test_entry_modules_import_without_connecting(module: str) -> None:
    env = {"CITY_VITALS_DB__URL": "postgresql://nobody@192.0.2.1:1/none", "PATH": "/usr/bin"}
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, env=env, timeout=30)
