"""Isolation of Wasm core modules: every run is a fresh instance in a fresh store, so nothing one request
leaves in memory, globals, a table or WASI state reaches the next, of the same function or another one; a
host call belongs to the run that made it and none can come after it; fuel, memory, deadline are per run."""

from __future__ import annotations

import gc
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any

import psycopg
import pytest
import wasmtime

from flux.api.deploy import deploy
from flux.config import load_settings
from flux.data import Catalog
from flux.runtime import Caller, Function, FunctionLimits, Runtime, invoke, wasm
from flux.runtime.host import Host
from flux.runtime.invoke import Executor
from flux.runtime.wasm import WasmRuntime, limited_store
from tests.fixtures.gateway import gateway_client
from tests.fixtures.processes import call_json, flux_server
from tests.runtime.test_wasm import TEMPLATE, _wat_string, wat

Conn = psycopg.Connection[Any]

# What a run finds, as one digit each, at these offsets of its answer (written into the data segment at 16):
# g and m after adding one to a global and to a memory cell, t whether the table's slot 0 already held a
# function, p the memory's size in pages, env and args WASI's counts, pre WASI's answer for fd 3 (a first
# preopened directory; 8 is EBADF: there is none).
ANSWER = '{"g":0,"m":0,"t":0,"p":0,"env":0,"args":0,"pre":0}'
DIGITS = {key: ANSWER.index(f'"{key}":') + len(key) + 3 for key in ("g", "m", "t", "p", "env", "args", "pre")}
WASI = """
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))"""


def _digit(key: str, value: str) -> str:
    return f"(i32.store8 (i32.const {16 + DIGITS[key]}) (i32.add (i32.const 48) {value}))"


# Changes every kind of state an instance has, and reports what it found before changing it.
STATEFUL = f"""(data (i32.const 16) {_wat_string(ANSWER)})
  (global $count (mut i32) (i32.const 0))
  (table $slots 1 funcref)
  (elem declare func $noop)
  (func $noop)
  (func (export "flux_handle") (param i32 i32) (result i64)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    {_digit("g", "(global.get $count)")}
    (i32.store (i32.const 8) (i32.add (i32.load (i32.const 8)) (i32.const 1)))
    {_digit("m", "(i32.load (i32.const 8))")}
    {_digit("t", "(i32.eqz (ref.is_null (table.get $slots (i32.const 0))))")}
    (table.set $slots (i32.const 0) (ref.func $noop))
    {_digit("p", "(memory.size)")}
    (drop (memory.grow (i32.const 1)))
    (drop (call $environ_sizes (i32.const 0) (i32.const 4)))
    {_digit("env", "(i32.load (i32.const 0))")}
    (drop (call $args_sizes (i32.const 0) (i32.const 4)))
    {_digit("args", "(i32.load (i32.const 0))")}
    {_digit("pre", "(call $prestat (i32.const 3) (i32.const 0))")}
    (i64.const {16 << 32 | len(ANSWER)}))"""
FRESH = {"g": 1, "m": 1, "t": 0, "p": 1, "env": 0, "args": 0, "pre": 8}


NEWLINE, WAT_NEWLINE = "\n", "\\n"


def _stdout(text: str, then: str = "") -> str:
    """A flux_handle that writes `text` to WASI's stdout (fd 1), runs `then`, and answers [errno]."""
    return f"""(data (i32.const 16) "[0]")
      (data (i32.const 64) {_wat_string(text).replace(NEWLINE, WAT_NEWLINE)})
      (func (export "flux_handle") (param i32 i32) (result i64)
        (i32.store (i32.const 32) (i32.const 64)) (i32.store (i32.const 36) (i32.const {len(text)}))
        (i32.store8 (i32.const 17)
          (i32.add (i32.const 48) (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40))))
        {then}
        (i64.const {16 << 32 | 3}))"""


def _logs(conn: Conn, request_id: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT input->>'message' FROM flux.spans WHERE request_id = %s AND module = 'log' ORDER BY seq",
            (request_id,),
        )
    ]


def test_a_run_finds_memory_globals_table_and_wasi_as_the_module_declares_them(call: Any) -> None:
    stateful = wat("stateful", STATEFUL, WASI)
    twin = wat("twin", STATEFUL, WASI)  # another function with the same code: one compiled module, shared
    assert twin.sha256 == stateful.sha256
    for fn in (stateful, stateful, twin, stateful):
        outcome = call(fn)
        assert outcome.error is None, outcome.error
        assert outcome.response.body == FRESH, fn.name


def test_wasi_output_and_file_descriptors_belong_to_one_run(conn: Conn, call: Any) -> None:
    # The first run leaves a line unterminated and closes its stdout and stderr; the next runs, of this
    # function and another, write to a stdout of their own, and their log spans hold only their own text.
    closer = wat("closer", _stdout("left by A", "(drop (call $fd_close (i32.const 1)))"
                                                 "(drop (call $fd_close (i32.const 2)))"), WASI)  # fmt: skip
    printer = wat("printer", _stdout("B\n"), WASI)
    first = call(closer, role="anon")
    assert first.error is None and first.response.body == [0]
    again = call(closer, role="anon")
    assert again.error is None and again.response.body == [0]  # fd 1 open again: a WASI context per run
    other = call(printer)
    assert other.error is None and other.response.body == [0]
    assert _logs(conn, first.request_id) == ["left by A"]
    assert _logs(conn, again.request_id) == ["left by A"]
    assert _logs(conn, other.request_id) == ["B"]


