"""TypeScript and JavaScript on Deno through the executor API: host calls, isolation, determinism, limits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.runtime import Runtime
from tests.fixtures.runtime import example, function

Conn = psycopg.Connection[Any]


def ts(name: str, source: str, **limits: int) -> Any:
    return function(name, "typescript", source, **limits)


def test_the_typescript_example_writes_pushes_logs_and_is_recorded(conn: Conn, call: Any) -> None:
    fn = ts("ts_notes", example("polyglot/functions/ts_notes/index.ts"))
    outcome = call(fn, {"method": "POST", "path": "/notes", "body": {"text": "hello"}})
    assert outcome.error is None, outcome.error
    assert outcome.response.status == 201 and outcome.response.headers == {"x-note": "1"}
    assert outcome.response.body["note"] == {"id": 1, "body": "hello"}
    names = conn.execute(
        "SELECT name FROM flux.spans WHERE request_id = %s ORDER BY seq", (outcome.request_id,)
    ).fetchall()
    assert [n[0] for n in names] == [
        "function:ts_notes",
        "clock:now",
        "clock:random",
        "db:insert(notes)",
        "log:info",
        "queue:push(ts_notes)",
    ]
    assert conn.execute("SELECT request_id::text FROM flux.mutations").fetchall() == [(outcome.request_id,)]
    assert conn.execute("SELECT parent_request_id::text FROM flux.jobs").fetchall() == [(outcome.request_id,)]
    seed = conn.execute(
        "SELECT output FROM flux.spans WHERE request_id = %s AND name = 'clock:random'", (outcome.request_id,)
    ).fetchone()
    assert seed is not None and isinstance(seed[0], str)  # what a replay feeds back


def test_each_request_gets_fresh_globals(call: Any) -> None:
    fn = ts(
        "counter",
        "let calls = 0; export default async function () {"
        " calls++; (globalThis as any).seen = ((globalThis as any).seen ?? 0) + 1;"
        " return {calls, seen: (globalThis as any).seen}; }",
    )
    bodies = [call(fn).response.body for _ in range(3)]
    assert bodies == [{"calls": 1, "seen": 1}] * 3


def test_time_and_randomness_come_from_the_host(conn: Conn, call: Any) -> None:
    fn = ts(
        "clock",
        "export default async function () { const a = Date.now(); const b = new Date().getTime();"
        " return {a, b, r: Math.random(), u: crypto.randomUUID(), p: performance.now()}; }",
    )
    outcome = call(fn)
    body = outcome.response.body
    started = conn.execute(
        "SELECT output FROM flux.spans WHERE request_id = %s AND name = 'clock:now'", (outcome.request_id,)
    ).fetchone()
    assert started is not None and body["a"] == body["b"] == int(started[0])  # the recorded clock
    assert 0 <= body["r"] < 1 and len(body["u"]) == 36 and body["u"][14] == "4" and body["p"] == 0


def test_a_thrown_error_is_fx300_with_its_stack_in_the_span_not_the_response(conn: Conn, call: Any) -> None:
    outcome = call(ts("thrower", "export default async function () { throw new Error('no such order'); }"))
    assert outcome.error is not None and outcome.error.code == "FX300"
    assert outcome.response.status == 500
    assert "no such order" in outcome.response.body["message"] and "stack" not in str(outcome.response.body)
    error = conn.execute(
        "SELECT error FROM flux.spans WHERE request_id = %s AND seq = 0", (outcome.request_id,)
    ).fetchone()
    assert error is not None and "no such order" in error[0]["message"]
    assert "at " in error[0]["details"]["stack"]


def test_limits_and_bad_code_fail_clearly_and_the_next_request_is_unaffected(call: Any) -> None:
    ok = ts("ok", "export default async function () { return {fine: true}; }")
    cases = [
        (ts("loop", "export default async function () { for (;;) {} }", timeout_ms=500), "FX301"),
        (ts("hog", "export default async function () { const a = [];"
                   " for (;;) a.push(new Array(1e6).fill(1)); }", memory_mb=64), "FX302"),
        (ts("bad_status", "export default async function () { return {status: 99}; }"), "FX303"),
        (ts("not_json", "export default async function () { return {n: 10n}; }"), "FX303"),
        (ts("syntax", "export default async function ( {"), "FX307"),
        (ts("no_default", "export const x = 1;"), "FX300"),
        (ts("bad_args", "export default async function (req, ctx) { return await ctx.db.query('select'); }"),
         "FX305"),
    ]  # fmt: skip
    for fn, code in cases:
        outcome = call(fn)
        assert outcome.error is not None and outcome.error.code == code, (fn.name, outcome.error)
        assert call(ok).response.body == {"fine": True}


def test_a_worker_killed_mid_call_is_fx306_and_replaced(call: Any, runtime: Runtime) -> None:
    import threading

    def kill_busy_workers() -> None:
        for worker in list(runtime.deno.busy):
            worker.process.kill()

    timer = threading.Timer(1.0, kill_busy_workers)
    timer.start()
    try:
        outcome = call(ts("victim", "export default async function () { for (;;) {} }", timeout_ms=20_000))
    finally:
        timer.cancel()
    assert outcome.error is not None and outcome.error.code == "FX306", outcome.error
    assert call(ts("after", "export default async () => ({fine: true})")).response.body == {"fine": True}


STARTS_ONE = """
import os, sys, time
from pathlib import Path
from flux import cpus
from flux.runtime import deno
from flux.runtime.deno import DenoPool
pinned, setpriv, taskset = (word == "yes" for word in sys.argv[2:5])
if pinned:  # as a pinned gunicorn worker is (flux.cpus.pin_to_assigned_cpu)
    cpus._server_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus._server_cpus)})
