"""The WASI-command ABI (flux/runtime/wasi_command.py): a program that reads the request on stdin, writes
each host call as a line on stdout and reads its answer on stdin, and writes its response last. Its calls are
recorded and replay `same`; its limits are the modules'; a failed exit, no response, a flood of output and a
loop each end with their FX code."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
import wasmtime

from flux.data import Catalog
from flux.runtime import Function, Runtime
from flux.runtime.wasi_command import Command, split_command, with_command
from tests.fixtures.runtime import function
from tests.replay.test_fidelity import replayed

Conn = psycopg.Connection[Any]

# Reads the request, makes one host call (the line at 200), reads its answer, and answers
# {"request": <request>, "answer": <answer>}; `$before` runs first (a loop, an exit, output).
COMMAND = """(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 200) "%s")
  (data (i32.const 400) "{\\"request\\":")
  (data (i32.const 420) ",\\"answer\\":")
  (data (i32.const 440) "}\\n")
  (data (i32.const 460) "bad input\\n")
  (func $read_line (param $to i32) (result i32)  ;; one read into $to (up to 8 KiB); the bytes read
    (i32.store (i32.const 0) (local.get $to))
    (i32.store (i32.const 4) (i32.const 8192))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.load (i32.const 8)))
  (func $iovec (param $at i32) (param $from i32) (param $len i32)
    (i32.store (local.get $at) (local.get $from))
    (i32.store (i32.add (local.get $at) (i32.const 4)) (local.get $len)))
  (func (export "_start")
    (local $request i32) (local $answer i32)
    %s
    (local.set $request (call $read_line (i32.const 8192)))
    (call $iovec (i32.const 16) (i32.const 200) (i32.const %d))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 8)))
    (local.set $answer (call $read_line (i32.const 32768)))
    (call $iovec (i32.const 16) (i32.const 400) (i32.const 11))
    (call $iovec (i32.const 24) (i32.const 8192) (i32.sub (local.get $request) (i32.const 1)))
    (call $iovec (i32.const 32) (i32.const 420) (i32.const 10))
    (call $iovec (i32.const 40) (i32.const 32768) (i32.sub (local.get $answer) (i32.const 1)))
    (call $iovec (i32.const 48) (i32.const 440) (i32.const 2))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 5) (i32.const 8)))))"""
CALL = json.dumps(
    {
        "op": "db.query",
        "args": {"insert": "notes", "values": {"body": "from a command"}, "returning": ["id", "body"]},
    },
    separators=(",", ":"),
)
BEFORE = {
    "": "",
    "spin": "(loop $forever (br $forever))",
    "exit": """(call $iovec (i32.const 16) (i32.const 460) (i32.const 10))
               (drop (call $write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 8)))
               (call $exit (i32.const 3))""",
    "silent": "(return)",
    "flood": """(call $iovec (i32.const 16) (i32.const 0) (i32.const 65536))
                (loop $more (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 8)))
                  (br $more))""",
}


def command(name: str, before: str = "", **limits: int) -> Function:
    escaped = CALL.replace('"', '\\"') + "\\n"
    return function(name, "wat", COMMAND % (escaped, BEFORE[before], len(CALL) + 1), **limits)


def test_a_command_s_host_calls_are_answered_on_stdin_and_its_last_line_is_the_response(
    conn: Conn, call: Any, runtime: Runtime, notes: Catalog
) -> None:
    outcome = call(command("cmd"), {"method": "POST", "path": "/", "body": {"text": "hi"}})
    assert outcome.error is None, outcome.error
    body = outcome.response.body
    assert body["request"]["body"] == {"text": "hi"}
    assert body["answer"] == {
        "ok": True,
        "value": {"count": 1, "rows": [{"id": 1, "body": "from a command"}]},
    }
    spans = conn.execute(
        "SELECT name FROM flux.spans WHERE request_id = %s ORDER BY seq", (outcome.request_id,)
    ).fetchall()
    assert [row[0] for row in spans] == ["function:cmd", "db:insert(notes)"]
    assert conn.execute("SELECT request_id::text FROM flux.mutations").fetchall() == [(outcome.request_id,)]
    for mode in ("recorded", "live", "as-of"):
        result = replayed(conn, runtime, notes, outcome.request_id, command("cmd"), mode)
        assert result.verdict == "same", (mode, result.divergences)


@pytest.mark.parametrize(
    ("before", "code", "message"),
    [
        ("spin", "FX301", "ran past 300 ms"),
        ("exit", "FX300", "bad input"),
        ("silent", "FX303", "without writing its response"),
        ("flood", "FX303", "without reading an answer"),
    ],
)
def test_a_command_that_loops_exits_says_nothing_or_floods_fails_with_its_code(
    call: Any, before: str, code: str, message: str
) -> None:
    outcome = call(command(f"cmd_{before}", before, timeout_ms=300, memory_mb=16))
    assert outcome.error is not None and outcome.error.code == code, outcome.error
    assert message in outcome.error.message, outcome.error.message


def test_the_command_section_travels_with_the_module_and_names_its_start() -> None:
    module = wasmtime.wat2wasm('(module (func (export "_start")))')
    wanted = Command("start", ("qjs", "-e", "print(1)"), "")
    bundled = with_command(bytes(module), wanted)
    assert split_command(bundled) == (bytes(module), wanted)
    assert split_command(bytes(module)) == (bytes(module), None)
    wasmtime.Module(wasmtime.Engine(), bundled)  # still one valid module
