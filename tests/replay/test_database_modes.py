"""The `live` and `as-of` database modes on real Postgres and real Deno: a request replayed on its own code is
`same` whatever the database generated for it (identity and serial ids, now() and clock_timestamp(), random
uuids, a trigger's updated_at, numeric and jsonb spelling); data changed since shows at the read that saw it
(`live`) and is rewound (`as-of`); writes by others while it ran are drift, never a divergence; untracked tables
are named; and a replay leaves nothing behind, nor shows anything to another session while it runs."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from flux.data import Catalog, load_catalog
from flux.gateway.handler import WithBuiltins
from flux.replay import Replay, ReplayResult, built_code, recording_of, replay
from flux.runtime import Caller, Outcome, Runtime, invoke
from flux.runtime.fetch import FetchPolicy
from flux.runtime.invoke import Function
from flux.trace.tree import load_trace
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
BEGIN NEW.id := NEW.id * 1000 + (random() * 999)::int; NEW.code := 'T' || NEW.id; RETURN NEW; END $$;
CREATE TRIGGER tickets_number BEFORE INSERT ON tickets FOR EACH ROW EXECUTE FUNCTION number_ticket();
CREATE TABLE scratch (id serial PRIMARY KEY, note text NOT NULL);
COMMENT ON TABLE scratch IS '@flux:untracked';
GRANT SELECT, INSERT, UPDATE, DELETE ON items, counters, tickets, scratch TO flux_user, flux_service;
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
        outcome = invoke(conn, runtime, fn, {"method": "POST", "path": "/", "body": body or {}}, catalog=store,
                         caller=Caller(role=role), fetch_policy=LOCAL)  # fmt: skip
        assert outcome.error is None, outcome.error
        return outcome

    return run


@pytest.fixture
def replayed(conn: psycopg.Connection[Any], runtime: Runtime, store: Catalog) -> Any:
    """`replayed(request_id, function, mode, **options)` -> ReplayResult."""

    def replayed(request_id: str, fn: Function, mode: str, **options: Any) -> ReplayResult:
        how = Replay(WithBuiltins(runtime), built_code({fn.name: fn}), store, mode=mode,  # type: ignore[arg-type]
                     fetch_policy=LOCAL, **options)  # fmt: skip
        return replay(conn, recording_of(load_trace(conn, request_id)), how)

    return replayed


def same(result: ReplayResult) -> bool:
    return result.verdict == "same"


def why(result: ReplayResult) -> Any:
    return [(d.kind, d.at, d.message) for d in result.divergences][:3], result.state


# --- 1. identity and sequence values -------------------------------------------------------------------------

INSERTS = ts(
    "inserts",
    """
