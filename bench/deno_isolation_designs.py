"""What each way of isolating a TypeScript/JavaScript run costs per call, inside Deno (issue 22): a fresh
`node:vm` context (Flux's design), a Hardened JavaScript `Compartment` (npm `ses`), a Deno `Worker` per
call, and a pre-warmed pool of Workers (still one fresh Worker per call). No Postgres and no Python host: each
design runs in a Deno process of its own, the designs alternate over several rounds, and the medians count.

Run: `python -m bench.deno_isolation_designs` (needs `npm` and the npm registry: it installs the pinned `ses`
into a temporary folder, removed afterwards). Not in `make bench`'s list, because of npm.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from flux.runtime.deno import WORKER_SCRIPT, deno_binary

SES_VERSION = "2.3.0"
ROUNDS = 7  # each round runs every design once, in a rotated order, so drift hits all alike
# Timed calls (and untimed ones first) of each design in each round.
CALLS = {"vm": 1000, "vm-bare": 1000, "ses": 1000, "worker": 60, "pool": 60, "echo": 400}
WARMUP = {"vm": 100, "vm-bare": 100, "ses": 100, "worker": 10, "pool": 10, "echo": 50}
FUNCTION = "export default async (req, ctx) => ({ok: true})"

DESIGNS = (  # (key in the driver's output, label); the first is the base of the ratios
    ("vm", "1. fresh node:vm context + Flux's prelude, per call"),
    ("vm.create", "   of which creating the context (Flux: between calls)"),
    ("vm.call", "   the call on a prepared context (Flux's request path)"),
    ("vm-bare", "   a bare node:vm context per call, no prelude"),
    ("ses", "2. SES: lockdown() once, a new Compartment per call"),
    ("worker", "3. a new Deno Worker per call"),
    ("pool", "4. pre-warmed Worker pool, fresh Worker per call"),
    ("pool.start", "   of which starting a Worker (off the request path)"),
    ("echo", "   floor of 4: a request to one warm Worker, reused"),
)

# One Deno process measures one design: `driver.js <design> <warm-up calls> <timed calls>`, then prints
# {key: [microseconds of each timed call]}.
DRIVER = r"""
import vm from "node:vm";

const [design, warmupText, callsText] = Deno.args;
const FUNCTION = %(function)s;
const REQUEST = '{"path":"/"}';
const here = new URL(".", import.meta.url);
const us = (started) => (performance.now() - started) * 1000;

// Design 1: Flux's prelude (read from flux/runtime/deno_worker.js), with stand-ins for the worker's own.
const PRELUDE_SCRIPT = new vm.Script(%(prelude)s);
let settled = null;
function prepare() {
  const context = vm.createContext(vm.constants?.DONT_CONTEXTIFY ?? {});
  const prelude = PRELUDE_SCRIPT.runInContext(context)(
    (op, argsText, settle) => settle(true, "null"),
    () => 1_700_000_000_000,
    () => 0,
    (count) => "\0".repeat(Math.min(count, 65536)),
    (ok, a) => settled({ ok, a }),
  );
  return { context, start: prelude.start };
}
async function callIn({ context, start }) {
  const module = new vm.SourceTextModule(FUNCTION, { context, identifier: "functions/bench" });
  await module.link(() => { throw new Error("no imports"); });
  await module.evaluate();
  const outcome = new Promise((resolve) => (settled = resolve));
  start(module.namespace.default, REQUEST);
  const { ok, a } = await outcome;
  if (!ok || a !== '{"ok":true}') throw new Error("unexpected answer " + a);
}
async function bareVm() {
  const context = vm.createContext(vm.constants?.DONT_CONTEXTIFY ?? {});
  const module = new vm.SourceTextModule(FUNCTION, { context, identifier: "functions/bench" });
  await module.link(() => { throw new Error("no imports"); });
  await module.evaluate();
  const value = await module.namespace.default(JSON.parse(REQUEST), {});
  if (JSON.stringify(value) !== '{"ok":true}') throw new Error("unexpected answer");
}

// Design 2: SES. The function is evaluated as an expression (a Compartment loads modules only through
// @endo/module-source, a further package); its ctx is made and hardened per call.
let compartmentCall = null;
async function setUpSes() {
  await import(new URL("node_modules/ses/dist/ses.umd.js", here).href);
  lockdown({ errorTaming: "safe", reporting: "none" });
  const source = "(" + FUNCTION.replace(/^export default /, "") + ")";
  compartmentCall = async () => {
    const compartment = new Compartment({ __options__: true, globals: {} });
    const handler = compartment.evaluate(source);
    const ctx = harden({ log: async () => null, now: () => 1_700_000_000_000, db: { query: async () => 0 } });
    const value = await handler(JSON.parse(REQUEST), ctx);
    if (JSON.stringify(value) !== '{"ok":true}') throw new Error("unexpected answer");
  };
}

