"""Wasm core modules through the executor API: host calls recorded in order, limits, and bad modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from tests.fixtures.runtime import example, function

Conn = psycopg.Connection[Any]

# A handler around one body of WAT: a bump allocator and `flux_handle` returning (pointer << 32 | length).
TEMPLATE = """(module
  (import "flux" "call" (func $call (param i32 i32) (result i64)))
  %s
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "flux_alloc") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (block $done (loop $grow
      (br_if $done (i32.le_u (global.get $next) (i32.mul (memory.size) (i32.const 65536))))
      (if (i32.lt_s (memory.grow (i32.const 1)) (i32.const 0)) (then (unreachable)))
      (br $grow)))
    (local.get $at))
  %s)"""


def wat(name: str, body: str, imports: str = "", **limits: int) -> Any:
    return function(name, "wat", TEMPLATE % (imports, body), **limits)


def _spans(conn: Conn, request_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT seq, parent_seq, module, name, ok, error->>'code' FROM flux.spans WHERE request_id = %s"
        " ORDER BY seq",
        (request_id,),
    ).fetchall()


def test_the_wat_example_writes_pushes_and_is_recorded_under_its_request_id(conn: Conn, call: Any) -> None:
    outcome = call(function("wat_notes", "wat", example("polyglot/functions/wat_notes/index.wat")))
    assert outcome.error is None, outcome.error
    assert outcome.response.status == 200
    assert outcome.response.body == {
        "ok": True,
        "value": {"count": 1, "rows": [{"id": 1, "body": "written by wat"}]},
    }
    assert [row[2:5] for row in _spans(conn, outcome.request_id)] == [
        ("runtime", "function:wat_notes", True),
        ("log", "log:info", True),
        ("clock", "clock:now", True),
        ("clock", "clock:random", True),
        ("queue", "queue:push(wat_notes)", True),
        ("data", "db:insert(notes)", True),
    ]
    assert {row[1] for row in _spans(conn, outcome.request_id)[1:]} == {0}  # children of the function span
    mutation = conn.execute("SELECT request_id, op, new->>'body' FROM flux.mutations").fetchall()
    assert [(str(m[0]), m[1], m[2]) for m in mutation] == [(outcome.request_id, "INSERT", "written by wat")]
    job = conn.execute("SELECT function, payload, parent_request_id FROM flux.jobs").fetchall()
    assert [(j[0], j[1], str(j[2])) for j in job] == [("wat_notes", {"from": "wat"}, outcome.request_id)]
    request = conn.execute("SELECT ok, status, function, input, output FROM flux.requests").fetchone()
    assert request is not None and request[:3] == (True, 200, "wat_notes")
    assert request[4]["body"]["value"]["rows"][0]["body"] == "written by wat"


def test_a_failed_run_rolls_back_its_writes_and_keeps_its_record(conn: Conn, call: Any) -> None:
    insert = '{"op":"db.query","args":{"insert":"notes","values":{"body":"lost"}}}'
    body = f"""(data (i32.const 16) {_wat_string(insert)})
      (func (export "flux_handle") (param i32 i32) (result i64)
        (drop (call $call (i32.const 16) (i32.const {len(insert)})))
        (unreachable))"""
    outcome = call(wat("trap", body))
    assert outcome.error is not None and outcome.error.code == "FX300"
    assert outcome.response.status == 500 and outcome.response.body["request_id"] == outcome.request_id
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM flux.mutations").fetchone() == (0,)
    assert conn.execute("SELECT ok, error->>'code' FROM flux.requests").fetchall() == [(False, "FX300")]
    assert [row[2:] for row in _spans(conn, outcome.request_id)] == [
        ("runtime", "function:trap", False, "FX300"),
        ("data", "db:insert(notes)", True, None),  # what ran before the trap, though rolled back
    ]


def test_limits_each_fail_clearly_and_the_next_request_is_unaffected(call: Any) -> None:
    loop = """(func (export "flux_handle") (param i32 i32) (result i64)
        (loop $forever (br $forever)) (i64.const 0))"""
    grow = """(func (export "flux_handle") (param i32 i32) (result i64)
        (loop $more (br_if $more (i32.ge_s (memory.grow (i32.const 1)) (i32.const 0))))
        (unreachable))"""
    bad_json = """(data (i32.const 16) "{not json")
      (func (export "flux_handle") (param i32 i32) (result i64) (i64.const 68719476745))"""  # (16 << 32) | 9
    outside = '(func (export "flux_handle") (param i32 i32) (result i64) (i64.const 0x7fffffff00000010))'
    ok = """(data (i32.const 16) "{\\"fine\\":true}")
      (func (export "flux_handle") (param i32 i32) (result i64) (i64.const 68719476749))"""  # (16 << 32) | 13
    cases = [
        (wat("fuel", loop, fuel=5_000_000), "FX301"),
        (wat("wall", loop, timeout_ms=300), "FX301"),
        (wat("memory", grow, memory_mb=4), "FX302"),
        (wat("bad_json", bad_json), "FX303"),
        (wat("outside", outside), "FX303"),
        (function("no_exports", "wat", "(module)"), "FX307"),
        (
            wat("handle_i32", '(func (export "flux_handle") (param i32 i32) (result i32) (i32.const 0))'),
            "FX307",
        ),
        (function("not_wasm", "wasm", b"\x00asm\x01\x00\x00\x00garbage"), "FX307"),
    ]
    for fn, code in cases:
        outcome = call(fn)
        assert outcome.error is not None and outcome.error.code == code, (fn.name, outcome.error)
        if fn.name == "handle_i32":  # the ABI's types are checked when the module loads
            assert (
                "flux_handle is " in outcome.error.message and "(i32, i32) -> (i64)" in outcome.error.message
            )
        assert call(wat("ok", ok)).response.body == {"fine": True}


def test_an_unknown_host_op_and_bad_arguments_answer_the_function_with_an_error(
    conn: Conn, call: Any
) -> None:
    unknown, bad = '{"op":"nope","args":{}}', '{"op":"db.query","args":"select"}'
    body = f"""(data (i32.const 16) {_wat_string(unknown)})
      (data (i32.const 64) {_wat_string(bad)})
      (func (export "flux_handle") (param i32 i32) (result i64)
        (drop (call $call (i32.const 16) (i32.const {len(unknown)})))
        (call $call (i32.const 64) (i32.const {len(bad)})))"""
    outcome = call(wat("bad_calls", body))
    assert outcome.response.body["ok"] is False and outcome.response.body["error"]["code"] == "FX305"
    assert [row[3:] for row in _spans(conn, outcome.request_id)[1:]] == [
        ("call:nope", False, "FX304"),
        ("db:query(?)", False, "FX305"),
    ]


def test_wasi_output_becomes_log_spans_and_wasi_clock_and_random_are_recorded(conn: Conn, call: Any) -> None:
    imports = """
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))"""
    body = """(data (i32.const 16) "line one\\nline two")
      (data (i32.const 100) "\\10\\00\\00\\00\\11\\00\\00\\00")
      (data (i32.const 200) "[]")
      (func (export "flux_handle") (param i32 i32) (result i64)
        (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 120)))
        (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 128)))
        (drop (call $random (i32.const 136) (i32.const 4)))
        (i64.const 858993459202))"""  # (200 << 32) | 2
    outcome = call(wat("wasi", body, imports))
    assert outcome.error is None, outcome.error
    spans = conn.execute(
        "SELECT name, input->>'message', output FROM flux.spans"
        " WHERE request_id = %s AND seq > 0 ORDER BY seq",
        (outcome.request_id,),
    ).fetchall()
    # A complete line is logged when written; the last, unterminated one when the call ends.
    assert [s[0] for s in spans] == ["log:info", "clock:now", "clock:random", "log:info"]
    assert [spans[0][1], spans[3][1]] == ["line one", "line two"]
    assert isinstance(spans[1][2], (int, float)) and isinstance(spans[2][2], str)


def _wat_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_compiled_code_is_cached_on_disk_by_its_sha256(tmp_path: Any) -> None:
    from flux.runtime.wasm import WasmRuntime, compile_wat

    code = compile_wat(example("polyglot/functions/wat_notes/index.wat"))
    first = WasmRuntime(tmp_path).load(code)
    assert (tmp_path / f"{first.sha256}.cwasm").exists()
    (tmp_path / f"{first.sha256}.cwasm").write_bytes(b"not a compiled module")  # a stale or foreign cache
    again = WasmRuntime(tmp_path).load(code)  # a new process: reads the cache, or compiles again
    assert again.sha256 == first.sha256 and (tmp_path / f"{first.sha256}.cwasm").stat().st_size > 100


def test_each_run_frees_its_store_so_a_worker_does_not_run_out_of_address_space(call: Any) -> None:
    # Every instance reserves 4 GiB of address space for its memory; a store that outlived its run (WASI's
    # output callbacks once kept it alive) used up a worker's 128 TiB within about 30,000 requests.
    printer = wat(
        "printer",
        """(func (export "flux_handle") (param i32 i32) (result i64)
             (i32.store (i32.const 0) (i32.const 8)) (i32.store (i32.const 4) (i32.const 3))
             (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 100)))
             (i64.const 68719476738))
           (data (i32.const 8) "hi\\n") (data (i32.const 16) "{}")""",
        imports='(import "wasi_snapshot_preview1" "fd_write"'
        " (func $fd_write (param i32 i32 i32 i32) (result i32)))",
    )
    assert call(printer).error is None
    before = _address_space_bytes()
    for _ in range(20):
        assert call(printer).error is None
    assert _address_space_bytes() - before < 4 << 30


def _address_space_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmSize:")[1].split()[0]) * 1024


def test_the_epoch_clock_ticks_only_while_a_call_runs() -> None:
    # Ticking all the time woke every worker 200 times a second, even one serving no Wasm at all.
    import time

    from flux.runtime.wasm import EPOCH_TICK_S, EpochClock

    class Engine:
        ticks = 0

        def increment_epoch(self) -> None:
            self.ticks += 1

    engine = Engine()
    clock = EpochClock(engine)  # type: ignore[arg-type]
    time.sleep(10 * EPOCH_TICK_S)
    assert engine.ticks == 0
    with clock.ticking(), clock.ticking():  # two calls at once
        time.sleep(10 * EPOCH_TICK_S)
    assert engine.ticks >= 3
    # A tick already under way may still land, later on a loaded machine: wait until none did for a while.
    after, settling = engine.ticks, time.monotonic() + 5
    while time.monotonic() < settling:
        time.sleep(3 * EPOCH_TICK_S)
        if engine.ticks == after:
            break
        after = engine.ticks
    time.sleep(10 * EPOCH_TICK_S)
    assert engine.ticks == after
