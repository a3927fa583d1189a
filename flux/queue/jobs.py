"""Jobs from outside a function, as `flux queue` and the management API handle them: push one or a batch,
list, count per queue, show one with its attempts, retry, cancel. Each is a call of the queue's SQL
(sql/functions/050_queue.sql), so psql can do the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flux import db, jsontext
from flux.errors import InvalidJob, JobNotFound

Json = Any
_TYPES: dict[str, tuple[type, ...]] = {
    "function": (str,),
    "run_at": (str,),
    "delay_ms": (int,),
    "priority": (int,),
    "queue": (str,),
    "idempotency_key": (str,),
    "max_attempts": (int,),
}
STATUSES = ("queued", "running", "failed", "done", "dead", "cancelled")
_COLUMNS = (
    "id, queue, function, status, priority, attempts, max_attempts, run_at, created_at, finished_at,"
    " idempotency_key, tenant_id, role, cron_name, parent_request_id, last_request_id, last_error"
)


def check_jobs(jobs: Json) -> list[dict[str, Json]]:
    """`jobs` (a list of job objects from the API or the CLI) with every field of the right type, else FX401
    naming the first wrong one; the SQL checks names, ranges and sizes."""
    if not isinstance(jobs, list) or not jobs or not all(isinstance(job, dict) for job in jobs):
        raise InvalidJob("jobs are a non-empty list of objects", hint='[{"function": "name", "payload": {}}]')
    for number, job in enumerate(jobs):
        which = f"job {number}" if len(jobs) > 1 else "job"  # as the SQL names it
        unknown = sorted(set(job) - set(_TYPES) - {"payload"})
        if unknown:
            raise InvalidJob(
                f"{which}: unknown field {unknown[0]!r}", hint=f"known: payload, {', '.join(_TYPES)}"
            )
        if not isinstance(job.get("function"), str):
            raise InvalidJob(f"{which}: function is required", hint="name a function of the active version")
        for key, kinds in _TYPES.items():
            value = job.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise InvalidJob(f"{which}: {key} must be {'text' if kinds[0] is str else 'a whole number'}")
        if isinstance(job.get("delay_ms"), int) and job["delay_ms"] < 0:
            raise InvalidJob(f"{which}: delay_ms is 0 or more")
    return jobs


def push(conn: Any, jobs: Sequence[dict[str, Json]]) -> list[dict[str, Json]]:
    """Enqueue `jobs` in one statement (in the caller's transaction); for each, its id and whether it is new
    (a taken idempotency key answers with the job that holds it)."""
    rows = db.execute_rows(
        conn,
        "SELECT job_id, created FROM flux.enqueue_jobs($1::jsonb)",
        [jsontext.dumps_text(check_jobs(list(jobs)))],
    )
    return [{"id": job_id, "created": created} for job_id, created in rows]


def list_jobs(
    conn: Any,
    *,
    status: str | None = None,
    queue: str | None = None,
    function: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[dict[str, Json]]:
    """The newest jobs first (ids below `before`, for paging), waiting or finished, filtered."""
    if status is not None and status not in STATUSES:
        raise InvalidJob(f"no job status {status!r}", hint=f"one of {', '.join(STATUSES)}")
    return db.fetch_dicts(
        conn,
        f"SELECT {_COLUMNS} FROM flux.all_jobs"
        " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
        " AND (%(queue)s::text IS NULL OR queue = %(queue)s)"
        " AND (%(function)s::text IS NULL OR function = %(function)s)"
        " AND (%(before)s::bigint IS NULL OR id < %(before)s)"
        " ORDER BY id DESC LIMIT %(limit)s",
        {"status": status, "queue": queue, "function": function, "before": before, "limit": limit},
    )


def get_job(conn: Any, job_id: int) -> dict[str, Json]:
    """One job with its payload and every attempt (flux.job_runs), else FX403."""
    found = db.fetch_dicts(conn, f"SELECT {_COLUMNS}, payload FROM flux.all_jobs WHERE id = %s", (job_id,))
    if not found:
        raise JobNotFound(f"no job {job_id}", hint="list jobs with `flux queue ls`")
    runs = db.fetch_dicts(
        conn,
        "SELECT run, attempt, request_id, worker, ok, error, finished_at FROM flux.job_runs WHERE job_id = %s"
        " ORDER BY run",
        (job_id,),
    )
    return found[0] | {"runs": runs}


def stats(conn: Any) -> list[dict[str, Json]]:
    """Per queue: due, scheduled, running, retrying, dead, done in the last hour, and the oldest due job's
    wait."""
    return db.fetch_dicts(conn, "SELECT * FROM flux.queue_stats ORDER BY queue")


def retry(conn: Any, job_id: int) -> dict[str, Json]:
    """Run a failed job now, or a dead or cancelled one again from its first attempt."""
    row = db.execute_raw(conn, "SELECT flux.retry_job($1)", [job_id])
    assert row is not None
    return dict(row[0])


def cancel(conn: Any, job_id: int) -> dict[str, Json]:
    """Cancel a job that has not started."""
    row = db.execute_raw(conn, "SELECT flux.cancel_job($1)", [job_id])
    assert row is not None
    return dict(row[0])
