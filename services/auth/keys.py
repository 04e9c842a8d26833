"""API key format, generation and hashing: pure, no I/O.

A key reads ``cv_<key_id>_<secret>``: the key id is public (it names the key in logs, lists
and revocations), the secret is 256 random bits of which only the SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "cv"
_KEY = re.compile(r"^cv_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key split into its public id and its secret."""

    key_id: str
    secret: str


def generate() -> tuple[str, str]:
    """A new (key id, full key) pair."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def parse(raw: str) -> ParsedKey | None:
    """The key's parts, or None when it is not shaped like one of our keys."""
    match = _KEY.match(raw.strip())
    if match is None:
        return None
    return ParsedKey(key_id=match.group(1), secret=match.group(2))


def secret_hash(secret: str) -> bytes:
    """What is stored for a secret."""
    return hashlib.sha256(secret.encode()).digest()


def matches(secret: str, stored: bytes) -> bool:
    """Whether a presented secret is the one whose hash is stored (constant time)."""
    return hmac.compare_digest(secret_hash(secret), stored)
