"""The records of requests that changed no data (reads, no-ops, requests the gateway refused), written off the
request path: a thread of the worker writes whatever has queued up in one statement (and announces it),
without waiting for the flush to disk. A record waits up to `LINGER_S` for others to share its statement:
Postgres spends about three times as much on a record written alone as on one of a batch of twenty (measured
in docs/performance-log.md).

DESIGN.md allows it: recording a read must not turn it into a flushed write, and a crash may lose the last
moments of read traces (here, those still queued in a worker killed with -9), never user data nor the record
of a write. A request that changed data, or failed, still commits its record itself, in its own transaction.

A record's `then` statement (a queue worker's "job done") runs in its batch's transaction; if it fails, the
record is written without it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

from flux import db
from flux.errors import DatabaseUnreachable, FluxError
from flux.pipeline import Statement
from flux.trace.recorder import Record, records_statements

log = logging.getLogger("flux.trace")

MAX_QUEUED = 20_000  # past this (Postgres down for a while), the oldest records are dropped, with a log line
MAX_BATCH = 500
LINGER_S = 0.02  # how long the first record queued waits for others before its batch is written
RETRY_S = 1.0


class RecordWriter:
    """Queues records and writes them in batches from one thread; `flush` waits for those queued so far."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool  # connections as flux_authenticator, autocommit
        self._queue: list[Record] = []
        self._queued = 0  # records ever queued, and ever done with (written, or given up on)
        self._done = 0
        self._dropped = 0
        self._closing = False
        self._waiting = 0  # callers of flush() waiting now: no lingering for them
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="flux-record-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a worker that exits gracefully writes what it still holds

    def submit(self, record: Record) -> None:
        with self._changed:
            if self._closing:
                raise RuntimeError("the record writer is closed")
            self._queue.append(record)
            self._queued += 1
            if len(self._queue) > MAX_QUEUED:
                del self._queue[0]
                self._done += 1
                self._dropped += 1
            if len(self._queue) in (1, MAX_BATCH):  # wake the thread only when that changes what it does
                self._changed.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record queued before this call is written; False on timeout."""
        with self._changed:
            target = self._queued
            self._waiting += 1
            self._changed.notify_all()
            try:
                return self._changed.wait_for(lambda: self._done >= target, timeout=timeout_s)
            finally:
                self._waiting -= 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._changed:
            if self._closing:
                return
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout_s)
        atexit.unregister(self.close)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                self._changed.wait_for(
                    lambda: len(self._queue) >= MAX_BATCH or self._closing or self._waiting, timeout=LINGER_S
                )
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                dropped, self._dropped = self._dropped, 0
            if dropped:
                log.warning("dropped the records of %d requests: Postgres was unreachable too long", dropped)
            while not self._write(batch) and not self._closing:
                time.sleep(RETRY_S)  # Postgres is unreachable: keep the batch and try again
            with self._changed:
                self._done += len(batch)
                self._changed.notify_all()

    def _write(self, batch: list[Record]) -> bool:
        """Write `batch` in one statement, or record by record when that fails (one bad record must not lose
        the others); False when Postgres cannot be reached."""
        try:
            with self.pool.connection() as conn:
                if len(batch) == 1:  # the batch is one record's own statement: no need to try it twice
                    self._write_one(conn, batch[0])
                    return True
                try:
                    db.write_alone(conn, _with_then(batch), durable=False)
                except FluxError as exc:
                    if isinstance(exc, DatabaseUnreachable):
                        raise
                    for record in batch:  # alone, and without its `then` if that is what fails
                        self._write_one(conn, record)
        except Exception as exc:
            error = db.as_flux_error(exc)
            if isinstance(error, DatabaseUnreachable):
                log.warning("cannot write request records yet: %s", error.message)
                return False
            log.error("could not write the records of %d requests: %s", len(batch), error)
        return True

    @staticmethod
    def _write_one(conn: Any, record: Record) -> None:
        try:
            try:
                db.write_alone(conn, _with_then([record]), durable=False)
            except FluxError as exc:
                if isinstance(exc, DatabaseUnreachable) or not record.then:
                    raise
                log.warning("request %s: %s; its record is written alone", record.request.get("id"), exc)
                db.write_alone(conn, records_statements([record]), durable=False)
        except FluxError as exc:
            if isinstance(exc, DatabaseUnreachable):
                raise
            log.error("could not write the record of request %s: %s", record.request.get("id"), exc)


def _with_then(batch: list[Record]) -> list[Statement]:
    """The statements that write `batch`, and the `then` statements of its records."""
    return [*records_statements(batch), *(record.then for record in batch if record.then)]
