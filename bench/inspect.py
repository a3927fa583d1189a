"""Reading records back at scale: with 1M requests, 10M spans and 10M mutations in the store (generated here
in SQL; `FLUX_BENCH_INSPECT_SCALE=0.01` makes a hundredth of that), the server time of what `flux trace <id>`,
`flux state history` and `flux state blame` run, for random requests and rows, with one plan of each.

The generated requests span the last 7 days (one span partition a day), ten spans each (gateway, function,
eight database calls under it) and ten row changes each, spread over a million rows of `bench_items`, so a
row has about ten versions.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from typing import Any

import psycopg

from flux.trace.tree import TRACE_STATEMENTS

REQUESTS = 1_000_000
SAMPLES = 200
CHUNK = 50_000
TARGET_MS = 50.0

_REQUESTS_SQL = """
INSERT INTO flux.requests (id, kind, method, path, function, status, ok, started_at, duration_us,
                           input, output, trace_id)
SELECT md5('r' || i)::uuid, 'http', 'POST', '/items', 'fn' || mod(i, 20),
       CASE WHEN mod(i, 50) = 0 THEN 500 ELSE 200 END, mod(i, 50) <> 0, now() - i * %(spacing)s,
       1000 + mod(i, 5000), jsonb_build_object('item', i), jsonb_build_object('ok', true), md5('t' || i)
  FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS i
"""
_SPANS_SQL = """
INSERT INTO flux.spans (request_id, seq, span_id, parent_seq, module, name, started_at, duration_us, ok,
                        input, output)
SELECT md5('r' || i)::uuid, s, substr(md5('s' || i || '.' || s), 1, 16),
       CASE WHEN s < 2 THEN NULL ELSE 1 END,
       CASE s WHEN 0 THEN 'gateway' WHEN 1 THEN 'runtime' ELSE 'data' END,
       CASE s WHEN 0 THEN 'POST /items' WHEN 1 THEN 'function:fn' ELSE 'db:update(bench_items)' END,
       now() - i * %(spacing)s + s * interval '100 microseconds', 90, true,
       jsonb_build_object('update', 'bench_items', 'where', jsonb_build_object('id', i)),
       jsonb_build_object('count', 1)
  FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS i, generate_series(0, 9) AS s
"""
_MUTATIONS_SQL = """
INSERT INTO flux.mutations (request_id, span_seq, actor, table_schema, table_name, op, row_pk, old, new,
                            changed, at)
SELECT md5('r' || i)::uuid, s, 'flux_authenticator', 'public', 'bench_items', 'UPDATE',
       jsonb_build_object('id', mod(i * 10 + s, %(rows)s)),
       jsonb_build_object('id', mod(i * 10 + s, %(rows)s), 'qty', s),
       jsonb_build_object('id', mod(i * 10 + s, %(rows)s), 'qty', s + 1), '{qty}', now() - i * %(spacing)s
  FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS i, generate_series(0, 9) AS s
"""
# What `flux state history` and `flux state blame` run (`flux trace` runs tree.TRACE_STATEMENTS).
_HISTORY = "SELECT * FROM flux.row_history('bench_items'::regclass, %s::jsonb)"
_BLAME = "SELECT * FROM flux.row_blame('bench_items'::regclass, %s::jsonb)"


def run(dsn: str) -> None:
    scale = float(os.environ.get("FLUX_BENCH_INSPECT_SCALE", "1"))
    requests = max(1000, int(REQUESTS * scale))
    with psycopg.connect(dsn, autocommit=True) as conn:
        took = _generate(conn, requests)
        print(f"inspect: {requests:,} requests, {requests * 10:,} spans and {requests * 10:,} mutations"
              f" generated in {took:.0f} s")  # fmt: skip
        picks = random.Random(7)
        request_ids = [_request_id(conn, picks.randrange(1, requests + 1)) for _ in range(SAMPLES)]
        rows = [json.dumps({"id": picks.randrange(requests)}) for _ in range(SAMPLES)]
        _report(
            conn,
            f"flux trace <id> ({len(TRACE_STATEMENTS)} statements)",
            [[(q, (rid,)) for q in TRACE_STATEMENTS] for rid in request_ids],
        )
        _report(conn, "flux state history", [[(_HISTORY, (row,))] for row in rows])
        _report(conn, "flux state blame", [[(_BLAME, (row,))] for row in rows])
        plans = (
            ("flux.trace()", TRACE_STATEMENTS[1], request_ids[0]),
            ("flux.row_history()", _HISTORY, rows[0]),
        )
        for label, query, value in plans:
            print(f"  plan of the statement inside {label}:")
            for line in _inner_plan(conn, query, value):
                print(f"    {line}")


def _generate(conn: psycopg.Connection[Any], requests: int) -> float:
    started = time.monotonic()
    conn.execute("DROP TABLE IF EXISTS bench_items; CREATE TABLE bench_items (id int PRIMARY KEY, qty int)")
    conn.execute("SELECT flux.create_span_partitions(current_date - 8, current_date)")
    spacing = f"{7 * 86400 / requests:.6f} seconds"
    for low in range(1, requests + 1, CHUNK):
        values = {"low": low, "high": min(requests, low + CHUNK - 1), "spacing": spacing, "rows": requests}
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = off")
            for statement in (_REQUESTS_SQL, _SPANS_SQL, _MUTATIONS_SQL):
                conn.execute(statement.replace("%(spacing)s", f"interval '{spacing}'"), values)
    conn.execute("ANALYZE flux.requests; ANALYZE flux.spans; ANALYZE flux.mutations")
    return time.monotonic() - started


def _inner_plan(conn: psycopg.Connection[Any], query: str, value: Any) -> list[str]:
    """The plan of the statement a SQL function runs (EXPLAIN shows only a Function Scan), from
    auto_explain, which needs a superuser."""
    notices: list[str] = []
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:
        return [f"(not shown: {exc.diag.message_primary})"]
    conn.add_notice_handler(lambda notice: notices.append(notice.message_primary or ""))
    conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        " SET auto_explain.log_analyze = on; SET auto_explain.log_timing = off; SET client_min_messages = log"
    )
    conn.execute(query, (value,)).fetchall()
    conn.execute("SET client_min_messages = notice; SET auto_explain.log_min_duration = -1")
    inner = next(
        (n for n in notices if "Query Text" in n and "Function Scan on" not in n), "(no plan logged)"
    )
    return [line for line in inner.splitlines() if line.strip() and not line.startswith("duration")]


def _request_id(conn: psycopg.Connection[Any], i: int) -> str:
    return str(conn.execute("SELECT md5('r' || %s::bigint)::uuid", (i,)).fetchone()[0])  # type: ignore[index]


def _report(
    conn: psycopg.Connection[Any], label: str, samples: list[list[tuple[str, tuple[Any, ...]]]]
) -> None:
    """Server time per sample (the sum of its statements' execution times, from EXPLAIN ANALYZE)."""
    times = []
    for statements in samples:
        total = 0.0
        for query, params in statements:
            explained = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON, TIMING OFF) {query}", params).fetchone()
            plan = explained[0][0]  # type: ignore[index]
            total += plan["Planning Time"] + plan["Execution Time"]
        times.append(total)
    times.sort()
    p50, p95 = statistics.median(times), times[int(len(times) * 0.95) - 1]
    print(f"  {label:32s} server p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  max {times[-1]:6.2f} ms"
          f"   {p95 / TARGET_MS:.2f}x the {TARGET_MS:.0f} ms target at p95   (target <= 1.00x)")  # fmt: skip
