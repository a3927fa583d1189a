"""The queue against procrastinate on the same Postgres, side by side in one run: batch enqueue per second,
jobs processed per second by one worker running 4 at once (a no-op Wasm function whose every run is recorded
as a request, against a no-op procrastinate task), and enqueue-to-start latency with an idle worker."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from bench.gateway import NOOP_WAT
from flux.queue import jobs

CONCURRENCY = 4
ENQUEUED_JOBS = 20_000
PROCESSED_JOBS = 5000
BATCH = 1000
WARM_UP_JOBS = 20
LATENCY_JOBS = 200
LATENCY_GAP_S = 0.02
POLL_S = 0.05
TIMEOUT_S = 300
PEER_DATABASE = "bench_procrastinate"
FAILURE_WORDS = ("Traceback", "ERROR", "Error:", "failed")
# Start latency, from the start of the transaction that enqueued the job (the server's clock) to the start of
# what runs it, on both sides the same step: Flux's function (its request's started_at, taken as `invoke`
# starts the run, after the claim and the hand-off to a thread) and procrastinate's task (the time its
# coroutine is entered, after the fetch and its dispatch; each is appended to a file, a write a job).
FLUX_LATENCY = """
SELECT extract(epoch FROM r.started_at - h.created_at) * 1000
  FROM flux.job_history AS h JOIN flux.requests AS r ON r.id = h.last_request_id
 WHERE h.id = ANY (%s)"""
PEER_DEFERRED = """
SELECT job_id, extract(epoch FROM at)::float8 FROM procrastinate_events
 WHERE type = 'deferred' AND job_id = ANY (%s)"""
_PEER_STARTS_FILE: list[int] = []  # in procrastinate's worker: the descriptor each task start is appended to

Push = Callable[[psycopg.Connection[Any], int], list[int]]
Latencies = Callable[[psycopg.Connection[Any], list[int]], list[float]]


@dataclass(frozen=True)
class Side:
    """One queue under test: how to push jobs and run its worker, and the SQL that reads what happened."""

    name: str
    dsn: str
    worker: list[str]
    push: Push  # enqueue this many jobs, a batch a statement, on this connection; their ids
    unfinished: str  # jobs waiting or running
    spoilt: str  # jobs from id %s on that did not succeed (for Flux: or have no request recorded)
    latency: Latencies  # each job's start latency in ms, of these ids (run)
    delete: str


@dataclass(frozen=True)
class Figures:
    """What one side measured."""

    enqueued_per_s: float
    processed_per_s: float
    latencies_ms: list[float]
    worker_errors: list[str]


def run(dsn: str) -> None:
    if importlib.util.find_spec("procrastinate") is None:
        print("queue: skipped (procrastinate is not installed: pip install -e '.[dev]')")
        return
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-queue-"))
    peer_dsn = conninfo.make_conninfo(dsn, dbname=PEER_DATABASE)
    try:
        _deploy_noop(dsn, folder)
        _create_peer_database(dsn, peer_dsn)
        flux = _measure(_flux_side(dsn, folder), dsn, folder / "flux-worker.log")
        peer = _measure(_peer_side(peer_dsn, folder), dsn, folder / "procrastinate-worker.log")
        _report(flux, peer, _server(dsn), time.monotonic() - started)
    finally:
        _clean_up(dsn, folder)


def _deploy_noop(dsn: str, folder: Path) -> None:
    from flux.api.deploy import deploy
    from flux.config import load_settings

    (folder / "flux.toml").write_text('name = "bench"\n')
    (folder / "functions" / "noop").mkdir(parents=True)
    (folder / "functions" / "noop" / "index.wat").write_text(NOOP_WAT)
    deploy(dsn, load_settings(folder, env={}))


def _create_peer_database(dsn: str, peer_dsn: str) -> None:
    from procrastinate.schema import SchemaManager

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PEER_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PEER_DATABASE}")
    with psycopg.connect(peer_dsn, autocommit=True) as conn:
        conn.execute(SchemaManager.get_schema())


def _clean_up(dsn: str, folder: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM flux.jobs WHERE function = 'noop'")  # left by a run that failed
        conn.execute(f"DROP DATABASE IF EXISTS {PEER_DATABASE} WITH (FORCE)")
    shutil.rmtree(folder, ignore_errors=True)


def _flux_side(dsn: str, folder: Path) -> Side:
    def push(conn: psycopg.Connection[Any], count: int) -> list[int]:
        batches = (jobs.push(conn, [{"function": "noop"}] * size) for size in _batches(count))
        return [job["id"] for batch in batches for job in batch]

    return Side(
        name="Flux",
        dsn=dsn,
        worker=[sys.executable, "-m", "cli", "worker", str(folder), "--concurrency", str(CONCURRENCY)],
        push=push,
        unfinished="SELECT count(*) FROM flux.jobs",
        spoilt="SELECT count(*) FROM flux.job_history AS h WHERE h.id >= %s AND (h.status <> 'done'"
        " OR NOT EXISTS (SELECT FROM flux.requests AS r WHERE r.id = h.last_request_id))",
        latency=lambda conn, ids: [float(row[0]) for row in conn.execute(FLUX_LATENCY, (ids,))],
        delete="DELETE FROM flux.jobs",
    )


def _peer_side(peer_dsn: str, folder: Path) -> Side:
    task = _peer_app(peer_dsn).tasks["noop"]
    starts = folder / "procrastinate-starts.json"

    def latency(conn: psycopg.Connection[Any], ids: list[int]) -> list[float]:
        started = {int(job_id): float(at) for job_id, at in map(str.split, starts.read_text().splitlines())}
        return [(started[job_id] - at) * 1000 for job_id, at in conn.execute(PEER_DEFERRED, (ids,))]

    def push(conn: psycopg.Connection[Any], count: int) -> list[int]:
        deferrer = task.configure(connection=conn)
        return [job_id for size in _batches(count) for job_id in deferrer.batch_defer(*[{}] * size)]

    return Side(
        name="procrastinate",
        dsn=peer_dsn,
        worker=[sys.executable, "-m", "bench.queue", peer_dsn, str(starts)],  # runs _run_peer_worker
        push=push,
        unfinished="SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
        spoilt="SELECT count(*) FROM procrastinate_jobs WHERE id >= %s AND status <> 'succeeded'",
        latency=latency,
        delete="DELETE FROM procrastinate_jobs",
    )


def _peer_app(peer_dsn: str) -> Any:
    """procrastinate's app with its no-op task, the same in this process and in its worker's."""
    import procrastinate

    # A connection for each job running, one to listen and one to fetch: as many as Flux's worker holds.
    connector = procrastinate.PsycopgConnector(
        conninfo=peer_dsn, min_size=CONCURRENCY + 2, max_size=CONCURRENCY + 2
    )
    app = procrastinate.App(connector=connector)
    app.task(name="noop", pass_context=True)(_peer_noop)
    return app


async def _peer_noop(context: Any) -> None:
    """procrastinate's counterpart of the no-op function: an async task, its cheapest kind (it notes when it
    started)."""
    os.write(_PEER_STARTS_FILE[0], b"%d %.6f\n" % (context.job.id, time.time()))


def _run_peer_worker(peer_dsn: str, starts: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="procrastinate: %(levelname)s %(message)s")
    _PEER_STARTS_FILE.append(os.open(starts, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    _peer_app(peer_dsn).run_worker(concurrency=CONCURRENCY)


def _batches(count: int) -> list[int]:
    return [min(BATCH, count - start) for start in range(0, count, BATCH)]


class WorkerProcess:
    """A queue worker in a process of its own, writing to a log file; stopped by SIGTERM, then waited for."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log = name, command, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} worker exited with {self.process.returncode}:\n{self.tail()}")

    def errors(self) -> list[str]:
        """The log's lines that report a failure."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if any(word in line for word in FAILURE_WORDS)]

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def _measure(side: Side, dsn: str, log: Path) -> Figures:
    env = {**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with psycopg.connect(side.dsn, autocommit=True) as conn:
        enqueued_per_s = _enqueue_rate(conn, side)
        with WorkerProcess(side.name, side.worker, env, log) as worker:
            first_id = _warm_up(conn, side, worker)
            processed_per_s = _processed_rate(conn, side, worker)
            latencies_ms = _start_latencies(conn, side, worker)
        spoilt = conn.execute(side.spoilt, (first_id,)).fetchone()
        if spoilt is None or spoilt[0]:
            raise RuntimeError(f"{side.name}: {spoilt and spoilt[0]} jobs did not succeed:\n{worker.tail()}")
    return Figures(enqueued_per_s, processed_per_s, latencies_ms, worker.errors())


def _enqueue_rate(conn: psycopg.Connection[Any], side: Side) -> float:
    """Jobs enqueued per second, with no worker running; the jobs are deleted after."""
    clock = time.perf_counter()
    side.push(conn, ENQUEUED_JOBS)
    rate = ENQUEUED_JOBS / (time.perf_counter() - clock)
    conn.execute(side.delete)
    return rate


def _warm_up(conn: psycopg.Connection[Any], side: Side, worker: WorkerProcess) -> int:
    """Warm the worker up (its start, compiled code, connections); the first job's id."""
    ids = side.push(conn, WARM_UP_JOBS)
    _wait_until_finished(conn, side, worker)
    return ids[0]


