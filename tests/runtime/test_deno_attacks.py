"""A red team's attacks on the Deno runtime's isolation, after it was rebuilt (issue 22): function code only,
on one warm Deno process, as a hostile tenant would deploy it. Each test is an attack that worked against the
rebuilt worker and fails since, or one that did not work, kept so it stays that way."""

from __future__ import annotations

from typing import Any

import psycopg

from flux.runtime import Runtime
from tests.fixtures.runtime import span_names, ts

Conn = psycopg.Connection[Any]


READER = ts(
    "reader",
    "export default async function (req: any, ctx: any) {"
    "  return (await ctx.db.query({select: 'notes', columns: ['body']})).rows;"
    "}",
)

# A stack overflow reached inside one of the worker's own functions (Math.random's source of bytes, the clock)
# is a RangeError of the worker's realm: through it the function got the worker's Array, called its `values`
# to get the worker's array iterator, and replaced its `next`, which the worker calls to take apart every
# later run's result: it read and rewrote the response of the next request, of another tenant.
OVERFLOW = """
let caught: any = null;
const foreign = (e: any) => e !== null && typeof e === "object" && !(e instanceof Object);
function deep(probe: () => unknown) {
  try { deep(probe); } catch { /* the bottom */ }
  if (caught) return;
  try { probe(); } catch (e) { if (foreign(e)) caught = e; }
}
export default async function () {
  const probes = [() => Math.random(), () => Date.now(), () => performance.now(), () => crypto.randomUUID()];
  for (const probe of probes) if (!caught) deep(probe);
  if (!caught) return "no object of the worker";
  const proto = Object.getPrototypeOf;
  const WorkerObject = proto(proto(proto(caught))).constructor;
  const WorkerArray = Object.getPrototypeOf(WorkerObject.getOwnPropertyNames(WorkerObject)).constructor;
  const iterator = Object.getPrototypeOf(WorkerArray.prototype.values.call([]));
  const next = iterator.next;
  iterator.next = function (this: any) {
    const step = next.call(this);
    if (typeof step.value === "string") step.value = step.value.replace("mine", "stolen");
    return step;
  };
  return "hooked";
}
"""


def test_a_stack_overflow_in_the_workers_functions_reaches_nothing_of_its_realm(
    call: Any, one_deno: Runtime
) -> None:
    attack = call(ts("overflow", OVERFLOW))
    victim_code = ts("victim", "export default async function () { return {secret: 'mine'}; }")
    victim = call(victim_code, role="service")
    assert attack.error is None, attack.error
    assert attack.response.body == "no object of the worker"
    assert victim.error is None and victim.response.body == {"secret": "mine"}


# WebAssembly.compile finishes on a later turn of the event loop: its callback ran after the run had ended,
# during the next request (where it could spin, or reject a promise and end the process under that request).
WASM_LATE = """
function leb(n: number): number[] {
  const out: number[] = [];
  do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; out.push(b); } while (n);
  return out;
}
function big(functions: number, ops: number): Uint8Array {
  const body = [0];
  for (let i = 0; i < ops; i++) body.push(0x41, 1, 0x1a);
  body.push(0x41, 7, 0x0b);
  const one = [...leb(body.length), ...body];
  const code = [...leb(functions)];
  for (let i = 0; i < functions; i++) for (const b of one) code.push(b);
  const types = [1, 0x60, 0, 1, 0x7f];
  const decls = [...leb(functions)];
  for (let i = 0; i < functions; i++) decls.push(0);
  const out = [0, 97, 115, 109, 1, 0, 0, 0, 1, ...leb(types.length), ...types];
  out.push(3, ...leb(decls.length), ...decls);
  out.push(10, ...leb(code.length));
  for (const b of code) out.push(b);
  return new Uint8Array(out);
}
export default async function (req: any, ctx: any) {
  WebAssembly.compile(big(1500, 1000)).then(() => ctx.log("compiled"));
  return "returned";
}
"""


def test_a_wasm_compile_left_pending_finishes_inside_its_own_run(
    conn: Conn, call: Any, one_deno: Runtime
) -> None:
    attack = call(ts("wasm_late", WASM_LATE))
    after = call(READER)
    assert attack.error is None and after.error is None, (attack.error, after.error)
    assert span_names(conn, attack.request_id)[-1] == "log:info"  # drained into its own request
    assert "log:info" not in span_names(conn, after.request_id)


