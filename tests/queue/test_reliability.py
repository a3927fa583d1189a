"""The queue under real worker processes (`flux worker`): two of them share 10,000 jobs and each job completes
exactly once, and a schedule's tick due as both start fires once; a worker killed with SIGKILL mid-job loses
nothing (the job runs again once its lease expires, and its first attempt's writes are gone); a job running
longer than its lease keeps it, so it never runs twice at once; SIGTERM lets a running job finish, its lease
kept; a worker whose slots are all taken sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.api.deploy import deploy
from flux.config import load_settings
from flux.queue import jobs
from tests.fixtures.processes import FLUX

pytestmark = pytest.mark.slow
Conn = psycopg.Connection[Any]
TALLY = """export default async (req, ctx) => {
  if (req.body.sleep_s) await ctx.db.sql("SELECT pg_sleep($1)", [req.body.sleep_s]);
  await ctx.db.query({insert: "tally", values: {job_id: req.job.id, attempt: req.job.attempt}});
  return {};
}"""
MIGRATION = """CREATE TABLE tally (id bigserial PRIMARY KEY, job_id bigint NOT NULL, attempt int NOT NULL);
GRANT SELECT, INSERT ON tally TO flux_service;
GRANT USAGE ON SEQUENCE tally_id_seq TO flux_service;
"""


@pytest.fixture
def project(tmp_path: Path, dsn: str) -> Path:
    (tmp_path / "flux.toml").write_text('name = "tally"\n')
    (tmp_path / "functions" / "tally").mkdir(parents=True)
    (tmp_path / "functions" / "tally" / "index.ts").write_text(TALLY)
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_tally.sql").write_text(MIGRATION)
    deploy(dsn, load_settings(tmp_path, env={}))
    return tmp_path


@pytest.fixture
def workers(project: Path, dsn: str, flux_env: dict[str, str]) -> Iterator[Any]:
    """Start `flux worker` processes with `start(*flags)`; each is stopped (SIGTERM) at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*FLUX, "worker", str(project), *flags], env={**flux_env, "DATABASE_URL": dsn}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        process.communicate(timeout=40)  # waits, and closes its output


def wait_for(conn: Conn, query: str, expected: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (row := conn.execute(query).fetchone()) != expected:
        assert time.monotonic() < deadline, f"{query} is {row}, not {expected}"
        time.sleep(0.1)


def test_two_workers_complete_ten_thousand_jobs_each_exactly_once(conn: Conn, workers: Any) -> None:
    for start in range(0, 10_000, 1000):
        jobs.push(conn, [{"function": "tally", "payload": {"n": n}} for n in range(start, start + 1000)])
    # a schedule whose tick both workers find due as they start: it fires once
    (stale,) = conn.execute(
        "INSERT INTO flux.cron (name, schedule, function, payload, next_run_at)"
        " VALUES ('every_minute', '* * * * *', 'tally', '{}',"
        "         date_trunc('minute', now()) - interval '5 minutes')"
        " RETURNING next_run_at"
    ).fetchone()
    first, second = workers("-c", "4"), workers("-c", "4")
    wait_for(conn, "SELECT count(*) FROM flux.jobs WHERE cron_name IS NULL", (0,), timeout=300)
    assert conn.execute(
        "SELECT count(*), count(DISTINCT job_id) FROM tally WHERE job_id IN (SELECT id FROM flux.job_history"
        " WHERE cron_name IS NULL)"
    ).fetchone() == (10_000, 10_000)
    assert conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done')"
        "  FROM flux.job_history WHERE cron_name IS NULL"
    ).fetchone() == (10_000, 10_000)
    fired = conn.execute(
        "SELECT idempotency_key, count(*) FROM flux.all_jobs WHERE cron_name = 'every_minute' GROUP BY 1"
    ).fetchall()
    assert (f"cron:every_minute:{stale:%Y-%m-%dT%H:%M:%SZ}", 1) in fired and all(n == 1 for _, n in fired)
    # one successful run per job, each its own recorded request, on both workers (a failed attempt, retried,
    # would not break exactly-once: its writes rolled back)
    runs = conn.execute(
        "SELECT count(*), count(DISTINCT job_id), count(DISTINCT worker), count(DISTINCT request_id)"
        "  FROM flux.job_runs JOIN flux.job_history ON id = job_id WHERE cron_name IS NULL AND ok"
    ).fetchone()
    assert runs == (10_000, 10_000, 2, 10_000)
    for process in (first, second):  # SIGTERM: a clean stop
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0


