"""Queue workers in process: each job runs once as a request of kind job, linked to the request that pushed
it, and is done in that request's transaction; failures retry with backoff, then the job is dead with its
error; a request that rolls back pushes nothing; schedules from flux.toml fire each tick once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from flux.api.deploy import deploy
from flux.config import load_settings
from flux.queue import cron, jobs
from flux.queue.worker import QueueWorker, WorkerOptions
from tests.fixtures.gateway import gateway_client

Conn = psycopg.Connection[Any]
FLUX_TOML = """name = "jobs"

[[routes]]
method = "POST"
path = "/push"
function = "pusher"
auth = "none"

[[cron]]
name = "nightly"
schedule = "0 3 * * *"
timezone = "Europe/Riga"
function = "record"
payload = {from = "cron"}
"""
FUNCTIONS = {
    "pusher": """export default async (req, ctx) => {
  const ids = [];
  for (const n of req.body.items) ids.push((await ctx.queue.push("record", {n})).id);
  if (req.body.fail) throw new Error("changed my mind");
  return {ids};
}""",
    "record": """export default async (req, ctx) => {
  const values = {job_id: req.job.id, attempt: req.job.attempt, body: req.body};
  await ctx.db.query({insert: "job_log", values});
  return {ok: req.job.id};
}""",
    "flaky": """export default async (req, ctx) => { throw new Error("always fails"); }""",
}
MIGRATION = """CREATE TABLE job_log (
    id serial PRIMARY KEY, job_id bigint NOT NULL, attempt int NOT NULL, body jsonb
);
GRANT SELECT, INSERT ON job_log TO flux_anon, flux_service;
GRANT USAGE ON SEQUENCE job_log_id_seq TO flux_anon, flux_service;
"""


@pytest.fixture
def project(tmp_path: Path, dsn: str) -> Path:
    (tmp_path / "flux.toml").write_text(FLUX_TOML)
    for name, source in FUNCTIONS.items():
        (tmp_path / "functions" / name).mkdir(parents=True)
        (tmp_path / "functions" / name / "index.ts").write_text(source)
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_job_log.sql").write_text(MIGRATION)
    deploy(dsn, load_settings(tmp_path, env={}))
    return tmp_path


@pytest.fixture
def worker(project: Path, dsn: str) -> Iterator[QueueWorker]:
    options = WorkerOptions(concurrency=2, poll_s=0.1, retry_base_s=0.05, lease_s=5)
    running = QueueWorker(load_settings(project, env={}), dsn, options)
    thread = threading.Thread(target=running.run)
    thread.start()
    yield running
    running.stop()
    thread.join(20)
    assert not thread.is_alive()


def wait_for(conn: Conn, query: str, expected: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (row := conn.execute(query).fetchone()) != expected:
        assert time.monotonic() < deadline, f"{query} is {row}, not {expected}"
        time.sleep(0.05)


def test_each_job_runs_once_as_a_request_linked_to_its_pusher(
    project: Path, dsn: str, conn: Conn, worker: QueueWorker
) -> None:
    with gateway_client(load_settings(project, env={}), dsn) as client:
        pushed = client.simulate_post("/push", json={"items": [1, 2, 3]})
        refused = client.simulate_post("/push", json={"items": [4], "fail": True})
    assert pushed.status_code == 200 and refused.status_code == 500
    ids = pushed.json["ids"]
    wait_for(conn, "SELECT count(*) FROM flux.job_history WHERE status = 'done'", (3,))
    # the request that failed after pushing enqueued nothing (its push rolled back with it)
    assert conn.execute("SELECT count(*) FROM flux.all_jobs").fetchone() == (3,)
    assert conn.execute("SELECT count(*) FROM flux.jobs").fetchone() == (0,)
    assert sorted(conn.execute("SELECT job_id, attempt, body->>'n' FROM job_log").fetchall()) == [
        (ids[0], 1, "1"),
        (ids[1], 1, "2"),
        (ids[2], 1, "3"),
    ]
    parent = pushed.headers["x-request-id"]
    runs = conn.execute(
        "SELECT j.id, r.kind, r.function, r.ok, r.parent_request_id::text, j.last_request_id = r.id,"
        "       (SELECT count(*) FROM flux.mutations m WHERE m.request_id = r.id)"
        "  FROM flux.job_history j JOIN flux.job_runs jr ON jr.job_id = j.id"
        "  JOIN flux.requests r ON r.id = jr.request_id"
        " ORDER BY j.id"
    ).fetchall()
    assert runs == [(job_id, "job", "record", True, parent, True, 1) for job_id in ids]  # its row change too


def test_flux_trace_shows_the_lineage_both_ways(
    project: Path, dsn: str, conn: Conn, worker: QueueWorker
) -> None:
    with gateway_client(load_settings(project, env={}), dsn) as client:
        pushed = client.simulate_post("/push", json={"items": [1]})
    parent, (job_id,) = pushed.headers["x-request-id"], pushed.json["ids"]
    wait_for(conn, "SELECT count(*) FROM flux.job_history", (1,))
    (child,) = conn.execute("SELECT request_id::text FROM flux.job_runs").fetchone()
    shown = CliRunner().invoke(app, ["trace", parent], env={"DATABASE_URL": dsn})
    lines = shown.output.splitlines()
    at = lines.index(f"  job {job_id}  record  done (queue default)")
    assert lines[at + 1] == f"    attempt 1  request {child}  ok"
    shown = CliRunner().invoke(app, ["trace", child], env={"DATABASE_URL": dsn})
    assert shown.output.splitlines()[2] == f"job {job_id} attempt 1/5 (queue default), pushed by {parent}"
    assert "INSERT job_log" in shown.output  # its own row change, under its db span


def test_a_failing_job_is_retried_with_backoff_then_dead_with_its_error(
    conn: Conn, worker: QueueWorker
) -> None:
    (job,) = jobs.push(conn, [{"function": "flaky", "max_attempts": 3}])
    wait_for(conn, f"SELECT status FROM flux.job_history WHERE id = {job['id']}", ("dead",))
    detail = jobs.get_job(conn, job["id"])
    assert detail["attempts"] == 3 and detail["last_error"]["code"] == "FX300"
    assert "always fails" in detail["last_error"]["message"]
    assert [(run["attempt"], run["ok"]) for run in detail["runs"]] == [(1, False), (2, False), (3, False)]
    # retried, a dead job runs from attempt 1 again; its earlier attempts stay on record
    jobs.retry(conn, job["id"])
    wait_for(conn, f"SELECT status, attempts FROM flux.job_history WHERE id = {job['id']}", ("dead", 3))
    runs = [(run["run"], run["attempt"]) for run in jobs.get_job(conn, job["id"])["runs"]]
    assert runs == [(1, 1), (2, 2), (3, 3), (4, 1), (5, 2), (6, 3)]
    requests = conn.execute(
        "SELECT count(*), bool_or(ok), min(kind) FROM flux.requests WHERE id = ANY(%s::uuid[])",
        ([str(run["request_id"]) for run in detail["runs"]],),
    ).fetchone()
    assert requests == (3, False, "job")


def test_a_worker_whose_connection_is_cut_claims_again(conn: Conn, worker: QueueWorker) -> None:
    (first,) = jobs.push(conn, [{"function": "record", "payload": {"n": 1}}])
    wait_for(conn, f"SELECT status FROM flux.job_history WHERE id = {first['id']}", ("done",))
    cut = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE usename = 'flux_authenticator' AND datname = current_database()"
    ).fetchone()
    assert cut is not None and cut[0] >= 3  # the dispatcher's, the listener's, the runners' connections
    (second,) = jobs.push(conn, [{"function": "record", "payload": {"n": 2}}])
    wait_for(conn, f"SELECT status FROM flux.job_history WHERE id = {second['id']}", ("done",))


def test_a_project_schedule_is_deployed_and_fires_each_tick_once(
    project: Path, dsn: str, conn: Conn, worker: QueueWorker
) -> None:
    ((name, schedule, zone, next_run),) = conn.execute(
        "SELECT name, schedule, timezone, next_run_at FROM flux.cron"
    ).fetchall()
    assert (name, schedule, zone) == ("nightly", "0 3 * * *", "Europe/Riga")
    assert next_run.astimezone(cron.ZoneInfo("Europe/Riga")).hour == 3 and next_run > datetime.now(UTC)
    # missed ticks (the schedule was due three days ago): one job on recovery, then the next tick after now
    conn.execute("UPDATE flux.cron SET next_run_at = next_run_at - interval '3 days'")
    wait_for(conn, "SELECT count(*) FROM job_log WHERE body->>'from' = 'cron'", (1,))
    assert conn.execute("SELECT next_run_at FROM flux.cron").fetchone() == (next_run,)
    row = conn.execute(
        "SELECT r.kind, j.cron_name, j.role"
        "  FROM flux.job_history j JOIN flux.requests r ON r.id = j.last_request_id"
    ).fetchone()
    assert row == ("cron", "nightly", "service")


def test_each_tick_fires_once_however_many_processes_race_for_it(dsn: str, conn: Conn) -> None:
    conn.execute(
        "INSERT INTO flux.cron (name, schedule, function, next_run_at) VALUES"
        " ('every_minute', '* * * * *', 'f', now() - interval '90 seconds')"
    )
    barrier = threading.Barrier(6)
    fired: list[list[int]] = []

    def race() -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            barrier.wait()
            fired.append(cron.fire_due(own))

    threads = [threading.Thread(target=race) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(ids) for ids in fired) == [0, 0, 0, 0, 0, 1]
    assert conn.execute("SELECT count(*), min(cron_name) FROM flux.jobs").fetchone() == (1, "every_minute")
    assert conn.execute("SELECT next_run_at > now() FROM flux.cron").fetchone() == (True,)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "schedule": "* * *", "function": "f"}, "does not have 5 fields"),
        ({"name": "x", "schedule": "61 * * * *", "function": "f"}, "schedule '61 * * * *'"),
        (
            {"name": "x", "schedule": "* * * * *", "function": "f", "timezone": "Mars/Olympus"},
            "unknown time zone",
        ),
        ({"name": "x", "schedule": "* * * * *", "function": "f", "every": 5}, "unknown key 'every'"),
    ],
)
def test_a_bad_schedule_is_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception) as refused:
        cron.parse_schedule(entry, "flux.toml cron 1")
    assert getattr(refused.value, "code", None) == "FX406" and message in str(refused.value)