def test_a_run_reaches_only_its_own_request_through_the_host(conn: Conn, call: Any) -> None:
    ask = '{"op":"secrets.get","args":{"name":"token"}}'
    reader = wat(
        "reader",
        f"""(data (i32.const 16) {_wat_string(ask)})
        (func (export "flux_handle") (param i32 i32) (result i64)
          (call $call (i32.const 16) (i32.const {len(ask)})))""",
    )
    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    a = call(reader, caller=Caller("user", {"sub": "a"}, tenant_a), secrets={"token": "A's token"})
    b = call(reader, caller=Caller("user", {"sub": "b"}, tenant_b))
    assert a.response.body == {"ok": True, "value": "A's token"}
    assert b.response.body["ok"] is False and b.response.body["error"]["code"] == "FX308"
    for outcome, tenant, ok in ((a, tenant_a, True), (b, tenant_b, False)):
        spans = conn.execute(
            "SELECT r.tenant_id::text, s.name, s.ok FROM flux.requests r JOIN flux.spans s"
            " ON s.request_id = r.id AND s.seq > 0 WHERE r.id = %s ORDER BY s.seq",
            (outcome.request_id,),
        ).fetchall()
        assert spans == [(tenant, "secrets:get(token)", ok)]


def test_no_store_outlives_its_run_and_no_host_call_can_come_after_it(
    conn: Conn, notes: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Wasm is synchronous: the host answers calls only while `flux_handle` runs on the run's thread. Then the
    # store (the instance, its memory, its WASI context and output callbacks) is freed, so no code of the run
    # can call the host again, and the thread has no run for a host function to act for. A runtime of its
    # own, whose linker's clock also notes the run it answers.
    wasm_runtime = WasmRuntime(tmp_path)
    stores: list[wasmtime.Store] = []
    seen_runs: list[Any] = []

    def keep_store(*args: Any) -> wasmtime.Store:
        stores.append(limited_store(*args))
        return stores[-1]

    def clock(caller: wasmtime.Caller, clock_id: int, precision: int, out: int) -> int:
        seen_runs.append(wasm.active_run())
        return wasm._clock_time_get(caller, clock_id, precision, out)

    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    clock_type = wasmtime.FuncType([i32, i64, i32], [i32])
    wasm_runtime.linker.define_func(
        "wasi_snapshot_preview1", "clock_time_get", clock_type, clock, access_caller=True
    )
    monkeypatch.setattr(wasm, "limited_store", keep_store)
    clocked = wat(
        "clocked",
        """(data (i32.const 16) "{}")
        (func (export "flux_handle") (param i32 i32) (result i64)
          (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 0)))
          (i64.const 68719476738))""",
        '(import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))',
    )
    for _ in range(2):
        outcome = invoke(conn, _Only(wasm_runtime), clocked, {"method": "GET", "path": "/"}, catalog=notes)
        assert outcome.error is None and outcome.response.body == {}
    assert len(stores) == 2 and len(seen_runs) == 2 and seen_runs[0] is not seen_runs[1]
    assert seen_runs[0].host is not seen_runs[1].host  # one Host per request
    for store in stores:
        with pytest.raises(ValueError, match="already closed"):
            store.get_fuel()
    with pytest.raises(RuntimeError, match="outside a request"):
        wasm.active_run()
    # Nothing else keeps a run: not WASI's output callbacks (which close over it), not a cache.
    runs = [weakref.ref(run) for run in seen_runs]
    seen_runs.clear()
    gc.collect()
    assert [run() for run in runs] == [None, None]


def test_concurrent_runs_each_answer_only_their_own_host_calls(
    dsn: str, notes: Catalog, runtime: Runtime
) -> None:
    # A worker serves requests on several threads with one linker; each host call must act for the run on its
    # own thread. Two threads, each its own caller: every log line a request recorded is its own request.
    echo = wat(
        "echo",
        """(data (i32.const 16) "{}")
        (func (export "flux_handle") (param $at i32) (param $len i32) (result i64)
          (local $left i32)
          (local.set $left (i32.const 40))
          (loop $again
            (call $log (local.get $at) (local.get $len))
            (local.set $left (i32.sub (local.get $left) (i32.const 1)))
            (br_if $again (local.get $left)))
          (i64.const 68719476738))""",
        '(import "flux" "log" (func $log (param i32 i32)))',
    )
    runs: dict[str, str] = {}  # request id: the caller it ran for

    def serve(who: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            for _ in range(10):
                outcome = invoke(own, runtime, echo, {"who": who}, catalog=notes,
                                 caller=Caller("user", {"sub": who}, str(uuid.uuid4())))  # fmt: skip
                assert outcome.error is None, outcome.error
                runs[outcome.request_id] = who

    threads = [threading.Thread(target=serve, args=(who,)) for who in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 30
    with psycopg.connect(dsn) as check:
        logged = check.execute(
            "SELECT request_id::text, input->>'message' FROM flux.spans WHERE module = 'log'"
        ).fetchall()
    assert len(logged) == 30 * 40
    assert [
        (request_id, message)
        for request_id, message in logged
        if message != f'{{"who":"{runs[request_id]}"}}'
    ] == []


def test_output_written_after_its_run_ended_reaches_no_request() -> None:
    # WASI's stdout and stderr callbacks close over their run, and wasmtime may call them from a thread of its
    # own until the store is freed: output that comes after the run ended (its last line already logged, its
    # record on its way) is dropped, never logged on the ended request's host.
    logged: list[str] = []

    class RecordingHost:
        def call(self, op: str, args: dict[str, str]) -> None:
            logged.append(args["message"])

    store = limited_store(wasm.new_engine(), FunctionLimits())
    with wasm.running(RecordingHost(), store) as run:  # type: ignore[arg-type]
        wasm.capture_output(run, "stdout", b"during the run\nlast line")
    wasm.capture_output(run, "stdout", b"after the run\n")
    wasm.capture_output(run, "stderr", b"after the run\n")
    assert logged == ["during the run", "last line"]


class _Only(Executor):
    def __init__(self, wasm_runtime: WasmRuntime) -> None:
        self.wasm = wasm_runtime

    def execute(self, function: Function, request: Any, host: Host) -> Any:
        return self.wasm.run(self.wasm.load(function.code, function.sha256), request, host, function.limits)


# One function, chosen by the length of its request: a long one exhausts a limit, a short one uses most of it.
HOGS = {
    "fuel": (
        {"fuel": 5_000_000},
        "(loop $forever (br $forever))",
        "(call $count (i32.const 500_000))",
        "FX301",
    ),
    "deadline": (
        {"timeout_ms": 300},
        "(loop $forever (br $forever))",
        "(call $count (i32.const 200_000))",
        "FX301",
    ),
    "memory": (
        {"memory_mb": 4},
        "(loop $more (br_if $more (i32.ge_s (memory.grow (i32.const 16)) (i32.const 0))))",
        "(if (i32.lt_s (memory.grow (i32.const 48)) (i32.const 0)) (then (unreachable)))",  # to 3 of 4 MiB
        "FX302",
    ),
}


@pytest.mark.parametrize("limit", HOGS)
def test_a_run_that_exhausts_a_limit_leaves_the_next_run_its_whole_budget(call: Any, limit: str) -> None:
    limits, exhaust, use_most, code = HOGS[limit]
    hog = wat(
        f"hog_{limit}",
        f"""(data (i32.const 16) "{{}}")
        (func $count (param $n i32)
          (loop $down (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br_if $down (local.get $n))))
        (func (export "flux_handle") (param i32 i32) (result i64)
          (if (i32.gt_u (local.get 1) (i32.const 100)) (then {exhaust} (unreachable)))
          {use_most}
          (i64.const 68719476738))""",
        **limits,
    )
    short, long = {"method": "GET", "path": "/"}, {"method": "GET", "path": "/" + "x" * 100}
    assert call(hog, short).response.body == {}
    failed = call(hog, long)
    assert failed.error is not None and failed.error.code == code, failed.error
    after = call(hog, short)
    assert after.error is None, after.error
    assert after.response.body == {}


def _stateful_project(root: Path) -> None:
    folder = root / "functions" / "stateful"
    folder.mkdir(parents=True)
    (folder / "index.wat").write_text(TEMPLATE % (WASI, STATEFUL))
    (root / "flux.toml").write_text(
        'name = "isolation"\n\n[[routes]]\nmethod = "POST"\npath = "/state"\n'
        'function = "stateful"\nauth = "none"\n'
    )


def test_through_the_gateway_each_request_finds_the_module_as_declared(dsn: str, tmp_path: Path) -> None:
    # Deployed and served by a worker's gateway as any request is: the same fresh state every time.
    _stateful_project(tmp_path)
    settings = load_settings(tmp_path, env={})
    deploy(dsn, settings)
    with gateway_client(settings, dsn) as client:
        answers = [client.simulate_post("/state", json={}) for _ in range(3)]
    assert [(answer.status_code, answer.json) for answer in answers] == [(200, FRESH)] * 3


@pytest.mark.slow
def test_the_real_server_answers_every_request_from_a_fresh_instance(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    _stateful_project(project_dir)
    deploy(dsn, load_settings(project_dir, env={}))
    with flux_server(project_dir, {**flux_env, "DATABASE_URL": dsn}) as (url, _):
        answers = [call_json(f"{url}/state", "POST", {}) for _ in range(6)]
    assert [(status, answer) for status, _, answer in answers] == [(200, FRESH)] * 6
