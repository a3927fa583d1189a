"""The route table: `flux.routes` (method, path pattern such as `/users/{id}`, function, auth, rate limit,
CORS origins, body limit), loaded once per process and reloaded when `flux_routes` is notified."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg

from flux import db
from flux.errors import InvalidConfig, MethodNotAllowed, RouteNotFound
from flux.listen import NotifiedCache

NOTIFY_CHANNEL = "flux_routes"
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    id: int
    method: str
    path: str
    function: str
    auth: str = "any"  # none | key | jwt | any
    rate_per_s: float | None = None
    burst: int | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_048_576

    def pattern(self) -> re.Pattern[str]:
        """The path as a regex: each `{name}` matches one non-empty segment."""
        parts = _PARAMETER.split(self.path)
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
        )
        return re.compile(f"^{regex}$")


class RouteTable:
    """Routes matched in a stable order: literal paths before patterns, then longer before shorter."""

    def __init__(self, routes: list[Route]) -> None:
        ordered = sorted(routes, key=lambda r: ("{" in r.path, -len(r.path), r.path, r.method))
        self.routes = [(route, route.pattern()) for route in ordered]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for `method` on `path` and its path parameters; FX004 or FX005 (with the methods that
        would match) when there is none."""
        allowed = []
        for route, pattern in self.routes:
            found = pattern.match(path)
            if found is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not routed for {path}", details={"allow": sorted(set(allowed))},
                hint=f"use {', '.join(sorted(set(allowed)))}",
            )  # fmt: skip
        raise RouteNotFound(f"no route for {path}", hint="check the path, or add a route to flux.toml")

    def routes_for(self, path: str, method: str) -> list[Route]:
        """The routes a preflight for `method` on `path` is about."""
        return [
            route for route, pattern in self.routes if route.method == method.upper() and pattern.match(path)
        ]


_ROUTE_KEYS = {"method", "path", "function", "auth", "rate_per_s", "burst", "cors", "max_body_bytes"}


def sync_routes(conn: Any, specs: tuple[dict[str, Any], ...]) -> None:
    """Make flux.routes what flux.toml's `[[routes]]` say, in one transaction (every process is notified)."""
    rows = []
    for number, spec in enumerate(specs, 1):
        where = f"flux.toml route {number} ({spec.get('method', '?')} {spec.get('path', '?')})"
        unknown = sorted(set(spec) - _ROUTE_KEYS)
        if unknown or not all(isinstance(spec.get(key), str) for key in ("method", "path", "function")):
            problem = f"unknown key {unknown[0]!r}" if unknown else "needs method, path and function"
            raise InvalidConfig(f"{where}: {problem}", hint=f"route keys: {', '.join(sorted(_ROUTE_KEYS))}")
        rows.append([spec["method"].upper(), spec["path"], spec["function"], spec.get("auth", "any"),
                     spec.get("rate_per_s"), spec.get("burst"), list(spec.get("cors", [])),
                     spec.get("max_body_bytes", 1_048_576)])  # fmt: skip
    with conn.transaction():
        try:
            conn.execute(
                "DELETE FROM flux.routes WHERE (method, path) NOT IN"
                " (SELECT m, p FROM unnest(%s::text[], %s::text[]) AS given(m, p))",
                ([row[0] for row in rows], [row[1] for row in rows]),
            )
            for row in rows:
                conn.execute(
                    "INSERT INTO flux.routes (method, path, function, auth, rate_per_s, burst, cors_origins,"
                    " max_body_bytes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (method, path) DO UPDATE SET function = excluded.function,"
                    " auth = excluded.auth,"
                    " rate_per_s = excluded.rate_per_s, burst = excluded.burst,"
                    " cors_origins = excluded.cors_origins, max_body_bytes = excluded.max_body_bytes,"
                    " updated_at = now()",
                    row,
                )
        except psycopg.errors.IntegrityError as exc:
            raise InvalidConfig(f"a flux.toml route is not valid: {exc.diag.message_primary}",
                                hint="methods GET/POST/PUT/PATCH/DELETE/HEAD/OPTIONS, paths from /, "
                                "auth none/key/jwt/any, rate_per_s and burst together") from None  # fmt: skip


def load_routes(conn: Any) -> RouteTable:
    rows = db.execute_rows(
        conn,
        "SELECT id, method, path, function, auth, rate_per_s, burst, cors_origins, max_body_bytes"
        " FROM flux.routes ORDER BY id",
        [],
    )
    return RouteTable([
        Route(id=row[0], method=row[1], path=row[2], function=row[3], auth=row[4], rate_per_s=row[5],
              burst=row[6], cors_origins=tuple(row[7]), max_body_bytes=row[8])
        for row in rows
    ])  # fmt: skip


class RouteCache(NotifiedCache[RouteTable]):
    """One process's route table, dropped when `flux_routes` is notified (live within a second)."""

    def __init__(self) -> None:
        super().__init__(NOTIFY_CHANNEL, load_routes)
