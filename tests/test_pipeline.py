"""flux.pipeline: several statements in one round trip and one transaction, prepared once per connection,
values and rows adapted as a psycopg cursor would."""

from __future__ import annotations

import datetime
import tempfile
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from flux import jsontext, pipeline
from flux.errors import UnsupportedStatement
from flux.pipeline import Statement

Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(empty_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(empty_dsn, autocommit=True) as connection:
        connection.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
        yield connection


def _prepared(conn: Conn) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()}


def test_statements_share_one_round_trip_and_one_implicit_transaction(conn: Conn) -> None:
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        result = pipeline.run(conn, [
            Statement(b"SELECT set_config('flux.note', $1, true)", ["kept"]),
            Statement(b"INSERT INTO items VALUES (1, current_setting('flux.note'))"),
            Statement(b"SELECT id, note FROM items"),
        ])  # fmt: skip
        conn.pgconn.untrace()
        trace.seek(0)
        sent = trace.read()
    assert sent.count("\tSync") == 1 and sent.count("ReadyForQuery") == 1
    assert result == pipeline.Result(rows=[(1, "kept")], columns=["id", "note"], rowcount=1)
    assert pipeline.run(conn, [Statement(b"SELECT current_setting('flux.note', true)")]).rows == [("",)]


def test_values_and_rows_mean_what_they_mean_through_a_cursor(conn: Conn) -> None:
    sql = "SELECT $1::jsonb, $2::int[], $3::uuid, $4::timestamptz, $5::numeric, $6::bool, $7::text"
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    values = [Jsonb({"n": 1.25}), [1, 2], uuid.UUID(int=7), when, Decimal("1.10"), True, None]
    cursor = psycopg.RawCursor(conn)
    jsontext.adapt(cursor)
    assert pipeline.run(conn, [Statement(sql.encode(), values)]).rows == [
        cursor.execute(sql, values).fetchone()
    ]
    assert pipeline.run(conn, [Statement(sql.encode(), values)]).rows[0][0] == {"n": Decimal("1.25")}


def test_the_first_error_is_raised_and_what_follows_it_does_not_run(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero):
        pipeline.run(conn, [
            Statement(b"INSERT INTO items VALUES (1, 'rolled back')"),
            Statement(b"SELECT 1 / $1::int", [0]),
            Statement(b"INSERT INTO items VALUES (2, 'never run')"),
        ])  # fmt: skip
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert pipeline.run(conn, [Statement(b"SELECT count(*) FROM items")]).rows == [(0,)]


def test_a_value_postgres_cannot_hold_is_refused_before_anything_is_sent(conn: Conn) -> None:
    with pytest.raises(psycopg.DataError):
        pipeline.run(conn, [
            Statement(b"INSERT INTO items VALUES (1, 'first')"),
            Statement(b"INSERT INTO items VALUES (2, $1)", ["a\x00b"]),
        ])  # fmt: skip
    assert pipeline.run(conn, [Statement(b"SELECT count(*) FROM items")]).rows == [(0,)]


def test_statements_are_prepared_once_and_the_least_recently_used_deallocated(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "MAX_PREPARED", 4)
    pipeline.run(conn, [Statement(b"SELECT 0")])
    first = _prepared(conn)
    pipeline.run(conn, [Statement(b"SELECT 0")])
    assert _prepared(conn) == first and len(first) == 1
    for n in range(1, 5):
        pipeline.run(conn, [Statement(b"SELECT %d" % n)])
    assert len(_prepared(conn)) == 3 and not first & _prepared(conn)  # 5 > 4: down to 3, oldest first


def test_a_connection_outside_autocommit_gets_its_begin(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.commit()
        pipeline.run(conn, [Statement(b"INSERT INTO items VALUES (1)")])
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        assert pipeline.run(conn, [Statement(b"SELECT count(*) FROM items")]).rows == [(0,)]


def test_prepared_statements_survive_rollbacks_and_recover_from_deallocate_all(conn: Conn) -> None:
    pipeline.run(conn, [Statement(b"SELECT 1")])
    with conn.transaction(force_rollback=True):  # psycopg would DEALLOCATE ALL here had it prepared any
        conn.execute("SELECT 2")
    assert pipeline.run(conn, [Statement(b"SELECT 1")]).rows == [(1,)]
    conn.execute("DEALLOCATE ALL")  # someone else's: the next use fails once, then prepares again
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        pipeline.run(conn, [Statement(b"SELECT 1")])
    assert pipeline.run(conn, [Statement(b"SELECT 1")]).rows == [(1,)]


def test_a_statement_whose_result_type_changed_is_prepared_again_after_one_failure(conn: Conn) -> None:
    star = Statement(b"SELECT * FROM items")
    assert pipeline.run(conn, [star]).columns == ["id", "note"]
    conn.execute("ALTER TABLE items ADD COLUMN added int")
    with pytest.raises(psycopg.errors.FeatureNotSupported):  # "cached plan must not change result type"
        pipeline.run(conn, [star])
    assert pipeline.run(conn, [star]).columns == ["id", "note", "added"]


def test_a_new_statement_twice_in_one_round_trip_is_prepared_once(conn: Conn) -> None:
    twice = Statement(b"SELECT $1::int", [1])
    pipeline.run(conn, [twice, twice])
    assert len(_prepared(conn)) == 1


def _run_within(conn: Conn, statements: list[Statement], seconds: float = 10) -> BaseException | None:
    """Run `statements` on a thread and answer what they raised; fail if they are not done in `seconds` (a
    hang: the thread is left waiting on a socket of a connection the test then closes)."""
    ended: list[BaseException | None] = []

    def run() -> None:
        try:
            pipeline.run(conn, statements)
            ended.append(None)
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not ended:
        conn.pgconn.finish()  # frees the thread
    assert ended, f"hung on {statements}"
    return ended[0]


@pytest.mark.parametrize("sql", ["COPY items TO STDOUT", "COPY (SELECT 1 AS one) TO STDOUT"])
def test_a_copy_to_stdout_is_an_fx_error_and_the_connection_goes_on(conn: Conn, sql: str) -> None:
    conn.execute("INSERT INTO items SELECT g, 'n' FROM generate_series(1, 5000) AS g")  # more than one read
    raised = _run_within(conn, [Statement(b"SELECT 1"), Statement(sql.encode())])
    assert isinstance(raised, UnsupportedStatement) and raised.code == "FX205", raised
    assert pipeline.run(conn, [Statement(b"SELECT 2")]).rows == [(2,)]


@pytest.mark.parametrize("after", [[], [Statement(b"SELECT 2")]])
def test_a_copy_from_stdin_is_an_fx_error_and_never_a_hang(conn: Conn, after: list[Statement]) -> None:
    """The server takes what follows the COPY in the round trip (its Sync at least) as copy data: the session
    cannot go on, so the connection is closed."""
    raised = _run_within(conn, [Statement(b"SELECT 1"), Statement(b"COPY items FROM STDIN"), *after])
    assert isinstance(raised, UnsupportedStatement) and raised.code == "FX205", raised
    assert conn.closed
