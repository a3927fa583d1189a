"""The floor the gateway is measured against: a bare Falcon app under the same gunicorn settings, with a no-op
endpoint and a hand-written psycopg endpoint running the same single-row select as `POST /db/query` (the same
SQL)."""

from __future__ import annotations

import json
import os
from typing import Any

import falcon
from psycopg_pool import ConnectionPool


class Noop:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {}


# The statement Flux compiles for the bench's query (its server log shows it), so both run the same SQL.
SAME_SQL = (
    'SELECT JSON_BUILD_OBJECT(\'id\', "t1"."id", \'email\', "t1"."email", \'name\', "t1"."name")'
    ' FROM "public"."bench_accounts" AS "t1" WHERE "t1"."id" = CAST(%s AS INT)'
)


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


def create() -> falcon.App:
    threads = int(os.environ.get("FLUX_THREADS", "1"))  # one connection per thread, as Flux's workers have
    pool = ConnectionPool(
        os.environ["DATABASE_URL"], min_size=1, max_size=threads, kwargs={"autocommit": True}
    )
    app = falcon.App()
    app.add_route("/noop", Noop())
    app.add_route("/db/query", Query(pool))
    return app
