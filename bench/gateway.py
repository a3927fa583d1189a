"""The gateway under load (wrk against the real gunicorn servers, side by side in one run): a no-op function
through Flux (gateway, recording, runtime) against a bare Falcon endpoint, and `POST /db/query` against a
hand-written Falcon + psycopg endpoint running the same select, for each worker class. The floor is served by
Flux's own gunicorn application (bench/floor_server.py). `make bench`'s table measures the data engine over
HTTP in bench/web.py; this is the longer, talkative look at the gateway."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg

from bench.servers import free_port, wait_ready, wrk
from flux.gateway.auth import new_api_key

T = TypeVar("T")
DURATION_S = 8
WORKER_CLASSES = (("sync", 1), ("gthread", 4))  # FLUX_BENCH_WORKER_CLASS=gthread measures one
CONNECTIONS = 4
ROUNDS = 5  # /db/query runs of each server, alternating; the median of the paired ratios counts
FLUX_TOML = """
[[routes]]
method = "GET"
path = "/noop"
function = "noop"
auth = "none"

[[routes]]
method = "GET"
path = "/noop-ts"
function = "noop_ts"
auth = "none"
"""
NOOP_WAT = """(module (memory (export "memory") 1) (data (i32.const 16) "{}")
  (func (export "flux_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "flux_handle") (param i32 i32) (result i64) (i64.const 68719476738)))"""  # (16 << 32) | 2
SETUP_SQL = """
DROP TABLE IF EXISTS bench_accounts;
CREATE TABLE bench_accounts (id int PRIMARY KEY, email text NOT NULL, name text);
INSERT INTO bench_accounts
    SELECT i, 'user' || i || '@example.com', 'User ' || i FROM generate_series(1, 1000) i;
GRANT SELECT ON bench_accounts TO flux_user;
ANALYZE bench_accounts;
"""
LUA_QUERY = """wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer %s"
wrk.body = '{"select": "bench_accounts", "columns": ["id", "email", "name"], "where": {"id": {"eq": 42}}}'
"""


def run(dsn: str) -> None:
    if shutil.which("wrk") is None:
        print("gateway: skipped (wrk is not installed: apt-get install wrk)")
        return
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-gateway-"))
    try:
        key = _setup(dsn, folder)
        chosen = os.environ.get("FLUX_BENCH_WORKER_CLASS")
        for worker_class, threads in WORKER_CLASSES:
            if chosen and worker_class != chosen:
                continue
            _compare(dsn, folder, key, worker_class, threads)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _setup(dsn: str, folder: Path) -> str:
    (folder / "flux.toml").write_text(FLUX_TOML)
    (folder / "functions" / "noop").mkdir(parents=True)
    (folder / "functions" / "noop" / "index.wat").write_text(NOOP_WAT)
    (folder / "functions" / "noop_ts").mkdir(parents=True)
    (folder / "functions" / "noop_ts" / "index.ts").write_text("export default async () => ({})")
    made = new_api_key()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP_SQL.encode())
        conn.execute("INSERT INTO flux.api_keys (prefix, key_hash, role) VALUES (%s, %s, 'user')",
                     (made.prefix, made.key_hash))  # fmt: skip
    (folder / "query.lua").write_text(LUA_QUERY % made.key)
    return made.key


def _compare(dsn: str, folder: Path, key: str, worker_class: str, threads: int) -> None:
    env = {**os.environ, "DATABASE_URL": dsn, "FLUX_WORKERS": "2", "FLUX_WORKER_CLASS": worker_class,
           "FLUX_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    flux_port, floor_port = free_port(), free_port()
    flux = subprocess.Popen([sys.executable, "-m", "cli", "server", "--port", str(flux_port)], cwd=folder,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # The floor under Flux's own gunicorn application (bench/floor_server.py): the same worker class, settings
    # and CPU pinning, from the same FLUX_* variables.
    floor = subprocess.Popen([sys.executable, "-m", "bench.floor_server", str(floor_port)], cwd=folder,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{flux_port}/ready", flux)
        wait_ready(f"http://127.0.0.1:{floor_port}/noop", floor)
        flux_base, floor_base = f"http://127.0.0.1:{flux_port}", f"http://127.0.0.1:{floor_port}"
        for url in (f"{flux_base}/noop", f"{flux_base}/noop-ts", f"{floor_base}/noop"):
            _wrk(url, duration_s=2)  # warm up: compiled code, Deno workers, caches, prepared statements
        _wrk(f"{flux_base}/db/query", folder / "query.lua", duration_s=2)
        _wrk(f"{floor_base}/db/query", folder / "query.lua", duration_s=2)
        pages = {"noop": f"{flux_base}/noop", "bare": f"{floor_base}/noop", "noop_ts": f"{flux_base}/noop-ts"}
        # One connection: the latency a request adds, with no request queued behind another.
        alone = {name: _wrk(url, connections=1) for name, url in pages.items()}
        # Four connections on two workers: throughput, with requests queued behind each other.
        loaded = {name: _wrk(url) for name, url in pages.items()}
        query, flux_cpu, by_hand, floor_cpu, ratios = _compare_queries(
            dsn, [(flux.pid, f"{flux_base}/db/query"), (floor.pid, f"{floor_base}/db/query")], folder
        )
    finally:
        for process in (flux, floor):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    label = f"{worker_class}, 2 workers" + (f" x {threads} threads" if threads > 1 else "")
    print(f"gateway: wrk -d{DURATION_S}s against gunicorn ({label})")
    for connections, figures in ((1, alone), (CONNECTIONS, loaded)):
        for label, name in (
            ("no-op Wasm function", "noop"),
            ("bare Falcon", "bare"),
            ("no-op TypeScript", "noop_ts"),
        ):
            p50, rate = figures[name]
            print(f"  -c{connections}  {label:20s} p50 {p50:6.2f} ms  {rate:7.0f} req/s")
        overhead = figures["noop"][0] - figures["bare"][0]
        print(
            f"    gateway + recording + runtime: {overhead:5.2f} ms p50 over bare Falcon (target <= 0.5 ms)"
        )
    print(f"  /db/query: {ROUNDS} runs each, alternating, Postgres vacuumed and quiet before each;"
          " the median run of each:")  # fmt: skip
    print(f"  -c{CONNECTIONS}  POST /db/query       p50 {query[0]:6.2f} ms  {query[1]:7.0f} req/s")
    print(f"  -c{CONNECTIONS}  by hand (psycopg)    p50 {by_hand[0]:6.2f} ms  {by_hand[1]:7.0f} req/s")
    print(f"    each run's ratio, in order: {' '.join(f'{ratio:.2f}' for ratio in ratios)}")
    median = statistics.median(ratios)
    print(f"    {median:.2f}x the hand-written endpoint's req/s, median of {ROUNDS} pairs (target >= 0.7x)")
    for label, (_, rate), (server_s, postgres_s) in (
        ("POST /db/query", query, flux_cpu), ("by hand (psycopg)", by_hand, floor_cpu),
    ):  # fmt: skip
        served = rate * DURATION_S
        print(f"  CPU per request, {label:18s} server {server_s / served * 1e6:5.0f} us"
              f"  Postgres {postgres_s / served * 1e6:5.0f} us")  # fmt: skip


def _compare_queries(dsn: str, servers: list[tuple[int, str]], folder: Path) -> tuple[
    tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float], list[float]
]:  # fmt: skip
    """`POST /db/query` on each server in turn, `ROUNDS` times: the median run of each (p50, req/s) with the
    CPU it cost, and the ratio of each pair of runs (Flux's req/s over the floor's). A pair runs back to back,
    so it shares the machine's drift, which two medians taken apart would not; which one runs first
    alternates, so a steady drift favours neither. Postgres is made quiet before
    every run, so that work one server left behind (autovacuum of the records it wrote) is not counted against
    the next."""
    runs: list[list[tuple[tuple[float, float], tuple[float, float]]]] = [[] for _ in servers]
    for round_ in range(ROUNDS):
        pairs = list(zip(runs, servers, strict=True))  # which server goes first alternates
        for measured, (pid, url) in pairs if round_ % 2 == 0 else reversed(pairs):
            _quiesce(dsn)
            measured.append(_with_cpu(pid, functools.partial(_wrk, url, folder / "query.lua")))
    ratios = [flux[0][1] / floor[0][1] for flux, floor in zip(*runs, strict=True)]
    flux, floor = (sorted(measured, key=lambda run: run[0][1])[ROUNDS // 2] for measured in runs)
    return flux[0], flux[1], floor[0], floor[1], ratios


def _quiesce(dsn: str) -> None:
    """Vacuum the record tables (so autovacuum has nothing left to start on), and wait for any autovacuum
    worker still running to end."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) flux.requests, flux.spans")
        deadline = time.monotonic() + 60
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
        ).fetchone() != (0,):
            if time.monotonic() > deadline:
                print("  (an autovacuum worker still runs after 60 s: this run may count some of it)")
                return
            time.sleep(0.2)


def _wrk(
    url: str, script: Path | None = None, duration_s: int = DURATION_S, connections: int = CONNECTIONS
) -> tuple[float, float]:
    """p50 latency (ms) and requests per second, with this scenario's duration and connections."""
    return wrk(url, script, duration_s, connections)


def _with_cpu(server_pid: int, run: Callable[[], T]) -> tuple[T, tuple[float, float]]:
    """`run()`'s result, and the CPU seconds it cost the server (its process tree) and every postgres
    process (from /proc; the other processes of the machine are not counted). A process that ended meanwhile
    is left out, so its whole life is not subtracted."""
    before = _processes()
    result = run()
    after = _processes()
    server = postgres = 0.0
    for pid, (name, _, seconds) in after.items():
        used = seconds - before.get(pid, ("", 0, 0.0))[2]
        if name == "postgres":
            postgres += used
        elif _in_tree(after, pid, server_pid):
            server += used
    return result, (server, postgres)


def _processes() -> dict[int, tuple[str, int, float]]:
    """Every process: its name, its parent and the CPU seconds it has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    processes = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        processes[int(entry.name)] = (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return processes


def _in_tree(processes: dict[int, tuple[str, int, float]], pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        pid = processes[pid][1] if pid in processes else 0
    return False
