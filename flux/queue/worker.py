"""Queue workers: one process claims due jobs (`flux.claim_jobs`, FOR UPDATE SKIP LOCKED, up to two per
thread: one running, one ready) and runs each on a thread as a request of kind `job` (or `cron`), recorded
like an HTTP request.

A job that used the database is marked done in its attempt's own transaction, with its writes and the
request's record, so its effects commit exactly once. A job that never did is marked done with its record, in
a batch written off the runner's path (flux/trace/writer.py): a crash before that batch only runs it again. A
failed attempt is retried after a backoff, then kept as `dead`. Idle workers sleep until NOTIFY flux_jobs (a
push committed) or the poll interval (a missed notification, a retry coming due). Every held job's lease is
extended while it runs; a worker that dies (kill -9) stops extending, and any worker's `flux.reap_jobs()`
counts that attempt as lost (FX404) and makes the job due again. On SIGTERM a worker stops claiming, lets
running jobs finish (bounded), and gives back the rest.
"""

from __future__ import annotations

import logging
import os
import queue as threadqueue
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from flux import db, jsontext, pipeline, randomness
from flux.config import Settings
from flux.data import CatalogCache
from flux.errors import FluxError
from flux.listen import Listener
from flux.pipeline import Statement
from flux.queue import cron
from flux.runtime import Runtime, project_cache
from flux.runtime.fetch import FetchPolicy
from flux.runtime.functions import NOTIFY_CHANNEL as DEPLOYMENTS_CHANNEL
from flux.runtime.functions import DeployedFunctions
from flux.runtime.invoke import Caller, invoke
from flux.runtime.secrets import SecretCache
from flux.trace.recorder import error_record
from flux.trace.writer import RecordWriter

