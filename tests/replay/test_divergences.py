"""Each kind of change to a function is reported as the FIRST divergence of its replay, with the right kind
and position and both sides, in recorded mode and in as-of (where the database really runs): it now throws,
returns another body, fetches another URL, makes one more or one fewer database call, changes a query's
filter, writes another value to a row, pushes another job."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from flux.data import Catalog, load_catalog
from flux.runtime import Caller, Runtime, invoke
from flux.runtime.invoke import Function
from tests.fixtures.runtime import ts
from tests.replay.test_fidelity import EVENTS_SQL, LOCAL, SECRETS, replayed

Conn = psycopg.Connection[Any]
ORIGINAL = """
export default async function (req, ctx) {
  const found = await ctx.db.query({ select: "events", where: { body: { eq: req.body.text } } });
  const { rows: [event] } = await ctx.db.query({
    insert: "events", values: { body: req.body.text }, returning: ["id", "at", "uid"],
  });
  const { rows: [seed] } = await ctx.db.query({
    update: "events", set: { amount: 20.5 }, where: { id: { eq: 1 } }, returning: ["id", "amount"],
  });
  const pong = await ctx.fetch(req.body.url + "/ping");
  const job = await ctx.queue.push("after", { id: event.id });
  const total = await ctx.db.query({ select: "events", aggregate: { count: "*" } });
  /* more */
  const found_n = found.rows.length;
  return { status: 201, body: { event, found: found_n, seed, pong, job: job.status, total: total.rows } };
}
"""
# case: (the change, the first divergence's kind, its position, the path of its first change or None)
TOTAL = 'await ctx.db.query({ select: "events", aggregate: { count: "*" } })'
MORE = 'await ctx.db.query({ select: "events", where: { id: { eq: 1 } } });'
CASES = {
    "throws": ("/* more */", 'throw new Error("now it throws");', "error", "error", None),
    "another body": ("rows.length;", "rows.length + 1;", "output", "response", "response.body.found"),
    "an unrecorded url": ('"/ping"', '"/pong"', "call", "fetch#0 fetch:GET 127.0.0.1", "args.url"),
    "one more db call": ("/* more */", MORE, "span", "db.query#4 db:select(events)", None),
    "one fewer db call": (TOTAL, "{ rows: [] }", "span", "db.query#3 db:select(events)", None),
    "another filter": ("body: { eq: req.body.text }", "body: { neq: req.body.text }", "call",
                       "db.query#0 db:select(events)", "args.where.body.eq"),
    "another value": ("amount: 20.5", "amount: 21.5", "call", "db.query#2 db:update(events)",
                      "args.set.amount"),
    "another inserted value": ("body: req.body.text }", 'body: req.body.text + "!" }', "call",
                               "db.query#1 db:insert(events)", "args.values.body"),
    "another job": ("{ id: event.id }", "{ id: event.id, again: true }", "call",
                    "queue.push#0 queue:push(after)", "args.payload.again"),
}  # fmt: skip
# case: where its write differs in as-of mode, and the first path at which it does (the column the code set,
# before the values the database generated for a write that, run with other arguments, was not pinned)
WRITES = {
    "another value": ("db.query#2 UPDATE public.events id=1", "row.new.amount"),
    "another inserted value": ("db.query#1 INSERT public.events id=", "row.new.body"),
}


@pytest.fixture
def events(conn: Conn, notes: Catalog) -> Catalog:
    conn.execute(EVENTS_SQL.encode())
    return load_catalog(conn)


def _recorded(conn: Conn, runtime: Runtime, catalog: Catalog, url: str) -> tuple[str, Function]:
    fn = ts("changing", ORIGINAL)
    request = {"method": "POST", "path": "/changing", "body": {"text": "hello", "url": url}}
    outcome = invoke(conn, runtime, fn, request, catalog=catalog, caller=Caller(role="user"), secrets=SECRETS,
                     fetch_policy=LOCAL)  # fmt: skip
    assert outcome.error is None, outcome.error
    return outcome.request_id, fn


@pytest.mark.parametrize("mode", ["recorded", "as-of"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_change_is_the_first_divergence_with_both_sides(
    conn: Conn, runtime: Runtime, events: Catalog, local_server: str, case: str, mode: str
) -> None:
    request_id, original = _recorded(conn, runtime, events, local_server)
    assert replayed(conn, runtime, events, request_id, original, mode).verdict == "same"
    old, new, kind, at, path = CASES[case]
    assert old in ORIGINAL
    changed = ts("changing", ORIGINAL.replace(old, new))
    result = replayed(conn, runtime, events, request_id, changed, mode)
    assert result.verdict == "diverged"
    first = result.divergences[0]
    shown = [(d.kind, d.at, d.message) for d in result.divergences]
    assert (first.kind, first.at.startswith(at)) == (kind, True), shown
    assert first.recorded is not None or first.replayed is not None
    if path is not None:
        assert path in [change.path for change in first.changes], first.changes
    if kind == "span" and case == "one more db call":
        assert (first.recorded, first.replayed) == (None, {"select": "events", "where": {"id": {"eq": 1}}})
    elif kind == "span":
        assert (first.recorded, first.replayed) == ({"select": "events", "aggregate": {"count": "*"}}, None)
    else:
        assert first.recorded is not None and first.replayed is not None, first
    if case in WRITES and mode == "as-of":  # the write itself, beside the call that made it
        (write,) = [d for d in result.divergences if d.kind == "mutation"]
        where, column = WRITES[case]
        assert write.at.startswith(where) and write.changes[0].path == column, write
        assert write.message.startswith(f"{write.at} differs at {column}"), write.message
    if case == "another value" and mode == "as-of":
        (write,) = [d for d in result.divergences if d.kind == "mutation"]
        assert [change.path for change in write.changes] == ["row.new.amount"], write.changes
        assert (write.recorded["new"]["amount"], write.replayed["new"]["amount"]) == (20.5, 21.5)
    assert conn.execute("SELECT amount FROM events WHERE id = 1").fetchone()[0] == 20.5  # nothing left behind
