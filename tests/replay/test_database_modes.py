"""The `live` and `as-of` database modes on real Postgres and real Deno: a request replayed on its own code is
`same` whatever the database generated for it (identity and serial ids, now() and clock_timestamp(), random
uuids, a trigger's updated_at, numeric and jsonb spelling); data changed since shows at the read that saw it
(`live`) and is rewound (`as-of`); writes by others while it ran are drift, never a divergence; untracked
tables are named; and a replay leaves nothing behind, nor shows anything to another session while it runs."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import conninfo

from flux import db, migrate, pipeline
from flux.data import Catalog, Limits, load_catalog
from flux.gateway.handler import WithBuiltins
from flux.replay import Replay, ReplayResult, built_code, grants_ahead, recording_of, replay
from flux.replay import state as replay_state
from flux.runtime import Caller, Outcome, Runtime, invoke
from flux.runtime.fetch import FetchPolicy
from flux.runtime.invoke import Function
from flux.trace.tree import load_trace
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.runtime import ts

LOCAL = FetchPolicy(allow=("127.0.0.1",))
MODES = ["live", "as-of"]

SCHEMA = """
CREATE TABLE items (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku        text NOT NULL,
    price      numeric(10, 2) NOT NULL DEFAULT 12.50,
    meta       jsonb NOT NULL DEFAULT '{"b": 1, "a": [1.0, 2.50]}',
    token      uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz
);
CREATE TABLE counters (
    id         serial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    hits       integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- A table's own BEFORE triggers: stamps on update, and one that sets the identity column itself.
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TRIGGER counters_touch BEFORE UPDATE ON counters FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, code text NOT NULL);
CREATE FUNCTION number_ticket() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.code = '?' THEN NEW.id := NEW.id * 1000 + (random() * 999)::int; NEW.code := 'T' || NEW.id; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tickets_number BEFORE INSERT ON tickets FOR EACH ROW EXECUTE FUNCTION number_ticket();
CREATE TABLE sessions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), who text, opened_at timestamptz DEFAULT now()
);
CREATE TABLE scratch (id serial PRIMARY KEY, note text NOT NULL);
COMMENT ON TABLE scratch IS '@flux:untracked';
GRANT SELECT, INSERT, UPDATE, DELETE ON items, counters, tickets, sessions, scratch
    TO flux_user, flux_service;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO flux_user, flux_service;
SELECT flux.track_all();
INSERT INTO counters (name, hits) VALUES ('home', 1), ('away', 2);
"""


@pytest.fixture
def store(conn: psycopg.Connection[Any]) -> Catalog:
    conn.execute(SCHEMA.encode())
    return load_catalog(conn)


@pytest.fixture
def run(conn: psycopg.Connection[Any], runtime: Runtime, store: Catalog) -> Any:
    """`run(function, body)` -> Outcome: one recorded request, committed like a real one."""

    def run(fn: Function, body: Any = None, role: str = "user") -> Outcome:
        request = {"method": "POST", "path": "/", "body": body or {}}
        outcome = invoke(
            conn, runtime, fn, request, catalog=store, caller=Caller(role=role), fetch_policy=LOCAL
        )
        assert outcome.error is None, outcome.error
        return outcome

    return run


@pytest.fixture
def replayed(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, store: Catalog
) -> Any:
    """`replayed(request_id, function, mode, **options)` -> ReplayResult."""

    def replayed(request_id: str, fn: Function, mode: str, **options: Any) -> ReplayResult:
        how = Replay(WithBuiltins(runtime), built_code({fn.name: fn}), store, mode=mode,  # type: ignore[arg-type]
                     fetch_policy=LOCAL, **options)  # fmt: skip
        return replay(conn, recording_of(load_trace(conn, request_id)), how, runs_on)

    return replayed


def same(result: ReplayResult) -> bool:
    return result.verdict == "same"


def why(result: ReplayResult) -> Any:
    return [(d.kind, d.at, d.message) for d in result.divergences][:3], result.state


# --- 1. identity and sequence values ------------------------------------------------------------------------

INSERTS = ts(
    "inserts",
    """
