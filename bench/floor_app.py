"""The floors and peers Flux's HTTP figures are measured against: Falcon apps written by hand, the best a
person would write with psycopg, served by `bench/floor_server.py` under the same gunicorn settings as Flux.

- `/noop`, and `/db/query` (the gateway bench's single-row select, `bench/gateway.py`);
- `/pk`, `/nested`, `/insert`: the data engine's three queries, each running the very SQL text Flux compiles
  for the same JSON query (tests/test_bench.py compiles it and compares), on a connection as
  flux_authenticator, with the role and claims set for the transaction, prepared and pipelined: BEGIN, the
  settings, the statement and COMMIT in one round trip, as Flux's request transaction does;
- `/orders`: the whole recorded path's app by hand (two reads and one insert into a tracked table, in one
  transaction), bare or with OpenTelemetry's auto-instrumentation (`BENCH_OTEL=1`, `bench/floor_server.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import falcon
import psycopg
from psycopg_pool import ConnectionPool

from flux import db


class Noop:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {}


# The statement Flux compiles for the gateway bench's query, so both run the same SQL (bench/gateway.py).
SAME_SQL = (
    'SELECT JSON_BUILD_OBJECT(\'id\', "t1"."id", \'email\', "t1"."email", \'name\', "t1"."name")'
    ' FROM "public"."bench_accounts" AS "t1" WHERE "t1"."id" = CAST(%s AS INT)'
)

# The data engine scenarios' queries as `POST /db/query` receives them, and the SQL Flux compiles for each
# (its `$n` placeholders and parameters as the engine binds them; tests/test_bench.py checks they agree).
NESTED_ROWS = 20
PK_QUERY = {"select": "bench_accounts", "columns": ["id", "email", "name"], "where": {"id": {"eq": 42}}}
NESTED_QUERY = {
    "select": "bench_orders",
    "columns": ["id", "status", "total", {"bench_items": {"columns": ["sku", "quantity"], "order": "sku"}}],
    "where": {"id": {"gte": 101, "lte": 100 + NESTED_ROWS}},
    "limit": NESTED_ROWS,
}
INSERT_QUERY = {"insert": "bench_events", "values": {"account_id": 42, "kind": "click"}}
PK_SQL = (
    'SELECT JSON_BUILD_OBJECT(\'id\', "t1"."id", \'email\', "t1"."email", \'name\', "t1"."name")'
    ' FROM "public"."bench_accounts" AS "t1" WHERE "t1"."id" = CAST($1 AS INT)'
)
NESTED_SQL = (
    'SELECT "g"."j" FROM (SELECT "a"."j", SUM(OCTET_LENGTH(CAST("a"."j" AS TEXT))) OVER (ROWS'
    " BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS \"n\" FROM (SELECT JSON_BUILD_OBJECT('id',"
    ' "t1"."id", \'status\', "t1"."status", \'total\', "t1"."total", \'bench_items\', (SELECT'
    ' COALESCE(JSON_AGG("e".*), CAST(\'[]\' AS JSON)) FROM (SELECT "t2"."sku" AS "sku",'
    ' "t2"."quantity" AS "quantity" FROM "public"."bench_items" AS "t2" WHERE "t1"."id" ='
    ' "t2"."order_id" ORDER BY "t2"."sku" ASC LIMIT CAST($1 AS BIGINT)) AS "e")) AS "j" FROM'
    ' "public"."bench_orders" AS "t1" WHERE ("t1"."id" >= CAST($2 AS INT)) AND ("t1"."id" <='
    ' CAST($3 AS INT)) ORDER BY "t1"."id" ASC LIMIT CAST($4 AS BIGINT)) AS "a") AS "g" WHERE'
    ' "flux".check_answer_size("g"."n", CAST($5 AS BIGINT))'
)
INSERT_SQL = (
    'WITH "w" AS (INSERT INTO "public"."bench_events" AS "t1" ("account_id", "kind") VALUES (CAST($1 AS INT),'
    ' CAST($2 AS TEXT)) RETURNING 1 AS "__one") SELECT NULL, COUNT(*) FROM "w"'
)
# The engine's bounds, bound as parameters of the nested select (flux.data.plan.Limits' defaults).
MAX_ROWS = 1000
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# How Flux's request transaction takes on the caller (flux.db's settings statement, one prepared statement):
# request id, claims, tenant, role and the role's statement timeout (flux.data.plan.Limits).
SETTINGS_SQL = (
    "SELECT pg_catalog.set_config('flux.request_id', $1, true),"
    " pg_catalog.set_config('flux.claims', $2, true), pg_catalog.set_config('flux.tenant_id', $3,"
    " true), pg_catalog.set_config('role', $4, true), pg_catalog.set_config('statement_timeout',"
    " $5, true)"
)
USER_TIMEOUT_MS = 15_000
CLAIMS = '{"sub":"bench"}'


def settings_params(request_id: str) -> list[str]:
    return [request_id, CLAIMS, "", "flux_user", str(USER_TIMEOUT_MS)]


def pk_params(query: dict[str, Any]) -> list[Any]:
    return [str(query["where"]["id"]["eq"])]


def nested_params(query: dict[str, Any]) -> list[Any]:
    """The nested select's parameters: each relation's row bound, the id range, the page (one more row, to
    tell whether there are more) and the answer's byte bound."""
    where = query["where"]["id"]
    return [MAX_ROWS + 1, str(where["gte"]), str(where["lte"]), query["limit"] + 1, MAX_ANSWER_BYTES]