if not setpriv:
    deno._SETPRIV = None
if not taskset:
    deno._TASKSET = None
worker = DenoPool(1, Path(sys.argv[1]))._start(128)
worker.send({"type": "run", "run": 1, "sha": "spin", "lang": "js", "request": {}, "now": 0,
             "code": "export default () => { for (;;) {} }", "seed": "A" * 43 + "="})
print(worker.process.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("pinned", "setpriv", "taskset"),
    [("no", "yes", "yes"), ("yes", "yes", "yes"), ("no", "no", "yes"), ("yes", "yes", "no"),
     ("yes", "no", "no")],
    ids=["setpriv", "pinned-taskset-setpriv", "no-setpriv", "pinned-no-taskset", "pinned-neither"],
)  # fmt: skip
def test_a_deno_worker_dies_with_the_process_that_started_it(
    tmp_path: Path, pinned: str, setpriv: str, taskset: str
) -> None:
    """kill -9 of the Flux worker (a gunicorn worker, a queue worker) takes its Deno processes with it: a
    function stuck in a loop (which reads no more of its pipe, so never sees it close) never outlives the
    process that ran it; whether Deno starts through util-linux's setpriv (and taskset) or, where they are
    missing, a function in the forked child. From a pinned worker, Deno gets every CPU back."""
    every_cpu = os.sched_getaffinity(0)
    if pinned == "yes" and len(every_cpu) < 2:
        pytest.skip("one CPU: nothing to pin")
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTS_ONE, str(tmp_path), pinned, setpriv, taskset], stdout=subprocess.PIPE,
        text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert starter.stdout is not None
    deno = int(starter.stdout.readline())
    time.sleep(0.3)  # spinning
    assert _alive(deno)
    assert os.sched_getaffinity(deno) == every_cpu
    starter.kill()
    starter.wait()
    starter.stdout.close()
    deadline = time.monotonic() + 5
    while _alive(deno):
        assert time.monotonic() < deadline, "Deno outlived the process that started it"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended (its parent, here init, reaps it)


@pytest.mark.parametrize("refusing", ["taskset", "setpriv"])
def test_deno_starts_when_setpriv_or_taskset_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusing: str
) -> None:
    """util-linux's taskset refuses CPUs the server no longer has (its cpuset changed since the worker was
    pinned), and a setpriv older than 2.33 (or BusyBox's) has no --pdeathsig: Deno starts as where they are
    missing (as it did before they were used), and from then on without them."""
    from flux import cpus
    from flux.runtime import deno

    monkeypatch.setattr(deno, "_REFUSED", threading.Event(), raising=False)
    if refusing == "taskset":
        monkeypatch.setattr(deno, "_TASKSET", shutil.which("taskset"))
        monkeypatch.setattr(cpus, "_server_cpus", {max(os.sched_getaffinity(0)) + 1})  # none of this one's
        if deno._TASKSET is None or deno._SETPRIV is None:
            pytest.skip("no taskset or setpriv here")
    else:
        old = tmp_path / "setpriv"
        old.write_text("#!/bin/sh\necho \"setpriv: unrecognized option '--pdeathsig'\" >&2\nexit 1\n")
        old.chmod(0o755)
        monkeypatch.setattr(deno, "_SETPRIV", str(old))
    pool = deno.DenoPool(1, tmp_path / "cache")
    worker = pool._start(128)
    try:
        assert worker.process.poll() is None
        assert deno._REFUSED.is_set()
        assert deno._spawned(["deno"]) == (["deno"], deno._before_exec)
    finally:
        worker.stop()


def test_a_deno_that_cannot_run_is_fx306_and_setpriv_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deno missing is Deno's failure, not setpriv's: FX306 with why, and setpriv stays in use."""
    from flux.errors import FunctionCrashed
    from flux.runtime import deno

    if deno._SETPRIV is None:
        pytest.skip("no setpriv here")
    monkeypatch.setattr(deno, "_REFUSED", threading.Event())
    monkeypatch.setattr(deno, "deno_binary", lambda: str(tmp_path / "no-deno"))
    with pytest.raises(FunctionCrashed, match="Deno did not start: setpriv: failed to execute"):
        deno.DenoPool(1, tmp_path / "cache")._start(128)
    assert not deno._REFUSED.is_set()
