"""Admin keys: what the management API (`/flux/api/`) accepts. A key is `flux_admin_` + random, shown once;
Flux keeps its sha256 and prefix, and refuses it once revoked or past `expires_at`."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flux import db
from flux.errors import AdminKeyRefused

ADMIN_PREFIX = "flux_admin_"
PREFIX_LENGTH = 18


@dataclass(frozen=True)
class CreatedAdminKey:
    id: int
    key: str  # shown once
    prefix: str
    expires_at: datetime | None


def create_admin_key(
    conn: Any, name: str | None = None, expires_in: timedelta | None = None
) -> CreatedAdminKey:
    key = ADMIN_PREFIX + secrets.token_urlsafe(24)
    with db.translate_errors():
        row = conn.execute(
            "INSERT INTO flux.admin_keys (prefix, key_hash, name, expires_at) VALUES (%s, %s, %s, now() + %s)"
            " RETURNING id, expires_at",
            (key[:PREFIX_LENGTH], _hash(key), name, expires_in),
        ).fetchone()
    return CreatedAdminKey(int(row[0]), key, key[:PREFIX_LENGTH], row[1])


def check_admin_key(conn: Any, authorization: str | None) -> int:
    """The id of the live admin key in an `authorization: Bearer …` header; FX606 otherwise."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.startswith(ADMIN_PREFIX):
        raise AdminKeyRefused(
            "the management API needs an admin key", hint="send authorization: Bearer flux_admin_… "
            "(create one with `flux keys create --admin`)",
        )  # fmt: skip
    row = db.execute_raw(
        conn,
        "SELECT id, revoked_at IS NOT NULL, expires_at < now() FROM flux.admin_keys WHERE key_hash = $1",
        [_hash(key.strip())],
    )
    if row is None or row[1] or row[2]:
        state = "unknown" if row is None else "revoked" if row[1] else "expired"
        raise AdminKeyRefused(
            f"this admin key is {state}", hint="create a new one with `flux keys create --admin`"
        )
    return int(row[0])


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
