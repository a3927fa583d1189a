"""Where a TypeScript request's time goes, by process: CPU a request of Flux's Python (the invoke: host,
recorder, data engine, pipeline), of the Postgres backend serving its request connection, and of the Deno
worker running it, for a function that does nothing, one that selects a row and one that inserts a tracked
row, called in process (`invoke`, no HTTP) on one request connection and one warm Deno worker. CPU time
(utime + stime from /proc) holds up on a busy machine where wall time does not. Issue 27 starts here. Then
bench/deno_run.py: where the Deno worker's share goes, step by step."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import deno_run
from flux import db
from flux.data import load_catalog
from flux.runtime import Caller, Function, FunctionLimits, Runtime, invoke

CALLS = 500
WARM = 50
LIMITS = FunctionLimits()
TABLE = """
DROP TABLE IF EXISTS bench_cpu_notes;
CREATE TABLE bench_cpu_notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL,
                              created_at timestamptz NOT NULL DEFAULT now());
GRANT SELECT, INSERT ON bench_cpu_notes TO flux_anon;
SELECT flux.track('bench_cpu_notes');
INSERT INTO bench_cpu_notes (body) VALUES ('first');
"""
FUNCTIONS = {
    "nothing": b"export default async (req: any, ctx: any) => ({ status: 200, body: { ok: true } });",
    "select": b"""export default async (req: any, ctx: any) => {
  const found = await ctx.db.query({ select: "bench_cpu_notes", where: { id: { eq: 1 } } });
  return { status: 200, body: found.rows[0] };
};""",
    "insert": b"""export default async (req: any, ctx: any) => {
  const made = await ctx.db.query({ insert: "bench_cpu_notes", values: { body: req.body.text },
                                    returning: ["id", "body"] });
  return { status: 201, body: made.rows[0] };
};""",
}


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, tempfile.TemporaryDirectory() as cache:
        conn.execute(TABLE.encode())
        catalog = load_catalog(conn)
        runtime = Runtime(Path(cache), deno_workers=1)
        print(f"function_cpu: CPU a request by process, {CALLS} TypeScript calls in process ({WARM} warm)")
        try:
            with db.request_connection(conn) as runs_on:
                for name, code in FUNCTIONS.items():
                    function = Function(name, "typescript", code, hashlib.sha256(code).hexdigest(), LIMITS)
                    wall, python, postgres, deno = _measure(runs_on, runtime, function, catalog)
                    print(f"  {name:8s} wall {wall:6.0f} us   CPU: Python {python:5.0f} us,"
                          f" Postgres {postgres:5.0f} us, Deno {deno:5.0f} us")  # fmt: skip
        finally:
            runtime.close()
            conn.execute(b"DROP TABLE IF EXISTS bench_cpu_notes")
    deno_run.report()


def _measure(runs_on: Any, runtime: Runtime, function: Function, catalog: Any) -> tuple[float, ...]:
    """Microseconds a call: wall time, then the CPU of this process, of `runs_on`'s backend and of Deno."""
    request = {"method": "POST", "path": "/notes", "body": {"text": "hi"}}
    anon = Caller("anon")
    for _ in range(WARM):
        invoke(runs_on, runtime, function, request, catalog=catalog, caller=anon)
    backend = runs_on.execute(b"SELECT pg_backend_pid()").fetchone()[0]
    deno = [worker.process.pid for worker in list(runtime.deno._idle.queue)]
    before = (time.perf_counter(), time.process_time(), _cpu_seconds(backend), sum(map(_cpu_seconds, deno)))
    for _ in range(CALLS):
        invoke(runs_on, runtime, function, request, catalog=catalog, caller=anon)
    after = (time.perf_counter(), time.process_time(), _cpu_seconds(backend), sum(map(_cpu_seconds, deno)))
    return tuple((b - a) / CALLS * 1e6 for a, b in zip(before, after, strict=True))
