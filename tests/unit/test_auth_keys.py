from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.auth import keys
from services.auth.models import ApiKeyCreate, Principal, Scope


def test_generated_keys_parse_back_to_their_id() -> None:
    key_id, raw = keys.generate()
    parsed = keys.parse(raw)
    assert parsed is not None
    assert parsed.key_id == key_id
    assert raw.startswith(f"cv_{key_id}_")


def test_generated_keys_differ() -> None:
    assert len({keys.generate()[1] for _ in range(100)}) == 100


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "cv_",
        "cv_abc_def",
        "xx_0123456789ab_" + "a" * 43,
        "cv_0123456789AB_" + "a" * 43,
        "cv_0123456789ab_" + "a" * 42,
        "cv_0123456789ab_" + "a" * 42 + "!",
    ],
)
def test_malformed_keys_do_not_parse(raw: str) -> None:
    assert keys.parse(raw) is None


def test_only_the_right_secret_matches_its_hash() -> None:
    _, raw = keys.generate()
    parsed = keys.parse(raw)
    assert parsed is not None
    stored = keys.secret_hash(parsed.secret)
    assert keys.matches(parsed.secret, stored)
    assert not keys.matches(parsed.secret[:-1] + ("A" if parsed.secret[-1] != "A" else "B"), stored)


def test_admin_holds_every_scope_others_only_their_own() -> None:
    admin = Principal(key_id="a" * 12, name="ops", scopes=frozenset({Scope.ADMIN}))
    device = Principal(key_id="b" * 12, name="gauge", scopes=frozenset({Scope.READINGS_WRITE}))
    assert all(admin.allows(s) for s in Scope)
    assert device.allows(Scope.READINGS_WRITE)
    assert not device.allows(Scope.PII_READ)


def test_a_key_request_names_known_scopes_only() -> None:
    with pytest.raises(ValidationError, match="scopes"):
        ApiKeyCreate.model_validate({"name": "x", "scopes": ["root"]})
    with pytest.raises(ValidationError, match="scopes"):
        ApiKeyCreate.model_validate({"name": "x", "scopes": []})