def test_a_killed_worker_loses_nothing_and_its_job_runs_again(conn: Conn, workers: Any) -> None:
    doomed = workers("-c", "1", "--lease", "2")
    (job,) = jobs.push(conn, [{"function": "tally", "payload": {"sleep_s": 3}}])
    wait_for(conn, f"SELECT status, locked_by ~ ':{doomed.pid}:' FROM flux.jobs WHERE id = {job['id']}",
             ("running", True), timeout=30)  # fmt: skip
    time.sleep(0.5)  # inside the function's pg_sleep: its insert is still to come
    os.kill(doomed.pid, signal.SIGKILL)
    killed_at = conn.execute("SELECT now()").fetchone()
    doomed.wait()
    rescuer = workers("-c", "1", "--lease", "2")
    wait_for(conn, f"SELECT status FROM flux.all_jobs WHERE id = {job['id']}", ("done",), timeout=60)
    detail = jobs.get_job(conn, job["id"])
    assert [(run["attempt"], run["ok"], (run["error"] or {}).get("code")) for run in detail["runs"]] == [
        (1, False, "FX404"), (2, True, None)
    ]  # fmt: skip
    assert conn.execute("SELECT attempt FROM tally").fetchall() == [(2,)]  # attempt 1's insert rolled back
    rerun = detail["runs"][1]["request_id"]
    second = conn.execute(
        "SELECT started_at > %s FROM flux.requests WHERE id = %s", (killed_at[0], rerun)
    ).fetchone()
    assert second == (True,)  # the second run began after the first worker was gone
    assert rescuer.poll() is None


def test_a_job_longer_than_its_lease_is_never_taken_over(conn: Conn, workers: Any) -> None:
    workers("-c", "2", "--lease", "2")
    workers("-c", "2", "--lease", "2")
    (job,) = jobs.push(conn, [{"function": "tally", "payload": {"sleep_s": 5}}])
    wait_for(conn, f"SELECT status FROM flux.all_jobs WHERE id = {job['id']}", ("done",), timeout=60)
    assert [(run["attempt"], run["ok"]) for run in jobs.get_job(conn, job["id"])["runs"]] == [(1, True)]
    assert conn.execute("SELECT count(*) FROM tally").fetchone() == (1,)


def test_sigterm_lets_the_running_job_finish_and_claims_no_more(conn: Conn, workers: Any) -> None:
    worker = workers("-c", "1")
    (running, waiting) = jobs.push(conn, [{"function": "tally", "payload": {"sleep_s": 2}},
                                          {"function": "tally", "delay_ms": 1500}])  # fmt: skip
    wait_for(conn, f"SELECT status FROM flux.jobs WHERE id = {running['id']}", ("running",), timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert conn.execute("SELECT id, status FROM flux.all_jobs ORDER BY id").fetchall() == [
        (running["id"], "done"), (waiting["id"], "queued")
    ]  # fmt: skip
    assert conn.execute("SELECT job_id FROM tally").fetchall() == [(running["id"],)]


def test_a_stopping_worker_keeps_its_running_jobs_leases(conn: Conn, workers: Any) -> None:
    stopping = workers("-c", "1", "--lease", "2")
    (job,) = jobs.push(conn, [{"function": "tally", "payload": {"sleep_s": 5}}])
    wait_for(conn, f"SELECT status FROM flux.jobs WHERE id = {job['id']}", ("running",), timeout=30)
    workers("-c", "1", "--lease", "2")  # would take the job over if the stopping worker let its lease lapse
    stopping.send_signal(signal.SIGTERM)
    assert stopping.wait(timeout=30) == 0
    assert [(run["attempt"], run["ok"]) for run in jobs.get_job(conn, job["id"])["runs"]] == [(1, True)]
    assert conn.execute("SELECT count(*) FROM tally").fetchone() == (1,)


def test_a_worker_with_every_slot_taken_waits_without_spinning(conn: Conn, workers: Any) -> None:
    worker = workers("-c", "1")
    jobs.push(conn, [{"function": "tally", "payload": {"sleep_s": 3}} for _ in range(3)])
    wait_for(conn, "SELECT count(*) FROM flux.jobs WHERE status = 'running'", (2,), timeout=30)
    before = _cpu_seconds(worker.pid)
    time.sleep(1.5)
    assert _cpu_seconds(worker.pid) - before < 0.5  # a busy loop would burn about 1.5 s


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