export default async function (req, ctx) {
  const item = await ctx.db.query({ insert: "items", values: { sku: req.body.sku }, returning: ["id", "sku"] });
  const many = await ctx.db.query({ insert: "counters", values: [{ name: "a" + req.body.sku }, { name: "b" + req.body.sku }],
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
        "SELECT output FROM flux.spans WHERE request_id = %s AND name = 'db:insert(tickets)'", [result.replay_id]
    ).fetchone()[0]
    recorded = conn.execute(
        "SELECT output FROM flux.spans WHERE request_id = %s AND name = 'db:insert(tickets)'", [first.request_id]
    ).fetchone()[0]
    assert replay_span["rows"] == recorded["rows"]  # the BEFORE trigger's own id is pinned too


# --- 2. now(), clock_timestamp(), gen_random_uuid() in defaults and in a BEFORE UPDATE trigger ---------------

STAMPS = ts(
    "stamps",
    """
export default async function (req, ctx) {
  const made = await ctx.db.query({ insert: "items", values: { sku: "s" },
                                    returning: ["id", "token", "created_at", "seen_at"] });
  const bumped = await ctx.db.query({ update: "counters", set: { hits: 5 }, where: { name: { eq: "home" } },
                                      returning: ["id", "hits", "updated_at"] });
  const touched = await ctx.db.query({ update: "items", set: { sku: "t" }, where: { id: { eq: made.rows[0].id } },
                                       returning: ["updated_at"] });
  return { made: made.rows[0], bumped: bumped.rows[0], touched: touched.rows[0] };
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


# --- 3. numeric and jsonb spelling ---------------------------------------------------------------------------

SPELLING = ts(
    "spelling",
    """
export default async function (req, ctx) {
  const made = await ctx.db.query({ insert: "items", values: { sku: "n", price: req.body.price,
                                    meta: { z: 1, a: { y: 2.50, b: [3.0] } } }, returning: ["id", "price", "meta"] });
  const read = await ctx.db.query({ select: "items", columns: ["price", "meta"], where: { id: { eq: made.rows[0].id } } });
  const raw = await ctx.db.sql("SELECT price, meta, price * 2 AS twice FROM items WHERE id = $1", [made.rows[0].id]);
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


# --- 4. as-of: the data read changed since -------------------------------------------------------------------

READER = ts(
    "reader",
    """
export default async function (req, ctx) {
  const counters = await ctx.db.query({ select: "counters", columns: ["id", "name", "hits"], order: [{ col: "id" }] });
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
  const before = await ctx.db.query({ select: "counters", columns: ["hits"], where: { name: { eq: "home" } } });
  await ctx.fetch(req.body.url + "/meanwhile");
  const after = await ctx.db.query({ select: "counters", columns: ["hits"], where: { name: { eq: "home" } } });
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
    assert first.at == ("db.query#1 db:select(counters)" if mode == "as-of" else "db.query#0 db:select(counters)")
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


# --- 6. untracked tables -------------------------------------------------------------------------------------

SCRATCH = ts(
    "scratch",
    """
export default async function (req, ctx) {
  const notes = await ctx.db.query({ select: "scratch", columns: ["note"] });
  const counters = await ctx.db.query({ select: "counters", columns: ["hits"], where: { name: { eq: "home" } } });
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
    assert result.state is not None and result.state.not_rewound == ["scratch"]
    assert result.to_json()["not_rewound"] == ["scratch"]
    later(conn, "INSERT INTO scratch (note) VALUES ('later')")
    changed = replayed(outcome.request_id, SCRATCH, "as-of")
    assert changed.verdict == "drift", why(changed)  # the data changed, not the code
    assert changed.state is not None and changed.state.not_rewound == ["scratch"]


# --- the database a replay leaves --------------------------------------------------------------------------

FLUX_RECORD_TABLES = ("flux.requests", "flux.spans")


def snapshot(conn: psycopg.Connection[Any], but: str | None = None) -> dict[str, list[str]]:
    """Every row of every table of the user's and of Flux's (the record of replay `but` aside), as text."""
    tables = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('public', 'flux') AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " ORDER BY 1"
    ).fetchall()
    rows: dict[str, list[str]] = {}
    for (table,) in tables:
        where = ""
        if table in FLUX_RECORD_TABLES and but is not None:
            column = "id" if table == "flux.requests" else "request_id"
            where = f" WHERE {column} <> '{but}'"
        found = conn.execute(f"SELECT t::text FROM {table} AS t{where}".encode()).fetchall()  # noqa: S608
        rows[table] = sorted(row[0] for row in found)
    return rows


# --- 8. as-of with a thousand writes to take back ------------------------------------------------------------

BUSY = ts(
    "busy",
    """
export default async function (req, ctx) {
  const items = await ctx.db.query({ select: "items", columns: ["id", "sku", "price"], order: [{ col: "id" }], limit: 20 });
  const made = await ctx.db.query({ insert: "counters", values: { name: req.body.name }, returning: ["id", "updated_at"] });
  return { items: items.rows, made: made.rows };
}
""",
)


def test_as_of_takes_back_a_thousand_writes_within_three_times_the_original(
    conn: psycopg.Connection[Any], run: Any, replayed: Any
) -> None:
    conn.execute(b"INSERT INTO items (sku) SELECT 'sku' || n FROM generate_series(1, 600) AS n")
    run(BUSY, {"name": "warm"})  # Deno and the plans warm
    originals = [run(BUSY, {"name": f"n{n}"}) for n in range(3)]
    later(conn, "UPDATE items SET sku = sku || '!', price = price + 1 WHERE id <= 400")
    later(conn, "DELETE FROM items WHERE id > 400 AND id <= 500")
    later(conn, "INSERT INTO items (sku) SELECT 'new' || n FROM generate_series(1, 100) AS n")
    later(conn, "UPDATE items SET meta = '{}' WHERE id <= 400")
    took, undone = [], []
    for outcome in originals:
        clock = time.perf_counter()
        result = replayed(outcome.request_id, BUSY, "as-of")
        took.append(time.perf_counter() - clock)
        assert same(result), why(result)
        assert result.state is not None
        undone.append(result.state.undone)
    original_us = sorted(
        row[0] for row in conn.execute(
            "SELECT duration_us FROM flux.requests WHERE id = ANY(%s::uuid[])",
            [[o.request_id for o in originals]],
        )
    )[1]
    ratio = sorted(took)[1] * 1e6 / original_us
    print(f"as-of undoing {undone}: {sorted(took)[1] * 1e3:.1f} ms, original {original_us / 1e3:.1f} ms, {ratio:.1f}x")
    assert min(undone) >= 1000
    assert ratio <= 3, (took, original_us)
