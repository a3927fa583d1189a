"""What the data engine costs over hand-written SQL: the compile time of a cached nested select, then a
primary-key select and a 20-row select with one nested relation through `flux.data.run_query`, each against
the same query written by hand and run prepared by psycopg on the same connection, interleaved in rounds.

Both sides run as a request would: inside `db.request_transaction(conn, role="user")` (role flux_user,
claims and request id set once per batch), timing only the queries, so the ratio is the engine's
own cost and not the per-request setup both would pay alike (that setup is printed beside, for scale).
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from flux import db, jsontext
from flux.data import Catalog, load_catalog, prepare, run_query
from flux.data.plan import Limits, plan_request
from flux.data.request import Problems, parse_request
from flux.data.sql import compile_plan

CUSTOMERS = 2000
ORDERS = 20_000  # 10 per customer
PRODUCTS = 100
ROUNDS = 7  # for the compile and request-setup figures
PAIRS = 41  # short engine/by-hand rounds run back to back: the ratio is the median of the pairs' ratios
COMPILE_WARMUP = 2000
COMPILE_ITERATIONS = 20_000
PK_CALLS = 300  # per side per round
NESTED_CALLS = 60
NESTED_ROWS = 20
TABLES = ("bench_items", "bench_orders", "bench_products", "bench_customers")

SCHEMA_SQL = f"""
CREATE TABLE bench_customers (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text,
    created_at timestamptz NOT NULL DEFAULT '2026-01-01T00:00:00Z'
);
CREATE TABLE bench_products (sku text PRIMARY KEY, title text NOT NULL, price numeric(10,2) NOT NULL);
CREATE TABLE bench_orders (
    id serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES bench_customers,
    status text NOT NULL DEFAULT 'open',
    total numeric(10,2) NOT NULL DEFAULT 0,
    placed_on date
);
CREATE TABLE bench_items (
    order_id int REFERENCES bench_orders ON DELETE CASCADE,
    sku text REFERENCES bench_products,
    quantity int NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
CREATE INDEX ON bench_orders (customer_id);
CREATE INDEX ON bench_items (sku);
INSERT INTO bench_customers (email, name, created_at)
    SELECT 'user' || i || '@example.com', 'User ' || i, '2026-01-01'::timestamptz + i * interval '1 minute'
      FROM generate_series(1, {CUSTOMERS}) i;
INSERT INTO bench_products
    SELECT 'sku' || i, 'Product ' || i, 1 + i % 50 FROM generate_series(0, {PRODUCTS - 1}) i;
INSERT INTO bench_orders (customer_id, status, total, placed_on)
    SELECT 1 + i % {CUSTOMERS}, (ARRAY['open', 'paid', 'cancelled'])[1 + i % 3], (i % 10000) / 100.0,
           '2026-01-01'::date + i % 365
      FROM generate_series(1, {ORDERS}) i;
INSERT INTO bench_items  -- 2 or 3 distinct products per order: 50k items
    SELECT o, 'sku' || (o * 7 + k) % {PRODUCTS}, 1 + (o + k) % 5
      FROM generate_series(1, {ORDERS}) o, generate_series(1, 3) k WHERE k <= 2 + o % 2;
GRANT SELECT ON bench_customers, bench_products, bench_orders, bench_items TO flux_user;
ANALYZE bench_customers, bench_products, bench_orders, bench_items;
"""

# 1. customers -> orders -> items, with a where at two levels.
NESTED_2_LEVELS = {
    "select": "bench_customers",
    "columns": [
        "id",
        "email",
        {
            "bench_orders": {
                "columns": ["id", "status", "total", {"bench_items": ["sku", "quantity"]}],
                "where": {"status": {"eq": "paid"}},
            }
        },
    ],
    "where": {"id": {"eq": 42}},
}

# 2. one row by primary key.
PK_COLUMNS = ["id", "email", "name", "created_at"]
PK_SQL = b"SELECT id, email, name, created_at FROM bench_customers WHERE id = %s"

# 3. 20 orders, each with its items.
NESTED_SQL = f"""
SELECT coalesce(json_agg(r), '[]'::json) FROM (
    SELECT o.id, o.status, o.total,
           (SELECT coalesce(json_agg(e), '[]'::json)
              FROM (SELECT i.sku, i.quantity FROM bench_items i WHERE i.order_id = o.id ORDER BY i.sku) e
           ) AS bench_items
      FROM bench_orders o
     WHERE o.id BETWEEN %s AND %s
     ORDER BY o.id
     LIMIT {NESTED_ROWS}
) r
""".encode()


def _pk_query(key: int) -> dict[str, Any]:
    return {"select": "bench_customers", "columns": PK_COLUMNS, "where": {"id": {"eq": key}}}


def _nested_query(first: int) -> dict[str, Any]:
    return {
        "select": "bench_orders",
        "columns": [
            "id",
            "status",
            "total",
            {"bench_items": {"columns": ["sku", "quantity"], "order": "sku"}},
        ],
        "where": {"id": {"gte": first, "lte": first + NESTED_ROWS - 1}},
        "limit": NESTED_ROWS,
    }


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def _compile(catalog: Catalog) -> None:
    for _ in range(COMPILE_WARMUP):
        prepare(NESTED_2_LEVELS, catalog, "user")
    clock = time.perf_counter_ns
    samples: list[float] = []
    for _ in range(COMPILE_ITERATIONS):
        started = clock()
        prepare(NESTED_2_LEVELS, catalog, "user")  # a cached shape: plan and SQL found, values bound
        samples.append((clock() - started) / 1000)
    samples.sort()
    p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
    print(f"data_engine: compile a cached 2-level nested select, {COMPILE_ITERATIONS} iterations")
    print(f"  prepare (plan + SQL)    p50 {p50:6.1f} us   p99 {p99:6.1f} us")
    print(f"  a new shape, once (p50) {_compile_parts(catalog)}")
    print(f"  p50 is {p50 / 50:.2f}x the 50 us target   (target <= 1.00x)")


def _compile_parts(catalog: Catalog) -> str:
    """What planning a shape the cache has not seen costs, step by step (p50): parse, plan, compile."""
    request = parse_request(NESTED_2_LEVELS, Problems())
    assert request is not None
    plan = prepare(NESTED_2_LEVELS, catalog, "user").plan
    steps: dict[str, Callable[[], object]] = {
        "parse_request": lambda: parse_request(NESTED_2_LEVELS, Problems()),
        "plan_request": lambda: plan_request(request, catalog, "user", Problems(), Limits()),
        "compile_plan": lambda: compile_plan(plan),
    }
    clock = time.perf_counter_ns
    found = []
    for name, step in steps.items():
        samples = []
        for _ in range(COMPILE_ITERATIONS // 4):
            started = clock()
            step()
            samples.append((clock() - started) / 1000)
        found.append(f"{name} {statistics.median(samples):.1f} us")
    return ", ".join(found)


def _in_request(conn: psycopg.Connection[Any], work: Callable[[], None]) -> float:
    """Seconds `work` takes inside one request transaction as flux_user (its setup is not timed)."""
    with db.request_transaction(conn, role="user", request_id=str(uuid.uuid4()), claims={"sub": "bench"}):
        started = time.perf_counter()
        work()
        return time.perf_counter() - started


def _side_by_side(
    conn: psycopg.Connection[Any], engine: Callable[[], None], floor: Callable[[], None]
) -> tuple[float, float, float]:
    """Median seconds of a round through the engine and by hand, and the median of the ratios of rounds run
    back to back (alternating which goes first): on a noisy machine a pair shares its noise, a median of
    separate medians does not."""
    engine_times, floor_times, ratios = [], [], []
    for pair in range(PAIRS):
        if pair % 2:
            floor_time = _in_request(conn, floor)
            engine_time = _in_request(conn, engine)
        else:
            engine_time = _in_request(conn, engine)
            floor_time = _in_request(conn, floor)
        engine_times.append(engine_time)
        floor_times.append(floor_time)
        ratios.append(engine_time / floor_time)
    return statistics.median(engine_times), statistics.median(floor_times), statistics.median(ratios)


def _check_same(conn: psycopg.Connection[Any], catalog: Catalog) -> None:
    """Both sides answer the same rows (a bench of different work would mean nothing)."""
    with db.request_transaction(conn, role="user", request_id=str(uuid.uuid4())):
        rows = run_query(conn, _pk_query(7), catalog, "user")["rows"]
        by_hand = conn.execute(PK_SQL, (7,)).fetchone()
        assert by_hand is not None and [r["id"] for r in rows] == [by_hand[0]], (rows, by_hand)
        assert [r["email"] for r in rows] == [by_hand[1]], (rows, by_hand)
        nested = run_query(conn, _nested_query(101), catalog, "user")
        nested_by_hand = conn.execute(NESTED_SQL, (101, 100 + NESTED_ROWS)).fetchone()
        assert nested_by_hand is not None and nested["rows"] == nested_by_hand[0], (nested, nested_by_hand)
        assert len(nested["rows"]) == NESTED_ROWS and nested["after"] is None


def _queries(conn: psycopg.Connection[Any], catalog: Catalog) -> None:
    rng = random.Random(1)
    pk_keys = [rng.randint(1, CUSTOMERS) for _ in range(PK_CALLS)]
    firsts = [rng.randint(1, ORDERS - NESTED_ROWS) for _ in range(NESTED_CALLS)]

    def pk_engine() -> None:
        for key in pk_keys:
            run_query(conn, _pk_query(key), catalog, "user")

    def pk_floor() -> None:
        for key in pk_keys:
            conn.execute(PK_SQL, (key,), prepare=True).fetchone()

    def nested_engine() -> None:
        for first in firsts:
            run_query(conn, _nested_query(first), catalog, "user")

    def nested_floor() -> None:
        for first in firsts:
            conn.execute(NESTED_SQL, (first, first + NESTED_ROWS - 1), prepare=True).fetchone()

    def request_setup() -> None:
        for _ in range(PK_CALLS // 10):
            with db.request_transaction(conn, role="user", request_id=str(uuid.uuid4()), claims={"sub": "b"}):
                pass

    # warm up: the plan cache, psycopg's prepared statements, the buffer cache
    for work in (pk_engine, pk_floor, nested_engine, nested_floor):
        _in_request(conn, work)
    pk = _side_by_side(conn, pk_engine, pk_floor)
    nested = _side_by_side(conn, nested_engine, nested_floor)
    setups = [0.0] * ROUNDS
    for i in range(ROUNDS):
        started = time.perf_counter()
        request_setup()
        setups[i] = time.perf_counter() - started
    setup = statistics.median(setups) / (PK_CALLS // 10)

    print(f"data_engine: run_query vs hand-written prepared psycopg, role user, {PAIRS} paired rounds")
    for label, (engine, floor, ratio), calls, target in (
        ("select 1 row by primary key", pk, PK_CALLS, 1.3),
        (f"select {NESTED_ROWS} orders with their items", nested, NESTED_CALLS, 1.5),
    ):
        e, f = engine / calls * 1e6, floor / calls * 1e6
        print(f"  {label:<34} engine {e:7.1f} us   by hand {f:7.1f} us   ", end="")
        print(f"{ratio:.2f}x   (target <= {target}x)")
    print(f"  (a request's own transaction: BEGIN, role and claims, COMMIT: {setup * 1e6:.1f} us)")


def run(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        jsontext.adapt(conn)  # the hand-written side parses JSON as the engine does (exact numbers)
        for table in TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE".encode())
        try:
            conn.execute(SCHEMA_SQL.encode())
            catalog = load_catalog(conn)
            _compile(catalog)
            _check_same(conn, catalog)
            _queries(conn, catalog)
        finally:
            for table in TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE".encode())