def _processed_rate(conn: psycopg.Connection[Any], side: Side, worker: WorkerProcess) -> float:
    """Jobs processed per second: all pushed in one transaction, timed from its commit until none is left."""
    with conn.transaction():
        side.push(conn, PROCESSED_JOBS)
    clock = time.perf_counter()
    _wait_until_finished(conn, side, worker)
    return PROCESSED_JOBS / (time.perf_counter() - clock)


def _start_latencies(conn: psycopg.Connection[Any], side: Side, worker: WorkerProcess) -> list[float]:
    """Milliseconds from each job's enqueue to its start, pushed one at a time to an idle worker."""
    ids: list[int] = []
    for _ in range(LATENCY_JOBS):
        ids += side.push(conn, 1)
        time.sleep(LATENCY_GAP_S)
    _wait_until_finished(conn, side, worker)
    latencies = side.latency(conn, ids)
    assert len(latencies) == LATENCY_JOBS, f"{side.name}: {len(latencies)} start times of {LATENCY_JOBS}"
    return latencies


def _wait_until_finished(conn: psycopg.Connection[Any], side: Side, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while (row := conn.execute(side.unfinished).fetchone()) and row[0]:
        worker.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: {row[0]} jobs unfinished after {TIMEOUT_S} s:\n{worker.tail()}")
        time.sleep(POLL_S)


def _server(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_setting('server_version'), current_setting('jit')").fetchone()
    assert row is not None
    return f"Postgres {row[0].split()[0]}, jit {row[1]}"


def _report(flux: Figures, peer: Figures, server: str, elapsed_s: float) -> None:
    version = importlib.metadata.version("procrastinate")
    print(f"queue: Flux (no-op Wasm function, each run recorded) vs procrastinate {version} (async no-op),"
          f" one {server}")  # fmt: skip
    print(f"  {'':40s} {'Flux':>9s} {'procrastinate':>14s} {'Flux/peer':>10s}")
    rates = [
        (f"batch enqueue, {BATCH} a batch (jobs/s)", flux.enqueued_per_s, peer.enqueued_per_s,
         "target >= 20000 jobs/s for Flux"),
        (f"processed, {CONCURRENCY} at once (jobs/s)", flux.processed_per_s, peer.processed_per_s,
         "target >= 2x"),
    ]  # fmt: skip
    for label, ours, theirs, target in rates:
        print(f"  {label:40s} {ours:9.0f} {theirs:14.0f} {ours / theirs:9.2f}x  {target}")
    for percent, target in ((50, "  target <= 5 ms for Flux"), (95, "")):
        ours, theirs = _percentile(flux.latencies_ms, percent), _percentile(peer.latencies_ms, percent)
        label = f"enqueue -> start p{percent} (ms), idle worker"
        print(f"  {label:40s} {ours:9.2f} {theirs:14.2f} {ours / theirs:9.2f}x{target}")
    print(f"  ({ENQUEUED_JOBS} jobs enqueued, {PROCESSED_JOBS} processed, {LATENCY_JOBS} pushed one at a time"
          f" {LATENCY_GAP_S * 1000:.0f} ms apart; {elapsed_s:.0f} s in all)")  # fmt: skip
    for name, figures in (("Flux", flux), ("procrastinate", peer)):
        if figures.worker_errors:
            print(f"  {name} worker logged {len(figures.worker_errors)} failures, the first:")
            print("    " + figures.worker_errors[0])


def _percentile(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


if __name__ == "__main__":
    _run_peer_worker(sys.argv[1], sys.argv[2])
