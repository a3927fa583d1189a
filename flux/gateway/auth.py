"""Who is calling: an API key (`flux_…`, found by its sha256) or a JWT (HS256 with the shared secret, or
RS256/ES256 with keys from a JWKS URL, fetched again when a token names a key id not seen yet). The answer is
the request's Caller: its database role, its claims (for RLS and `req.user`) and its tenant.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt

from flux import db
from flux.config import Settings
from flux.errors import InvalidApiKey, InvalidConfig, InvalidToken, MissingCredentials
from flux.gateway.routes import Route
from flux.runtime.invoke import Caller

KEY_PREFIX = "flux_"
PREFIX_LENGTH = 12  # what a key is shown as: `flux_` and 7 more characters
NOTIFY_CHANNEL = "flux_callers"
ROLES = ("anon", "user", "service")
_ASYMMETRIC = ["RS256", "ES256"]
ANONYMOUS = Caller(role="anon")


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once, never stored
    prefix: str
    key_hash: bytes


def new_api_key() -> NewKey:
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    return NewKey(key, key[:PREFIX_LENGTH], hash_key(key))


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _find_key(conn: Any, key_hash: bytes) -> Caller | None:
    """Who a live key makes its caller (None for an unknown or revoked key)."""
    row = db.execute_raw(
        conn,
        "SELECT role, tenant_id::pg_catalog.text, claims, prefix FROM flux.api_keys"
        " WHERE key_hash = $1 AND revoked_at IS NULL",
        [key_hash],
    )
    if row is None:
        return None
    role, tenant_id, key_claims, prefix = row
    claims = {"sub": f"key:{prefix}", **key_claims}
    if tenant_id:
        claims["tenant_id"] = tenant_id
    return Caller(role=role, claims=MappingProxyType(claims), tenant_id=tenant_id)


MAX_KEY_MISSES = 1024


class KeyCache:
    """Callers by API key hash: every live key used (as many as the database holds) and at most `max_misses`
    unknown ones, the oldest forgotten first, so that made-up keys cannot grow a worker while a flood of one
    wrong key still costs one query. `clear` (a Listener calls it) drops both; a load that a `clear` overtook
    lands in the dropped dictionaries, so it is never kept."""

    def __init__(self, max_misses: int = MAX_KEY_MISSES) -> None:
        self.max_misses = max_misses
        self._found: dict[bytes, Caller] = {}
        self._misses: dict[bytes, None] = {}  # in insertion order: the oldest first
        self._lock = threading.Lock()

    def get(self, conn: Any, key_hash: bytes) -> Caller | None:
        found, misses = self._found, self._misses
        caller = found.get(key_hash)
        if caller is not None or key_hash in misses:
            return caller
        caller = _find_key(conn, key_hash)
        if caller is not None:
            found[key_hash] = caller
            return caller
        with self._lock:
            while len(misses) >= self.max_misses:
                del misses[next(iter(misses))]
            misses[key_hash] = None
        return None

    def clear(self) -> None:
        self._found, self._misses = {}, {}

    def __len__(self) -> int:
        return len(self._found) + len(self._misses)


class Authenticator:
    """Checks credentials against the route's auth mode: none, key, jwt or any (a key or a JWT)."""

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.jwt_secret
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.jwks = (
            jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300) if settings.jwks_url else None
        )
        # Callers by API key hash, loaded as keys are used; dropped when keys or tenants change (flux_callers)
        self.keys = KeyCache()

    def authenticate(self, conn: Any, route: Route, headers: Mapping[str, str]) -> Caller:
        if route.auth == "none":
            return ANONYMOUS
        credential = _credential(headers)
        if credential is None:
            raise MissingCredentials(
                f"{route.method} {route.path} needs {'an API key' if route.auth == 'key' else 'credentials'}",
                hint="send `authorization: Bearer <API key or token>`",
            )
        if credential.startswith(KEY_PREFIX):
            if route.auth == "jwt":
                raise InvalidToken(
                    "this route takes a JWT, not an API key", hint="send a token from your issuer"
                )
            return self._key(conn, credential)
        if route.auth == "key":
            raise InvalidApiKey("this route takes an API key", hint="send a key made with `flux keys create`")
        return self._token(credential)

    def _key(self, conn: Any, key: str) -> Caller:
        caller = self.keys.get(conn, hash_key(key))
        if caller is None:
            raise InvalidApiKey(
                f"API key {key[:PREFIX_LENGTH]}… is unknown or revoked", hint="use a live key"
            )
        return caller

    def _token(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") == "HS256":
                if not self.secret:
                    raise InvalidToken("HS256 tokens are not accepted here", hint="configure [auth] secret")
                key: Any = self.secret
                algorithms = ["HS256"]
            else:
                if self.jwks is None or header.get("alg") not in _ASYMMETRIC:
                    raise InvalidToken(
                        f"{header.get('alg')} tokens are not accepted here",
                        hint="configure jwks_url" if self.jwks is None else "sign with RS256 or ES256",
                    )
                signing_key = self.jwks.get_signing_key_from_jwt(token)
                # PyJWT fails with a TypeError when the token's alg does not fit the key (ES256 on an RSA key)
                if signing_key.algorithm_name != header["alg"]:
                    raise InvalidToken(
                        f"the token's alg {header['alg']} does not fit key {signing_key.key_id!r},"
                        f" a {signing_key.algorithm_name} key",
                        hint="sign the token with the algorithm of the key its kid names",
                    )
                key = signing_key.key
                algorithms = [signing_key.algorithm_name]
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=self.audience, issuer=self.issuer,
                options={"verify_aud": self.audience is not None},
            )  # fmt: skip
        except jwt.PyJWKClientError as exc:
            raise InvalidToken(f"the token's signing key cannot be found: {exc}") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not valid: {exc}", hint="get a fresh token") from None
        role = str(claims["role"]) if claims.get("role") in ROLES else "user"
        tenant = claims.get("tenant_id")
        if tenant is not None:
            try:
                tenant = str(uuid.UUID(str(tenant)))
            except ValueError:
                raise InvalidToken("the token's tenant_id is not a uuid") from None
        return Caller(role=role, claims=claims, tenant_id=tenant)


def _credential(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


def check_settings(settings: Settings) -> None:
    """Refuse at start-up what would refuse every token later."""
    if settings.jwt_secret is not None and len(settings.jwt_secret) < 32:
        raise InvalidConfig("[auth] secret is shorter than 32 characters", hint="use a long random secret")
