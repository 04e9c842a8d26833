"""API keys end to end: issued by the CLI, checked by the API, revoked."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.local.postgres import LocalPostgres
from services.local.processes import free_port
from tests.integration.conftest import ROOT, fresh_database, serving, stack_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(postgres: LocalPostgres) -> dict[str, str]:
    # No cache: a revocation must show on the very next request here.
    return stack_env(
        "127.0.0.1:1",
        fresh_database(postgres),
        "auth",
        CITY_VITALS_AUTH__KEY_CACHE_SECONDS="0",
        CITY_VITALS_API__PORT=str(free_port()),
    )


@pytest.fixture(scope="module")
def api(env: dict[str, str], workdir: Path) -> Iterator[str]:
    port = int(env["CITY_VITALS_API__PORT"])
    with serving("api", env, port, workdir / "auth-api.log") as url:
        yield url


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "keys", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def admin_key(env: dict[str, str]) -> str:
    done = cli(env, "issue", "--name", "ops engineer", "--scope", "admin")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_key_administration_needs_an_admin_key(api: str, client: httpx.Client) -> None:
    anonymous = client.get(f"{api}/api/v1/keys")
    assert anonymous.status_code == 401
    assert "API key is required" in anonymous.json()["detail"]
    forged = client.get(f"{api}/api/v1/keys", headers=bearer("cv_0123456789ab_" + "x" * 43))
    assert forged.status_code == 401
    junk = client.get(f"{api}/api/v1/keys", headers={"X-API-Key": "hello"})
    assert junk.status_code == 401


def test_issue_use_and_revoke(
    api: str, client: httpx.Client, admin_key: str, env: dict[str, str]
) -> None:
    made = client.post(
        f"{api}/api/v1/keys",
        headers=bearer(admin_key),
        json={"name": "gauge 7", "scopes": ["readings:write"], "device_id": "yuexiu-wl-07"},
    )
    assert made.status_code == 201, made.text
    issued = made.json()
    assert issued["device_id"] == "yuexiu-wl-07"
    assert issued["created_by"].startswith("key:")

    # A device key is a real key, but not an administrator's.
    as_device = client.get(f"{api}/api/v1/keys", headers={"X-API-Key": issued["key"]})
    assert as_device.status_code == 403
    assert "admin" in as_device.json()["detail"]

    listed = client.get(f"{api}/api/v1/keys", headers=bearer(admin_key)).json()
    assert {k["key_id"] for k in listed} >= {issued["key_id"]}
    assert all("key" not in k and "secret_hash" not in k for k in listed)

    # Revoked by the CLI, refused by the API at once (cache off in this test).
    done = cli(env, "revoke", issued["key_id"])
    assert done.returncode == 0, done.stderr
    refused = client.get(f"{api}/api/v1/keys", headers={"X-API-Key": issued["key"]})
    assert refused.status_code == 401
    shown = cli(env, "list")
    assert f"{issued['key_id']}  revoked" in shown.stdout


def test_bad_requests_get_reasons(api: str, client: httpx.Client, admin_key: str) -> None:
    bad_scope = client.post(
        f"{api}/api/v1/keys", headers=bearer(admin_key), json={"name": "x", "scopes": ["root"]}
    )
    assert bad_scope.status_code == 422
    unknown = client.delete(f"{api}/api/v1/keys/0123456789ab", headers=bearer(admin_key))
    assert unknown.status_code == 404
    malformed = client.delete(f"{api}/api/v1/keys/nope", headers=bearer(admin_key))
    assert malformed.status_code == 422


def test_cli_refuses_an_unknown_scope(env: dict[str, str]) -> None:
    done = cli(env, "issue", "--name", "x", "--scope", "root")
    assert done.returncode != 0
    assert "scopes" in done.stderr
