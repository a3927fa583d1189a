"""The dashboard's session: a cookie sealed (AES-GCM) under a key derived from the project's secret key,
holding the admin key it was opened with, its CSRF token and when it ends. Every request checks that admin
key again with the management API's own check, so revoking the key ends its sessions at once."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE = "flux_session"
LIFETIME_S = 12 * 3600
_PURPOSE = b"flux dashboard session v1"


@dataclass(frozen=True)
class Session:
    admin_key: str
    csrf: str
    expires_at: float

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sealer:
    """Seals and opens session cookies; every worker derives the same key from the project's secret key."""

    def __init__(self, secret_key: bytes) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(secret_key)
        self._aead = AESGCM(derived)

    def new_session(self, admin_key: str) -> tuple[Session, str]:
        """A fresh session for `admin_key` (a new CSRF token), and its cookie value."""
        session = Session(admin_key, secrets.token_urlsafe(24), time.time() + LIFETIME_S)
        text = json.dumps({"k": session.admin_key, "c": session.csrf, "e": session.expires_at}).encode()
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, text, _PURPOSE)
        return session, base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, cookie: str | None) -> Session | None:
        """The session in `cookie`; None when there is none, it was not sealed here, or it has ended."""
        if not cookie or len(cookie) > 4096:
            return None
        try:
            sealed = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            fields = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], _PURPOSE))
            session = Session(str(fields["k"]), str(fields["c"]), float(fields["e"]))
        except (InvalidTag, ValueError, binascii.Error, KeyError, TypeError):
            return None
        return session if session.expires_at > time.time() else None