def test_an_unhandled_rejection_fails_its_run_and_the_process_serves_on(call: Any, one_deno: Runtime) -> None:
    """Deno ends a process on an unhandled rejection; it was the worker, under whichever request ran."""
    careless = ts(
        "careless",
        "export default async function () { Promise.reject(new Error('boom')); return 'ok'; }",
    )
    outcome = call(careless)
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert "nothing handled it" in outcome.error.message
    worker = one_deno.deno._idle.queue[-1]
    assert call(READER).error is None
    assert one_deno.deno._idle.queue[-1] is worker  # the same process
    handled_later = ts(
        "handled_later",
        "export default async function (req: any, ctx: any) {"
        "  const p = Promise.reject(new Error('later'));"
        "  await ctx.log('a'); await ctx.log('b');"
        "  try { await p; } catch (e: any) { return 'handled ' + e.message; }"
        "}",
    )
    assert call(handled_later).response.body == "handled later"  # handled before the run ended: no failure


# A module that throws a value whose `name` cannot be read made the worker report the run failed without
# closing it: its promise chain went on after the run's end, and its host call arrived in the next request,
# which failed (the host stops a process that sends a call of another run).
UNSHOWABLE = """
let chain: Promise<unknown> = Promise.resolve();
for (let i = 0; i < 2000; i++) chain = chain.then(() => {});
chain.then(() => console.log("after the end"));
throw { get name() { throw "no name"; } };
"""


def test_a_module_that_throws_an_unshowable_value_ends_its_run_cleanly(
    conn: Conn, call: Any, one_deno: Runtime
) -> None:
    attack = call(ts("unshowable", UNSHOWABLE))
    victim = call(READER, role="service")
    assert attack.error is not None and attack.error.code == "FX300"
    assert victim.error is None, victim.error
    assert span_names(conn, attack.request_id)[-1] == "log:info"
    assert "log:info" not in span_names(conn, victim.request_id)


# Symbol.for's registry belongs to the process, and V8 never collects it: a run filled it with 100 MB of
# symbols, and the next request, of anyone, that needed 32 MB died of an out-of-memory process (FX302).
def test_the_symbol_registry_is_the_runs_own_and_leaves_no_memory_behind(
    call: Any, one_deno: Runtime
) -> None:
    hoarder = ts(
        "hoarder",
        "export default async function () {"
        "  const pad = 'x'.repeat(4000);"
        "  for (let n = 0; n < 25000; n++) Symbol.for(pad + n);"
        "  const s = Symbol.for('k');"
        "  return [s === Symbol.for('k'), Symbol.keyFor(s), Symbol.keyFor(Symbol('z')) ?? null];"
        "}",
    )
    victim = ts(
        "victim",
        "export default async function () {"
        "  const keep: number[][] = [];"
        "  for (let i = 0; i < 40; i++) keep.push(new Array(100000).fill(i));"
        "  return keep.length;"
        "}",
    )
    assert call(hoarder).response.body == [True, "k", None]
    outcome = call(victim)
    assert outcome.error is None, outcome.error
    assert outcome.response.body == 40


def test_a_host_call_too_long_to_read_costs_its_process_not_the_next_request(
    call: Any, one_deno: Runtime
) -> None:
    """The host stops reading a message past 64 MB; the process, still writing it, was put back in the pool,
    and the rest of the line, a call of the ended run, failed the next request."""
    flood = ts(
        "flood",
        "export default async (req: any, ctx: any) => ctx.log('x'.repeat(65 * 1024 * 1024))",
        memory_mb=512,
    )
    victim = ts("victim", "export default async (req: any, ctx: any) => ctx.log('victim')", memory_mb=512)
    outcome = call(flood)
    assert outcome.error is not None and outcome.error.code == "FX303", outcome.error
    after = call(victim, role="service")
    assert after.error is None, after.error


# Held: a stack overflow reached inside what V8 or Deno do for the function (a dynamic import, a stack trace,
# a Wasm compile) gives errors of the function's own context only.
DEEP_PROBES = """
const found: Record<string, number> = {};
const foreign = (e: any) =>
  e !== null && (typeof e === "object" || typeof e === "function") && !(e instanceof Object)
  && Object.getPrototypeOf(e) !== null;
const note = (name: string, e: unknown) => { if (foreign(e)) found[name] = (found[name] ?? 0) + 1; };
const probes: Record<string, () => unknown> = {
  import: () => { import("x").catch((e) => note("import (async)", e)); },
  stack: () => { const o: any = {}; Error.captureStackTrace(o); return o.stack + new Error("x").stack; },
  wasm: () => new WebAssembly.Module(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0])),
};
function deep(name: string) {
  try { deep(name); } catch { /* the bottom */ }
  try { probes[name](); } catch (e) { note(name, e); }
}
export default async function () {
  for (const name in probes) deep(name);
  for (let i = 0; i < 10; i++) await null;
  return found;
}
"""


def test_no_stack_overflow_in_the_runtimes_own_work_reaches_the_worker_realm(
    call: Any, one_deno: Runtime
) -> None:
    outcome = call(ts("deep_probes", DEEP_PROBES))
    assert outcome.error is None, outcome.error
    assert outcome.response.body == {}