// Designs 3 and 4: worker.js imports the function, says "ready", answers one request.
const WORKER_URL = new URL("worker.js", here).href;
function startWorker() {
  const worker = new Worker(WORKER_URL, { type: "module" });
  const ready = new Promise((resolve) => {
    worker.onmessage = (event) => { if (event.data === "ready") resolve(worker); };
  });
  return { worker, ready };
}
function ask(worker) {
  return new Promise((resolve, reject) => {
    worker.onmessage = (event) => {
      if (event.data === "ready") return;
      if (event.data !== '{"ok":true}') reject(new Error("unexpected answer " + event.data));
      resolve();
    };
    worker.onerror = (event) => reject(new Error(event.message));
    worker.postMessage(REQUEST);
  });
}
// The request's answer is the Worker's reply; it is terminated after, off the request's time.
let finished = null;
async function workerPerCall() {
  const { worker } = startWorker();
  await ask(worker);
  finished = worker;
}
const POOL_SIZE = 2;
const pool = [];
const starts = [];
function refill() {
  const started = performance.now();
  const { ready } = startWorker();
  const entry = ready.then((worker) => { starts.push(us(started)); return worker; });
  pool.push(entry);
}
let warm = null;
async function toWarmWorker() {
  warm ??= await startWorker().ready;
  await ask(warm);
}
async function fromPool() {
  const worker = await pool.shift();
  await ask(worker);
  finished = worker;
}

const samples = {};
const record = (key, value) => (samples[key] ??= []).push(value);
async function measure(calls, timed) {
  const designs = { "vm-bare": bareVm, ses: () => compartmentCall(), worker: workerPerCall };
  designs.echo = toWarmWorker;
  const work = designs[design];
  for (let i = 0; i < calls; i++) {
    if (design === "vm") {
      let started = performance.now();
      const prepared = prepare();
      const created = us(started);
      const callStarted = performance.now();
      await callIn(prepared);
      const called = us(callStarted);
      if (timed) { record("vm", created + called); record("vm.create", created); record("vm.call", called); }
    } else if (design === "pool") {
      while (pool.length < POOL_SIZE) refill();
      await Promise.all(pool); // the pool is full: a replacement's start is off the next call's path
      const started = performance.now();
      await fromPool();
      if (timed) record("pool", us(started));
      finished.terminate();
    } else {
      const started = performance.now();
      await work();
      if (timed) record(design, us(started));
      finished?.terminate();
    }
  }
}
if (design === "ses") await setUpSes();
await measure(Number(warmupText), false);
starts.length = 0;
await measure(Number(callsText), true);
if (design === "pool") {
  samples["pool.start"] = starts.slice();
  for (const entry of pool) (await entry).terminate();
}
warm?.terminate();
console.log(JSON.stringify(samples));
"""

WORKER = """import handler from "./function.js";
const ctx = Object.freeze({ log: async () => null, now: () => 1_700_000_000_000 });
self.onmessage = async (event) => {
  const value = await handler(JSON.parse(event.data), ctx);
  self.postMessage(JSON.stringify(value));
};
self.postMessage("ready");
"""


def _prelude() -> str:
    found = re.search(r"^const PRELUDE = `(.*?)`;$", WORKER_SCRIPT.read_text(), re.DOTALL | re.MULTILINE)
    if found is None:
        sys.exit(f"no PRELUDE in {WORKER_SCRIPT}")
    return found.group(1)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _measure(folder: Path, design: str) -> dict[str, list[float]]:
    finished = subprocess.run(
        [deno_binary(), "run", "--no-prompt", "--no-config", "--no-lock", "--quiet",
         f"--allow-read={folder}", "--allow-env=LOCKDOWN_*",  # SES reads its LOCKDOWN_* options from the env
         str(folder / "driver.js"), design, str(WARMUP[design]), str(CALLS[design])],
        capture_output=True, text=True, cwd=folder, check=False,
    )  # fmt: skip
    if finished.returncode != 0:
        sys.exit(f"design {design} failed:\n{finished.stderr[-2000:]}")
    samples: dict[str, list[float]] = json.loads(finished.stdout.strip().splitlines()[-1])
    return samples


def run(folder: Path) -> None:
    (folder / "package.json").write_text('{"private": true}\n')  # else npm may install into a parent folder
    installed = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--no-save", f"ses@{SES_VERSION}"],
        cwd=folder, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if installed.returncode != 0:
        sys.exit(f"npm install ses@{SES_VERSION} failed:\n{installed.stderr[-2000:]}")
    (folder / "function.js").write_text(FUNCTION + "\n")
    (folder / "worker.js").write_text(WORKER)
    (folder / "driver.js").write_text(
        DRIVER % {"function": json.dumps(FUNCTION), "prelude": json.dumps(_prelude())}
    )
    designs = list(CALLS)
    p50s: dict[str, list[float]] = {}
    p99s: dict[str, list[float]] = {}
    for round_ in range(ROUNDS):
        for design in designs[round_ % len(designs) :] + designs[: round_ % len(designs)]:
            for key, samples in _measure(folder, design).items():
                p50s.setdefault(key, []).append(statistics.median(samples))
                p99s.setdefault(key, []).append(_p99(samples))
    base = statistics.median(p50s["vm"])
    print(f"isolation designs, a trivial function with a fresh environment each call, inside Deno "
          f"(ses {SES_VERSION}; {ROUNDS} rounds, designs alternating; "
          "medians of the rounds' p50 and p99)")  # fmt: skip
    print(f"  {'design':58} {'p50 us':>9} {'p99 us':>9} {'vs 1.':>9}")
    for key, label in DESIGNS:
        p50, p99 = statistics.median(p50s[key]), statistics.median(p99s[key])
        print(f"  {label:58} {p50:9.1f} {p99:9.1f} {p50 / base:8.2f}x")


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="flux-isobench-"))
    try:
        run(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
