"""Tenants and API keys: what `flux tenants` and `flux keys` (and the management API) do, on one connection.

A key's full text is returned once, by `create_key`; Flux stores its sha256 and shows its prefix after that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flux import db
from flux.errors import InvalidRequest, NotFound
from flux.gateway.auth import new_api_key

ROLES = ("anon", "user", "service")
MAX_NAME_LENGTH = 100
# A token bucket Flux can compute with: from one request a day to a million a second.
MIN_RATE_PER_S, MAX_RATE_PER_S = 1 / 86_400, 1_000_000.0
MAX_BURST = 1_000_000


@dataclass(frozen=True)
class CreatedKey:
    id: int
    key: str  # shown once
    prefix: str
    role: str
    tenant: str | None


def create_tenant(conn: Any, name: str, rate_per_s: float | None = None, burst: int | None = None) -> str:
    """A new tenant's id; `rate_per_s` and `burst` set its token bucket (both or neither)."""
    check_name(name, "a tenant's name")
    if (rate_per_s is None) != (burst is None):
        raise InvalidRequest("a tenant's rate limit needs both --rate-per-s and --burst", hint="give both")
    if rate_per_s is not None and not MIN_RATE_PER_S <= rate_per_s <= MAX_RATE_PER_S:  # NaN fails too
        raise InvalidRequest(
            f"rate_per_s {rate_per_s!r} is outside {MIN_RATE_PER_S:.6g} (one a day) to {MAX_RATE_PER_S:g}",
            hint="e.g. rate_per_s 10 with burst 20",
        )
    if burst is not None and (isinstance(burst, bool) or not 1 <= burst <= MAX_BURST):
        raise InvalidRequest(f"burst {burst!r} is outside 1 to {MAX_BURST}", hint="e.g. burst 20")
    with db.translate_errors():
        row = conn.execute(
            "INSERT INTO flux.tenants (name, rate_per_s, burst) VALUES (%s, %s, %s) RETURNING id::text",
            (name, rate_per_s, burst),
        ).fetchone()
    return str(row[0])


def check_name(name: object, what: str) -> None:
    """A name people type and read: 1 to 100 characters, not only spaces, no control characters."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"{what} must not be empty", hint="e.g. acme")
    # (NUL is left to Postgres, which refuses it as FX131 as in any other text)
    if len(name) > MAX_NAME_LENGTH or any(0 < ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise InvalidRequest(
            f"{what} must be at most {MAX_NAME_LENGTH} characters, with no control characters",
            hint="e.g. acme",
        )


def list_tenants(conn: Any, limit: int | None = None, after: str | None = None) -> list[dict[str, Any]]:
    """Tenants by name (`limit` of them, named after `after`), with their number of live keys."""
    return db.fetch_dicts(
        conn,
        "SELECT t.id::text AS id, t.name, t.rate_per_s, t.burst, t.created_at,"
        " (SELECT count(*) FROM flux.api_keys k WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS keys"
        " FROM flux.tenants t WHERE %s::text IS NULL OR t.name > %s ORDER BY t.name LIMIT %s",
        (after, after, limit),
    )


def create_key(
    conn: Any, role: str = "user", tenant: str | None = None, name: str | None = None
) -> CreatedKey:
    """A new API key running requests as `role` for `tenant` (a tenant's name or id)."""
    if role not in ROLES:
        raise InvalidRequest(f"role {role!r} is not one of {', '.join(ROLES)}", hint="use --role user")
    if name is not None:
        check_name(name, "a key's name")
    tenant_id = _tenant_id(conn, tenant) if tenant else None
    made = new_api_key()
    with db.translate_errors():
        row = conn.execute(
            "INSERT INTO flux.api_keys (prefix, key_hash, name, tenant_id, role) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING id",
            (made.prefix, made.key_hash, name, tenant_id, role),
        ).fetchone()
    return CreatedKey(int(row[0]), made.key, made.prefix, role, tenant)


def list_keys(conn: Any, limit: int | None = None, after: int | None = None) -> list[dict[str, Any]]:
    """Keys by id (`limit` of them, after id `after`), never their text."""
    return db.fetch_dicts(
        conn,
        "SELECT k.id, k.prefix, k.name, k.role, t.name AS tenant, k.created_at, k.revoked_at"
        " FROM flux.api_keys k LEFT JOIN flux.tenants t ON t.id = k.tenant_id"
        " WHERE %s::bigint IS NULL OR k.id > %s ORDER BY k.id LIMIT %s",
        (after, after, limit),
    )


def revoke_key(conn: Any, key: str) -> int:
    """Revoke the key with this id or prefix (every process drops it from its cache at once); its id."""
    column = "id" if key.isdigit() else "prefix"
    with db.translate_errors():
        rows = conn.execute(
            f"SELECT id FROM flux.api_keys WHERE revoked_at IS NULL AND {column} = %s",
            (int(key) if column == "id" else key,),
        ).fetchall()
        if len(rows) != 1:
            what = "no live key" if not rows else "more than one key"
            raise NotFound(f"{what} with id or prefix {key!r}", hint="`flux keys ls` lists them")
        conn.execute("UPDATE flux.api_keys SET revoked_at = now() WHERE id = %s", (rows[0][0],))
    return int(rows[0][0])


def _tenant_id(conn: Any, tenant: str) -> str:
    with db.translate_errors():
        row = conn.execute(
            "SELECT id::text FROM flux.tenants WHERE name = %s OR id::text = %s", (tenant, tenant)
        ).fetchone()
    if row is None:
        raise NotFound(
            f"no tenant {tenant!r}", hint="`flux tenants ls` lists them; `flux tenants create` makes one"
        )
    return str(row[0])
