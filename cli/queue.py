"""`flux queue` (push, ls, show, stats, retry, cancel, dead, cron) on DATABASE_URL, the project's embedded
Postgres, or a server's management API (FLUX_URL); and `flux worker`, a queue worker process for scale-out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli._options import OldDataName, ProjectDir, json_data
from cli.backends import backend

app = typer.Typer(help="The job queue: push, list, retry and cancel jobs; schedules.", no_args_is_help=True)
JobId = Annotated[int, typer.Argument(help="The job's id (from `flux queue ls`).")]
Limit = Annotated[int, typer.Option("--limit", "-n", help="How many jobs, newest first.")]
Queue = Annotated[str | None, typer.Option("--queue", "-q", help="Only this queue.")]


def register(main: typer.Typer) -> None:
    main.add_typer(app, name="queue")
    main.command("worker")(worker)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@app.command("push")
def push(
    function: Annotated[str, typer.Argument(help="The function of the active version to run.")],
    data: Annotated[
        str | None, typer.Option("--data", "-d", metavar="<json>", help="Its input (req.body), as JSON.")
    ] = None,
    payload: OldDataName = None,
    queue: Annotated[str, typer.Option("--queue", "-q", help="The queue.")] = "default",
    delay_ms: Annotated[int | None, typer.Option("--delay-ms", help="Run it this much later.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first.")] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts", help="1-100 (default 5).")] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency key: a second push returns the job.")
    ] = None,
    project: ProjectDir = Path("."),
) -> None:
    """Push one job (it runs as the service role); prints its id."""
    from flux.errors import InvalidJob

    job = {
        "function": function,
        "payload": json_data(data, payload, InvalidJob, '{"to": "ada"}'),
        "queue": queue,
        "delay_ms": delay_ms,
        "priority": priority,
        "max_attempts": max_attempts,
        "idempotency_key": key,
    }
    with backend(project) as manager:
        (pushed,) = manager.push_jobs([{k: v for k, v in job.items() if v is not None}])
    typer.echo(f"job {pushed['id']}" + ("" if pushed["created"] else " (already pushed with this key)"))


def _print_jobs(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        attempts = f"{row['attempts']}/{row['max_attempts']}"
        error = (row.get("last_error") or {}).get("code", "") if row["status"] in ("failed", "dead") else ""
        when = row["finished_at"] or row["run_at"]
        typer.echo(
            f"{row['id']:>8}  {row['status']:<9} {row['queue']:<10} {row['function']:<20} {attempts:>6}"
            f"  {_when(when)}  {error}".rstrip()
        )


@app.command("ls")
def ls(
    status: Annotated[
        str | None, typer.Option("--status", "-s", help="queued, running, failed, done, dead or cancelled.")
    ] = None,
    queue: Queue = None,
    function: Annotated[str | None, typer.Option("--function", "-f", help="Only this function.")] = None,
    limit: Limit = 20,
    project: ProjectDir = Path("."),
) -> None:
    """Jobs, newest first: id, status, queue, function, attempts, when it runs (or finished), last error."""
    with backend(project, reads_only=True) as manager:
        _print_jobs(manager.list_jobs(status, queue, function, limit))


@app.command("dead")
def dead(queue: Queue = None, limit: Limit = 20, project: ProjectDir = Path(".")) -> None:
    """Dead jobs (every attempt failed), newest first; `flux queue show ID` has each attempt's error."""
    with backend(project, reads_only=True) as manager:
        _print_jobs(manager.list_jobs("dead", queue, None, limit))


