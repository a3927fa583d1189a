"""The queue's SQL, as a worker or a DBA calls it: enqueue (batches, idempotency keys, bad jobs), claims that
never overlap (SKIP LOCKED), completion, retries with backoff, dead jobs, lost leases, retry and cancel."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest

from flux import db
from flux.errors import FluxError, JobStateConflict
from flux.queue import jobs

Conn = psycopg.Connection[Any]


def _claim(conn: Conn, worker: str, batch: int = 10, lease_s: float = 30) -> list[tuple[int, int]]:
    rows = conn.execute(
        "SELECT id, attempts FROM flux.claim_jobs(%s, NULL, %s, %s) ORDER BY id", (worker, batch, lease_s)
    )
    return [(r[0], r[1]) for r in rows]


def _status(conn: Conn, job_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, attempts, last_error->>'code' FROM flux.all_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_batch_enqueues_in_order_and_idempotency_keys_answer_with_their_job(conn: Conn) -> None:
    pushed = jobs.push(
        conn,
        [
            {"function": "a"},
            {"function": "b", "idempotency_key": "k"},
            {"function": "c", "idempotency_key": "k"},
            {"function": "d", "queue": "mail"},
        ],
    )
    ids = [job["id"] for job in pushed]
    assert ids[0] < ids[1] < ids[3] and ids[2] == ids[1]  # the second "k" is the first one's job
    assert [job["created"] for job in pushed] == [True, True, False, True]
    assert jobs.push(conn, [{"function": "z", "idempotency_key": "k"}]) == [{"id": ids[1], "created": False}]
    # a key whose job finished still answers with it
    held = _claim(conn, "w1")
    assert ids[1] in dict(held)
    conn.execute("SELECT flux.complete_job(%s, 'w1', 1, NULL)", (ids[1],))
    assert _status(conn, ids[1]) == ("done", 1, None)
    assert jobs.push(conn, [{"function": "z", "idempotency_key": "k"}]) == [{"id": ids[1], "created": False}]
    # other queues and tenants have keys of their own
    assert jobs.push(conn, [{"function": "z", "idempotency_key": "k", "queue": "other"}])[0]["created"]


@pytest.mark.parametrize(
    ("job", "code", "message"),
    [
        ({"function": "no such!"}, "FX401", "job function 'no such!' is not a function name"),
        ({"function": "f", "queue": "Bad Queue"}, "FX401", "job queue 'Bad Queue' is not a queue name"),
        ({"function": "f", "max_attempts": 0}, "FX401", "job max_attempts 0 is out of range"),
        ({"function": "f", "payload": "x" * (1 << 20)}, "FX401", "job payload is larger than 1 MiB"),
        ({"function": "f", "priority": "high"}, "FX401", "job: priority must be a whole number"),
        ({"function": "f", "colour": "red"}, "FX401", "job: unknown field 'colour'"),
    ],
)
def test_a_bad_job_is_refused_with_its_field(conn: Conn, job: Any, code: str, message: str) -> None:
    with pytest.raises(FluxError) as refused:
        jobs.push(conn, [job])
    assert (refused.value.code, refused.value.message) == (code, message)
    assert conn.execute("SELECT count(*) FROM flux.jobs").fetchone() == (0,)


def test_after_a_deploy_a_job_must_name_a_function_of_the_active_version(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO flux.artifacts (sha256, runtime, code) VALUES (repeat('a', 64), 'wasm', '\\x00');"
        "INSERT INTO flux.deployments (project, content_sha, active) VALUES ('p', 'c', true);"
        "INSERT INTO flux.deployment_functions (deployment_id, name, runtime, sha256, language)"
        " SELECT id, 'send_mail', 'wasm', repeat('a', 64), 'wat' FROM flux.deployments"
    )
    assert jobs.push(conn, [{"function": "send_mail"}])[0]["created"]
    with pytest.raises(FluxError) as refused:
        jobs.push(conn, [{"function": "send_mail"}, {"function": "sendmail"}])
    assert refused.value.code == "FX402"
    assert refused.value.message == "job 1 function 'sendmail' is not in the active version"


def test_two_workers_never_claim_the_same_job(dsn: str, conn: Conn) -> None:
    jobs.push(conn, [{"function": "f", "priority": n % 3} for n in range(20)])
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        mine = _claim(first, "w1", 8)  # its transaction is still open: the rows stay locked
        theirs = _claim(second, "w2", 8)
        first.commit()
        second.commit()
    assert len(mine) == len(theirs) == 8 and not set(mine) & set(theirs)
    assert len(_claim(conn, "w3", 100)) == 4 and _claim(conn, "w4") == []


def test_claims_take_the_highest_priority_first_and_skip_jobs_not_yet_due(conn: Conn) -> None:
    low, high, later = (
        job["id"]
        for job in jobs.push(
            conn, [{"function": "f"}, {"function": "f", "priority": 5}, {"function": "f", "delay_ms": 60_000}]
        )
    )
    assert [
        job_id
        for job_id, _ in conn.execute(
            "SELECT id, attempts FROM flux.claim_jobs('w', NULL, 10, 30)"
        ).fetchall()
    ] == [high, low]
    assert _status(conn, later) == ("queued", 0, None)
    assert jobs.list_jobs(conn, status="queued")[0]["id"] == later


def test_a_failing_job_backs_off_then_is_dead_with_its_error_and_can_be_retried(conn: Conn) -> None:
    (job,) = jobs.push(conn, [{"function": "f", "max_attempts": 2}])
    error = json.dumps({"code": "FX300", "message": "boom"})
    assert _claim(conn, "w") == [(job["id"], 1)]
    assert conn.execute("SELECT flux.fail_job(%s, 'w', 1, NULL, %s, 60)", (job["id"], error)).fetchone() == (
        "failed",
    )
    waits = conn.execute("SELECT run_at - now() FROM flux.jobs WHERE id = %s", (job["id"],)).fetchone()
    assert waits is not None and 30 <= waits[0].total_seconds() <= 60  # 60 s with 50-100 % jitter
    assert _claim(conn, "w") == []  # not due yet
    delays = conn.execute(
        "SELECT extract(epoch FROM flux.retry_delay(2, 60)), extract(epoch FROM flux.retry_delay(40, 60))"
    ).fetchone()
    assert delays is not None and 60 <= delays[0] <= 120 and 1800 <= delays[1] <= 3600  # doubles, capped
    jobs.retry(conn, job["id"])  # a failed job: now
    assert _claim(conn, "w") == [(job["id"], 2)]
    assert conn.execute("SELECT flux.fail_job(%s, 'w', 2, NULL, %s)", (job["id"], error)).fetchone() == (
        "dead",
    )
    assert _status(conn, job["id"]) == ("dead", 2, "FX300")
    assert conn.execute("SELECT count(*) FROM flux.jobs").fetchone() == (0,)  # it left the hot table
    assert conn.execute(  # for the partition of the day it died
        "SELECT tableoid::regclass::text"
        "       = 'flux.job_history_' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')"
        "  FROM flux.job_history"
    ).fetchone() == (True,)
    assert [r["attempt"] for r in jobs.get_job(conn, job["id"])["runs"]] == [1, 2]
    assert jobs.stats(conn)[0] == {
        "queue": "default",
        "queued": 0,
        "scheduled": 0,
        "running": 0,
        "retrying": 0,
        "dead": 1,
        "done_last_hour": 0,
        "oldest_due_s": None,
    }
    # a dead job runs again from its first attempt, under the same id
    assert jobs.retry(conn, job["id"])["status"] == "queued"
    assert _claim(conn, "w") == [(job["id"], 1)]


def test_a_lost_lease_counts_the_attempt_and_the_job_runs_again(conn: Conn) -> None:
    (job,) = jobs.push(conn, [{"function": "f"}])
    assert _claim(conn, "dead-worker", lease_s=0.01) == [(job["id"], 1)]
    conn.execute("SELECT pg_sleep(0.05)")
    assert conn.execute("SELECT flux.reap_jobs()").fetchone() == (1,)
    assert _status(conn, job["id"]) == ("failed", 1, "FX404")
    assert _claim(conn, "w2") == [(job["id"], 2)]
    # the first worker, back from the dead, can no longer finish it
    with pytest.raises(FluxError) as lost:
        db.execute_raw(conn, "SELECT flux.complete_job($1, 'dead-worker', 1, NULL)", [job["id"]])
    assert lost.value.code == "FX404"
    assert conn.execute(
        "SELECT flux.fail_job(%s, 'dead-worker', 1, NULL, '{}')", (job["id"],)
    ).fetchone() == (None,)
    conn.execute("SELECT flux.complete_job(%s, 'w2', 2, NULL)", (job["id"],))
    runs = jobs.get_job(conn, job["id"])["runs"]
    assert [(r["attempt"], r["ok"], (r["error"] or {}).get("code")) for r in runs] == [
        (1, False, "FX404"),
        (2, True, None),
    ]


def test_a_key_pushed_while_its_job_is_reaped_dead_answers_with_that_job(dsn: str, conn: Conn) -> None:
    (job,) = jobs.push(conn, [{"function": "f", "idempotency_key": "k", "max_attempts": 1}])
    _claim(conn, "gone", lease_s=0.01)
    conn.execute("SELECT pg_sleep(0.05)")
    pushed: list[Any] = []
    with psycopg.connect(dsn) as reaper:
        assert reaper.execute("SELECT flux.reap_jobs()").fetchone() == (1,)  # dead, not yet committed
        pusher = threading.Thread(target=lambda: pushed.append(_push_alone(dsn, "k")))
        pusher.start()
        pusher.join(0.5)
        assert pusher.is_alive()  # waits for the key
        reaper.commit()
    pusher.join(10)
    assert pushed == [[{"id": job["id"], "created": False}]]
    assert _status(conn, job["id"]) == ("dead", 1, "FX404")


def _push_alone(dsn: str, key: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as own:
        return jobs.push(own, [{"function": "f", "idempotency_key": key}])


def test_leases_are_extended_only_for_the_worker_holding_them(conn: Conn) -> None:
    (job,) = jobs.push(conn, [{"function": "f"}])
    _claim(conn, "w", lease_s=1)
    assert (
        conn.execute("SELECT flux.extend_leases('other', ARRAY[%s]::bigint[], 60)", (job["id"],)).fetchall()
        == []
    )
    assert conn.execute(
        "SELECT flux.extend_leases('w', ARRAY[%s]::bigint[], 60)", (job["id"],)
    ).fetchall() == [(job["id"],)]
    assert conn.execute("SELECT flux.release_jobs('w', ARRAY[%s]::bigint[])", (job["id"],)).fetchone() == (1,)
    assert _status(conn, job["id"]) == ("queued", 0, None)


def test_cancel_takes_waiting_jobs_only(conn: Conn) -> None:
    waiting, running = (
        job["id"] for job in jobs.push(conn, [{"function": "f", "delay_ms": 10_000}, {"function": "g"}])
    )
    _claim(conn, "w")
    assert jobs.cancel(conn, waiting)["status"] == "cancelled"
    with pytest.raises(JobStateConflict, match=f"job {running} is running and cannot be cancelled"):
        jobs.cancel(conn, running)
    with pytest.raises(FluxError) as missing:
        jobs.cancel(conn, 999_999)
    assert missing.value.code == "FX403"
    with pytest.raises(JobStateConflict, match="push a new job"):
        conn.execute("SELECT flux.complete_job(%s, 'w', 1, NULL)", (running,))
        jobs.retry(conn, running)


def test_a_push_wakes_workers_listening_on_flux_jobs(dsn: str, conn: Conn) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN flux_jobs")
        jobs.push(
            conn,
            [
                {"function": "f", "queue": "mail"},
                {"function": "f", "queue": "mail"},
                {"function": "f", "queue": "later", "delay_ms": 60_000},
            ],
        )
        notes = [n.payload for n in listener.notifies(timeout=1, stop_after=2)]
    assert notes == ["mail"]  # one per statement and queue with a job due now


def test_one_job_pushed_alone_is_the_job_a_batch_makes_of_it(conn: Conn) -> None:
    job = {"function": "f", "payload": {"n": [1, None]}, "delay_ms": 60_000, "priority": 3, "queue": "mail",
           "max_attempts": 2}  # fmt: skip
    with conn.transaction():  # one transaction: the same now() and request settings for both
        conn.execute("SET LOCAL track_functions = 'all'")
        db.set_request_context(conn, request_id="7b0e0d54-1f0c-4f4b-9d60-9f1f5d1c2a10",
                               claims_json='{"sub": "u"}', tenant_id="1c5a6b1e-0f57-4c64-9a57-3a8e1f2b9d11",
                               role="user")  # fmt: skip
        (alone,) = jobs.push(conn, [job])
        # one job without a key takes flux.enqueue's one insert: no flux.job_inputs, no batch statements
        inputs = conn.execute(
            "SELECT pg_stat_get_xact_function_calls('flux.job_inputs(jsonb)'::regprocedure)"
        )
        assert inputs.fetchone() == (None,)
        batch = jobs.push(conn, [job, {"function": "g"}])
    columns = ("queue, function, payload, priority, run_at, max_attempts, status, attempts, tenant_id, role,"
               " claims, parent_request_id, idempotency_key")  # fmt: skip
    rows = conn.execute(f"SELECT {columns} FROM flux.jobs WHERE id = ANY (%s) ORDER BY id",
                        ([alone["id"], batch[0]["id"]],)).fetchall()  # fmt: skip
    assert alone["created"] and rows[0] == rows[1]
    assert rows[0][:4] == ("mail", "f", {"n": [1, None]}, 3) and rows[0][9:11] == ("user", {"sub": "u"})


def test_a_claim_skips_the_dead_entries_earlier_claims_passed(conn: Conn) -> None:
    # Each job leaves a dead entry in jobs_due_idx; a bitmap scan visited them all at every claim until a
    # vacuum.
    conn.execute("ALTER TABLE flux.jobs SET (autovacuum_enabled = false)")
    jobs.push(conn, [{"function": "f"} for _ in range(5000)])
    conn.execute("DELETE FROM flux.jobs")
    jobs.push(conn, [{"function": "f"}])
    assert len(_claim(conn, "w1")) == 1  # this claim passes the dead entries, and marks them

    def buffers_of_a_claim() -> int:
        jobs.push(conn, [{"function": "f"}])
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM flux.claim_jobs('w', NULL, 8, 30)"
        )
        return int(plan.fetchone()[0][0]["Plan"]["Shared Hit Blocks"])  # type: ignore[index]

    buffers_of_a_claim()
    assert buffers_of_a_claim() < 50  # 110 with a bitmap scan
