"""What mutation tracking costs a write: the same single-row INSERT/UPDATE/DELETE transactions on a tracked
and an untracked table, interleaved in rounds, against a bare `SELECT 1` round trip as the floor."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

ROWS = 2000
ROUNDS = 5


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _writes(conn: psycopg.Connection[Any], table: str) -> Callable[[], None]:
    insert = f"INSERT INTO {table} (id, email, balance) VALUES (%s, %s, %s)".encode()
    update = f"UPDATE {table} SET balance = balance + 1 WHERE id = %s".encode()
    delete = f"DELETE FROM {table} WHERE id = %s".encode()

    def work() -> None:
        for i in range(ROWS):
            with conn.transaction():
                conn.execute(insert, (i, f"user{i}@example.com", 10))
            with conn.transaction():
                conn.execute(update, (i,))
            with conn.transaction():
                conn.execute(delete, (i,))

    return work


def _select_one(conn: psycopg.Connection[Any]) -> Callable[[], None]:
    def work() -> None:
        for _ in range(ROWS * 3):
            conn.execute("SELECT 1").fetchone()

    return work


def run(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("bench_plain", "bench_tracked"):
            conn.execute(f"DROP TABLE IF EXISTS {table}".encode())
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, email text, balance int)".encode())
        conn.execute("SELECT flux.track('bench_tracked')")
        plain, tracked, floor = [], [], []
        for _ in range(ROUNDS):
            plain.append(_timed(_writes(conn, "bench_plain")))
            tracked.append(_timed(_writes(conn, "bench_tracked")))
            floor.append(_timed(_select_one(conn)))
        recorded = conn.execute("SELECT count(*) FROM flux.mutations").fetchone()
        for table in ("bench_plain", "bench_tracked"):
            conn.execute(f"DROP TABLE {table}".encode())
        conn.execute("DELETE FROM flux.mutations WHERE table_name = 'bench_tracked'")

    writes = ROWS * 3
    p, t, f = (statistics.median(x) for x in (plain, tracked, floor))
    print(f"track_overhead: {writes} single-row write transactions per table, median of {ROUNDS} rounds")
    print(f"  untracked write   {p / writes * 1e6:8.1f} us   ({p / f:.2f}x a SELECT 1 round trip)")
    print(f"  tracked write     {t / writes * 1e6:8.1f} us   ({t / f:.2f}x a SELECT 1 round trip)")
    count = recorded[0] if recorded else 0
    print(f"  tracking costs    {t / p:.2f}x an untracked write   ({count} mutations recorded)")
