"""What a replayed function does to the request connection it runs on, beyond its rolled-back transaction:
a replay on the API takes that connection from the gateway's pool and gives it back. A function that ends its
own session, or takes a session-level lock through a function of its own (raw SQL refuses
pg_advisory_lock by name, but not inside a function body), must leave a replay with a verdict and the
connection as it found it. On real Postgres and real Deno."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from flux.data import Catalog
from flux.runtime import Caller, Runtime, invoke
from flux.runtime.invoke import Function
from tests.fixtures.replays import MOVER, RAW_WRITER, replayed
from tests.fixtures.replays import served as on
from tests.fixtures.runtime import planted, ts

pytestmark = pytest.mark.usefixtures("run_text")  # CREATE FUNCTION goes through a project's function

MODES = ["live", "as-of"]


# Ends its own session while it is replayed: the server closes a connection left idle in its transaction
# longer than the function set (through a function of the project's: raw SQL may not change the timeout), and
# the function waits that long before it answers.
HANGUP = ts(
    "hangup",
    """
export default async function (req, ctx) {
  await ctx.db.query({ insert: "notes", values: { body: "x" } });
  const { rows: [seen] } = await ctx.db.sql("SELECT current_setting('flux.replay_call', true) AS call", []);
  if (seen.call) {
    await ctx.db.sql("SELECT public.run_text('SET LOCAL idle_in_transaction_session_timeout = 1')", []);
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  return { ok: true };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_a_replayed_function_that_ends_its_session_ends_its_replay_with_a_verdict(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
) -> None:
    outcome = on(runs_on, runtime, notes, HANGUP)
    result = replayed(conn, runs_on, runtime, notes, HANGUP, outcome.request_id, mode)
    assert result.verdict in ("diverged", "error"), result
    assert conn.execute("SELECT count(*) FROM flux.replay_grants").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


# Takes a session-level advisory lock through a function of its own, which outlives a rolled-back
# transaction: on a pooled connection it would be held for later requests, and block every other session
# that asks for it (flux.lock_job_key takes transaction locks on job keys).
LOCKER = ts(
    "locker",
    planted(
        """
export default async function (req, ctx) {
  await ctx.db.sql(`CREATE FUNCTION pg_temp.hold() RETURNS void LANGUAGE sql
                    AS $$ SELECT pg_catalog.pg_advisory_lock(4242) $$`, []);
  await ctx.db.sql("SELECT pg_temp.hold()", []);
  return { ok: true };
}
"""
    ),
)


@pytest.mark.parametrize("mode", MODES)
def test_a_session_lock_a_replayed_function_took_is_not_left_on_its_connection(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
) -> None:
    outcome = invoke(conn, runtime, LOCKER, {"method": "POST", "path": "/"}, catalog=notes,
                     caller=Caller(role="service"))  # fmt: skip
    conn.execute("SELECT pg_advisory_unlock_all()")
    replayed(conn, runs_on, runtime, notes, LOCKER, outcome.request_id, mode)
    held = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", [runs_on.info.backend_pid]
    ).fetchone()
    assert held == (0,)


# Settings a replayed run changes for the rest of its transaction, which the replay's own statements after
# the run (reading back its writes) must not inherit: a statement timeout that the read of many writes
# exceeds, a client encoding that cannot carry what they hold.
UNSETTLER = ts(
    "unsettler",
    """
export default async function (req, ctx) {
  const { rows: [seen] } = await ctx.db.sql("SELECT current_setting('flux.replay_call', true) AS call", []);
  if (seen.call) {
    await ctx.db.sql("INSERT INTO notes (body) SELECT '\u20ac ' || g FROM generate_series(1, 3000) AS g", []);
    await ctx.db.sql("SET LOCAL client_encoding = 'LATIN1'", []);
    await ctx.db.sql("SELECT public.run_text('SET LOCAL statement_timeout = 1')", []);
  }
  return { ok: true };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_settings_a_replayed_run_changed_do_not_hold_for_reading_its_writes_back(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
) -> None:
    outcome = on(runs_on, runtime, notes, UNSETTLER)
    result = replayed(conn, runs_on, runtime, notes, UNSETTLER, outcome.request_id, mode)
    assert result.verdict == "diverged", (result.error, result.divergences[:2])
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


# --- the same leftovers from a request the gateway runs (not a replay): its connection serves the next one


def test_a_session_wide_setting_a_request_made_does_not_hold_for_the_next_request_on_its_connection(
    runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    on(runs_on, runtime, notes, MOVER)
    on(runs_on, runtime, notes, RAW_WRITER)  # relation "notes" does not exist, on search_path pg_catalog


def test_a_session_lock_a_request_took_is_not_left_on_its_connection(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    on(runs_on, runtime, notes, LOCKER)
    held = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", [runs_on.info.backend_pid]
    ).fetchone()
    assert held == (0,)


# A replayed run that writes JSON nested deeper than Python reads (only when replayed: its recording is
# clean): what the replay reads back of its writes cannot be read.
BLOBS = """
CREATE TABLE blobs (id serial PRIMARY KEY, data jsonb NOT NULL);
GRANT SELECT, INSERT ON blobs TO flux_service;
GRANT USAGE ON SEQUENCE blobs_id_seq TO flux_service;
SELECT flux.track('blobs');
"""
NESTER = ts(
    "nester",
    """
export default async function (req, ctx) {
  const { rows: [seen] } = await ctx.db.sql("SELECT current_setting('flux.replay_call', true) AS call", []);
  if (seen.call) {
    await ctx.db.sql("INSERT INTO blobs (data) SELECT (repeat('[', 5000) || repeat(']', 5000))::jsonb", []);
  }
  return { ok: true };
}
""",
)


# Deep enough that no report can hold it (orjson writes at most 254 levels), not so deep it cannot be read.
FOLDER = ts(
    "folder",
    NESTER.code.decode().replace("5000", "500"),
)


# A request that wrote JSON deeper than a report holds (orjson writes at most 254 levels) but not too deep to
# read: its recorded writes are the pins a replay hands to the database.
DEEP_WRITER = ts(
    "deep_writer",
    """export default async (req, ctx) =>
  ctx.db.sql("INSERT INTO blobs (data) SELECT (repeat('[', 300) || repeat(']', 300))::jsonb", []);""",
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("fn", "verdicts", "rows"),
    [
        (
            FOLDER,
            ("diverged", "error"),
            0,
        ),  # its replay writes JSON too deep to report: the verdict is written
        (NESTER, ("diverged", "error"), 0),  # its replay writes JSON too deep to read back
        (DEEP_WRITER, ("same", "error"), 1),  # it wrote JSON deeper than a report holds
    ],
    ids=["too-deep-to-report", "too-deep-to-read-back", "recorded-too-deep-to-report"],
)
def test_json_nested_too_deep_for_a_report_or_for_python_ends_each_replay_with_a_verdict(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
    fn: Function,
    verdicts: tuple[str, ...],
    rows: int,
) -> None:
    conn.execute(BLOBS.encode())
    outcome = on(runs_on, runtime, notes, fn)
    result = replayed(conn, runs_on, runtime, notes, fn, outcome.request_id, mode)  # and its answer written
    assert result.verdict in verdicts, (result.error, result.divergences[:2])
    assert conn.execute("SELECT count(*) FROM blobs").fetchone() == (rows,)
    assert conn.execute("SELECT count(*) FROM flux.replay_grants").fetchone() == (0,)


# A request whose raw SQL named a table of another database (refused then, recorded all the same): the names
# its queries used are resolved for as-of, and one that cannot be a table here must not stop its replay.
ELSEWHERE = ts(
    "elsewhere",
    """
export default async function (req, ctx) {
  await ctx.db.query({ insert: "notes", values: { body: "kept" } });
  let caught = null;
  try { await ctx.db.sql("SELECT * FROM otherdb.public.notes", []); } catch (e) { caught = e.code; }
  return { caught };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_a_request_that_named_a_table_of_another_database_replays(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
) -> None:
    outcome = invoke(runs_on, runtime, ELSEWHERE, {"method": "POST", "path": "/"}, catalog=notes,
                     caller=Caller(role="service"))  # fmt: skip
    assert outcome.error is not None and "cross-database" in outcome.error.message  # it ended the transaction
    result = replayed(conn, runs_on, runtime, notes, ELSEWHERE, outcome.request_id, mode)
    assert result.verdict == "same", (result.error, result.divergences[:2])
