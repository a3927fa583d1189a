"""Attacks on the shared Wasm path (flux/runtime/wasm.py) and the WASI-command ABI (wasi_command.py) that Go
and Ruby functions run on: hostile modules and commands, each expected to end with a stable FX code in a
recorded request, within its limits, leaving nothing to another run or another thread."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import wasmtime

from flux.api.deploy import deploy
from flux.config import load_settings
from flux.errors import FluxError
from flux.runtime import Function, FunctionLimits
from flux.runtime.wasm import WasmRuntime
from tests.fixtures.processes import call_json, flux_server
from tests.fixtures.runtime import function

Conn = psycopg.Connection[Any]

# -- one thread's host error is its own ------------------------------------------------------------------

# Sleeps 10 s through poll_oneoff: with a 1 ms limit the host function raises FX301 at once.
SLEEPER = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "flux_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "flux_handle") (param i32 i32) (result i64)
    (i64.store (i32.const 24) (i64.const 10000000000))
    (drop (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))
    (i64.const 0)))"""
TRAPPER = """(module
  (memory (export "memory") 1)
  (func (export "flux_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "flux_handle") (param i32 i32) (result i64) unreachable))"""
# A WASI command that answers {"ok":1} and exits with status 0 (an exit wasmtime reports as an error).
EXITER = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{\\"ok\\":1}\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 9))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 0))))"""


class _ClockHost:
    """The host calls these modules make (WASI's clock for the command's start): no database involved."""

    run_deadline: float | None = None

    def call(self, op: str, args: Any) -> Any:
        assert op == "now", op
        return 1.0

    def answer(self, op: str, args: Any) -> Any:
        return {"ok": True, "value": self.call(op, args)}


def test_a_host_error_on_one_thread_never_ends_a_run_on_another(tmp_path: Path) -> None:
    # wasmtime-py keeps a host function's exception in one global (wasmtime._func.LAST_EXCEPTION) until the
    # thread that entered Wasm reads it back. A worker (and the queue) runs requests on several threads: one
    # run's host error (here FX301 from a sleep) surfaced in another run that trapped, or even in a command
    # that exited cleanly, and the run that raised it saw a bare trap (FX306). Measured before the fix, in
    # 5 s: 220 of 9377 traps and 174 of 7330 clean exits got the sleeper's FX301; 394 sleeps ended FX306.
    runtime = WasmRuntime(tmp_path)
    modules = {
        name: runtime.load(bytes(wasmtime.wat2wasm(text)))
        for name, text in (("sleeper", SLEEPER), ("trapper", TRAPPER), ("exiter", EXITER))
    }
    limits = {
        "sleeper": FunctionLimits(timeout_ms=1),
        "trapper": FunctionLimits(),
        "exiter": FunctionLimits(),
    }
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    stop = time.monotonic() + 3

    def serve(name: str) -> None:
        while time.monotonic() < stop:
            try:
                seen[name][f"ok {runtime.run(modules[name], {}, _ClockHost(), limits[name])}"] += 1  # type: ignore[arg-type]
            except FluxError as exc:
                seen[name][f"{exc.code} {exc.message.split(':')[0]}"] += 1

    threads = [threading.Thread(target=serve, args=(name,)) for name in modules]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(seen["trapper"]) == {"FX300 the function trapped"}, seen["trapper"]
    assert set(seen["exiter"]) == {"ok {'ok': 1}"}, seen["exiter"]
    assert set(seen["sleeper"]) <= {
        "FX301 the function slept past its time limit",
        "FX301 the function ran past 1 ms",  # the epoch came first
    }, seen["sleeper"]
    assert sum(seen["trapper"].values()) > 500 and sum(seen["sleeper"].values()) > 200


# -- pointers and lengths a module gives the host --------------------------------------------------------

HOSTILE = """(module
  (import "flux" "call" (func $call (param i32 i32) (result i64)))
  (import "flux" "log" (func $log (param i32 i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (table $slots 1 funcref)
  (data (i32.const 16) "[0]")
  (data (i32.const 32) "{\\"op\\":\\"now\\"}")
  (func (export "flux_alloc") (param i32) (result i32) %s)
  (func (export "flux_handle") (param i32 i32) (result i64)
    (i32.store8 (i32.const 17) (i32.add (i32.const 48) %s))
    (i64.const 68719476739)))"""  # the answer: 3 bytes at 16


def hostile(name: str, errno: str, alloc: str = "(i32.const 1024)", **limits: int) -> Function:
    """A module answering [digit], the digit what `errno` (WAT) returned; its flux_alloc answers `alloc`."""
    return function(name, "wat", HOSTILE % (alloc, errno), **limits)


OUTSIDE = {  # what each call gives the host that is outside its one page of memory
    "clock_time_get a time": "(call $clock (i32.const 0) (i64.const 1) (i32.const 65532))",
    "clock_time_get a time ": "(call $clock (i32.const 0) (i64.const 1) (i32.const -8))",  # an i32 below 0
    "random_get a buffer": "(call $random (i32.const 0) (i32.const 67108864))",  # 64 MiB: refused, not drawn
    "poll_oneoff events": """(i32.store8 (i32.const 8) (i32.const 1))
        (call $poll (i32.const 0) (i32.const 65530) (i32.const 1) (i32.const 200))""",
    "a host call": "(i32.wrap_i64 (call $call (i32.const -10) (i32.const 10)))",  # was read from the end
    "a log line": "(call $log (i32.const 65000) (i32.const 1000)) (i32.const 0)",  # was cut short
}


@pytest.mark.parametrize("what", OUTSIDE)
def test_a_pointer_outside_the_module_s_memory_fails_the_run_fx300_and_is_recorded(
    conn: Conn, call: Any, what: str
) -> None:
    outcome = call(hostile("outside", OUTSIDE[what]))
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert f"gave the host {what.strip()} outside its memory" in outcome.error.message
    row = conn.execute(
        "SELECT ok, status, error->>'code' FROM flux.requests WHERE id = %s", (outcome.request_id,)
    ).fetchone()
    assert row == (False, 500, "FX300")
    spans = conn.execute(
        "SELECT name FROM flux.spans WHERE request_id = %s", (outcome.request_id,)
    ).fetchall()
    assert ("function:outside",) in spans


def test_an_answer_flux_alloc_puts_outside_memory_fails_fx300(call: Any) -> None:
    # flux_alloc answers 1024 for the request, then 65530: the host call's answer does not fit there.
    then_wild = "(if (result i32) (i32.load (i32.const 8)) (then (i32.const 65530))"
    then_wild += " (else (i32.store (i32.const 8) (i32.const 1)) (i32.const 1024)))"
    call_now = "(i32.wrap_i64 (call $call (i32.const 32) (i32.const 12)))"
    outcome = call(hostile("wild_alloc", call_now, then_wild))
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert "flux_alloc's pointer for a host call's answer outside its memory" in outcome.error.message


@pytest.mark.parametrize(
    ("alloc", "code"),
    [
        ("(loop $forever (br $forever)) (i32.const 0)", "FX301"),  # out of fuel or time inside the host call
        ("unreachable", "FX300"),
    ],
)
def test_flux_alloc_failing_inside_a_host_call_fails_the_run_with_its_own_code(
    call: Any, alloc: str, code: str
) -> None:
    # The host calls flux_alloc for the answer while the module's flux.call is in progress: what stops it
    # there comes back through the host function, and ends the run as it would anywhere else.
    then = f"(if (result i32) (i32.load (i32.const 8)) (then {alloc})"
    then += " (else (i32.store (i32.const 8) (i32.const 1)) (i32.const 1024)))"
    call_now = "(i32.wrap_i64 (call $call (i32.const 32) (i32.const 12)))"
    outcome = call(hostile("alloc_fails", call_now, then, timeout_ms=300))
    assert outcome.error is not None and outcome.error.code == code, outcome.error


@pytest.mark.parametrize("count", [0, -1, 0x7FFF_FFFF])
def test_poll_oneoff_with_no_or_endless_subscriptions_answers_einval(call: Any, count: int) -> None:
    poll = f"(call $poll (i32.const 0) (i32.const 100) (i32.const {count}) (i32.const 200))"
    outcome = call(hostile("poll", f"(i32.eq {poll} (i32.const 28))"))  # 28: EINVAL
    assert outcome.error is None and outcome.response.body == [1], outcome.error


def test_a_table_grows_no_further_than_its_share_of_the_memory_cap(call: Any) -> None:
    # Wasmtime caps each memory, not tables: a table of 100 million funcrefs took 800 MB of the host's
    # memory in 1.4 s. A table may take 1/16 of the memory cap (8 bytes a slot): here 16 MiB, 2 MiB of slots.
    grow = "(i32.eq (table.grow $slots (ref.null func) (i32.const {})) (i32.const -1))"
    big = call(hostile("table_big", grow.format(100_000_000), memory_mb=16))
    assert big.error is None and big.response.body == [1], big.error  # refused: memory.grow's -1
    fits = call(hostile("table_fits", grow.format(100_000), memory_mb=16))
    assert fits.error is None and fits.response.body == [0], fits.error


@pytest.mark.parametrize(
    ("declared", "code"),
    [
        ("(memory 1000) (memory 1000) (memory 1000)", "FX307"),  # three caps, not one
        (" ".join(["(table 1 funcref)"] * 5), "FX307"),  # with $slots, six
        ("(table 100000000 funcref)", "FX302"),
    ],
)
def test_a_module_declaring_more_memories_or_tables_than_one_cap_allows_does_not_start(
    call: Any, declared: str, code: str
) -> None:
    # Each memory had its own cap: twenty 62.5 MB memories started under a 128 MB cap.
    text = HOSTILE.replace("(table $slots 1 funcref)", declared) % ("(i32.const 1024)", "(i32.const 0)")
    outcome = call(function("declares", "wat", text, memory_mb=128))
    assert outcome.error is not None and outcome.error.code == code, outcome.error


NEWLINES = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 16)
  (func (export "flux_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "flux_handle") (param i32 i32) (result i64)
    (memory.fill (i32.const 16) (i32.const 10) (i32.const 1048560))
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 1048560))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i64.const 0)))"""


def test_a_million_lines_in_one_write_end_at_the_deadline(conn: Conn, call: Any) -> None:
    # WASI's stdout (wasmtime's own fd_write, for modules) hands the host the whole write: a million newlines
    # were split by copying the rest of the buffer once a line (quadratic), then each logged, in host code no
    # epoch interrupts. Now lines are taken one at a time, and none is logged past the deadline.
    started = time.monotonic()
    outcome = call(function("newlines", "wat", NEWLINES, timeout_ms=300))
    assert outcome.error is not None and outcome.error.code == "FX301", outcome.error
    assert time.monotonic() - started < 3
    logged = conn.execute(
        "SELECT count(*) FROM flux.spans WHERE request_id = %s AND module = 'log'", (outcome.request_id,)
    ).fetchone()
    assert logged is not None and 0 < logged[0] < 1048560


# -- WASI commands ----------------------------------------------------------------------------------------

# A command: reads the request (its first line) into 8192, runs `$body` with $n (a result) and answers
# [$n]. The iovec list is at 0, the reply at 100, free memory from 200 to 8191 and past 16384.
COMMAND = """(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") %d)
  (data (i32.const 100) "[0]\\n")
  (data (i32.const 120) "{\\"op\\":\\"now\\"}\\n")
  (func $iovec (param $at i32) (param $from i32) (param $len i32)
    (i32.store (local.get $at) (local.get $from))
    (i32.store (i32.add (local.get $at) (i32.const 4)) (local.get $len)))
  (func (export "_start") (local $n i32) (local $i i32)
    (call $iovec (i32.const 0) (i32.const 8192) (i32.const 8192))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    %s
    (i32.store8 (i32.const 101) (i32.add (i32.const 48) (local.get $n)))
    (call $iovec (i32.const 0) (i32.const 100) (i32.const 4))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def command(name: str, body: str, pages: int = 1, **limits: int) -> Function:
    return function(name, "wat", COMMAND % (pages, body), **limits)


def _logged(conn: Conn, request_id: str) -> list[int]:
    rows = conn.execute(
        "SELECT length(input->>'message') FROM flux.spans WHERE request_id = %s AND module = 'log'"
        " ORDER BY seq",
        (request_id,),
    ).fetchall()
    return [row[0] for row in rows]


def test_a_write_naming_the_whole_memory_a_thousand_times_is_short_and_its_line_kept_in_pieces(
    conn: Conn, call: Any
) -> None:
    # 64 iovecs of most of its 1 MiB memory in one fd_write to stderr: the host joined all of them (64 MiB;
    # with 8192 iovecs of 64 KiB, 512 MiB, 10 s past a 1 s limit and 2 GB of the host's memory) and logged
    # them as one line. Now a write takes at most 1 MiB (a short write, as POSIX allows) and a line without
    # its newline is logged in pieces of 64 KiB.
    body = """(memory.fill (i32.const 16384) (i32.const 97) (i32.const 1032192))
      (local.set $i (i32.const 8192))
      (loop $fill (call $iovec (local.get $i) (i32.const 16384) (i32.const 1032192))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br_if $fill (i32.lt_u (local.get $i) (i32.const 8704))))
      (drop (call $write (i32.const 2) (i32.const 8192) (i32.const 64) (i32.const 12000)))
      (local.set $n (i32.eq (i32.load (i32.const 12000)) (i32.const 1048576)))"""
    outcome = call(command("short_write", body, pages=16, timeout_ms=5000))
    assert outcome.error is None and outcome.response.body == [1], outcome.error  # 1 MiB written, not 1 GiB
    assert _logged(conn, outcome.request_id) == [65536] * 16


@pytest.mark.parametrize("call_name", ["write", "read"])
def test_more_iovecs_than_linux_allows_is_einval(call: Any, call_name: str) -> None:
    fd = 1 if call_name == "write" else 0
    errno = f"(call ${call_name} (i32.const {fd}) (i32.const 0) (i32.const 1025) (i32.const 16))"
    body = f"(local.set $n (i32.sub {errno} (i32.const 20)))"
    outcome = call(command(f"iovecs_{call_name}", body))
    assert outcome.error is None and outcome.response.body == [8], outcome.error  # 28 (EINVAL) - 20


@pytest.mark.parametrize(
    ("call_name", "what"),
    [("write", "fd_write a count"), ("read", "fd_read a count"), ("write", "an iovec")],
)
def test_a_command_s_count_or_buffer_outside_its_memory_fails_fx300(
    conn: Conn, call: Any, call_name: str, what: str
) -> None:
    fd = 1 if call_name == "write" else 0
    iovec = "(call $iovec (i32.const 16) (i32.const 120) (i32.const 13))"
    if what == "an iovec":
        iovec = "(call $iovec (i32.const 16) (i32.const 65500) (i32.const 100))"
    body = (
        f"{iovec} (drop (call ${call_name} (i32.const {fd}) (i32.const 16) (i32.const 1) (i32.const 65534)))"
    )
    outcome = call(command("wild_count", body))
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert f"gave the host {what} outside its memory" in outcome.error.message
    assert conn.execute(
        "SELECT error->>'code' FROM flux.requests WHERE id = %s", (outcome.request_id,)
    ).fetchone() == ("FX300",)


DEEP = 200_000  # levels of [


def _deep_line() -> str:
    """WAT that writes a line of DEEP `[` on stdout (from 16384: 8 pages of memory hold it)."""
    return f"""(memory.fill (i32.const 16384) (i32.const 91) (i32.const {DEEP}))
      (i32.store8 (i32.const {16384 + DEEP}) (i32.const 10))
      (call $iovec (i32.const 0) (i32.const 16384) (i32.const {DEEP + 1}))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"""


def test_a_host_call_nested_deeper_than_a_record_holds_is_answered_not_json(conn: Conn, call: Any) -> None:
    # Python's parser ran out of stack (RecursionError: FX900, a Flux bug) on a line orjson refused (past
    # 1024 levels); now such a call is answered as not JSON, FX305, and the run goes on.
    body = (
        _deep_line()
        + """
      (call $iovec (i32.const 0) (i32.const 8192) (i32.const 8192))
      (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.eq (i32.load8_u (i32.const 8192)) (i32.const 123)))"""
    )
    outcome = call(command("deep_call", body, pages=8))
    assert outcome.error is None and outcome.response.body == [1], outcome.error
    answered = conn.execute(
        "SELECT count(*) FROM flux.spans WHERE request_id = %s", (outcome.request_id,)
    ).fetchone()
    assert answered == (1,)  # the function's span: a line that is not JSON calls nothing


def test_a_host_call_or_response_that_is_not_utf_8_is_answered_not_json_or_fx303(call: Any) -> None:
    # Bytes 0xff 0xfe before a call: answered {"ok": false, FX305}, whose first byte ({) the command reports.
    bad = """(i32.store16 (i32.const 118) (i32.const 0xfeff))
      (call $iovec (i32.const 0) (i32.const 118) (i32.const 15))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"""
    answered = (
        bad
        + """(call $iovec (i32.const 0) (i32.const 8192) (i32.const 8192))
      (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.eq (i32.load8_u (i32.const 8198)) (i32.const 102)))"""
    )  # {"ok":false: f at 6
    outcome = call(command("not_utf8_call", answered))
    assert outcome.error is None and outcome.response.body == [1], outcome.error
    outcome = call(command("not_utf8_response", bad + "(return)"))
    assert outcome.error is not None and outcome.error.code == "FX303", outcome.error


def test_a_response_nested_too_deeply_to_read_is_fx303(call: Any) -> None:
    body = _deep_line() + "(return)"
    outcome = call(command("deep_response", body, pages=8))
    assert outcome.error is not None and outcome.error.code == "FX303", outcome.error
    assert "nested too deeply" in outcome.error.message


def _storm() -> str:
    """WAT that writes 4 MB of {"op":"now"} lines on stdout, in as many calls as its short writes take (64
    pages of memory hold them)."""
    return """(local.set $i (i32.const 16384))
      (loop $more (memory.copy (local.get $i) (i32.const 120) (i32.const 13))
        (local.set $i (i32.add (local.get $i) (i32.const 13)))
        (br_if $more (i32.lt_u (local.get $i) (i32.const 4000000))))
      (call $iovec (i32.const 0) (i32.const 16384) (i32.sub (local.get $i) (i32.const 16384)))
      (loop $all (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.load (i32.const 8))))
        (i32.store (i32.const 4) (i32.sub (i32.load (i32.const 4)) (i32.load (i32.const 8))))
        (br_if $all (i32.load (i32.const 4))))"""


def test_a_storm_of_host_calls_written_at_once_ends_at_the_deadline(conn: Conn, call: Any) -> None:
    # 4 MB of {"op":"now"} lines in one write, then the command exits: the host performed all 300 000 calls
    # after the program ended, in host code no epoch interrupts (seconds past a 300 ms limit), and answered
    # with the last line. It now stops at the deadline with FX301, and the record keeps what ran.
    body = _storm() + "(return)"
    started = time.monotonic()
    outcome = call(command("storm", body, pages=64, timeout_ms=300))
    took = time.monotonic() - started
    assert outcome.error is not None and outcome.error.code == "FX301", outcome.error
    assert took < 3, took
    calls = conn.execute(
        "SELECT count(*) FROM flux.spans WHERE request_id = %s AND name = 'clock:now'", (outcome.request_id,)
    ).fetchone()
    assert calls is not None and 0 < calls[0] < 300_000


def test_a_command_s_unread_answers_and_output_reach_no_later_run(call: Any) -> None:
    # A run that writes host calls and never reads their answers leaves them in its own stdin, which ends
    # with it: the next run reads its own request and nothing else.
    leaver = """(call $iovec (i32.const 0) (i32.const 120) (i32.const 13))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"""
    reader = """(call $iovec (i32.const 0) (i32.const 16384) (i32.const 8192))
      (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.load (i32.const 8)))"""  # bytes left on stdin after the request: 0
    first = call(command("leaver", leaver))
    assert first.error is None and first.response.body == [0], first.error
    second = call(command("reader", reader))
    assert second.error is None and second.response.body == [0], second.error


WASI_STATE = """
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (memory (export"""
# $n: the count of environment variables, + 2 unless there is one argument, + 4 unless fd 3 is EBADF.
WASI_COUNTS = """(drop (call $environ (i32.const 16384) (i32.const 16388)))
      (drop (call $args (i32.const 16392) (i32.const 16396)))
      (local.set $n (i32.add (i32.load (i32.const 16384))
        (i32.add (i32.mul (i32.ne (i32.load (i32.const 16392)) (i32.const 1)) (i32.const 2))
          (i32.mul (i32.ne (call $prestat (i32.const 3) (i32.const 16400)) (i32.const 8))
            (i32.const 4)))))"""


def test_a_command_finds_no_environment_arguments_or_preopened_directory(call: Any) -> None:
    text = (COMMAND % (1, WASI_COUNTS)).replace("\n  (memory (export", WASI_STATE, 1)
    outcome = call(function("bare", "wat", text))
    assert outcome.error is None and outcome.response.body == [0], outcome.error


# -- through the real server --------------------------------------------------------------------------------

SERVED = {  # name: (code, its answer's HTTP status, WAT)
    "wild": ("FX300", 500, HOSTILE % ("(i32.const 1024)", OUTSIDE["clock_time_get a time"])),
    "deep": ("FX303", 502, COMMAND % (8, _deep_line() + "(return)")),
    "storm": ("FX301", 504, COMMAND % (64, _storm() + "(return)")),
}


@pytest.mark.slow
def test_the_real_server_answers_hostile_wasm_with_its_fx_code_and_records_it(
    dsn: str, conn: Conn, project_dir: Path, flux_env: dict[str, str]
) -> None:
    # Each hostile run is answered with its code and request id as JSON (no 5xx page, no traceback), and its
    # request is recorded with its function's span; the server then still answers.
    toml = 'name = "hostile"\n'
    for name, (_, _, text) in SERVED.items():
        folder = project_dir / "functions" / name
        folder.mkdir(parents=True)
        (folder / "index.wat").write_text(text)
        toml += f'\n[[routes]]\nmethod = "POST"\npath = "/{name}"\nfunction = "{name}"\nauth = "none"\n'
    toml += "\n[functions.storm]\ntimeout_ms = 300\n"
    (project_dir / "flux.toml").write_text(toml)
    deploy(dsn, load_settings(project_dir, env={}))
    with flux_server(project_dir, {**flux_env, "DATABASE_URL": dsn}) as (url, _):
        for name, (code, status, _) in SERVED.items():
            got, headers, body = call_json(f"{url}/{name}", "POST", {})
            assert (got, body.get("code")) == (status, code), (name, body)
            assert body["request_id"] == headers["x-request-id"] and "Traceback" not in str(body)
            recorded = conn.execute(
                "SELECT r.error->>'code', s.error->>'code' FROM flux.requests r"
                " JOIN flux.spans s ON s.request_id = r.id AND s.name = %s WHERE r.id = %s",
                (f"function:{name}", body["request_id"]),
            ).fetchall()
            assert recorded == [(code, code)], name
        assert call_json(f"{url}/wild", "POST", {})[0] == 500  # the worker still serves


# -- not fixed here: a request's record has no bound ------------------------------------------------

LOGGER = """(module
  (import "flux" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "flux_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "flux_handle") (param i32 i32) (result i64)
    (memory.fill (i32.const 0) (i32.const 97) (i32.const 4096))
    (loop $more (call $log (i32.const 0) (i32.const 4096)) (br $more))
    (i64.const 0)))"""


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True, reason="a request's spans have no budget (host.py, recorder.py): its own issue"
)
def test_a_function_that_logs_as_fast_as_it_can_has_a_bounded_record(conn: Conn, call: Any) -> None:
    # Every host call is a span, and nothing bounds how many a request makes or how large they are. Logging
    # 4 KiB lines: for 300 ms, 12 919 spans and 53 MB of record (1.9 s); for 500 ms, a record over jsonb's
    # 256 MB limit, so FX900 and the record lost, after 58 s; the default limit is 30 s. Any runtime can
    # (TypeScript's console.log too). Whatever the budget, a request's record should stay well under this.
    outcome = call(function("logger", "wat", LOGGER, timeout_ms=300))
    assert outcome.error is not None and outcome.error.code != "FX900", outcome.error
    recorded = conn.execute(
        "SELECT sum(length(input::text)) FROM flux.spans WHERE request_id = %s", (outcome.request_id,)
    ).fetchone()
    assert recorded is not None and recorded[0] < 16_000_000, recorded
