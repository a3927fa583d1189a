"""What running a function costs: a Wasm core module in a fresh instance, a warm Deno call and a Deno worker's
cold start, and the recording of one host call (its span kept in memory, then written with the request).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from flux import db
from flux.data import load_catalog
from flux.runtime import Function, FunctionLimits, Runtime
from flux.runtime.build import build_function
from flux.runtime.host import Host
from flux.runtime.wasm import compile_wat
from flux.trace.recorder import Recorder

WASM_CALLS = 2000
DENO_CALLS = 1000
COLD_STARTS = 5
RECORDED_CALLS = 200  # host calls per request when measuring the recording

TRIVIAL_WAT = """(module
  (memory (export "memory") 1)
  (data (i32.const 16) "{\\"ok\\":true}")
  (func (export "flux_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "flux_handle") (param i32 i32) (result i64) (i64.const 68719476747)))"""  # (16 << 32) | 11
TRIVIAL_TS = b"export default async function () { return {ok: true}; }"
TRIVIAL_PY = """import wit_world

class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        return '{"ok": true}'
"""
COMPONENT_CALLS = 200


def _function(name: str, runtime: str, code: bytes) -> Function:
    import hashlib

    return Function(name, runtime, code, hashlib.sha256(code).hexdigest(), FunctionLimits())  # type: ignore[arg-type]


def _p50(samples: list[float]) -> float:
    return statistics.median(samples)


def _time_each(calls: int, work: Callable[[], Any]) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        work()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def run(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, tempfile.TemporaryDirectory() as cache:
        catalog = load_catalog(conn)
        runtime = Runtime(Path(cache))
        try:
            request_id = str(uuid.uuid4())
            host = Host(db.RequestTransaction(conn, role="user", request_id=request_id), catalog, "user",
                        Recorder(request_id))  # fmt: skip
            _wasm(runtime, host)
            _component(runtime, host, Path(cache))
            _deno(runtime, host)
            _recording(conn, host)
        finally:
            runtime.close()


def _wasm(runtime: Runtime, host: Host) -> None:
    loaded = runtime.wasm.load(compile_wat(TRIVIAL_WAT))
    limits = FunctionLimits()
    for _ in range(200):
        runtime.wasm.run(loaded, {"path": "/"}, host, limits)
    samples = _time_each(WASM_CALLS, lambda: runtime.wasm.run(loaded, {"path": "/"}, host, limits))
    p50 = _p50(samples)
    print(f"runtime: Wasm core module, fresh instance, trivial handler, no host calls, {WASM_CALLS} calls")
    print(f"  p50 {p50:7.1f} us   p99 {sorted(samples)[int(len(samples) * 0.99)]:7.1f} us   "
          f"{p50 / 150:.2f}x the 150 us target   (target <= 1.00x)")  # fmt: skip


def _component(runtime: Runtime, host: Host, scratch: Path) -> None:
    folder = scratch / "functions" / "trivial_py"
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(TRIVIAL_PY)
    fn = build_function(folder, scratch / "build")
    started = time.perf_counter()
    loaded = runtime.components.load(fn.code)
    compiled_s = time.perf_counter() - started
    call = lambda: runtime.components.run(loaded, {"path": "/"}, host, fn.limits)  # noqa: E731
    for _ in range(20):
        call()
    p50 = _p50(_time_each(COMPONENT_CALLS, call))
    print(
        f"runtime: Python component (componentize-py, {len(fn.code) / 1e6:.1f} MB), {COMPONENT_CALLS} calls"
    )
    print(f"  first compile {compiled_s:5.1f} s, then fresh instance + call p50 {p50 / 1000:5.2f} ms   "
          f"{p50 / 3000:.2f}x the 3 ms target   (target <= 1.00x)")  # fmt: skip


def _deno(runtime: Runtime, host: Host) -> None:
    fn = _function("trivial", "typescript", TRIVIAL_TS)
    call = lambda: runtime.execute(fn, {"path": "/"}, host)  # noqa: E731
    for _ in range(100):
        call()
    p50 = _p50(_time_each(DENO_CALLS, call))
    colds = []
    for _ in range(COLD_STARTS):
        started = time.perf_counter()
        worker = runtime.deno._start(FunctionLimits().memory_mb)
        colds.append((time.perf_counter() - started) * 1000)
        worker.stop()
    cold = _p50(colds)
    print(
        f"runtime: Deno, {DENO_CALLS} warm calls back to back of a trivial function, each in a fresh context"
    )
    print(f"  warm call p50 {p50:7.1f} us   {p50 / 300:.2f}x the 300 us target   (target <= 1.00x)")
    print(f"  worker cold start p50 {cold:5.1f} ms   {cold / 50:.2f}x the 50 ms target   (target <= 1.00x)")


def _recording(conn: psycopg.Connection[Any], host: Host) -> None:
    """One host call's recording: its span opened and closed in memory, plus its share of the one statement
    that writes a request's spans; `log` is the cheapest call, so what is left is the recording."""
    per_span, per_write = [], []
    for _ in range(20):
        recorder = Recorder(str(uuid.uuid4()))
        host.recorder = recorder
        started = time.perf_counter_ns()
        for i in range(RECORDED_CALLS):
            host.call("log", {"message": f"line {i}"})
        per_span.append((time.perf_counter_ns() - started) / 1000 / RECORDED_CALLS)
        with conn.transaction(force_rollback=True):
            started = time.perf_counter_ns()
            recorder.write(conn, {"kind": "http", "ok": True, "started_us": time.time_ns() // 1000})
            per_write.append((time.perf_counter_ns() - started) / 1000 / RECORDED_CALLS)
    memory, written = _p50(per_span), _p50(per_write)
    total = memory + written
    print(f"runtime: recording a host call ({RECORDED_CALLS} log calls per request, median of 20)")
    print(f"  span in memory {memory:5.1f} us + its share of the write {written:5.1f} us = {total:5.1f} us   "
          f"{total / 20:.2f}x the 20 us target   (target <= 1.00x)")  # fmt: skip
