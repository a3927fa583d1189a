"""Secrets as the runtime reads them: the key (`FLUX_SECRET_KEY` or the project's `.flux/secret.key`), AES-GCM
with the secret's name as authenticated data, and each process's decrypted cache (`SecretCache`). Storing and
listing secrets is the management API's (`flux/api/secrets.py`)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flux import db
from flux.errors import SecretKeyInvalid
from flux.listen import NotifiedCache

KEY_ENV = "FLUX_SECRET_KEY"
NOTIFY_CHANNEL = "flux_secrets"


def load_key(project_dir: Path, env: dict[str, str] | None = None) -> bytes:
    """The secret key: FLUX_SECRET_KEY, else the project's key file (created now if there is none)."""
    environ = os.environ if env is None else env
    given = environ.get(KEY_ENV)
    if given:
        return _decode_key(given, KEY_ENV)
    path = project_dir / ".flux" / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")
    return _decode_key(path.read_text().strip(), str(path))


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SecretKeyInvalid(
            f"{source} is not a 256-bit key in base64",
            hint="make one with: openssl rand -base64 32",
        )
    return key


def encrypt(key: bytes, name: str, value: str) -> tuple[bytes, bytes]:
    """The nonce and ciphertext of `value`, bound to `name`."""
    nonce = os.urandom(12)
    return nonce, AESGCM(key).encrypt(nonce, value.encode(), name.encode())


def decrypt(key: bytes, name: str, nonce: bytes, ciphertext: bytes) -> str:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, name.encode()).decode()
    except InvalidTag:
        raise SecretKeyInvalid(
            f"secret {name!r} was stored under another key",
            hint=f"set {KEY_ENV} to the key it was stored with, or set the secret again",
        ) from None


_SECRETS = "SELECT name, nonce, ciphertext FROM flux.secrets"


def load_secrets(conn: Any, key: Callable[[], bytes]) -> dict[str, str]:
    """Every secret, decrypted (`key()` is called only when there is one)."""
    rows = db.execute_rows(conn, _SECRETS, [])
    if not rows:
        return {}
    secret_key = key()
    return {
        name: decrypt(secret_key, name, bytes(nonce), bytes(ciphertext)) for name, nonce, ciphertext in rows
    }


class SecretCache(NotifiedCache[dict[str, str]]):
    """One process's decrypted secrets, dropped when `flux_secrets` is notified (a rotation is live at
    once). The key is read when there is a secret to decrypt, so a project without secrets needs none."""

    def __init__(self, project_dir: Path) -> None:
        super().__init__(NOTIFY_CHANNEL, lambda conn: load_secrets(conn, lambda: load_key(project_dir)))


class SealedSecrets(Mapping[str, str]):
    """Every secret as stored now, each decrypted when it is read: a key that is missing or wrong fails only
    the runs that read a secret (a replay in the CLI; the server decrypts them all up front). The failure is
    kept in `failure` for the caller to tell apart from the function's own errors."""

    def __init__(self, conn: Any, key: Callable[[], bytes]) -> None:
        rows = db.execute_rows(conn, _SECRETS, [])
        self._sealed = {name: (bytes(nonce), bytes(ciphertext)) for name, nonce, ciphertext in rows}
        self._key = key
        self._secret_key: bytes | None = None
        self.failure: SecretKeyInvalid | None = None

    def __getitem__(self, name: str) -> str:
        nonce, ciphertext = self._sealed[name]
        try:
            if self._secret_key is None:
                self._secret_key = self._key()
            return decrypt(self._secret_key, name, nonce, ciphertext)
        except SecretKeyInvalid as exc:
            self.failure = exc
            raise

    def __iter__(self) -> Iterator[str]:
        return iter(self._sealed)

    def __len__(self) -> int:
        return len(self._sealed)
