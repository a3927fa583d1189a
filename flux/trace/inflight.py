"""The requests a worker process is serving now, kept in memory it shares with the gunicorn master: when the
worker dies in the middle of one (kill -9, out of memory, past gunicorn's timeout), the master writes each of
them as a lost request (FX815), so no request that reached a worker is without its record.

A slot per request thread holds the request row as the gateway knows it so far (JSON); writing it costs a few
microseconds of memory copying and no system call, so every request has one, not only those that run code.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import struct
import threading
import time
from typing import Any

from flux import db, jsontext
from flux.errors import FluxError, RequestLost
from flux.trace.recorder import Record, records_statements

log = logging.getLogger("flux.trace")

SLOT_BYTES = 4096
_LENGTH = struct.Struct("<I")
_PATH_CHARS = 1024  # a longer path is cut short in the slot (the record of a request that finished keeps it)


class InFlight:
    """`slots` request slots, created by the master before it forks the worker that fills them."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._memory = mmap.mmap(-1, slots * SLOT_BYTES)  # anonymous and shared: the fork keeps it shared
        self._local = threading.local()
        self._next_slot = itertools.count()

    def begin(self, row: dict[str, Any]) -> None:
        """This thread serves the request `row` (columns of flux.requests, with `started_us`)."""
        if len(row.get("path") or "") > _PATH_CHARS:
            row = {**row, "path": row["path"][:_PATH_CHARS]}
        data = jsontext.dumps(row)
        if len(data) > SLOT_BYTES - _LENGTH.size:
            data = jsontext.dumps({name: row.get(name) for name in ("id", "method", "started_us")})
        offset = self._slot()
        # The row first, its length last: a worker killed between the two leaves the slot's old length (0).
        self._memory[offset + _LENGTH.size : offset + _LENGTH.size + len(data)] = data
        self._memory[offset : offset + _LENGTH.size] = _LENGTH.pack(len(data))

    def end(self) -> None:
        """This thread's request is recorded (or handed to the record writer): nothing is lost any more."""
        offset = self._slot()
        self._memory[offset : offset + _LENGTH.size] = b"\0\0\0\0"

    def take(self) -> list[dict[str, Any]]:
        """The requests in flight (read by the master once the worker has died), and every slot emptied."""
        rows = []
        for offset in range(0, self.slots * SLOT_BYTES, SLOT_BYTES):
            (length,) = _LENGTH.unpack_from(self._memory, offset)
            if not length or length > SLOT_BYTES - _LENGTH.size:
                continue
            self._memory[offset : offset + _LENGTH.size] = b"\0\0\0\0"
            start = offset + _LENGTH.size
            try:
                rows.append(jsontext.loads(bytes(self._memory[start : start + length])))
            except ValueError:
                continue
        return rows

    def close(self) -> None:
        self._memory.close()

    def _slot(self) -> int:
        offset: int | None = getattr(self._local, "offset", None)
        if offset is None:
            offset = self._local.offset = (next(self._next_slot) % self.slots) * SLOT_BYTES
        return offset


def lost_record(row: dict[str, Any], reason: str) -> Record:
    """The record of a request whose worker died serving it: what the gateway knew, and FX815."""
    error = RequestLost(
        f"the worker serving this request died before it finished ({reason}); its spans and writes are lost",
        hint="see the server log; a function past its time or memory limits, or a worker killed, does this",
    )
    started_us = int(row.get("started_us") or time.time_ns() // 1000)
    request = {
        **row,
        "kind": row.get("kind") or "http",
        "status": error.http_status,
        "ok": False,
        "duration_us": max(time.time_ns() // 1000 - started_us, 0),
        "error": {"code": error.code, "message": error.message, "hint": error.hint},
    }
    return Record(request, [])


def record_lost(dsn: str, rows: list[dict[str, Any]], reason: str) -> int:
    """Write a lost record for each of `rows` (in one short connection); a request that was recorded after all
    (its worker died just after writing it) keeps its record. Returns how many were written."""
    if not rows:
        return 0
    written = 0
    try:
        with db.connect(dsn, autocommit=True) as conn:
            for row in rows:
                try:
                    db.write_alone(conn, records_statements([lost_record(row, reason)]))
                    written += 1
                except FluxError as exc:
                    log.info("request %s: no lost record written: %s", row.get("id"), exc.message)
    except Exception as exc:
        log.error("could not record %d lost requests: %s", len(rows) - written, db.as_flux_error(exc).message)
    for row in rows:
        method, path = row.get("method"), row.get("path")
        log.warning("request %s (%s %s) was lost: %s", row.get("id"), method, path, reason)
    return written
