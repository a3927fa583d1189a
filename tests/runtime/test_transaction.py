"""The request's transaction: begun in the round trip of the function's first database call, ended in the same
round trip as its record; a function that never calls the database costs one round trip; a failure at
COMMIT is recorded; each mutation names the span whose call made it."""

from __future__ import annotations

import re
import tempfile
from typing import Any

import psycopg

from flux import db
from flux.runtime import Outcome
from tests.fixtures.runtime import function

Conn = psycopg.Connection[Any]
NOOP_WAT = """(module (memory (export "memory") 1) (data (i32.const 16) "{}")
  (func (export "flux_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "flux_handle") (param i32 i32) (result i64) (i64.const 68719476738)))"""


def round_trips(conn: Conn, run: Any) -> tuple[Outcome, list[str]]:
    """What `run()` returned, and libpq's trace of what it sent and got, one text per round trip (each ends
    with the server's ReadyForQuery)."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            outcome = run()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        text = trace.read()
    # Statements prepared by an earlier request go by name: show their text instead.
    for name, statement in conn.execute("SELECT name, statement FROM pg_prepared_statements").fetchall():
        text = text.replace(f'"{name}"', f'"{statement}"')
    return outcome, re.split(r"^B\t\d+\tReadyForQuery.*\n", text, flags=re.MULTILINE)[:-1]


def test_a_function_that_never_calls_the_database_costs_one_round_trip(conn: Conn, call: Any) -> None:
    noop = function("noop", "wat", NOOP_WAT)
    call(noop)  # compiled and cached first
    outcome, sent = round_trips(conn, lambda: call(noop))
    assert outcome.error is None
    assert len(sent) == 1, sent
    assert conn.execute(
        "SELECT ok, function FROM flux.requests WHERE id = %s", (outcome.request_id,)
    ).fetchone() == (
        True,
        "noop",
    )


def test_a_database_call_begins_the_transaction_and_the_record_ends_it(conn: Conn, call: Any) -> None:
    reader = function(
        "reader", "typescript",
        "export default async function (req, ctx) { return await ctx.db.query({select: 'notes'}); }",
    )  # fmt: skip
    call(reader)
    outcome, sent = round_trips(conn, lambda: call(reader))
    assert outcome.error is None
    assert len(sent) == 2, sent  # BEGIN, the settings and the select in one pipeline; the record with COMMIT
    begin, settings, select = (sent[0].index(text) for text in ('"BEGIN"', "set_config('role'", "notes"))
    assert begin < settings < select and sent[0].count("\tSync") == 1 and "COMMIT" not in sent[0]
    assert '"COMMIT"' in sent[1] and sent[1].count("\tSync") == 1  # the record (prepared by now) and COMMIT
    spans = conn.execute(
        "SELECT name FROM flux.spans WHERE request_id = %s AND module <> 'clock' ORDER BY seq",
        (outcome.request_id,),
    ).fetchall()
    assert spans == [("function:reader",), ("db:select(notes)",)]


def test_a_run_of_reads_only_opens_no_transaction_and_leaves_no_settings(conn: Conn, call: Any) -> None:
    reader = function(
        "two_reads", "typescript",
        "export default async function (req, ctx) {"
        " await ctx.db.query({select: 'notes'}); return await ctx.db.query({select: 'notes'}); }",
    )  # fmt: skip
    call(reader, reads_only=True)
    outcome, sent = round_trips(conn, lambda: call(reader, reads_only=True))
    assert outcome.error is None
    assert len(sent) == 3, sent  # each select with the settings, in one pipeline; then the record
    for select in sent[:2]:
        assert "set_config('role'" in select and "notes" in select and select.count("\tSync") == 1
        assert "BEGIN" not in select and "COMMIT" not in select
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    after = db.execute_rows(conn, "SELECT current_user::text, current_setting('flux.request_id', true)", [])
    assert after in ([("postgres", None)], [("postgres", "")])


def test_a_write_refused_at_commit_fails_the_request_and_is_recorded(conn: Conn, call: Any) -> None:
    conn.execute(
        "ALTER TABLE notes ADD CONSTRAINT one_body UNIQUE (body) DEFERRABLE INITIALLY DEFERRED;"
        "INSERT INTO notes (body) VALUES ('taken')"
    )
    writer = function(
        "writer", "typescript",
        "export default async function (req, ctx) {"
        " await ctx.db.query({insert: 'notes', values: {body: 'new'}});"
        " await ctx.db.query({insert: 'notes', values: {body: 'taken'}}); return {ok: true}; }",
    )  # fmt: skip
    outcome = call(writer)  # both inserts pass; the unique check runs at COMMIT
    assert outcome.error is not None and outcome.response.status == 409, outcome.response
    assert conn.execute("SELECT body FROM notes ORDER BY id").fetchall() == [("taken",)]
    record = conn.execute(
        "SELECT ok, status, error->>'code' FROM flux.requests WHERE id = %s", (outcome.request_id,)
    ).fetchone()
    assert record == (False, 409, outcome.error.code)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_value_refused_before_sending_leaves_the_transaction_to_the_next(conn: Conn, call: Any) -> None:
    # The first call's value cannot reach Postgres (NUL), so its BEGIN and settings must wait for the next
    # call: otherwise that one runs outside the request's transaction, as the connecting role.
    stubborn = function(
        "stubborn", "typescript",
        "export default async function (req, ctx) {"
        " try { await ctx.db.sql('SELECT $1::text', ['a\\u0000b']); } catch (e) {}"
        " await ctx.db.sql(\"INSERT INTO notes (body) VALUES (current_user)\");"
        " throw new Error('undo'); }",
    )  # fmt: skip
    outcome = call(stubborn, role="service")
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_each_mutation_names_the_database_call_that_made_it(conn: Conn, call: Any) -> None:
    editor = function(
        "editor", "typescript",
        "export default async function (req, ctx) {"
        " await ctx.db.query({insert: 'notes', values: [{body: 'a'}, {body: 'b'}]});"
        " await ctx.db.query({select: 'notes'});"
        " await ctx.db.sql(\"UPDATE notes SET body = body || '!' WHERE body = 'a'\");"
        " await ctx.db.query({select: 'notes', where: {body: {eq: 'b'}}});"
        " await ctx.db.query({delete: 'notes', where: {body: {eq: 'b'}}}); return {}; }",
    )  # fmt: skip
    outcome = call(editor, role="service")
    assert outcome.error is None, outcome.error
    made = conn.execute(
        "SELECT s.name, m.op FROM flux.mutations m JOIN flux.spans s"
        " ON s.request_id = m.request_id AND s.seq = m.span_seq WHERE m.request_id = %s ORDER BY m.id",
        (outcome.request_id,),
    ).fetchall()
    assert made == [("db:insert(notes)", "INSERT"), ("db:insert(notes)", "INSERT"),
                    ("sql:update(notes)", "UPDATE"), ("db:delete(notes)", "DELETE")]  # fmt: skip
    conn.execute("UPDATE notes SET body = 'by hand'")  # outside a request: no span
    assert conn.execute("SELECT span_seq FROM flux.mutations ORDER BY id DESC LIMIT 1").fetchone() == (None,)