export default async function (req, ctx) {
  const item = await ctx.db.query({ insert: "items", values: { sku: req.body.sku },
                                  returning: ["id", "sku"] });
  const many = await ctx.db.query({ insert: "counters", values: [{ name: "a" + req.body.sku },
                                  { name: "b" + req.body.sku }],
                                    returning: ["id", "name"] });
  const ticket = await ctx.db.query({ insert: "tickets", values: { code: "?" }, returning: ["id", "code"] });
  return { item: item.rows[0], many: many.rows, ticket: ticket.rows[0] };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_identity_and_serial_ids_are_the_recorded_ones(
    conn: psycopg.Connection[Any], run: Any, replayed: Any, mode: str
) -> None:
    first = run(INSERTS, {"sku": "x"})
    run(INSERTS, {"sku": "y"})  # later ids taken: a live insert would get others
    result = replayed(first.request_id, INSERTS, mode)
    assert same(result), why(result)
    replay_span = conn.execute(
        "SELECT output FROM flux.spans WHERE request_id = %s AND name = 'db:insert(tickets)'",
        [result.replay_id],
    ).fetchone()[0]
    recorded = conn.execute(
        "SELECT output FROM flux.spans WHERE request_id = %s AND name = 'db:insert(tickets)'",
        [first.request_id],
    ).fetchone()[0]
    assert replay_span["rows"] == recorded["rows"]  # the BEFORE trigger's own id is pinned too


# --- 2. now(), clock_timestamp(), gen_random_uuid() in defaults and in a BEFORE UPDATE trigger --------------

STAMPS = ts(
    "stamps",
    """
export default async function (req, ctx) {
  const made = await ctx.db.query({ insert: "items", values: { sku: "s" },
                                    returning: ["id", "token", "created_at", "seen_at"] });
  const bumped = await ctx.db.query({ update: "counters", set: { hits: 5 }, where: { name: { eq: "home" } },
                                      returning: ["id", "hits", "updated_at"] });
  const touched = await ctx.db.query({ update: "items", set: { sku: "t" },
                                       where: { id: { eq: made.rows[0].id } }, returning: ["updated_at"] });
  const session = await ctx.db.query({ insert: "sessions", values: { who: "me" },
                                       returning: ["id", "opened_at"] });
  return { made: made.rows[0], bumped: bumped.rows[0], touched: touched.rows[0], session: session.rows[0] };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_time_and_uuid_defaults_and_trigger_stamps_are_the_recorded_ones(
    conn: psycopg.Connection[Any], run: Any, replayed: Any, mode: str
) -> None:
    outcome = run(STAMPS)
    time.sleep(0.01)  # a replay's now() is later than the original's
    result = replayed(outcome.request_id, STAMPS, mode)
    assert same(result), why(result)


RAW = ts(
    "raw",
    """
export default async function (req, ctx) {
  const made = await ctx.db.sql(
    "INSERT INTO sessions (id, who, opened_at) VALUES (gen_random_uuid(), $1, clock_timestamp()) RETURNING *",
    ["raw"]);
  const bumped = await ctx.db.sql(
    "UPDATE counters SET hits = hits + 1, updated_at = now() - random() * interval '1 day' RETURNING *", []);
  return { made: made.rows, bumped: bumped.rows.length };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_values_generated_in_raw_sql_are_the_recorded_ones(
    conn: psycopg.Connection[Any], run: Any, replayed: Any, mode: str
) -> None:
    outcome = run(RAW, role="service")
    result = replayed(outcome.request_id, RAW, mode)
    assert same(result), why(result)


def test_an_update_pin_without_an_old_row_goes_to_the_next_row_the_call_updates(
    conn: psycopg.Connection[Any], store: Catalog
) -> None:
    """All a failed run's recording can give (its writes were rolled back: flux.mutations has none of them) is
    the rows its update returned. Such a pin has no old row to match: it goes to the rows the call updates, in
    order."""
    replay_id = str(uuid.uuid4())
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO flux.replay_pins (replay_id, call, position, table_schema, table_name, op, row_pk, new)"
        " VALUES (%s, 'db.query#0', 0, 'public', 'counters', 'UPDATE', '{}',"
        ' \'{"updated_at": "2020-01-02T03:04:05+00:00"}\')',
        [replay_id],
    )
    conn.execute(
        "SELECT set_config('flux.request_id', %s, true), set_config('flux.replay_call', 'db.query#0', true)",
        [replay_id],
    )
    row = conn.execute(
        "UPDATE counters SET hits = 5 WHERE name = 'home'"
        " RETURNING hits, updated_at = '2020-01-02 03:04:05+00'::timestamptz"
    )
    assert row.fetchone() == (5, True)  # after the table's own trigger stamped it
    conn.execute("ROLLBACK")


# --- 3. numeric and jsonb spelling --------------------------------------------------------------------------

SPELLING = ts(
    "spelling",
    """
export default async function (req, ctx) {
  const made = await ctx.db.query({ insert: "items", values: { sku: "n", price: req.body.price,
                                    meta: { z: 1, a: { y: 2.50, b: [3.0] } } },
                                    returning: ["id", "price", "meta"] });
  const read = await ctx.db.query({ select: "items", columns: ["price", "meta"],
                                  where: { id: { eq: made.rows[0].id } } });
  const raw = await ctx.db.sql("SELECT price, meta, price * 2 AS twice FROM items WHERE id = $1",
                               [made.rows[0].id]);
  return { made: made.rows[0], read: read.rows, raw: raw.rows };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_numbers_and_json_key_order_compare_by_value(
    conn: psycopg.Connection[Any], run: Any, replayed: Any, mode: str
) -> None:
    outcome = run(SPELLING, {"price": "12.50"}, role="service")
    result = replayed(outcome.request_id, SPELLING, mode)
    assert same(result), why(result)


# --- 4. as-of: the data read changed since ------------------------------------------------------------------

READER = ts(
    "reader",
    """
export default async function (req, ctx) {
  const counters = await ctx.db.query({ select: "counters", columns: ["id", "name",
                                      "hits"], order: [{ col: "id" }] });
  const items = await ctx.db.query({ select: "items", columns: ["id", "sku"], order: [{ col: "id" }] });
  return { counters: counters.rows, items: items.rows };
}
""",
)


def later(conn: psycopg.Connection[Any], sql: str) -> None:
    """A write made after the recorded request, as psql would make it (recorded with no request id)."""
    conn.execute(sql.encode())


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ("UPDATE counters SET hits = 9 WHERE name = 'home'", "result.rows[0].hits"),
        ("DELETE FROM counters WHERE name = 'home'", "result.rows"),
        ("INSERT INTO counters (name) VALUES ('new')", "result.rows"),
    ],
    ids=["update", "delete", "insert"],
)
def test_live_reports_the_read_that_changed_and_as_of_rewinds_it(
    conn: psycopg.Connection[Any], run: Any, replayed: Any, change: str, path: str
) -> None:
    outcome = run(READER)
    later(conn, change)
    live = replayed(outcome.request_id, READER, "live")
    assert live.verdict == "drift", why(live)
    first = live.divergences[0]
    assert (first.kind, first.at) == ("call", "db.query#0 db:select(counters)"), why(live)
    assert any(c.path.startswith(path) for c in first.changes), first.changes
    assert live.state is not None and live.state.drift
    as_of = replayed(outcome.request_id, READER, "as-of")
    assert same(as_of), why(as_of)
    assert as_of.state is not None and as_of.state.undone == 1


def test_as_of_rewinds_many_later_writes_newest_first(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    conn.execute(b"INSERT INTO items (sku) VALUES ('a'), ('b'), ('c')")
    outcome = run(READER)
    later(conn, "UPDATE counters SET hits = hits + 1")
    later(conn, "UPDATE counters SET hits = hits * 10, name = name || '!' WHERE name = 'home'")
    later(conn, "DELETE FROM counters WHERE name = 'away'")
    later(conn, "INSERT INTO counters (name) VALUES ('away')")  # the deleted row's unique name, again
    later(conn, "DELETE FROM items WHERE sku = 'b'")
    later(conn, "UPDATE items SET sku = 'z' WHERE sku = 'c'")
    later(conn, "INSERT INTO items (sku) VALUES ('d')")
    before = snapshot(conn)
    as_of = replayed(outcome.request_id, READER, "as-of")
    assert same(as_of), why(as_of)
    assert snapshot(conn, but=as_of.replay_id) == before
    live = replayed(outcome.request_id, READER, "live")
    assert live.verdict == "drift", why(live)


UNORDERED = ts(
    "unordered",
    """
export default async function (req, ctx) {
  const bumped = await ctx.db.query({ update: "counters", set: { hits: 3 }, where: { hits: { gt: 0 } },
                                      returning: ["id", "hits"] });
  const all = await ctx.db.query({ select: "counters", columns: ["id", "hits"] });
  return { bumped: bumped.rows, all: all.rows };
}
""",
)


def test_rows_put_back_in_another_order_on_disk_still_replay_same(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    conn.execute(b"INSERT INTO counters (name, hits) SELECT 'c' || n, n FROM generate_series(1, 20) AS n")
    conn.execute(b"UPDATE counters SET hits = hits + 1 WHERE id % 3 = 0")
    outcome = run(UNORDERED)
    later(conn, "UPDATE counters SET hits = hits + 100 WHERE id % 2 = 0")
    result = replayed(outcome.request_id, UNORDERED, "as-of")
    assert same(result), why(result)


# --- 5. writes by others while the original ran -------------------------------------------------------------


class Peer:
    """A local HTTP server that, on each GET, runs `self.action()` (which may use its own connections) and
    answers {"ok": true}: a function's fetch to it happens while the function's transaction is open."""

    def __init__(self) -> None:
        self.action: Any = lambda: None
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer.action()
                body = json.dumps({"ok": True}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def peer() -> Iterator[Peer]:
    served = Peer()
    yield served
    served.server.shutdown()
    served.server.server_close()


TWICE = ts(
    "twice",
    """
export default async function (req, ctx) {
  const home = { select: "counters", columns: ["hits"], where: { name: { eq: "home" } } };
  const before = await ctx.db.query(home);
  await ctx.fetch(req.body.url + "/meanwhile");
  const after = await ctx.db.query(home);
  return { before: before.rows[0].hits, after: after.rows[0].hits };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_a_write_made_while_the_original_ran_is_drift(
    conn: psycopg.Connection[Any], dsn: str, run: Any, replayed: Any, peer: Peer, mode: str
) -> None:
    def write_meanwhile() -> None:
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("UPDATE counters SET hits = hits + 100 WHERE name = 'home'")

    peer.action = write_meanwhile
    outcome = run(TWICE, {"url": peer.url})
    assert outcome.response.body == {"before": 1, "after": 101}
    peer.action = lambda: None
    result = replayed(outcome.request_id, TWICE, mode)
    assert result.verdict == "drift", why(result)
    first = result.divergences[0]
    assert first.kind == "call" and first.state, first
    # as-of took the write back, so the second read differs; live runs on today's data, so the first does
    assert first.at == (
        "db.query#1 db:select(counters)" if mode == "as-of" else "db.query#0 db:select(counters)"
    )
    assert [row["op"] for row in result.state.drift] == ["UPDATE"]  # type: ignore[union-attr]


def test_a_write_committed_while_the_original_ran_but_begun_before_it_is_drift(
    conn: psycopg.Connection[Any], dsn: str, run: Any, replayed: Any
) -> None:
    """Two connections scripted step by step: a writer's transaction begins before the request and commits
    after the request read the row (so the request read the old value). As-of cannot tell when that writer
    committed, so it does not take the write back: the read differs, and that is drift, not a divergence."""
    with psycopg.connect(dsn) as writer:
        writer.execute("UPDATE counters SET hits = 50 WHERE name = 'home'")  # its transaction stays open
        outcome = run(READER)
        writer.commit()
    assert outcome.response.body["counters"][0]["hits"] == 1
    for mode in MODES:
        result = replayed(outcome.request_id, READER, mode)
        assert result.verdict == "drift", (mode, why(result))
        assert result.divergences[0].at == "db.query#0 db:select(counters)"


# --- 6. untracked tables ------------------------------------------------------------------------------------

SCRATCH = ts(
    "scratch",
    """
export default async function (req, ctx) {
  const notes = await ctx.db.query({ select: "scratch", columns: ["note"] });
  const counters = await ctx.db.query({ select: "counters", columns: ["hits"],
                                       where: { name: { eq: "home" } } });
  return { notes: notes.rows, counters: counters.rows };
}
""",
)


def test_as_of_names_the_tables_it_cannot_rewind(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    outcome = run(SCRATCH)
    result = replayed(outcome.request_id, SCRATCH, "as-of")
    assert same(result), why(result)
    assert result.state is not None and result.state.not_rewound == ["public.scratch"]
    assert result.to_json()["not_rewound"] == ["public.scratch"]
    later(conn, "INSERT INTO scratch (note) VALUES ('later')")
    changed = replayed(outcome.request_id, SCRATCH, "as-of")
    assert changed.verdict == "drift", why(changed)  # the data changed, not the code
    assert changed.state is not None and changed.state.not_rewound == ["public.scratch"]


def test_a_write_to_a_table_that_is_not_tracked_is_neither_rewound_nor_pinned(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    fn = ts(
        "jot",
        """
export default async function (req, ctx) {
  const note = await ctx.db.query({ insert: "scratch", values: { note: "n" }, returning: ["id"] });
  return { id: note.rows[0].id };
}
""",
    )
    outcome = run(fn)
    for mode in MODES:
        result = replayed(outcome.request_id, fn, mode)
        # its serial id is drawn again: the insert read back another id than the recorded one, as drift
        assert result.verdict == "drift", why(result)
        assert result.divergences[0].at == "db.query#0 db:insert(scratch)"
        assert result.state is not None
        assert result.state.not_rewound == (["public.scratch"] if mode == "as-of" else [])


@pytest.mark.parametrize(
    "call",
    [
        "flux.undo_mutations_by_table('{}')",
        "flux.undo_mutations_one_by_one(ARRAY[1::bigint])",
        "flux.writes_to_rewind(gen_random_uuid(), true, now(), now(), NULL, NULL, '{public}', '{counters}')",
        "flux.rewound_ids(gen_random_uuid(), true, now(), NULL, '{public}', '{counters}')",
        "(SELECT count(*) FROM flux.mutations_since(now(), NULL, NULL, '{public}', '{counters}'))",
        "flux.rewind_tables(gen_random_uuid(), true, '{counters}', '{}', '{}', now(), now())",
        "flux.replay_prepare('secret', gen_random_uuid(), '[]', true, '{counters}', '', '{}', '{}', now(),"
        " now())",
        "flux.replay_captured()",
    ],
)
def test_a_request_cannot_rewind_anything(
    conn: psycopg.Connection[Any], runtime: Runtime, store: Catalog, call: str
) -> None:
    """Rewinding is the replay's alone: a request's transaction commits, so it would keep what it undid."""
    later(conn, "UPDATE counters SET hits = 9 WHERE name = 'home'")
    fn = ts("rewinder", f"export default async (req, ctx) => ctx.db.sql(`SELECT {call}`, []);")
    outcome = invoke(conn, runtime, fn, {"method": "POST", "path": "/"}, catalog=store,
                     caller=Caller(role="service"))  # fmt: skip
    assert outcome.error is not None and outcome.error.code == "FX204", outcome.error
    assert "permission denied for function" in outcome.error.message
    assert conn.execute("SELECT hits FROM counters WHERE name = 'home'").fetchone() == (9,)


def test_a_rewind_that_cannot_be_made_is_an_error_that_says_so(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    outcome = run(READER)
    later(conn, "DELETE FROM counters WHERE name = 'away'")
    later(conn, "ALTER TABLE counters ADD COLUMN tag text NOT NULL DEFAULT 'x'")
    later(conn, "ALTER TABLE counters ALTER COLUMN tag DROP DEFAULT")  # the deleted row no longer fits
    before = snapshot(conn)
    result = replayed(outcome.request_id, READER, "as-of")
    assert result.verdict == "error" and result.error is not None, why(result)
    assert result.error["code"] == "FX520" and "tag" in result.error["message"], result.error
    assert snapshot(conn) == before  # not even recorded: it never ran
    assert same(replayed(outcome.request_id, READER, "recorded"))


def test_a_rewind_does_not_wait_long_for_a_row_another_session_is_writing(
    conn: psycopg.Connection[Any], dsn: str, run: Any, replayed: Any
) -> None:
    outcome = run(READER)
    later(conn, "UPDATE counters SET hits = 9 WHERE name = 'home'")
    with psycopg.connect(dsn) as writer:
        writer.execute("UPDATE counters SET hits = 10 WHERE name = 'home'")  # holds the row until it ends
        clock = time.perf_counter()
        result = replayed(outcome.request_id, READER, "as-of")
        waited = time.perf_counter() - clock
        writer.rollback()
    assert result.verdict == "error" and result.error is not None, why(result)
    assert result.error["code"] == "FX520" and "another session" in result.error["message"]
    assert waited < 5
    assert same(replayed(outcome.request_id, READER, "as-of"))  # once it is done


class _Watching(WithBuiltins):
    """The runtime, noting whether each run's database was set up when the run was handed over (`apart`: the
    executor says whether its runs go on in a process of their own)."""

    def __init__(self, runtime: Runtime, apart: bool) -> None:
        super().__init__(runtime)
        self.apart = apart
        self.set_up_first: list[bool] = []

    def runs_apart(self, function: Function) -> bool:
        return self.apart and super().runs_apart(function)

    def execute(self, function: Function, request: Any, host: Any) -> Any:
        self.set_up_first.append(host.setup is None)
        return super().execute(function, request, host)


@pytest.mark.parametrize("apart", [True, False], ids=["deno-apart", "in-process"])
def test_a_replay_sets_its_database_up_while_a_run_apart_starts_and_before_any_other(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    store: Catalog,
    run: Any,
    apart: bool,
) -> None:
    """Deno runs in its own process: its run is handed over first and the rewind is made while it starts (the
    two overlap; Deno then calls `Host.run_started`). An executor running in this process (Wasm) gets its
    database set up before the run, whose time is then its own."""
    outcome = run(READER)
    later(conn, "UPDATE counters SET hits = 9 WHERE name = 'home'")
    executor = _Watching(runtime, apart)
    how = Replay(executor, built_code({READER.name: READER}), store, mode="as-of")
    result = replay(conn, recording_of(load_trace(conn, outcome.request_id)), how, runs_on)
    assert same(result) and result.state is not None and result.state.undone == 1, why(result)
    assert executor.set_up_first == [not apart]


def test_the_time_a_rewind_waits_is_not_the_runs_own(
    conn: psycopg.Connection[Any], dsn: str, run: Any, replayed: Any
) -> None:
    """The rewind waits for a row another session holds (up to half a second) while Deno starts the run, whose
    first query waits for the rewind: that wait does not count against the run's time limit (here shorter
    than the wait), so the replay is `same`, not cut off."""
    quick = dataclasses.replace(READER, limits=dataclasses.replace(READER.limits, timeout_ms=150))
    outcome = run(quick)
    later(conn, "UPDATE counters SET hits = 9 WHERE name = 'home'")
    with psycopg.connect(dsn) as writer:
        writer.execute("UPDATE counters SET hits = 10 WHERE name = 'home'")  # holds the row for 0.3 s
        releases = threading.Timer(0.3, writer.rollback)
        releases.start()
        clock = time.perf_counter()
        result = replayed(outcome.request_id, quick, "as-of")
        waited = time.perf_counter() - clock
        releases.join()
    assert waited > 0.25  # it did wait for the row
    assert same(result), why(result)


def test_a_run_that_calls_nothing_while_the_rewind_waits_gets_no_more_than_its_own_time(
    conn: psycopg.Connection[Any], dsn: str, run: Any, replayed: Any
) -> None:
    """The time the rewind takes is given back only to a run that waited for it (a call made meanwhile): code
    that blocks on its own past its time limit while the rewind waits is cut off at its limit, as it would be
    in production, and the replay shows it (the deploy gate refuses a version that would time out)."""
    quick = dataclasses.replace(READER, limits=dataclasses.replace(READER.limits, timeout_ms=200))
    outcome = run(quick)
    later(conn, "UPDATE counters SET hits = 9 WHERE name = 'home'")
    slower = READER.code.decode().replace(
        "{\n", "{\n  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 450);\n", 1
    )
    assert "Atomics.wait" in slower
    candidate = dataclasses.replace(ts("reader", slower), limits=quick.limits)
    with psycopg.connect(dsn) as writer:
        writer.execute("UPDATE counters SET hits = 10 WHERE name = 'home'")  # holds the row for 0.35 s
        releases = threading.Timer(0.35, writer.rollback)
        releases.start()
        result = replayed(outcome.request_id, candidate, "as-of")
        releases.join()
    assert result.verdict == "diverged", why(result)
    assert result.response is not None and result.response["body"]["code"] == "FX301", result.response


@pytest.mark.parametrize("stopped_by", ["lock_timeout", "statement_timeout"])
def test_a_run_whose_rewind_fails_while_it_runs_sends_nothing_out_and_leaves_nothing(
    conn: psycopg.Connection[Any], dsn: str, runs_on: psycopg.Connection[Any], run: Any, replayed: Any,
    peer: Peer, stopped_by: str,
) -> None:  # fmt: skip
    """The rewind fails (a row another session holds past its lock wait, or past the role's statement timeout)
    while Deno already runs the function: the replay could not run (FX520), so none of the run's calls goes
    out, not even a fetch `live_fetch` would send, and the database, its grants and the request connection
    are as they were."""
    outcome = run(READER, {"url": peer.url})
    later(conn, "UPDATE counters SET hits = 9 WHERE name = 'home'")
    fetched: list[str] = []
    peer.action = lambda: fetched.append("fetched")
    fetching = READER.code.decode().replace("{\n", "{\n  await ctx.fetch(req.body.url + '/out');\n", 1)
    limits = Limits(statement_timeouts_ms=(("user", 100),)) if stopped_by == "statement_timeout" else Limits()
    before = snapshot(conn)
    with psycopg.connect(dsn) as writer:
        writer.execute("UPDATE counters SET hits = 10 WHERE name = 'home'")  # held past the rewind's wait
        result = replayed(outcome.request_id, ts("reader", fetching), "as-of", live_fetch=True, limits=limits)
        writer.rollback()
    assert result.verdict == "error" and result.error is not None, why(result)
    assert result.error["code"] == "FX520", result.error
    words = "another session" if stopped_by == "lock_timeout" else "within the statement timeout of 100 ms"
    assert words in result.error["message"], result.error
    assert fetched == []
    assert snapshot(conn) == before
    assert conn.execute("SELECT count(*) FROM flux.replay_grants").fetchone() == (0,)
    assert runs_on.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# --- 7. isolation: nothing a replay does is seen, nor left -------------------------------------------------

WRITER = """
export default async function (req, ctx) {
  const made = await ctx.db.query({ insert: "items", values: { sku: "w" }, returning: ["id"] });
  await ctx.db.query({ update: "counters", set: { hits: 7 }, where: { name: { eq: "home" } } });
  await ctx.db.query({ delete: "tickets", where: { code: { eq: "gone" } } });
  const job = await ctx.queue.push("after", { id: made.rows[0].id });
  OBSERVE
  return { id: made.rows[0].id, job: job.status };
}
"""


def relation_locks(conn: psycopg.Connection[Any], pid: int) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT mode FROM pg_locks WHERE pid = %s AND locktype = 'relation' AND granted", [pid]
    )
    return {row[0] for row in rows}


@pytest.mark.parametrize("mode", MODES)
def test_a_replay_is_invisible_while_it_runs_and_leaves_the_database_as_it_was(
    conn: psycopg.Connection[Any], dsn: str, run: Any, replayed: Any, peer: Peer, mode: str
) -> None:
    conn.execute(b"INSERT INTO tickets (code) OVERRIDING SYSTEM VALUE VALUES ('gone'), ('kept')")
    original = ts("writer", WRITER.replace("OBSERVE", ""))
    outcome = run(original, {"url": peer.url})
    later(conn, "UPDATE counters SET hits = 8 WHERE name = 'home'")  # as-of takes this back, live keeps it
    later(conn, "INSERT INTO items (sku) VALUES ('later')")
    before = snapshot(conn)
    seen: dict[str, Any] = {}
    replay_pid = conn.info.backend_pid

    def observe() -> None:  # another session, while the replay's transaction is open (its writes made)
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SET lock_timeout = '2s'")
            seen["snapshot"] = snapshot(other)
            seen["home"] = other.execute("SELECT hits FROM counters WHERE name = 'home'").fetchone()
            seen["pins"] = other.execute("SELECT count(*) FROM flux.replay_pins").fetchone()
            seen["locks"] = relation_locks(other, replay_pid)
            other.execute("SET lock_timeout = '100ms'")
            seen["untouched row"] = other.execute(  # no table lock: writers of other rows go on
                "SELECT id FROM counters WHERE name = 'away' FOR UPDATE NOWAIT"
            ).fetchone()
            try:
                other.execute("SELECT id FROM counters WHERE name = 'home' FOR UPDATE NOWAIT")
                seen["its row"] = "free"
            except psycopg.errors.LockNotAvailable:
                seen["its row"] = "locked"

    peer.action = observe
    observing = ts("writer", WRITER.replace("OBSERVE", "await ctx.fetch(req.body.url + '/observe');"))
    result = replayed(outcome.request_id, observing, mode, live_fetch=True)
    assert "snapshot" in seen, why(result)
    assert seen["snapshot"] == before  # no row the replay wrote, took back or pinned shows
    assert seen["home"] == (8,) and seen["pins"] == (0,)
    assert seen["locks"] <= {"AccessShareLock", "RowShareLock", "RowExclusiveLock"}, seen["locks"]
    assert seen["untouched row"] is not None and seen["its row"] == "locked"
    # live runs the update on today's row (drift); as-of is as recorded until the extra fetch
    assert result.verdict == ("drift" if mode == "live" else "diverged"), why(result)
    assert snapshot(conn, but=result.replay_id) == before
    assert conn.execute("SELECT kind FROM flux.requests WHERE id = %s", [result.replay_id]).fetchone() == (
        "replay",
    )


def test_the_same_replays_leave_the_database_as_it_was(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    original = ts("writer", WRITER.replace("OBSERVE", ""))
    outcome = run(original)
    later(conn, "UPDATE counters SET hits = 8 WHERE name = 'home'")
    for mode in MODES:
        before = snapshot(conn)
        result = replayed(outcome.request_id, original, mode)
        # live keeps the row as today's write left it: the replay's update finds it otherwise (drift)
        assert result.verdict == ("same" if mode == "as-of" else "drift"), why(result)
        assert snapshot(conn, but=result.replay_id) == before


def test_live_leaves_the_rows_others_wrote_since_as_they_are(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    """The request deleted a row that another write made again since: live does not bring the request's
    row back over it (that would collide), it runs on today's row, here the same as the one deleted."""
    conn.execute(b"INSERT INTO tickets (id, code) OVERRIDING SYSTEM VALUE VALUES (5, 'gone')")
    original = ts("writer", WRITER.replace("OBSERVE", ""))
    outcome = run(original)
    later(conn, "INSERT INTO tickets (id, code) OVERRIDING SYSTEM VALUE VALUES (5, 'gone')")
    result = replayed(outcome.request_id, original, "live")
    assert same(result), why(result)
    assert result.state is not None and result.state.undone == 2  # the insert and the update, not the delete
    as_of = replayed(outcome.request_id, original, "as-of")
    assert same(as_of), why(as_of)


# --- what the rewind copes with: keys that change, values that move between rows, partitions, no superuser --


OVERVIEW = ts(
    "overview",
    """
export default async function (req, ctx) {
  const readings = await ctx.db.query({ select: "readings", order: [{ col: "id" }, { col: "year" }] });
  const counters = await ctx.db.query({ select: "counters", columns: ["id", "name"],
                                      order: [{ col: "id" }] });
  return { readings: readings.rows, counters: counters.rows };
}
""",
)
LATER_WRITES = {
    # a key changes (that table is rewound one write at a time), a row moves to another partition
    "keys and partitions": [
        "UPDATE counters SET id = id + 100 WHERE name = 'home'",
        "UPDATE readings SET year = 2026 WHERE id = 1",
        "DELETE FROM readings WHERE id = 2",
        "INSERT INTO readings VALUES (4, 2025, 4.5)",
        "UPDATE readings SET value = value * 2",
    ],
    # two rows swap a unique value: undone in one statement that would collide, so one write at a time
    "a unique value moved": [
        "UPDATE counters SET name = 'tmp' WHERE name = 'x'",
        "UPDATE counters SET name = 'x' WHERE name = 'y'",
        "UPDATE counters SET name = 'y' WHERE name = 'tmp'",
        "DELETE FROM readings WHERE id = 3",
    ],
}


@pytest.mark.parametrize("writes", LATER_WRITES.values(), ids=LATER_WRITES.keys())
def test_as_of_rewinds_changed_keys_moved_unique_values_and_partitioned_tables(
    conn: psycopg.Connection[Any], runtime: Runtime, store: Catalog, writes: list[str]
) -> None:
    conn.execute(
        b"""
        CREATE TABLE readings (id int, year int, value numeric, PRIMARY KEY (id, year))
            PARTITION BY LIST (year);
        CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES IN (2025);
        CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES IN (2026);
        GRANT SELECT ON readings TO flux_user;
        SELECT flux.track('readings');
        INSERT INTO readings VALUES (1, 2025, 1.5), (2, 2025, 2.5), (3, 2026, 3.5);
        INSERT INTO counters (name) VALUES ('x'), ('y');
        """
    )
    catalog = load_catalog(conn)
    outcome = invoke(conn, runtime, OVERVIEW, {"method": "GET", "path": "/"}, catalog=catalog,
                     caller=Caller(role="user"))  # fmt: skip
    assert outcome.error is None, outcome.error
    first_later = conn.execute("SELECT coalesce(max(id), 0) FROM flux.mutations").fetchone()[0]
    for write in writes:
        later(conn, write)
    undone = conn.execute("SELECT count(*) FROM flux.mutations WHERE id > %s", [first_later]).fetchone()[0]
    before = snapshot(conn)
    how = Replay(WithBuiltins(runtime), built_code({OVERVIEW.name: OVERVIEW}), catalog, mode="as-of")  # type: ignore[arg-type]
    with db.request_connection(conn) as runs_on:
        result = replay(conn, recording_of(load_trace(conn, outcome.request_id)), how, runs_on)
    assert same(result), why(result)
    assert result.state is not None and result.state.undone == undone
    assert snapshot(conn, but=result.replay_id) == before


KEYED = ts(
    "keyed",
    """
export default async function (req, ctx) {
  const scalar = await ctx.db.query({ select: "keyed_scalar", order: [{ col: "at" }] });
  const arrays = await ctx.db.query({ select: "keyed_array", order: [{ col: "code" }] });
  return { scalar: scalar.rows, arrays: arrays.rows };
}
""",
)


def test_as_of_takes_back_rows_whatever_the_types_of_their_keys(
    conn: psycopg.Connection[Any], runtime: Runtime, store: Catalog
) -> None:
    """The rows made since are found by their keys read as the key columns' types (bytea, timestamptz and
    numeric here), or, where a key column is an array (or a composite), as whole rows of the table: either
    way exactly those rows go, and the rows changed or deleted since come back."""
    conn.execute(
        b"""
        CREATE TABLE keyed_scalar (ref bytea, at timestamptz, amount numeric, note text,
                                   PRIMARY KEY (ref, at, amount));
        CREATE TABLE keyed_array (tags int[], code text, note text, PRIMARY KEY (tags, code));
        GRANT SELECT ON keyed_scalar, keyed_array TO flux_user;
        SELECT flux.track('keyed_scalar'), flux.track('keyed_array');
        INSERT INTO keyed_scalar VALUES (decode('00ff', 'hex'), '2026-01-01 10:00+00', 1.50, 'kept'),
                                        (decode('01', 'hex'), '2026-01-02 10:00+00', 2, 'changed');
        INSERT INTO keyed_array VALUES ('{1,2}', 'a', 'kept'), ('{3}', 'b', 'deleted');
        """
    )
    catalog = load_catalog(conn)
    outcome = invoke(conn, runtime, KEYED, {"method": "GET", "path": "/"}, catalog=catalog,
                     caller=Caller(role="user"))  # fmt: skip
    assert outcome.error is None, outcome.error
    original = conn.execute(b"SELECT * FROM keyed_scalar ORDER BY at").fetchall()
    for write in [
        "INSERT INTO keyed_scalar VALUES (decode('00ff', 'hex'), '2026-01-01 10:00+00', 1.5001, 'made')",
        "INSERT INTO keyed_scalar SELECT decode('02', 'hex'), '2026-01-03 10:00+00'::timestamptz"
        " + n * interval '1 s', n, 'made' FROM generate_series(1, 50) AS n",
        "UPDATE keyed_scalar SET note = 'changed again' WHERE ref = decode('01', 'hex')",
        "INSERT INTO keyed_array VALUES ('{1,2,3}', 'a', 'made'), ('{}', 'c', 'made')",
        "DELETE FROM keyed_array WHERE code = 'b'",
    ]:
        later(conn, write)
    how = Replay(WithBuiltins(runtime), built_code({KEYED.name: KEYED}), catalog, mode="as-of")  # type: ignore[arg-type]
    before = snapshot(conn)
    with db.request_connection(conn) as runs_on:
        result = replay(conn, recording_of(load_trace(conn, outcome.request_id)), how, runs_on)
    assert same(result), why(result)
    assert result.state is not None and result.state.undone == 55
    assert snapshot(conn, but=result.replay_id) == before
    assert conn.execute(b"SELECT * FROM keyed_scalar ORDER BY at").fetchall() != original  # still today's


STAMPED = ts(
    "stamped",
    """
export default async function (req, ctx) {
  const counters = await ctx.db.query({ select: "counters", columns: ["name", "hits",
                                      "updated_at"], order: [{ col: "id" }] });
  return { counters: counters.rows };
}
""",
)


@pytest.fixture
def owner_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A database migrated by a role that is not superuser (as on a managed Postgres): its DSN, as it."""
    suffix = uuid.uuid4().hex[:8]
    role, database = f"owner_{suffix}", f"flux_owned_{suffix}"
    with pg_server.admin() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN CREATEROLE".encode())
        admin.execute(f"CREATE DATABASE {database} OWNER {role}".encode())
    dsn = conninfo.make_conninfo(pg_server.dsn(database), user=role)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the BYPASSRLS warning, as a notice
            migrate.migrate(dsn)
        yield dsn
    finally:
        pg_server.drop_database(database)
        with pg_server.admin() as admin:
            admin.execute(f"DROP OWNED BY {role}".encode())
            admin.execute(f"DROP ROLE {role}".encode())


def test_without_superuser_as_of_rewinds_exactly_with_the_tables_triggers_on_or_granted_off(
    owner_dsn: str, pg_server: PostgresServer, runtime: Runtime
) -> None:
    with psycopg.connect(owner_dsn, autocommit=True) as owner, db.request_connection(owner) as runs_on:
        assert owner.execute("SELECT current_setting('is_superuser')").fetchone() == ("off",)
        owner.execute(SCHEMA.encode())
        owner.execute(b"CREATE TRIGGER born BEFORE INSERT ON counters FOR EACH ROW EXECUTE FUNCTION touch()")
        catalog = load_catalog(owner)
        outcome = invoke(owner, runtime, STAMPED, {"method": "GET", "path": "/"}, catalog=catalog,
                         caller=Caller(role="user"))  # fmt: skip
        assert outcome.error is None, outcome.error
        later(owner, "UPDATE counters SET hits = hits + 1")
        later(owner, "DELETE FROM counters WHERE name = 'away'")  # put back by an INSERT, which stamps it too
        how = Replay(WithBuiltins(runtime), built_code({STAMPED.name: STAMPED}), catalog, mode="as-of")  # type: ignore[arg-type]
        recording = recording_of(load_trace(owner, outcome.request_id))
        before = snapshot(owner)
        on = replay(owner, recording, how, runs_on)
        # the table's BEFORE UPDATE trigger stamped the rows it put back, and the rewind put them back again
        assert on.state is not None and not on.state.triggers_off and on.state.undone == 3
        assert same(on), why(on)
        assert snapshot(owner, but=on.replay_id) == before
        if owner.info.server_version < 150000:
            return  # a role is granted SET on a parameter from Postgres 15
        with pg_server.admin() as admin:
            user = owner.info.user
            admin.execute(f"GRANT SET ON PARAMETER session_replication_role TO {user}".encode())
        try:
            off = replay(owner, recording, how, runs_on)
        finally:
            with pg_server.admin() as admin:
                admin.execute(f"REVOKE SET ON PARAMETER session_replication_role FROM {user}".encode())
        assert off.state is not None and off.state.triggers_off and off.to_json()["triggers_off"] is True
        assert same(off), why(off)
        assert snapshot(owner, but=(on.replay_id, off.replay_id)) == before


LISTING = ts(
    "listing",
    """
export default async function (req, ctx) {
  const sessions = await ctx.db.query({ select: "sessions", columns: ["who"], order: [{ col: "who" }] });
  const counters = await ctx.db.query({ select: "counters", columns: ["name", "hits"],
                                        order: [{ col: "id" }] });
  return { sessions: sessions.rows, counters: counters.rows };
}
""",
)


@pytest.mark.parametrize(
    ("writes", "off"),
    [
        # rows of a table with no triggers of its own: put back with triggers on (only Flux's fire)
        (
            ["UPDATE sessions SET who = 'other' WHERE who = 's1'", "DELETE FROM sessions WHERE who = 's2'"],
            False,
        ),
        (["INSERT INTO sessions (who) SELECT 'new' || n FROM generate_series(1, 40) AS n"], False),
        # counters has a BEFORE UPDATE trigger of its own, which would stamp the row put back
        (["UPDATE counters SET hits = 7 WHERE name = 'home'"], True),
    ],
    ids=["few rows", "many rows", "a trigger of its own"],
)
def test_as_of_turns_the_tables_triggers_off_only_for_tables_with_triggers_of_their_own(
    conn: psycopg.Connection[Any], run: Any, replayed: Any, writes: list[str], off: bool
) -> None:
    """Turning them off (session_replication_role) makes the connection plan every statement again, so the
    rewind leaves them on where only Flux's triggers would fire; either way it is exact."""
    conn.execute(b"INSERT INTO sessions (who) VALUES ('s1'), ('s2'), ('s3')")
    outcome = run(LISTING)
    for write in writes:
        later(conn, write)
    before = snapshot(conn)
    result = replayed(outcome.request_id, LISTING, "as-of")
    assert same(result), why(result)
    assert result.state is not None and result.state.triggers_off is off
    assert snapshot(conn, but=result.replay_id) == before


def test_the_rows_a_rewind_puts_back_are_not_recorded_and_nothing_else_passes_for_a_rewind(
    conn: psycopg.Connection[Any], run: Any, runs_on: psycopg.Connection[Any]
) -> None:
    """Flux's recording trigger skips a rewind's writes (the setting a rewind sets, and the role that owns
    Flux); a request role's write under that setting is recorded as any other."""
    outcome = run(LISTING)
    later(conn, "INSERT INTO sessions (who) SELECT 'new' || n FROM generate_series(1, 40) AS n")
    recorded = b"SELECT count(*) FROM flux.mutations"
    conn.execute(b"BEGIN")
    try:
        before = conn.execute(recorded).fetchone()[0]
        rewound = conn.execute(
            "SELECT flux.rewind_tables(r.id, true, ARRAY['sessions'::regclass], '{}', '{}', r.started_at,"
            " r.started_at) FROM flux.requests r WHERE r.id = %s",
            [outcome.request_id],
        ).fetchone()[0]
        assert rewound["undone"] == 40 and not rewound["triggers_off"]
        assert conn.execute(recorded).fetchone()[0] == before  # 40 rows deleted, none recorded
    finally:
        conn.execute(b"ROLLBACK")
    with runs_on.transaction():  # as a request could not (raw SQL may not set Flux's settings), and more
        runs_on.execute(b"SET LOCAL ROLE flux_service")
        runs_on.execute(b"SELECT set_config('flux.replay_call', '@rewind', true)")
        runs_on.execute(b"INSERT INTO sessions (who) VALUES ('sneaky')")
    assert (
        conn.execute(
            b"SELECT count(*) FROM flux.mutations WHERE table_name = 'sessions' AND new ->> 'who' = 'sneaky'"
        ).fetchone()[0]
        == 1
    )


SIGN_IN = ts(
    "sign_in",
    """
export default async function (req, ctx) {
  const made = await ctx.db.query({ insert: "sessions", values: { who: "me" }, returning: ["who"] });
  return { made: made.rows };
}
""",
)


@pytest.mark.parametrize("fn", [SIGN_IN, LISTING], ids=["a request that wrote", "one that only read"])
@pytest.mark.parametrize("statistics", ["analyzed", "stale", "unsummarized"])
def test_a_rewind_reads_the_writes_since_the_request_not_the_tables_whole_history(
    conn: psycopg.Connection[Any], run: Any, fn: Function, statistics: str
) -> None:
    """Both modes find the writes made since the request through indexes (`at`'s BRIN, the primary key), so a
    table with a long history costs no more than one without: here 100,000 older mutations of `sessions`, of
    which a rewind reads a few hundred at most (the last block ranges of the BRIN). Once Postgres planned the
    rewind's statements generically (after five runs in a session), it read them all, every time; and when
    the statistics were older than that history (autovacuum analyzes a busy table now and then), it took the
    table's own index, which holds the whole history, for the cheaper way."""
    if statistics == "stale":  # analyzed before the history was written: the planner thinks it is not there
        conn.execute(b"ANALYZE flux.mutations")
    conn.execute(
        b"""INSERT INTO flux.mutations (request_id, table_schema, table_name, op, row_pk, old, new, changed,
                                        at)
            SELECT gen_random_uuid(), 'public', 'sessions', 'UPDATE',
                   jsonb_build_object('id', gen_random_uuid()), '{}', '{}', '{who}',
                   now() - interval '1 day' + n * interval '1 ms'
              FROM generate_series(1, 100000) AS n"""
    )
    if statistics == "analyzed":
        conn.execute(b"VACUUM ANALYZE flux.mutations")  # as autovacuum would: statistics, BRIN summarized
    elif statistics == "stale":
        conn.execute(b"SELECT brin_summarize_new_values('flux.mutations_at_idx')")
    outcome = run(fn)
    later(conn, "INSERT INTO sessions (who) VALUES ('later')")
    started, ended = conn.execute(
        "SELECT started_at, started_at + duration_us * interval '1 microsecond' FROM flux.requests"
        " WHERE id = %s",
        [outcome.request_id],
    ).fetchone()
    # the rows this session read from flux.mutations (counts it has not flushed to the statistics yet)
    read = (
        b"SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
        b" WHERE relid = 'flux.mutations'::regclass"
    )
    for as_of in (True, False):
        for n in range(8):  # past the 5 runs after which Postgres may plan a function's statement generically
            conn.execute(b"BEGIN")
            try:
                before = conn.execute(read).fetchone()[0]
                rewound = conn.execute(
                    "SELECT flux.rewind_tables(%s, %s, ARRAY['sessions'::regclass, 'counters'::regclass],"
                    " '{}', '{}', %s, %s)",
                    [outcome.request_id, as_of, started, ended],
                ).fetchone()[0]
                after = conn.execute(read).fetchone()[0]
            finally:
                conn.execute(b"ROLLBACK")
            own = 1 if fn is SIGN_IN else 0
            assert rewound["undone"] == own + as_of  # its own insert; as-of, the later one too
            if not (statistics == "unsummarized" and as_of and n == 0):  # the first reads them to summarize
                assert after - before < 1_000, (as_of, n, after - before)


def test_a_rewind_does_not_wait_for_a_vacuum_of_the_mutations_and_writes_never_wait_for_it(
    conn: psycopg.Connection[Any], run: Any, replayed: Any, pg_server: PostgresServer
) -> None:
    """The rewind summarizes the BRIN index only when it can lock flux.mutations for that at once: with a
    VACUUM (here its lock, held by another session) under way it goes on without; and while a replay holds
    that lock, a write (a row in flux.mutations) goes on."""
    outcome = run(LISTING)
    later(conn, "INSERT INTO sessions (who) VALUES ('later')")
    with psycopg.connect(conn.info.dsn, autocommit=True) as vacuum:
        vacuum.execute(b"BEGIN")
        vacuum.execute(b"LOCK TABLE flux.mutations IN SHARE UPDATE EXCLUSIVE MODE")
        clock = time.monotonic()
        result = replayed(outcome.request_id, LISTING, "as-of")
        assert time.monotonic() - clock < 5
        vacuum.execute(b"ROLLBACK")
    assert same(result) and result.state is not None and result.state.undone == 1, why(result)
    with conn.transaction(force_rollback=True):  # as the replay's transaction holds it
        conn.execute(b"LOCK TABLE flux.mutations IN SHARE UPDATE EXCLUSIVE MODE")
        with psycopg.connect(conn.info.dsn, autocommit=True) as writer:
            writer.execute(b"SET lock_timeout = '2s'")
            writer.execute(b"INSERT INTO sessions (who) VALUES ('meanwhile')")  # recorded: a mutation row


# --- the database a replay leaves --------------------------------------------------------------------------

FLUX_RECORD_TABLES = ("flux.requests", "flux.spans")


def snapshot(conn: psycopg.Connection[Any], but: str | tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Every row of every table of the user's and of Flux's (the record of the replays `but` aside, and the
    grant of a running replay's transaction: the one row it commits, taken back when it ends)."""
    replays = [but] if isinstance(but, str) else list(but)
    tables = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('public', 'flux') AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " ORDER BY 1"
    ).fetchall()
    rows: dict[str, list[str]] = {}
    for (table,) in tables:
        if table == "flux.replay_grants":  # a running replay's (tests/replay/test_hostile.py)
            continue
        where = ""
        if table in FLUX_RECORD_TABLES:
            where = " WHERE {} <> ALL(%s::uuid[])".format("id" if table == "flux.requests" else "request_id")
        found = conn.execute(
            f"SELECT t::text FROM {table} AS t{where}".encode(), [replays] if where else None
        )
        rows[table] = sorted(row[0] for row in found)
    return rows


def test_replays_back_to_back_write_the_next_ones_grant_with_their_record_and_leave_none(
    conn: psycopg.Connection[Any], run: Any, replayed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In grants_ahead (a window, a bisect, a gate), each replay writes the next one's grant with its own
    record: only the first takes a round trip to be granted; the grant left at the end is deleted, and one
    written ahead too long ago is not used."""
    outcome = run(LISTING)
    alone: list[bytes] = []  # the statements sent on the owner's connection, records aside
    sent = pipeline.run

    def counted(target: Any, statements: Any, *args: Any, **kwargs: Any) -> Any:
        if target is conn and not any(b"flux.requests" in s.sql for s in statements):  # not with a record
            alone.extend(s.sql for s in statements)
        return sent(target, statements, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run", counted)
    grants = b"SELECT count(*) FROM flux.replay_grants"
    with grants_ahead(conn):
        results = [replayed(outcome.request_id, LISTING, mode) for mode in ("as-of", "live", "as-of")]
        assert conn.execute(grants).fetchone() == (1,)  # the next one's, written ahead
    assert all(same(result) for result in results), [why(result) for result in results]
    assert sum(b"INSERT INTO flux.replay_grants" in sql for sql in alone) == 1
    alone.clear()
    assert conn.execute(grants).fetchone() == (0,)
    monkeypatch.setattr(replay_state, "_AHEAD_FOR_S", 0.0)
    with grants_ahead(conn):
        results = [replayed(outcome.request_id, LISTING, "as-of") for _ in range(2)]
    assert all(same(result) for result in results), [why(result) for result in results]
    assert sum(b"INSERT INTO flux.replay_grants" in sql for sql in alone) == 2  # a fresh one each time
    assert conn.execute(grants).fetchone() == (0,)


# --- 7b. any history of writes since, netted -------------------------------------------------------------

# A row's writes since the request, in any order and number: made, changed (its value or its key), deleted,
# made again under a key it or another row had.
HISTORY = st.lists(
    st.tuples(st.sampled_from(["insert", "update", "delete", "move"]), st.integers(1, 4), st.integers(0, 9)),
    min_size=1,
    max_size=12,
)
HISTORY_SQL = {
    "insert": "INSERT INTO histories (id, v) VALUES (%(key)s, %(value)s) ON CONFLICT DO NOTHING",
    "update": "UPDATE histories SET v = %(value)s, note = 'n' || %(value)s WHERE id = %(key)s",
    "delete": "DELETE FROM histories WHERE id = %(key)s",
    "move": "UPDATE histories SET id = %(value)s + 1 WHERE id = %(key)s"
    " AND NOT EXISTS (SELECT FROM histories WHERE id = %(value)s + 1)",
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.sets(st.integers(1, 4)), writes=HISTORY)
def test_as_of_puts_a_table_back_whatever_was_written_since(
    conn: psycopg.Connection[Any], initial: set[int], writes: list[tuple[str, int, int]]
) -> None:
    """flux.rewind_tables nets each row's writes to its first one since (a row that write made is deleted, any
    other is put back as that write found it, by an UPDATE or, when it is gone today, an INSERT), or takes
    them back one at a time where a write moved a key: the table is as it was, every time."""
    conn.execute(b"CREATE TABLE IF NOT EXISTS histories (id int PRIMARY KEY, v int NOT NULL, note text)")
    conn.execute(b"SELECT flux.track('histories')")
    conn.execute(b"DELETE FROM histories")
    for key in sorted(initial):
        conn.execute(b"INSERT INTO histories (id, v) VALUES (%s, 0)", [key])
    content = b"SELECT coalesce(jsonb_agg(h ORDER BY h.id), '[]') FROM histories AS h"
    before = conn.execute(content).fetchone()[0]
    (started,) = conn.execute(b"SELECT clock_timestamp()").fetchone()
    for op, key, value in writes:
        conn.execute(HISTORY_SQL[op].encode(), {"key": key, "value": value})
    conn.execute(b"BEGIN")
    try:
        rewound = conn.execute(
            b"SELECT flux.rewind_tables(gen_random_uuid(), true, ARRAY['histories'::regclass], '{}', '{}',"
            b" %s, %s)",
            [started, started],
        ).fetchone()[0]
        assert conn.execute(content).fetchone()[0] == before, (writes, rewound)
    finally:
        conn.execute(b"ROLLBACK")


# --- 8. as-of with a thousand writes to take back -----------------------------------------------------------

BUSY = ts(
    "busy",
    """
export default async function (req, ctx) {
  const items = await ctx.db.query({ select: "items", columns: ["id", "sku",
                                   "price"], order: [{ col: "id" }], limit: 20 });
  const made = await ctx.db.query({ insert: "counters", values: { name: req.body.name },
                                  returning: ["id", "updated_at"] });
  return { items: items.rows, made: made.rows };
}
""",
)


def test_as_of_takes_back_a_thousand_writes_in_a_few_times_the_original_requests_time(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    """Server time (the replay's own duration, the original's recorded duration; both without loading or
    writing a record), medians of three. The figure is printed (pytest -s); the bound only catches a
    rewind that went back to one statement per write (about 100x here)."""
    conn.execute(b"INSERT INTO items (sku) SELECT 'sku' || n FROM generate_series(1, 600) AS n")
    run(BUSY, {"name": "warm"})  # Deno and the plans warm
    originals = [run(BUSY, {"name": f"n{n}"}) for n in range(3)]
    quiet = [replayed(outcome.request_id, BUSY, "as-of") for outcome in originals]
    later(conn, "UPDATE items SET sku = sku || '!', price = price + 1 WHERE id <= 400")
    later(conn, "DELETE FROM items WHERE id > 400 AND id <= 500")
    later(conn, "INSERT INTO items (sku) SELECT 'new' || n FROM generate_series(1, 100) AS n")
    later(conn, "UPDATE items SET meta = '{}' WHERE id <= 400")
    busy = [replayed(outcome.request_id, BUSY, "as-of") for outcome in originals]
    assert all(same(result) for result in quiet + busy), [why(result) for result in quiet + busy]
    assert min(result.state.undone for result in busy if result.state) >= 1000
    original_us = sorted(
        row[0] for row in conn.execute(
            "SELECT duration_us FROM flux.requests WHERE id = ANY(%s::uuid[])",
            [[o.request_id for o in originals]],
        )
    )[1]  # fmt: skip
    quiet_us = sorted(result.server_us for result in quiet)[1]
    busy_us = sorted(result.server_us for result in busy)[1]
    print(
        f"\noriginal {original_us / 1e3:.1f} ms; as-of with its own write to undo {quiet_us / 1e3:.1f} ms"
        f" ({quiet_us / original_us:.1f}x); as-of undoing 1000 writes {busy_us / 1e3:.1f} ms"
        f" ({busy_us / original_us:.1f}x)"
    )
    assert busy_us <= 20 * original_us, (busy_us, original_us)
