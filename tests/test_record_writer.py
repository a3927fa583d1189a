"""The record writer: records of requests that changed no data, written in batches off the request path; one
bad record does not lose the others; closing writes what is still queued."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from flux import db
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
