"""The record writer: records of requests that changed no data, written in batches off the request path; one
bad record does not lose the others; closing writes what is still queued."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from flux import db
from flux.pipeline import Statement
from flux.trace.recorder import Recorder
from flux.trace.writer import RecordWriter


@pytest.fixture
def pool(dsn: str) -> Iterator[Any]:
    requests = db.create_pool(db.request_dsn(dsn), max_size=2, autocommit=True)
    requests.open()
    yield requests
    requests.close()


def _record(kind: str = "http") -> Any:
    recorder = Recorder(str(uuid.uuid4()))
    span = recorder.start("gateway", "GET /x")
    recorder.finish(span, output={"route": None})
    return recorder.record({"kind": kind, "ok": True, "status": 200, "started_us": time.time_ns() // 1000})


def _written(conn: psycopg.Connection[Any], records: list[Any]) -> list[tuple[Any, ...]]:
    ids = [record.request["id"] for record in records]
    return conn.execute(
        "SELECT r.id::text, count(s.seq) FROM flux.requests r JOIN flux.spans s ON s.request_id = r.id"
        " WHERE r.id = ANY(%s::uuid[]) GROUP BY r.id ORDER BY r.id",
        (ids,),
    ).fetchall()


def test_queued_records_are_written_with_their_spans(pool: Any, conn: psycopg.Connection[Any]) -> None:
    writer = RecordWriter(pool)
    records = [_record() for _ in range(300)]
    try:
        for record in records:
            writer.submit(record)
        assert writer.flush()
    finally:
        writer.close()
    assert _written(conn, records) == sorted((r.request["id"], 1) for r in records)


def test_one_bad_record_does_not_lose_the_others(pool: Any, conn: psycopg.Connection[Any]) -> None:
    writer = RecordWriter(pool)
    good, bad = [_record(), _record()], _record(kind="nonsense")  # refused by requests_kind_check
    try:
        with writer._changed:  # hold the thread so that all three go in one batch
            for record in (good[0], bad, good[1]):
                writer.submit(record)
        assert writer.flush()
    finally:
        writer.close()
    assert _written(conn, good) == sorted((r.request["id"], 1) for r in good)
    assert _written(conn, [bad]) == []


def test_a_record_too_deep_to_write_does_not_lose_the_others(
    pool: Any, conn: psycopg.Connection[Any]
) -> None:
    """A function that answered JSON nested as deeply as a response may be (253 levels) has a record nested
    past what orjson writes (254): it must not take the records batched with it along (it would hide other
    requests from trace and replay)."""
    deep: Any = 1
    for _ in range(253):
        deep = [deep]
    good, bad = [_record(), _record()], _record()
    bad = dataclasses.replace(bad, request={**bad.request, "output": {"status": 200, "body": deep}})
    try:
        with writer_held(writer := RecordWriter(pool)):
            for record in (good[0], bad, good[1]):
                writer.submit(record)
        assert writer.flush()
    finally:
        writer.close()
    assert _written(conn, good) == sorted((r.request["id"], 1) for r in good)
    assert _written(conn, [bad]) == []


def writer_held(writer: RecordWriter) -> Any:
    return writer._changed  # holding it keeps the thread waiting, so that all go in one batch


def test_close_writes_what_is_still_queued(pool: Any, conn: psycopg.Connection[Any]) -> None:
    writer = RecordWriter(pool)
    records = [_record() for _ in range(50)]
    with writer._changed:
        for record in records:
            writer.submit(record)
    writer.close()
    assert len(_written(conn, records)) == 50
    with pytest.raises(RuntimeError):
        writer.submit(_record())


def test_records_queued_close_together_share_one_statement(
    pool: Any, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[Any] = []
    write_alone = db.write_alone
    monkeypatch.setattr(db, "write_alone", lambda c, s, **kw: (statements.append(s), write_alone(c, s, **kw)))
    writer = RecordWriter(pool)
    records = [_record() for _ in range(10)]
    try:
        for record in records:  # one every millisecond, well within the writer's linger
            writer.submit(record)
            time.sleep(0.001)
        deadline = time.monotonic() + 5
        while len(_written(conn, records)) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)  # no flush(): it would cut the linger short
    finally:
        writer.close()
    assert len(_written(conn, records)) == 10
    assert len(statements) <= 2


def test_a_record_alone_whose_then_fails_is_written_without_it(
    pool: Any, conn: psycopg.Connection[Any]
) -> None:
    # A queue worker's batches are often of one record: a "done" refused must not lose the attempt's record.
    writer = RecordWriter(pool)
    record = dataclasses.replace(_record(), then=Statement(b"SELECT 1 / 0"))
    try:
        writer.submit(record)
        assert writer.flush()
    finally:
        writer.close()
    assert _written(conn, [record]) == [(record.request["id"], 1)]


def test_every_value_of_a_record_lands_in_its_column(conn: psycopg.Connection[Any]) -> None:
    recorder = Recorder(str(uuid.uuid4()), tenant_id=str(uuid.uuid4()))
    parent = recorder.start("runtime", "function:f", attributes={"runtime": "wasm"})
    child = recorder.start("data", "db:select(t)", input={"select": "t"})
    recorder.finish(child, error={"code": "FX100", "message": "no"})
    recorder.finish(parent, output=None)
    recorder.write(conn, {
        "kind": "job", "method": "POST", "path": "/p", "route_id": 7, "function": "f", "deployment_id": 8,
        "code_sha": "abc", "status": 500, "ok": False, "started_us": 1_700_000_000_123_456, "duration_us": 9,
        "input": {"in": 1}, "output": None, "error": {"code": "FX100"}, "trace_id": "t" * 32,
        "parent_request_id": str(uuid.uuid4()),
    })  # fmt: skip
    row = conn.execute(
        "SELECT tenant_id::text, kind, method, path, route_id, function, deployment_id, code_sha, status, ok,"
        " extract(epoch FROM started_at) * 1e6, duration_us, input, output, error, trace_id, replay_of"
        " FROM flux.requests WHERE id = %s",
        (recorder.request_id,),
    ).fetchone()
    assert row == (recorder.tenant_id, "job", "POST", "/p", 7, "f", 8, "abc", 500, False,
                   1_700_000_000_123_456, 9, {"in": 1}, None, {"code": "FX100"}, "t" * 32, None)  # fmt: skip
    spans = conn.execute(
        "SELECT seq, span_id, parent_seq, tenant_id::text, module, name, ok, attributes, input, output, error"
        " FROM flux.spans WHERE request_id = %s ORDER BY seq",
        (recorder.request_id,),
    ).fetchall()
    assert spans == [
        (0, recorder.spans[0].span_id, None, recorder.tenant_id, "runtime", "function:f", True,
         {"runtime": "wasm"}, None, None, None),
        (1, recorder.spans[1].span_id, 0, recorder.tenant_id, "data", "db:select(t)", False, None,
         {"select": "t"}, None, {"code": "FX100", "message": "no"}),
    ]  # fmt: skip


def test_a_short_secret_is_scrubbed_from_values_but_never_from_ids(conn: psycopg.Connection[Any]) -> None:
    # "4" is in every UUID v4 (its version digit): scrubbing it from the row's ids or keys broke the record.
    recorder = Recorder(str(uuid.uuid4()))
    recorder.redact("pin", "4")
    span = recorder.start("secrets", "secrets.get", input={"name": "pin"})
    recorder.finish(span, output={"value": "4"})
    recorder.write(conn, {"kind": "http", "ok": True, "status": 200, "started_us": time.time_ns() // 1000,
                          "output": {"body": "pin 4"}})  # fmt: skip
    output = conn.execute("SELECT output FROM flux.requests WHERE id = %s", (recorder.request_id,)).fetchone()
    assert output == ({"body": "pin [secret:pin]"},)
    spans = conn.execute(
        "SELECT output FROM flux.spans WHERE request_id = %s", (recorder.request_id,)
    ).fetchall()
    assert spans == [({"value": "[secret:pin]"},)]


def test_a_record_is_written_and_announced_by_one_statement(dsn: str, conn: psycopg.Connection[Any]) -> None:
    from flux.trace.recorder import records_statements

    records = [_record(), _record()]
    statements = records_statements(records)
    assert len(statements) == 1  # the announcement was a second statement, about 20 µs of Postgres a record
    conn.execute("INSERT INTO flux.request_followers (expires_at) VALUES (now() + interval '1 minute')")
    with psycopg.connect(dsn, autocommit=True) as follower, db.request_connection(conn) as writer:
        follower.execute("LISTEN flux_requests")
        db.write_alone(writer, statements)
        announced = [note.payload for note in follower.notifies(timeout=5, stop_after=1)]
    assert announced == [",".join(record.request["id"] for record in records)]
    assert [count for _, count in _written(conn, records)] == [1, 1]