log = logging.getLogger("flux.queue")
Json = Any
NOTIFY_CHANNEL = "flux_jobs"
# A claim (in the implicit transaction of one round trip with this setting) does not wait for the flush to
# disk: a claim a crash loses only leaves its job queued (to run again, as a lost lease would), and a job's
# own durable commit flushes the claim before it. Waiting for it was part of every job's wait to start.
_CLAIM_WITHOUT_FLUSH = Statement(b"SELECT pg_catalog.set_config('synchronous_commit', 'off', true)")
_CLAIM = (
    b"SELECT id, attempts, function, queue, payload, role, claims, tenant_id, parent_request_id, cron_name"
    b" FROM flux.claim_jobs($1::pg_catalog.text, $2::pg_catalog.text[], $3::pg_catalog.int4,"
    b" $4::pg_catalog.float8)"
)


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker process runs jobs."""

    concurrency: int = 4  # jobs run at once, one thread each
    queues: tuple[str, ...] | None = None  # None: every queue
    lease_s: float = 30.0  # a job whose worker stopped extending this is taken over
    # the longest sleep without a notification, and how often lost leases and schedules are checked
    poll_s: float = 1.0
    retry_base_s: float = 1.0  # the first retry's delay; each next one doubles (with jitter), at most an hour
    shutdown_s: float = 30.0  # how long SIGTERM waits for running jobs


@dataclass(frozen=True)
class Claimed:
    """A job this worker holds, with what running it needs."""

    id: int
    attempt: int
    function: str
    queue: str
    payload: Json
    role: str
    claims: dict[str, Json]
    tenant_id: str | None
    parent_request_id: str | None
    cron_name: str | None


class QueueWorker:
    """One process's queue worker: a dispatcher (the caller of `run`), `concurrency` runner threads and a
    lease keeper, on connections of their own as flux_authenticator."""

    def __init__(self, settings: Settings, dsn: str, options: WorkerOptions | None = None) -> None:
        self.options = options or WorkerOptions()
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.dsn = db.request_dsn(dsn)
        self.runtime = Runtime(
            project_cache(settings.project_dir), deno_workers=min(self.options.concurrency, 4)
        )
        self.functions = DeployedFunctions()
        self.catalogs = CatalogCache()
        self.secrets = SecretCache(settings.project_dir)
        self.fetch_policy = FetchPolicy(allow=settings.fetch_allow)
        # one connection per runner thread, and one for the writer of records (and "done"s) of jobs that
        # never used the database
        self.pool = db.create_pool(
            self.dsn, max_size=self.options.concurrency + 1, name="flux-queue", autocommit=True
        )
        self.records = RecordWriter(self.pool)
        self._held: dict[int, int] = {}  # job id -> attempt, from claim until finished or given back
        self._held_lock = threading.Lock()
        self._ready: threadqueue.Queue[Claimed | None] = threadqueue.Queue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._runners_done = threading.Event()  # the lease keeper runs until then, not until `stop`
        self._listener = Listener()
        self._listener.on(NOTIFY_CHANNEL, self._wake.set)
        for cache in (self.functions.active, self.catalogs, self.secrets):
            self._listener.follow(cache)
        self._listener.on(DEPLOYMENTS_CHANNEL, lambda: self.functions.prepare_active(self.pool, self.runtime))

    def stop(self) -> None:
        """Stop claiming; `run` returns once running jobs finish (or `shutdown_s` passes)."""
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Claim and run jobs until `stop`."""
        self.pool.open(wait=True)
        self._listener.start(self.dsn)
        runners = [
            threading.Thread(target=self._runner, name=f"flux-job-{n}", daemon=True)
            for n in range(self.options.concurrency)
        ]
        keeper = threading.Thread(target=self._keep_leases, name="flux-leases", daemon=True)
        for thread in [*runners, keeper]:
            thread.start()
        log.info(
            "queue worker %s: %d threads, queues %s",
            self.name,
            self.options.concurrency,
            ", ".join(self.options.queues) if self.options.queues else "all",
        )
        try:
            self._dispatch()
        finally:
            self._shut_down(runners, keeper)

    def _dispatch(self) -> None:
        """Claim jobs as threads free up, on a connection of its own (opened again when it is lost)."""
        upkeep_at = 0.0
        conn: Any = None
        try:
            while not self._stopping.is_set():
                self._wake.clear()  # a notification from here on wakes the wait below
                if conn is None or conn.closed:
                    conn = self._connect()
                    if conn is None:
                        continue
                if time.monotonic() >= upkeep_at:
                    self._upkeep(conn)
                    upkeep_at = time.monotonic() + self.options.poll_s
                # Up to two jobs per thread are held: one running, one ready, so a thread that finishes starts
                # the next at once and claims go `concurrency` at a time, not one.
                room = 2 * self.options.concurrency - len(self._held)
                claimed = self._claim(conn, room) if room >= self.options.concurrency else []
                for job in claimed:
                    self._ready.put(job)
                if len(claimed) < room or not claimed:  # the queue is drained, or every slot is taken
                    self._wake.wait(max(0.0, min(self.options.poll_s, upkeep_at - time.monotonic())))
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> Any:
        """A new autocommit connection, or None (logged, after a pause) while Postgres cannot be reached."""
        try:
            return db.connect(self.dsn, autocommit=True)
        except FluxError as exc:
            log.error("the queue cannot reach Postgres (trying again): %s", exc)
            self._stopping.wait(self.options.poll_s)
            return None

    def _upkeep(self, conn: Any) -> None:
        """Take over jobs of dead workers and fire due schedules (every worker does; each happens once)."""
        try:
            row = db.execute_raw(conn, "SELECT flux.reap_jobs()", [])
            if row and row[0]:
                log.warning("%d jobs lost their worker; they run again", row[0])
            cron.fire_due(conn)
        except Exception:  # the next round tries again; a worker never stops for it
            log.exception("queue upkeep failed")

    def _claim(self, conn: Any, count: int) -> list[Claimed]:
        try:
            with db.translate_errors():
                rows = pipeline.run(conn, [_CLAIM_WITHOUT_FLUSH, Statement(_CLAIM, [
                    self.name, list(self.options.queues) if self.options.queues else None, count,
                    self.options.lease_s,
                ])]).rows  # fmt: skip
        except FluxError as exc:
            log.error("claiming jobs failed: %s", exc)
            return []  # the dispatcher waits before it tries again
        claimed = [
            Claimed(job_id, attempts, function, queue, payload, role, claims, _text(tenant_id), _text(parent),
                    cron_name)
            for job_id, attempts, function, queue, payload, role, claims, tenant_id, parent, cron_name in rows
        ]  # fmt: skip
        with self._held_lock:
            self._held.update((job.id, job.attempt) for job in claimed)
        return claimed

    def _runner(self) -> None:
        while True:
            job = self._ready.get()
            if job is None:
                return
            try:
                with self.pool.connection() as conn:
                    self._attempt(conn, job)
            except Exception:  # a lost connection or a bug: the lease expires and the job runs again
                log.exception("job %d attempt %d could not be finished", job.id, job.attempt)
            finally:
                with self._held_lock:
                    self._held.pop(job.id, None)
                self._wake.set()

    def _attempt(self, conn: Any, job: Claimed) -> None:
        """Run one attempt of `job` as a recorded request; done with its transaction, or failed after it."""
        request_id = randomness.uuid4()
        try:
            function = self.functions.get(conn, job.function)
        except FluxError as exc:
            self._fail(conn, job, None, exc)
            return
        done = Statement(
            b"SELECT flux.complete_job($1::pg_catalog.int8, $2::pg_catalog.text, $3::pg_catalog.int4,"
            b" $4::pg_catalog.uuid)",
            [job.id, self.name, job.attempt, request_id],
        )
        request = {
            "body": job.payload,
            "params": {},
            "query": {},
            "headers": {},
            "user": job.claims if job.role != "anon" else None,
            "job": {"id": job.id, "attempt": job.attempt, "queue": job.queue, "cron": job.cron_name},
        }
        outcome = invoke(
            conn,
            self.runtime,
            function,
            request,
            catalog=self.catalogs.get(conn),
            caller=Caller(job.role, job.claims, job.tenant_id),
            secrets=self.secrets.get(conn),
            fetch_policy=self.fetch_policy,
            records=self.records,
            kind="cron" if job.cron_name else "job",
            request_id=request_id,
            parent_request_id=job.parent_request_id,
            commit_with=done,
        )
        if outcome.error is not None:
            self._fail(conn, job, request_id, outcome.error)

    def _fail(self, conn: Any, job: Claimed, request_id: str | None, error: FluxError) -> None:
        row = db.execute_raw(
            conn,
            "SELECT flux.fail_job($1, $2, $3, $4, $5::pg_catalog.jsonb, $6)",
            [
                job.id,
                self.name,
                job.attempt,
                request_id,
                jsontext.dumps_text(error_record(error)),
                self.options.retry_base_s,
            ],
        )
        status = row[0] if row else None
        if status == "dead":
            log.warning("job %d (%s) is dead after attempt %d: %s", job.id, job.function, job.attempt, error)

    def _keep_leases(self) -> None:
        """Extend the leases of every held job, three times a lease, until the worker stops; on a connection
        of its own, so busy runner threads never hold it up."""
        interval = self.options.lease_s / 3
        conn: Any = None
        while not self._runners_done.wait(interval):
            with self._held_lock:
                held = list(self._held)
            if not held:
                continue
            try:
                conn = conn if conn is not None and not conn.closed else db.connect(self.dsn, autocommit=True)
                rows = db.execute_rows(
                    conn,
                    "SELECT flux.extend_leases($1, $2::bigint[], $3)",
                    [self.name, held, self.options.lease_s],
                )
            except FluxError as exc:
                log.error("extending job leases failed: %s", exc)
                continue
            kept = {row[0] for row in rows}
            with self._held_lock:  # a job that finished meanwhile is simply gone
                lost = [job_id for job_id in set(held) - kept if job_id in self._held]
            for job_id in lost:
                log.warning("job %d was taken over by another worker (its lease expired)", job_id)
        if conn is not None:
            conn.close()

    def _shut_down(self, runners: list[threading.Thread], keeper: threading.Thread) -> None:
        """Give back the jobs claimed but not started, let running jobs finish (up to shutdown_s, their leases
        renewed all the while), and close everything. A job still running at the end is not given back: it is
        still running, so it runs again only once its lease expires."""
        self._stopping.set()
        waiting: list[int] = []
        while True:
            try:
                job = self._ready.get_nowait()
            except threadqueue.Empty:
                break
            if job is not None:
                waiting.append(job.id)
        with self._held_lock:
            for job_id in waiting:
                self._held.pop(job_id, None)
        if waiting:
            try:
                with db.connect(self.dsn, autocommit=True) as conn:
                    db.execute_raw(conn, "SELECT flux.release_jobs($1, $2::bigint[])", [self.name, waiting])
                log.info("gave back %d jobs that had not started", len(waiting))
            except FluxError as exc:
                log.error("giving back jobs failed (they run again when their lease expires): %s", exc)
        for _ in runners:
            self._ready.put(None)
        deadline = time.monotonic() + self.options.shutdown_s
        for thread in runners:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._runners_done.set()
        keeper.join()
        if self._held:
            log.warning(
                "%d jobs were still running; they run again once their lease expires", len(self._held)
            )
        self.records.close()  # the records and "done"s still queued
        self._listener.close()
        self.runtime.close()
        self.pool.close()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def run_worker(settings: Settings, dsn: str, options: WorkerOptions) -> None:
    """Run a queue worker in this process until SIGTERM or Ctrl-C."""
    worker = QueueWorker(settings, dsn, options)

    def _stop(signum: int, frame: Any) -> None:
        log.info("stopping: finishing running jobs")
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
