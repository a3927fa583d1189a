"""Attacks on the Deno runtime's isolation (issue 22): each one worked against a long-lived Deno process that
ran every call in a plain node:vm context. A host call belongs to the run that made it; nothing a run does
reaches the worker's realm or a later run."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from flux.runtime import Runtime
from tests.fixtures.runtime import span_names, ts

Conn = psycopg.Connection[Any]


DANGLING_WRITE = ts(
    "dangling",
    "export default async function (req: any, ctx: any) {"
    "  ctx.log('first').then(() => ctx.db.query({insert: 'notes', values: {body: 'dangling'}}));"
    "  return {left: 'pending'};"
    "}",
)
READER = ts(
    "reader",
    "export default async function (req: any, ctx: any) {"
    "  return (await ctx.db.query({select: 'notes', columns: ['body']})).rows;"
    "}",
)


def test_calls_left_pending_run_in_their_own_request_never_the_next(
    conn: Conn, call: Any, one_deno: Runtime
) -> None:
    """The missing `await`: the write lands in the request that made it, with its tenant, and in its trace."""
    first = call(DANGLING_WRITE)
    second = call(READER, role="service")
    assert first.error is None and second.error is None, (first.error, second.error)
    assert span_names(conn, first.request_id) == [
        "function:dangling", "clock:now", "clock:random", "log:info", "db:insert(notes)",
    ]  # fmt: skip
    assert span_names(conn, second.request_id) == ["function:reader", "clock:now", "clock:random",
                                                     "db:select(notes)"]  # fmt: skip
    mutations = conn.execute("SELECT request_id::text, new ->> 'body' FROM flux.mutations").fetchall()
    assert mutations == [(first.request_id, "dangling")]


def test_a_dangling_chain_of_an_anonymous_run_never_runs_as_the_service_role(
    conn: Conn, call: Any, one_deno: Runtime
) -> None:
    chain = ts(
        "chain",
        "export default async function (req: any, ctx: any) {"
        "  ctx.log('a').then(() => ctx.log('b'))"
        "    .then(() => ctx.db.sql('SELECT count(*) AS n FROM flux.requests')).catch(() => {});"
        "  return 'done';"
        "}",
    )
    anonymous = call(chain, role="anon")
    service = call(READER, role="service")
    assert anonymous.error is None and service.error is None
    spans = conn.execute(
        "SELECT name, ok, error ->> 'code' FROM flux.spans WHERE request_id = %s ORDER BY seq",
        (anonymous.request_id,),
    ).fetchall()
    assert spans[-1][:2] == ("sql:select(flux.requests)", False)  # refused: anon may not run raw SQL
    assert not [name for name in span_names(conn, service.request_id) if name.startswith("sql:")]


ESCAPES = """
const tried: Record<string, string> = {};
function probe(name: string, value: any) {
  try {
    const F = (typeof value === "function" ? value : value?.constructor)?.constructor;
    const g = F?.("return globalThis")?.();
    if (g && g !== globalThis) tried[name] = "escaped: " + typeof g.Deno;
  } catch (e) { /* refused: good */ }
  try {
    const proto = Object.getPrototypeOf(value);
    if (proto && proto !== Object.prototype && proto !== Function.prototype && proto !== Array.prototype
        && proto !== Promise.prototype && proto !== Error.prototype && !(proto instanceof Object)
        && Object.getPrototypeOf(proto) !== null) tried[name + ".proto"] = "foreign prototype";
  } catch (e) { /* refused */ }
}
export default async function (req: any, ctx: any) {
  probe("ctx", ctx); probe("ctx.db", ctx.db); probe("ctx.db.query", ctx.db.query); probe("ctx.log", ctx.log);
  probe("ctx.queue.push", ctx.queue.push); probe("ctx.secrets.get", ctx.secrets.get);
  probe("ctx.fetch", ctx.fetch);
  probe("req", req); probe("req.body", req.body);
  const logged = ctx.log("probe");
  probe("a host call's promise", logged);
  probe("a host call's answer", await logged);
  probe("a query's answer", await ctx.db.query({select: "notes"}));
  try { await ctx.db.query({select: "no_such_table"}); } catch (e) { probe("a host error", e); }
  try { await ctx.db.query({select: "no_such_table"}); }
  catch (e: any) { probe("a host error's problems", e.problems); }
  try { await import("data:text/javascript,export default 1"); } catch (e) { probe("import()", e); }
  try { probe("import.meta", import.meta); } catch (e) { /* none */ }
  try {
    (Error as any).prepareStackTrace = (_: any, sites: any) => sites;
  } catch (e) { /* locked: good */ }
  const sites: any = new Error("x").stack;
  if (Array.isArray(sites)) sites.forEach((site: any, i: number) => probe("call site " + i, site));
  probe("eval", eval("globalThis")); probe("Function", Function("return this")());
  probe("console.log", console.log); probe("Date.now", Date.now); probe("crypto", crypto);
  probe("performance.now", performance.now); probe("Math.random", Math.random);
  for (const name of Object.getOwnPropertyNames(globalThis)) {
    probe("globalThis." + name, (globalThis as any)[name]);
  }
  try { await (async () => { throw new Error("thrown"); })(); } catch (e) { probe("an error", e); }
  return tried;
}
"""


def test_no_way_found_in_review_reaches_the_worker_realm(call: Any, one_deno: Runtime) -> None:
    outcome = call(ts("escapes", ESCAPES))
    assert outcome.error is None, outcome.error
    assert outcome.response.body == {}


def test_patched_intrinsics_are_not_seen_by_the_next_run(call: Any, one_deno: Runtime) -> None:
    patcher = ts(
        "patcher",
        "export default async function () {"
        "  JSON.parse = () => 'patched'; Array.prototype.push = () => -1;"
        "  (Object.prototype as any).polluted = 1;"
        "  (globalThis as any).fetch = () => 'stolen'; Promise.prototype.then = function () { return this; };"
        "  return 'patched';"
        "}",
    )
    checker = ts(
        "checker",
        "export default async function () {"
        "  const list: number[] = []; list.push(1);"
        "  return {parse: JSON.parse('[1]'), push: list.length, polluted: ({} as any).polluted ?? null,"
        "          fetch: typeof (globalThis as any).fetch};"
        "}",
    )
    assert call(patcher).response.body == "patched"
    assert call(checker, role="service").response.body == {
        "parse": [1], "push": 1, "polluted": None, "fetch": "undefined",
    }  # fmt: skip


def test_timers_are_refused_and_nothing_fires_after_the_run(conn: Conn, call: Any, one_deno: Runtime) -> None:
    timer = ts("timer", "export default async function () { setTimeout(() => {}, 10); return 'set'; }")
    outcome = call(timer)
    assert outcome.error is not None and "setTimeout is not available" in outcome.error.message
    later = ts(
        "later",
        "export default async function (req: any, ctx: any) {"
        "  new FinalizationRegistry(() => ctx.log('finalized')).register({}, 1);"
        "  return {waitAsync: typeof (Atomics as any).waitAsync};"
        "}",
    )
    assert call(later).response.body == {"waitAsync": "undefined"}
    next_run = call(READER)
    assert span_names(conn, next_run.request_id)[-1] == "db:select(notes)"
    assert "log:info" not in span_names(conn, next_run.request_id)


def test_every_clock_a_function_can_read_is_the_recorded_one(conn: Conn, call: Any) -> None:
    clocks = ts(
        "clocks",
        "const UTC = {timeZone: 'UTC', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric',"
        "             minute: 'numeric', second: 'numeric'} as const;"
        "export default async function () {"
        "  return {date: Date.now(), temporal: typeof (globalThis as any).Temporal,"
        "          intl: new Intl.DateTimeFormat('en', UTC).format(),"
        "          intlOfDate: new Intl.DateTimeFormat('en', UTC).format(Date.now())};"
        "}",
    )
    outcome = call(clocks)
    body = outcome.response.body
    started = conn.execute(
        "SELECT output FROM flux.spans WHERE request_id = %s AND name = 'clock:now'", (outcome.request_id,)
    ).fetchone()
    assert started is not None and body["date"] == int(started[0]) and body["temporal"] == "undefined"
    assert body["intl"] == body["intlOfDate"]


def test_a_call_tagged_with_another_run_is_refused_and_costs_the_worker(
    call: Any, one_deno: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's own check, behind the worker's: a call that does not name the run in progress is never
    answered, and the process that sent it serves no one else."""
    from flux.runtime import deno

    sent: list[Any] = []
    original = deno._Worker.send

    def send(worker: Any, message: Any) -> None:
        if message.get("type") == "run":
            message = {**message, "run": "not-this-one"}  # the worker will tag its calls with a stale run
            sent.append(worker)
        original(worker, message)

    monkeypatch.setattr(deno._Worker, "send", send)
    outcome = call(READER)
    assert outcome.error is not None and outcome.error.code == "FX306"
    assert sent and not sent[0].alive
    monkeypatch.undo()
    assert call(READER).error is None
