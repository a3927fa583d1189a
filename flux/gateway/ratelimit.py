"""Rate limits: token buckets in Postgres (`flux.take_token`), so they hold across every Flux process. A
tenant with a limit has one bucket for all its requests; a route with a limit has one per tenant (or per
client address for callers without a tenant)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flux import db
from flux.errors import RateLimited
from flux.gateway.routes import Route
from flux.listen import KeyedCache
from flux.runtime.invoke import Caller


@dataclass(frozen=True)
class Limit:
    bucket: str
    burst: int
    rate_per_s: float


@dataclass(frozen=True)
class Decision:
    """What the strictest bucket said, as `RateLimit-*` headers."""

    limit: Limit
    remaining: float
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        reset = math.ceil(self.retry_after_s or (self.limit.burst - self.remaining) / self.limit.rate_per_s)
        headers = {
            "ratelimit-limit": str(self.limit.burst),
            "ratelimit-remaining": str(max(0, math.floor(self.remaining))),
            "ratelimit-reset": str(max(0, reset)),
        }
        if self.retry_after_s:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class RateLimiter:
    """The buckets a request draws from; tenants' limits are cached until `flux_callers` is notified."""

    def __init__(self) -> None:
        self.tenants: KeyedCache[str, Limit | None] = KeyedCache(_tenant_limit)

    def limits(self, conn: Any, route: Route, caller: Caller, client: str) -> list[Limit]:
        limits = []
        if caller.tenant_id:
            tenant_limit = self.tenants.get(conn, caller.tenant_id)
            if tenant_limit is not None:
                limits.append(tenant_limit)
        if route.rate_per_s is not None and route.burst is not None:
            who = caller.tenant_id or f"client:{client}"
            limits.append(Limit(f"route:{route.id}:{who}", route.burst, route.rate_per_s))
        return limits


def _tenant_limit(conn: Any, tenant_id: str) -> Limit | None:
    row = db.execute_raw(
        conn, "SELECT rate_per_s, burst FROM flux.tenants WHERE id = $1::pg_catalog.uuid", [tenant_id]
    )
    if row is None or row[0] is None:
        return None
    return Limit(f"tenant:{tenant_id}", row[1], row[0])


def take(conn: Any, limits: list[Limit]) -> Decision | None:
    """Take a token from each bucket (in one round trip); FX020 with the headers when one is empty."""
    if not limits:
        return None
    rows = db.execute_rows(
        conn,
        "SELECT t.allowed, t.remaining, t.retry_after_s"
        " FROM unnest($1::pg_catalog.text[], $2::pg_catalog.float8[], $3::pg_catalog.float8[])"
        " WITH ORDINALITY AS l(bucket, burst, rate, n), LATERAL flux.take_token(l.bucket, l.burst, l.rate) t"
        " ORDER BY l.n",
        [
            [limit.bucket for limit in limits],
            [float(limit.burst) for limit in limits],
            [limit.rate_per_s for limit in limits],
        ],
    )
    decisions = [Decision(limit, row[1], row[2]) for limit, row in zip(limits, rows, strict=True)]
    refused = [d for d, row in zip(decisions, rows, strict=True) if not row[0]]
    if refused:
        worst = max(refused, key=lambda d: d.retry_after_s)
        raise RateLimited(
            f"rate limit of {worst.limit.burst} requests, {worst.limit.rate_per_s:g}/s reached",
            details={"headers": worst.headers()}, hint=f"retry after {worst.headers()['retry-after']} s",
        )  # fmt: skip
    return min(decisions, key=lambda d: d.remaining)
