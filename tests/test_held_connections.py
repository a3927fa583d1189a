"""db.HeldConnections: each thread keeps its request connection between requests, and gives it back to the
pool whenever a request leaves it in a state the next one must not inherit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from flux import db


@pytest.fixture
def pool(empty_dsn: str) -> Iterator[ConnectionPool]:
    made = db.create_pool(empty_dsn, max_size=4, autocommit=True)
    made.open(wait=True)
    yield made
    made.close()


def _backend(conn: Any) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_a_thread_keeps_its_connection_and_threads_do_not_share_one(pool: ConnectionPool) -> None:
    held = db.HeldConnections(pool)
    with held.connection() as conn:
        first = _backend(conn)
    with held.connection() as conn:
        assert _backend(conn) == first
    assert pool.get_stats()["pool_available"] + 1 == pool.get_stats()["pool_size"]  # still out of the pool

    others: list[int] = []

    def other_thread() -> None:
        with held.connection() as conn:
            others.append(_backend(conn))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert others and others[0] != first
    held.close()
    assert pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"]


def test_a_connection_left_in_a_transaction_goes_back_to_the_pool_rolled_back(pool: ConnectionPool) -> None:
    held = db.HeldConnections(pool)
    with held.connection() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT set_config('flux.note', 'left over', true)")
    with held.connection() as conn:
        assert conn.execute("SELECT current_setting('flux.note', true)").fetchone()[0] in (None, "")
        assert conn.info.transaction_status == conn.info.transaction_status.IDLE
    held.close()


def test_a_request_that_raises_gives_its_connection_back(pool: ConnectionPool) -> None:
    held = db.HeldConnections(pool)
    with pytest.raises(RuntimeError), held.connection():
        raise RuntimeError("the request failed")
    assert pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"]
    with held.connection() as conn:
        assert _backend(conn) > 0
    held.close()


def test_a_closed_connection_is_replaced(pool: ConnectionPool) -> None:
    held = db.HeldConnections(pool)
    with held.connection() as conn:
        conn.close()
    with held.connection() as conn:
        assert not conn.closed
        assert _backend(conn) > 0
    held.close()


def test_a_connection_raw_sql_ran_on_goes_back_to_the_pool_and_is_reset(empty_dsn: str) -> None:
    """A request that ended before its own reset (an exception past the run, a killed thread) leaves the
    session raw SQL used: the pool's reset clears it before any other request gets the connection."""
    alone = db.create_pool(empty_dsn, max_size=1, autocommit=True)  # hands out the same connection again
    alone.open(wait=True)
    held = db.HeldConnections(alone)
    with held.connection() as conn:
        backend = _backend(conn)
        db.distrust_session(conn)  # raw SQL ran
        conn.execute("CREATE TEMP TABLE left_over (secret text)")
        conn.execute("SET search_path = pg_catalog")
        conn.execute("SELECT pg_advisory_lock(4242)")
    assert alone.get_stats()["pool_available"] == 1  # given back
    with held.connection() as again:
        assert _backend(again) == backend  # the same session, in a known state
        assert again.execute("SELECT to_regclass('pg_temp.left_over')").fetchone() == (None,)
        assert again.execute("SHOW search_path").fetchone() == ('"$user", public',)
        locks = again.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
        assert locks == (0,)
    held.close()
    alone.close()
