"""What a request connection's reset after raw SQL costs (issue 25, items 5 and 6): whole recorded requests
through `flux.runtime.invoke` on one request connection (flux_authenticator), with an executor that makes
the host calls itself (no Deno, so only the gateway's database work is timed). Interleaved in rounds, each
kind's median per request:

- `query alone`: a `db.query` select on a connection no raw SQL ever ran on (the hot path), first;
- then in rounds: `query`, the same select two requests after a `raw` one; `raw`, a `db.sql` select (Flux's
  statements after it go unnamed, and the session is reset after it); `query after raw`, the select right
  after a `raw` one.

Selects, not inserts: a request that changed no data commits its record without a flush to disk, whose time
would be most of an insert's and vary with the disk.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from flux import db
from flux.data import load_catalog
from flux.runtime import Caller, invoke
from flux.runtime.host import Host
from flux.runtime.invoke import Executor, Function

ROUNDS = 7
PER_ROUND = 200
SETUP_SQL = """
DROP TABLE IF EXISTS bench_notes;
CREATE TABLE bench_notes (id serial PRIMARY KEY, body text NOT NULL);
GRANT SELECT, INSERT ON bench_notes TO flux_service;
GRANT USAGE ON SEQUENCE bench_notes_id_seq TO flux_service;
SELECT flux.track('bench_notes');
"""


class Direct(Executor):
    """Runs a "function" that is one host call: `request["body"]` is `[op, args]`."""

    def execute(self, function: Function, request: Any, host: Host) -> Any:
        op, args = request["body"]
        return host.call(op, args)


QUERY = ["db.query", {"select": "bench_notes", "where": {"id": {"eq": 1}}}]
RAW = ["db.sql", {"sql": "SELECT id, body FROM bench_notes WHERE id = $1", "params": [1]}]


def run(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute(SETUP_SQL.encode())
        owner.execute("INSERT INTO bench_notes (body) SELECT 'x' FROM generate_series(1, 100)")
        catalog = load_catalog(owner)
        runs_on = db.request_connection(owner)
    function = Function("bench", "builtin", b"", "bench")
    executor = Direct()

    def one(body: Any) -> float:
        started = time.perf_counter_ns()
        outcome = invoke(runs_on, executor, function, {"method": "POST", "path": "/", "body": body},
                         catalog=catalog, caller=Caller(role="service"))  # fmt: skip
        elapsed = (time.perf_counter_ns() - started) / 1000
        assert outcome.error is None, outcome.error
        return elapsed

    times: dict[str, list[float]] = {"query alone": [], "query": [], "raw": [], "query after raw": []}
    for _ in range(20):  # warm: every statement prepared
        one(QUERY)
    times["query alone"] = [one(QUERY) for _ in range(ROUNDS * PER_ROUND)]
    for _ in range(ROUNDS):
        for _ in range(PER_ROUND):
            times["query"].append(one(QUERY))
            one(QUERY)
            times["raw"].append(one(RAW))
            times["query after raw"].append(one(QUERY))
    runs_on.close()
    base = statistics.median(times["query alone"])
    print(f"session_reset: median µs per recorded request ({ROUNDS} x {PER_ROUND} of each, one connection)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<16} {median:8.0f} µs  ({median / base:.2f}x query alone)")
