"""Secrets as the management API keeps them: set (encrypted with the runtime's key and cipher,
`flux/runtime/secrets.py`), listed by name and date, never by value, and removed. Functions read them through
the runtime's decrypted cache.
"""

from __future__ import annotations

import re
from typing import Any

from flux import db
from flux.errors import InvalidSecretName, NotFound
from flux.runtime.secrets import encrypt

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidSecretName(
            f"{name!r} is not a secret name",
            hint="use letters, digits and _, not starting with a digit (at most 128)",
        )
    return name


def set_secret(conn: Any, key: bytes, name: str, value: str) -> None:
    """Store (or replace) secret `name`; every process sees the new value at its next request."""
    nonce, ciphertext = encrypt(key, check_name(name), value)
    with db.translate_errors():
        conn.execute(
            "INSERT INTO flux.secrets (name, nonce, ciphertext) VALUES (%s, %s, %s) ON CONFLICT (name)"
            " DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = now()",
            (name, nonce, ciphertext),
        )


def list_secrets(conn: Any) -> list[tuple[str, Any]]:
    """Names and when each was last set; never values."""
    with db.translate_errors():
        return list(conn.execute("SELECT name, updated_at FROM flux.secrets ORDER BY name").fetchall())


def remove_secret(conn: Any, name: str) -> None:
    with db.translate_errors():
        removed = conn.execute("DELETE FROM flux.secrets WHERE name = %s", (name,)).rowcount
    if not removed:
        raise NotFound(f"no secret named {name!r}", hint="`flux secrets ls` lists them")