@app.command("show")
def show(job_id: JobId, project: ProjectDir = Path(".")) -> None:
    """One job: its fields, payload and every attempt, with the request that ran it (`flux trace ID`)."""
    with backend(project, reads_only=True) as manager:
        job = manager.get_job(job_id)
    for name in (
        "id",
        "status",
        "queue",
        "function",
        "priority",
        "attempts",
        "max_attempts",
        "role",
        "idempotency_key",
        "cron_name",
        "parent_request_id",
        "created_at",
        "run_at",
        "finished_at",
    ):
        value = job[name]
        if value is not None:
            typer.echo(f"{name + ':':<18} {_when(value) if name.endswith('_at') else value}")
    typer.echo(f"{'payload:':<18} {json.dumps(job['payload'], ensure_ascii=False)}")
    if job["last_error"]:
        typer.echo(f"{'last error:':<18} {job['last_error'].get('code')}: {job['last_error'].get('message')}")
    for run in job["runs"]:
        outcome = "ok" if run["ok"] else f"{run['error'].get('code')}: {run['error'].get('message')}"
        typer.echo(
            f"  attempt {run['attempt']}  {_when(run['finished_at'])}  request {run['request_id'] or '-'}"
            f"  {outcome}"
        )


@app.command("stats")
def stats(project: ProjectDir = Path(".")) -> None:
    """Per queue: jobs due, scheduled, running, retrying, dead, done in the last hour, the oldest due wait."""
    with backend(project, reads_only=True) as manager:
        rows = manager.queue_stats()
    typer.echo(
        f"{'queue':<12} {'queued':>7} {'sched':>7} {'running':>7} {'retry':>7} {'dead':>7} {'done/h':>7}"
        "  oldest due"
    )
    for row in rows:
        counts = " ".join(
            f"{row[k]:>7}" for k in ("queued", "scheduled", "running", "retrying", "dead", "done_last_hour")
        )
        wait = "-" if row["oldest_due_s"] is None else f"{row['oldest_due_s']:.1f}s"
        typer.echo(f"{row['queue']:<12} {counts}  {wait}")


@app.command("retry")
def retry(job_id: JobId, project: ProjectDir = Path(".")) -> None:
    """Run a failed job now, or a dead or cancelled job again from its first attempt."""
    with backend(project) as manager:
        job = manager.retry_job(job_id)
    typer.echo(f"job {job['id']} is {job['status']}")


@app.command("cancel")
def cancel(job_id: JobId, project: ProjectDir = Path(".")) -> None:
    """Cancel a job that has not started (queued, or waiting for a retry)."""
    with backend(project) as manager:
        job = manager.cancel_job(job_id)
    typer.echo(f"job {job['id']} is {job['status']}")


@app.command("cron")
def schedules(project: ProjectDir = Path(".")) -> None:
    """Schedules: name, expression and zone, function, next and last run, and where each comes from."""
    with backend(project, reads_only=True) as manager:
        rows = manager.list_schedules()
    for row in rows:
        state = "" if row["enabled"] else "  (disabled)"
        typer.echo(
            f"{row['name']:<16} {row['schedule']:<15} {row['timezone']:<16} {row['function']:<16}"
            f" next {_when(row['next_run_at'])}  last {_when(row['last_run_at'])}  {row['source']}{state}"
        )


def worker(
    project: Annotated[Path, typer.Argument(help="The Flux project folder.", file_okay=False)] = Path("."),
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Jobs run at once.")] = 4,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Only these queues (repeat).")
    ] = None,
    lease: Annotated[float, typer.Option(help="Seconds a job stays held without a sign of life.")] = 30.0,
) -> None:
    """Run queue workers in this process (scale-out: any number, on any machine, against one Postgres) until
    SIGTERM or Ctrl-C, which let running jobs finish."""
    import logging

    from flux import migrate
    from flux.config import load_settings
    from flux.errors import InvalidConfig
    from flux.queue.worker import WorkerOptions, run_worker
    from flux.server import database

    if not 1 <= concurrency <= 256 or lease < 1:
        raise InvalidConfig("--concurrency is 1-256 and --lease at least 1 second", hint="e.g. -c 4")
    logging.basicConfig(level=logging.INFO, format="flux: %(message)s")
    settings = load_settings(project)
    options = WorkerOptions(concurrency=concurrency, queues=tuple(queue) if queue else None, lease_s=lease)
    with database(settings) as dsn:
        migrate.require_current(dsn)
        run_worker(settings, dsn, options)
