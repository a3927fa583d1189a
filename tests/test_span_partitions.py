"""Daily span partitions: created ahead by flux.maintain(), dropped whole by retention."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cli.db import parse_keep
from flux import db
from flux.errors import DatabaseNotMigrated, InvalidRetention

Conn = psycopg.Connection[Any]


def _add_span(conn: Conn, started_at: datetime) -> str:
    request_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO flux.spans (request_id, seq, span_id, module, name, started_at)"
        " VALUES (%s, 0, 'a1b2c3d4e5f60718', 'runtime', 'function', %s)",
        (request_id, started_at),
    )
    return request_id


def _partitions(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'flux.spans'::regclass ORDER BY 1"
    )
    return [row[0] for row in rows]


def test_migrate_creates_partitions_from_yesterday_to_a_week_ahead(conn: Conn) -> None:
    today = datetime.now(UTC).date()
    # the database was migrated today, or yesterday when the run crossed midnight (UTC) since
    runs = [
        [*(f"spans_{(day + timedelta(days=n)):%Y%m%d}" for n in range(-1, 8)), "spans_default"]
        for day in (today, today - timedelta(days=1))
    ]
    assert _partitions(conn) in runs


def test_dropping_a_days_partition_removes_that_days_spans_and_nothing_else(conn: Conn) -> None:
    today = datetime.now(UTC).date()
    old_day, kept_day = today - timedelta(days=40), today - timedelta(days=29)
    conn.execute("SELECT flux.create_span_partitions(%s, %s)", (old_day, kept_day))
    noon = datetime.min.time().replace(hour=12, tzinfo=UTC)
    old = _add_span(conn, datetime.combine(old_day, noon))
    kept = _add_span(conn, datetime.combine(kept_day, noon))
    recent = _add_span(conn, datetime.now(UTC))

    dropped = [row[0] for row in conn.execute("SELECT flux.drop_span_partitions('30 days')")]

    assert f"spans_{old_day:%Y%m%d}" in dropped
    assert f"spans_{kept_day:%Y%m%d}" not in dropped
    assert all(date(int(n[6:10]), int(n[10:12]), int(n[12:14])) < today - timedelta(days=30) for n in dropped)
    remaining = {row[0] for row in conn.execute("SELECT request_id::text FROM flux.spans")}
    assert remaining == {kept, recent}
    assert old not in remaining


def test_spans_outside_the_prepared_days_land_in_default_and_move_into_their_partition(conn: Conn) -> None:
    future_day = datetime.now(UTC).date() + timedelta(days=30)
    request_id = _add_span(conn, datetime.combine(future_day, datetime.min.time(), tzinfo=UTC))
    assert conn.execute("SELECT count(*) FROM flux.spans_default").fetchone() == (1,)

    conn.execute("SELECT flux.create_span_partitions(%s, %s)", (future_day, future_day))

    assert conn.execute("SELECT count(*) FROM flux.spans_default").fetchone() == (0,)
    row = conn.execute(
        "SELECT tableoid::regclass::text FROM flux.spans WHERE request_id = %s", (request_id,)
    ).fetchone()
    assert row == (f"flux.spans_{future_day:%Y%m%d}",)


def test_maintain_is_idempotent(conn: Conn) -> None:
    conn.execute("SELECT flux.maintain()")  # up to date today (the database may be older than midnight)
    before = _partitions(conn)
    conn.execute("SELECT flux.maintain()")
    assert _partitions(conn) == before


def test_a_non_positive_retention_is_refused(conn: Conn) -> None:
    with pytest.raises(InvalidRetention) as caught, db.translate_errors():
        conn.execute("SELECT flux.drop_span_partitions('0 days')")
    assert caught.value.code == "FX502"


@pytest.mark.parametrize(("text", "interval"), [("30d", "30 days"), ("12h", "12 hours"), (" 7d", "7 days")])
def test_keep_accepts_days_and_hours(text: str, interval: str) -> None:
    assert parse_keep(text) == interval


@pytest.mark.parametrize("text", ["0d", "30", "-1d", "1w", "30 days"])
def test_keep_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidRetention):
        parse_keep(text)


def test_the_retention_command_drops_old_partitions(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app

    with psycopg.connect(dsn, autocommit=True) as conn:
        old_day = datetime.now(UTC).date() - timedelta(days=45)
        conn.execute("SELECT flux.create_span_partitions(%s, %s)", (old_day, old_day))
        conn.execute("SELECT flux.create_day_partitions('flux.job_history', %s, %s)", (old_day, old_day))
    monkeypatch.setenv("DATABASE_URL", dsn)

    result = CliRunner().invoke(app, ["db", "retention", "--keep", "30d"])

    assert result.exit_code == 0, result.output
    assert f"dropped  flux.spans_{old_day:%Y%m%d}" in result.output
    assert f"dropped  flux.job_history_{old_day:%Y%m%d}" in result.output


def test_retention_on_an_unmigrated_database_says_to_migrate(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import app

    monkeypatch.setenv("DATABASE_URL", empty_dsn)
    result = CliRunner().invoke(app, ["db", "retention", "--keep", "30d"])

    assert isinstance(result.exception, DatabaseNotMigrated)
    assert result.exception.hint == "run `flux db migrate` first"
