"""Where a recorded TypeScript request's time goes outside Deno (issue 27): for a function that selects a row,
one that inserts a tracked row, and the whole path's `/orders` (two reads, one insert: bench/web.py's), run in
process (`invoke`, as the gateway calls it, its record writer included) on one request connection:

- round trips to Postgres a request, and statements a round trip, on the request's thread and on the record
  writer's;
- each statement's calls and Postgres execution time a request (pg_stat_statements with `track = all`, so the
  mutation trigger's insert shows on its own), grouped by what it is for: the request's settings, its own
  queries (less the trigger's insert, which their time includes), the record, the mutation row;
- CPU a request by process: Flux's Python (the request's thread and the record writer's), the request
  connection's backend, the record writer's backends, the Deno worker;
- the request thread's wall time split: waiting on Postgres, waiting on Deno, and Python (the host's, the
  data engine's, the recorder's and the bridge's work; `invoke` less the two waits).

pg_stat_statements needs `shared_preload_libraries`: this starts a scratch embedded Postgres of its own
(flux/postgres.py, as the `postgres` OS user when run as root) with it, whatever DATABASE_URL says.
`python -m bench request_cost` (REQUEST_COST_CALLS=n calls a function, 400 by default).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench import function_cpu, web
from flux import db, migrate, pipeline
from flux.data import load_catalog
from flux.postgres import EmbeddedPostgres
from flux.runtime import Caller, Function, FunctionLimits, Runtime, invoke
from flux.runtime.deno import DenoPool
from flux.runtime.host import Host
from flux.trace.writer import RecordWriter

CALLS = int(os.environ.get("REQUEST_COST_CALLS", 400))
WARM = 60
# name -> (code, role, request body)
FUNCTIONS: dict[str, tuple[bytes, str, Any]] = {
    "select": (function_cpu.FUNCTIONS["select"], "anon", {"text": "hi"}),
    "insert": (function_cpu.FUNCTIONS["insert"], "anon", {"text": "hi"}),
    "orders": (web.ORDERS_TS.encode(), "user", web.PATH_BODY),
}
# What each statement is for, by the start of its text (pg_stat_statements normalises values to $n).
KINDS = (
    ("settings", re.compile(r"^(SELECT pg_catalog\.set_config|BEGIN|COMMIT|ROLLBACK|SELECT pg_backend_pid)")),
    ("record", re.compile(r"^(WITH request AS|SELECT flux\.announce_requests)")),
    ("mutation row", re.compile(r"^INSERT INTO flux\.mutations")),
)


@contextmanager
def scratch_cluster() -> Iterator[str]:
    """An embedded Postgres with pg_stat_statements loaded (track = all), migrated; its DSN."""
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-cost-"))
    folder.chmod(0o755)
    cluster = EmbeddedPostgres(folder / "pg")
    try:
        dsn = cluster.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        cluster.stop()
        dsn = cluster.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")  # known once it is loaded
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
            conn.execute("SELECT pg_reload_conf()")
        migrate.migrate(dsn)
        yield dsn
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


class _Clocks:
    """Round trips and statements sent through flux.pipeline by thread, and the request thread's wall time
    in them (inside host calls and outside), in host calls, and in Deno runs (their host calls included)."""

    def __init__(self) -> None:
        self.trips: dict[str, int] = defaultdict(int)
        self.statements: dict[str, int] = defaultdict(int)
        self.clear()

    def clear(self) -> None:
        self.trips.clear()
        self.statements.clear()
        self.in_host = False
        self.wait_in_host_ns = self.wait_outside_ns = self.host_ns = self.deno_ns = 0

    @contextmanager
    def timing(self) -> Iterator[None]:
        round_trip, answer, deno_run = pipeline._round_trip, Host.answer, DenoPool.run
        main = threading.main_thread()

        def counted(pgconn: Any, state: Any, dumped: list[Any], **options: Any) -> Any:
            thread = threading.current_thread()
            clock = time.perf_counter_ns()
            try:
                return round_trip(pgconn, state, dumped, **options)
            finally:
                if thread is main:
                    took = time.perf_counter_ns() - clock
                    if self.in_host:
                        self.wait_in_host_ns += took
                    else:
                        self.wait_outside_ns += took
                self.trips[thread.name] += 1
                self.statements[thread.name] += len(dumped)

        def answered(host: Host, op: Any, args: Any) -> Any:
            clock = time.perf_counter_ns()
            self.in_host = True
            try:
                return answer(host, op, args)
            finally:
                self.in_host = False
                self.host_ns += time.perf_counter_ns() - clock

        def ran(pool: DenoPool, *args: Any) -> Any:
            clock = time.perf_counter_ns()
            try:
                return deno_run(pool, *args)
            finally:
                self.deno_ns += time.perf_counter_ns() - clock

        pipeline._round_trip = counted  # type: ignore[assignment]
        Host.answer = answered  # type: ignore[method-assign]
        DenoPool.run = ran  # type: ignore[method-assign]
        try:
            yield
        finally:
            pipeline._round_trip = round_trip  # type: ignore[assignment]
            Host.answer = answer  # type: ignore[method-assign]
            DenoPool.run = deno_run  # type: ignore[method-assign]


def _backend_pids(conn: psycopg.Connection[Any], user: str) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = current_database()", (user,)
    ).fetchall()
    return [row[0] for row in rows]


def run(_dsn: str) -> None:
    with scratch_cluster() as dsn:
        measure(dsn)


def measure(dsn: str) -> None:
    with (
        psycopg.connect(dsn, autocommit=True) as admin,
        tempfile.TemporaryDirectory() as cache,
    ):
        admin.execute(function_cpu.TABLE.encode())
        admin.execute(web.SCHEMA_SQL.encode())
        catalog = load_catalog(admin)
        runtime = Runtime(Path(cache), deno_workers=1)
        pool = db.create_pool(db.request_dsn(dsn), min_size=1, max_size=2, name="bench-records",
                              autocommit=True)  # fmt: skip
        pool.open(wait=True)
        records = RecordWriter(pool)
        clocks = _Clocks()
        load = os.getloadavg()
        print(f"request_cost: {CALLS} TypeScript requests a function in process, with the record writer;"
              f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
        try:
            with db.request_connection(admin) as conn, clocks.timing():
                request_pid = conn.execute(b"SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
                for name, (code, role, body) in FUNCTIONS.items():
                    function = Function(name, "typescript", code, hashlib.sha256(code).hexdigest(),
                                        FunctionLimits())  # fmt: skip
                    request = {"method": "POST", "path": f"/{name}", "body": body}
                    caller = Caller(role)

                    def call(function: Function = function, request: Any = request, caller: Any = caller,
                             ) -> Any:  # fmt: skip
                        outcome = invoke(conn, runtime, function, request, catalog=catalog, caller=caller,
                                         records=records)  # fmt: skip
                        assert outcome.error is None, outcome.error
                        return outcome

                    for _ in range(WARM):
                        call()
                    records.flush()
                    admin.execute("SELECT pg_stat_statements_reset()")
                    clocks.clear()
                    writers = [pid for pid in _backend_pids(admin, db.REQUEST_ROLE) if pid != request_pid]
                    deno = [worker.process.pid for worker in list(runtime.deno._idle.queue)]
                    pids = [request_pid, *writers, *deno]
                    before_cpu = [function_cpu._cpu_seconds(pid) for pid in pids]
                    process_before, thread_before = time.process_time(), time.thread_time()
                    clock = time.perf_counter_ns()
                    for _ in range(CALLS):
                        call()
                    wall_ns = time.perf_counter_ns() - clock
                    thread_cpu = time.thread_time() - thread_before
                    records.flush()
                    process_cpu = time.process_time() - process_before
                    after_cpu = [function_cpu._cpu_seconds(pid) for pid in pids]
                    used = [(b - a) / CALLS * 1e6 for a, b in zip(before_cpu, after_cpu, strict=True)]
                    statements = admin.execute(
                        "SELECT query, calls, total_exec_time, total_plan_time, toplevel"
                        "  FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
                        "  WHERE datname = current_database()) AND query NOT LIKE '%%pg_stat_statements%%'"
                    ).fetchall()
                    _report(name, wall_ns, thread_cpu, process_cpu, used, len(writers), clocks,
                            statements)  # fmt: skip
        finally:
            records.close()
            pool.close()
            runtime.close()


def _report(
    name: str, wall_ns: int, thread_cpu: float, process_cpu: float, used: list[float], writers: int,
    clocks: _Clocks, statements: list[tuple[Any, ...]],
) -> None:  # fmt: skip
    def us(ns: int) -> float:
        return ns / CALLS / 1000

    wall = us(wall_ns)
    outside = wall - us(clocks.deno_ns) - us(clocks.wait_outside_ns)
    host_python = us(clocks.host_ns) - us(clocks.wait_in_host_ns)
    deno = us(clocks.deno_ns) - us(clocks.host_ns)
    print(f"  {name}: wall {wall:.0f} us a request")
    main = threading.main_thread().name
    for thread in sorted(clocks.trips, key=lambda thread: thread != main):
        label = "request thread" if thread == main else thread
        print(f"    round trips a request, {label}: {clocks.trips[thread] / CALLS:.2f}"
              f" ({clocks.statements[thread] / CALLS:.1f} statements)")  # fmt: skip
    print(f"    wall: waiting on Postgres {us(clocks.wait_in_host_ns):.0f} us in host calls +"
          f" {us(clocks.wait_outside_ns):.0f} us outside (BEGIN, COMMIT, record);"
          f" Deno and its pipes {deno:.0f} us;"
          f" Python {host_python:.0f} us in host calls + {outside:.0f} us around the run")  # fmt: skip
    postgres, writer_pg, deno_cpu = used[0], sum(used[1 : 1 + writers]), sum(used[1 + writers :])
    print(f"    CPU: Python {process_cpu / CALLS * 1e6:.0f} us"
          f" (request thread {thread_cpu / CALLS * 1e6:.0f}),"
          f" request backend {postgres:.0f} us, record writer's backends {writer_pg:.0f} us,"
          f" Deno {deno_cpu:.0f} us")  # fmt: skip
    grouped: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    lines = []
    for query, calls, exec_ms, plan_ms, toplevel in statements:
        text = " ".join(query.split())
        kind = next((kind for kind, pattern in KINDS if pattern.match(text)), "function's own")
        if not toplevel and kind != "mutation row":
            continue  # nested in a statement counted already
        spent = (exec_ms + plan_ms) * 1000 / CALLS
        grouped[kind][0] += calls / CALLS
        grouped[kind][1] += spent
        lines.append((spent, calls / CALLS, kind, text))
    # A statement's time includes the statements nested in it: the function's insert holds its trigger's.
    grouped["function's own"][1] -= grouped["mutation row"][1] if "mutation row" in grouped else 0.0
    total = sum(spent for _, spent in grouped.values())
    print(
        f"    Postgres execution + planning (pg_stat_statements) {total:.0f} us a request:"
        + ",".join(f" {kind} {spent:.0f} us ({n:.1f})" for kind, (n, spent) in sorted(grouped.items()))
    )
    for spent, calls, kind, text in sorted(lines, reverse=True)[:10]:
        print(f"      {spent:6.1f} us  {calls:4.2f}/req  {kind:14s} {text[:100]}")
