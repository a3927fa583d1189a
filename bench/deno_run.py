"""Where a Deno run's time goes (issue 27): one warm worker of flux/runtime/deno.py, driven over its pipes
from here with no Postgres and no Flux host (a host call is answered at once), so what is measured is Deno's
side and the bridge. For each scenario: wall time a call (p50), the Deno process's CPU a call by thread (its
main thread; V8's worker threads, which run the garbage collector and background compiles; the rest), this
process's CPU a call, and the worker's own account of its main thread (`--phases`: microseconds in each step
of a run, p50). Scenarios alternate over rounds; medians of the rounds count. CPU comes from /proc in
clock ticks (10 ms), so a figure a call is good to about 10 ms / (calls a round).

Part of `python -m bench function_cpu`; on its own: `python -m bench.deno_run` (DENO_RUN_CALLS=n a round).
"""

from __future__ import annotations

import base64
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flux.runtime.deno import DenoPool, _Worker

ROUNDS = 3
CALLS = int(os.environ.get("DENO_RUN_CALLS", 600))
WARM = 200
GAP_S = 0.001  # the other work of a request between two runs (this process busy, the worker idle)
TRIVIAL = "export default async function () { return { ok: true }; }"
ONE_CALL = 'export default async function (req, ctx) { await ctx.log("hello"); return { ok: true }; }'
SEED = base64.b64encode(bytes(32)).decode()
# A function of about 250 KB (2,000 small functions): its module is compiled again in each run's context, from
# V8's cache of compiled code when the source is one V8 has seen (Deno's SourceTextModule has no cachedData).
LARGE = (
    "".join(
        f"function f{i}(a, b) {{ const x = a * {i} + b; return x > 10 ? [x, a, b].join(',') : String(x); }}\n"
        for i in range(2000)
    )
    + "export default async function () { return { ok: f1999(1, 2) }; }"
)


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of process `pid` by kind of thread: main, V8 workers, other."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {"main": 0.0, "v8": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        kind = "main" if task.name == str(pid) else "v8" if name.startswith("V8 ") else "other"
        found[kind] += (int(fields[11]) + int(fields[12])) / ticks
    return found


class _Driver:
    """Sends runs to one worker and answers its host calls with null, as fast as this process can."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.runs = 0
        self.sent: set[str] = set()
        self.shas: dict[str, str] = {}  # code -> its sha, worked out once
        self.phases: dict[str, list[float]] = {}  # step -> its microseconds in each run

    def ping(self) -> None:
        self.worker.send({"type": "ping"})
        answer = self.worker.receive(time.monotonic() + 10)
        assert answer == {"type": "pong"}, answer

    def run(self, code: str) -> None:
        sha = self.shas.get(code) or self.shas.setdefault(code, hashlib.sha256(code.encode()).hexdigest())
        self.runs += 1
        message: dict[str, Any] = {
            "type": "run", "run": self.runs, "sha": sha, "lang": "ts", "request": {"path": "/"},
            "now": 1_700_000_000_000.0, "seed": SEED,
        }  # fmt: skip
        if sha not in self.sent:
            message["code"] = code
            self.sent.add(sha)
        self.worker.send(message)
        while True:
            answer = self.worker.receive(time.monotonic() + 10)
            if answer["type"] == "call":
                self.worker.send({"type": "reply", "id": answer["id"], "answer": {"ok": True, "value": None},
                                  "now": 1_700_000_000_001.0})  # fmt: skip
                continue
            assert answer["type"] == "done" and answer["ok"], answer
            for name, us in answer.get("phases", {}).items():
                self.phases.setdefault(name, []).append(float(us))
            return


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


SCENARIOS: dict[str, Callable[[_Driver], None]] = {
    "pipe round trip (ping, no run)": lambda driver: driver.ping(),
    "trivial run, back to back": lambda driver: driver.run(TRIVIAL),
    f"trivial run, {GAP_S * 1000:.0f} ms of other work between runs": lambda driver: driver.run(TRIVIAL),
    "one host call (ctx.log), back to back": lambda driver: driver.run(ONE_CALL),
    f"a {len(LARGE) // 1000} KB function, back to back": lambda driver: driver.run(LARGE),
}


def _measure(driver: _Driver, name: str) -> dict[str, float]:
    call = SCENARIOS[name]
    gap = GAP_S if "between runs" in name else 0.0
    for _ in range(WARM):
        call(driver)
        _busy(gap)
    driver.phases = {}
    pid = driver.worker.process.pid
    walls: list[float] = []
    before, python_before = _thread_cpu(pid), time.process_time()
    busy = 0.0
    for _ in range(CALLS):
        started = time.perf_counter()
        call(driver)
        walls.append(time.perf_counter() - started)
        gap_started = time.process_time()
        _busy(gap)
        busy += time.process_time() - gap_started
    after, python_after = _thread_cpu(pid), time.process_time()
    figures = {f"Deno {kind}": (after[kind] - before[kind]) / CALLS * 1e6 for kind in before}
    figures["Deno all"] = sum(figures[f"Deno {kind}"] for kind in before)
    figures["Python"] = (python_after - python_before - busy) / CALLS * 1e6
    figures["wall p50"] = statistics.median(walls) * 1e6
    figures.update({f"phase {key}": statistics.median(values) for key, values in driver.phases.items()})
    return figures


def report() -> None:
    pool = DenoPool(1, worker_args=("--phases",))
    worker = pool._start(128)
    try:
        driver = _Driver(worker)
        rounds: dict[str, dict[str, list[float]]] = {name: {} for name in SCENARIOS}
        names = list(SCENARIOS)
        for round_ in range(ROUNDS):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                for key, value in _measure(driver, name).items():
                    rounds[name].setdefault(key, []).append(value)
    finally:
        worker.stop()
    print(f"deno_run: one warm Deno worker driven over its pipes, no host ({CALLS} calls x {ROUNDS} rounds,"
          " medians of the rounds; microseconds a call)")  # fmt: skip
    for name, figures in rounds.items():
        median = {key: statistics.median(values) for key, values in figures.items()}
        print(f"  {name}")
        print(f"    wall p50 {median['wall p50']:6.0f}   CPU: Deno {median['Deno all']:5.0f} (main thread"
              f" {median['Deno main']:4.0f}, V8 workers {median['Deno v8']:4.0f},"
              f" other {median['Deno other']:3.0f}), this driver {median['Python']:4.0f}")  # fmt: skip
        steps = [(key[len("phase ") :], value) for key, value in median.items() if key.startswith("phase ")]
        if steps:
            print("    main thread by step (p50): " + ", ".join(f"{key} {value:.0f}" for key, value in steps))


def run(dsn: str) -> None:
    report()


if __name__ == "__main__":
    report()