def insert_params(query: dict[str, Any]) -> list[Any]:
    values = query["values"]
    return [str(values["account_id"]), values["kind"]]


# The whole path's work (`/orders`): the same two reads and one insert as the TypeScript function
# bench/path.py deploys, in one transaction as flux_user.
ACCOUNT_SQL = "SELECT id, email, name FROM bench_accounts WHERE id = $1"
PRODUCT_SQL = "SELECT sku, price FROM bench_products WHERE sku = $1"
ORDER_SQL = "INSERT INTO bench_path_orders (account_id, sku, total) VALUES ($1, $2, $3) RETURNING id"


class Floor:
    """The hand-written endpoints; one pool per worker, as big as Flux's request pool."""

    def __init__(self, pool: ConnectionPool, key_hash: bytes | None) -> None:
        self.pool = pool
        self.key_hash = key_hash

    def _caller(self, req: falcon.Request) -> list[str]:
        """The settings of the request's caller, once its API key is checked (a hash compared, as Flux's key
        cache does)."""
        if self.key_hash is not None:
            token = (req.get_header("authorization") or "").removeprefix("Bearer ")
            if hashlib.sha256(token.encode()).digest() != self.key_hash:
                raise falcon.HTTPUnauthorized()
        return settings_params(str(uuid.uuid4()))

    def _one(self, req: falcon.Request, sql: str, params: list[Any]) -> Any:
        """BEGIN, the caller's settings, `sql` and COMMIT in one pipeline (one round trip), prepared."""
        settings = self._caller(req)
        with self.pool.connection() as conn, conn.pipeline():
            conn.execute("BEGIN", prepare=False)
            conn.execute(SETTINGS_SQL, settings, prepare=True)
            cursor = conn.execute(sql, params, prepare=True)
            conn.execute("COMMIT", prepare=False)
            return cursor.fetchall()

    def on_post_pk(self, req: falcon.Request, resp: falcon.Response) -> None:
        rows = self._one(req, PK_SQL, pk_params(req.get_media()))
        resp.media = {"rows": [row[0] for row in rows], "after": None, "more": False}

    def on_post_nested(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = req.get_media()
        limit = query["limit"]
        rows = [row[0] for row in self._one(req, NESTED_SQL, nested_params(query))]
        resp.media = {"rows": rows[:limit], "after": None, "more": len(rows) > limit}

    def on_post_insert(self, req: falcon.Request, resp: falcon.Response) -> None:
        rows = self._one(req, INSERT_SQL, insert_params(req.get_media()))
        resp.media = {"count": rows[0][1]}

    def on_post_orders(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        settings = self._caller(req)
        with self.pool.connection() as conn:
            with conn.pipeline():
                conn.execute("BEGIN", prepare=False)
                conn.execute(SETTINGS_SQL, settings, prepare=True)
                account = conn.execute(ACCOUNT_SQL, [body["account"]], prepare=True).fetchone()
            product = conn.execute(PRODUCT_SQL, [body["sku"]], prepare=True).fetchone()
            if account is None or product is None:
                conn.execute("ROLLBACK", prepare=False)
                raise falcon.HTTPNotFound()
            with conn.pipeline():
                order = conn.execute(ORDER_SQL, [account[0], product[0], product[1]], prepare=True).fetchone()
                conn.execute("COMMIT", prepare=False)
        assert order is not None
        resp.media = {"order": order[0], "email": account[1], "total": str(product[1])}


class Query:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = json.loads(req.bounded_stream.read())["where"]["id"]["eq"]
        with self.pool.connection() as conn:
            rows: list[dict[str, Any]] = [
                row[0] for row in conn.execute(SAME_SQL, (key,), prepare=True).fetchall()
            ]
        resp.media = {"rows": rows, "after": None, "more": False}


def pool_size(threads: int) -> int:
    """As many connections as a Flux worker's request pool holds (flux/app.py: threads + 3)."""
    return threads + 3


def create(dsn: str | None = None, threads: int | None = None) -> falcon.App:
    dsn = dsn or os.environ["DATABASE_URL"]
    threads = threads or int(os.environ.get("FLUX_THREADS", "1"))
    key_hash = bytes.fromhex(os.environ["BENCH_KEY_HASH"]) if os.environ.get("BENCH_KEY_HASH") else None
    # The gateway bench's endpoint: as before, a plain pool of the connecting user.
    plain = ConnectionPool(dsn, min_size=1, max_size=threads, kwargs={"autocommit": True}, open=True)
    # The floors: as flux_authenticator (the role Flux's requests connect as), `$n` placeholders.
    floors = ConnectionPool(
        db.request_dsn(dsn), min_size=1, max_size=pool_size(threads), open=True,
        kwargs={"autocommit": True, "cursor_factory": psycopg.RawCursor},
    )  # fmt: skip
    app = falcon.App()
    app.add_route("/noop", Noop())
    app.add_route("/db/query", Query(plain))
    floor = Floor(floors, key_hash)
    for suffix in ("pk", "nested", "insert", "orders"):
        app.add_route(f"/{suffix}", floor, suffix=suffix)
    return app
