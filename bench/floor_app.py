"""The floor the gateway is measured against: a bare Falcon app under the same gunicorn settings, with a no-op
endpoint and a hand-written psycopg endpoint running the same single-row select as `POST /db/query`."""

from __future__ import annotations

import json
import os
from typing import Any

import falcon
from psycopg_pool import ConnectionPool


class Noop:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {}


class Query:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = json.loads(req.bounded_stream.read())["where"]["id"]["eq"]
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT id, email, name FROM bench_accounts WHERE id = %s", (key,), prepare=True
            ).fetchone()
        rows: list[dict[str, Any]] = [dict(zip(("id", "email", "name"), row, strict=True))] if row else []
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
