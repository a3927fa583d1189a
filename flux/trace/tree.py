"""Reading a request's record back: the request row, its span tree (`flux.trace()`), the mutations it made
and the jobs it enqueued; request ids by unique prefix; recent requests with filters (`flux trace ls`), and
new ones as they are recorded (`flux tail`, through LISTEN/NOTIFY)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flux import db
from flux.errors import FollowerGone, InvalidRequest, RequestNotFound

Row = dict[str, Any]
_HEX = re.compile(r"^[0-9a-f-]{1,36}$")


@dataclass(frozen=True)
class Trace:
    request: Row
    spans: list[Row]  # in execution order, each with its `depth`
    mutations: list[Row] = field(default_factory=list)
    jobs: list[Row] = field(default_factory=list)  # the jobs it pushed, each with the requests that ran it
    job: Row | None = None  # for a job's run: which job and attempt (its pusher is parent_request_id)


def trace_record(trace: Trace) -> dict[str, Any]:
    """The whole record as one JSON object (`flux trace --json`, and the management API)."""
    return {"request": trace.request, "spans": trace.spans, "mutations": trace.mutations, "jobs": trace.jobs,
            "job": trace.job}  # fmt: skip


def trace_from_record(record: dict[str, Any]) -> Trace:
    """A Trace back from `trace_record`'s object (its times as datetimes already)."""
    return Trace(record["request"], record["spans"], record["mutations"], record["jobs"], record["job"])


def resolve_request_id(conn: Any, given: str) -> str:
    """The request id `given` names: the whole id, or a prefix only one request has (FX503 otherwise)."""
    text = given.strip().lower()
    if not _HEX.match(text):
        raise RequestNotFound(
            f"{given!r} is not a request id", hint="copy it from x-request-id or flux trace ls"
        )
    digits = text.replace("-", "")
    low = str(uuid.UUID(digits.ljust(32, "0")))
    high = str(uuid.UUID(digits.ljust(32, "f")))
    with db.translate_errors():
        rows = conn.execute(
            "SELECT id::text FROM flux.requests WHERE id BETWEEN %s::uuid AND %s::uuid ORDER BY id LIMIT 6",
            (low, high),
        ).fetchall()
    if not rows:
        raise RequestNotFound(
            f"no request has an id starting {given}", hint="flux trace ls lists recent ones"
        )
    if len(rows) > 1:
        shown = ", ".join(row[0][:13] for row in rows[:5])
        count = len(rows) if len(rows) < 6 else "many"
        raise RequestNotFound(f"{count} requests start with {given}: {shown}", hint="give more of the id")
    return str(rows[0][0])


# A request's whole record: its row, its spans, its row changes, the jobs it pushed with their runs, and, for
# a job's run, its job (each one index scan; bench/inspect.py measures them at scale).
TRACE_STATEMENTS = (
    "SELECT r.*, d.git_commit FROM flux.requests r LEFT JOIN flux.deployments d ON d.id = r.deployment_id"
    " WHERE r.id = %s",
    "SELECT * FROM flux.trace(%s)",
    "SELECT id, span_seq, table_schema, table_name, op, row_pk, old, new, changed, at FROM flux.mutations"
    " WHERE request_id = %s ORDER BY id",
    "SELECT j.id, j.function, j.queue, j.status, j.attempts,"
    "       (SELECT coalesce(jsonb_agg(jsonb_build_object('attempt', r.attempt, 'request_id', r.request_id,"
    "                                                     'ok', r.ok, 'error', r.error->>'code')"
    "                                  ORDER BY r.run), '[]')"
    "          FROM flux.job_runs r WHERE r.job_id = j.id) AS runs"
    "  FROM flux.all_jobs j WHERE j.parent_request_id = %s ORDER BY j.id",
    "SELECT r.job_id, r.attempt, j.function, j.queue, j.cron_name, j.max_attempts"
    "  FROM flux.job_runs r JOIN flux.all_jobs j ON j.id = r.job_id WHERE r.request_id = %s",
)


def find_trace(conn: Any, given: str) -> Trace:
    """The whole record of the request `given` names: its id, or a prefix only it has."""
    return load_trace(conn, resolve_request_id(conn, given))


def load_trace(conn: Any, request_id: str, *, with_jobs: bool = True) -> Trace:
    """The whole record of one request; without its jobs (those it pushed, the one it ran) unless
    `with_jobs` (a replay reads only the request, its spans and its row changes)."""
    request, *parts = TRACE_STATEMENTS
    found = db.fetch_dicts(conn, request, (request_id,), exact_numbers=True)
    if not found:
        raise RequestNotFound(f"no request {request_id}", hint="flux trace ls lists recent ones")
    spans, mutations, jobs, job = (
        db.fetch_dicts(conn, query, (request_id,), exact_numbers=True) if with_jobs or n < 2 else []
        for n, query in enumerate(parts)
    )
    return Trace(found[0], spans, mutations, jobs, job[0] if job else None)


KINDS = ("http", "job", "cron", "replay")
Moment = timedelta | datetime  # how long ago, or when


def list_requests(
    conn: Any, *, route: str | None = None, function: str | None = None, status: int | None = None,
    kind: str | None = None, errors: bool = False, since: Moment | None = None, until: Moment | None = None,
    slow_ms: float | None = None, limit: int = 20, ids: list[str] | None = None, replayable: bool = False,
    replay_of: str | None = None,
) -> list[Row]:  # fmt: skip
    """Recent requests (or those of `ids`), newest first, with the filters given. `since` and `until` are a
    period ago or a moment; `replayable` keeps the requests that ran code of their own (no replays, no
    refusals of the gateway, no explains); `replay_of`, the replays of that request (its id, or a prefix only
    it has)."""
    if not 1 <= limit <= 10_000:
        raise InvalidRequest(f"--limit {limit} is outside 1-10000", hint="e.g. --limit 50")
    if kind is not None and kind not in KINDS:
        raise InvalidRequest(f"--kind {kind!r} is not a kind of request", hint=f"one of {', '.join(KINDS)}")
    where, params = ["true"], []
    if replay_of is not None:
        replay_of = resolve_request_id(conn, replay_of)
    for clause, value in (
        ("r.id = ANY(%s::uuid[])", ids), ("r.path = %s", route), ("r.function = %s", function),
        ("r.status = %s", status), ("r.kind = %s", kind), (_moment("r.started_at >=", since), since),
        (_moment("r.started_at <=", until), until), ("r.duration_us >= %s * 1000", slow_ms),
        ("r.replay_of = %s::uuid", replay_of),
    ):  # fmt: skip
        if value is not None:
            where.append(clause)
            params.append(value)
    if errors:
        where.append("NOT r.ok")
    if replayable:
        where.append(
            "r.kind <> 'replay' AND r.code_sha IS NOT NULL AND r.function IS DISTINCT FROM 'db.explain'"
        )
    return db.fetch_dicts(
        conn,
        "SELECT r.id::text, r.started_at, r.kind, r.method, r.path, r.function, r.status, r.ok,"
        " r.duration_us, r.error->>'code' AS error_code, r.replay_of::text FROM flux.requests r WHERE "
        + " AND ".join(where)
        + " ORDER BY r.started_at DESC LIMIT %s",
        [*params, limit],
    )


def _moment(compared: str, value: Moment | None) -> str:
    """`compared` against a moment, or against now minus a period."""
    return f"{compared} %s" if isinstance(value, datetime) else f"{compared} now() - %s"


CHANNEL = "flux_requests"
FOLLOWER_TTL_S = 60  # a follower that stopped without a word (kill -9) stops the notifications after this
MAX_TAKEN = 1000  # requests a follower through the API takes per call (the rest wait for the next)
_RENEW_S = 20


def follow_requests(conn: Any, **filters: Any) -> Iterator[Row]:
    """New requests as they are recorded, oldest first, with `list_requests`'s filters (followed from the
    moment this returns)."""
    announced = announced_requests(conn)
    return (
        row for ids in announced for row in reversed(list_requests(conn, ids=ids, limit=len(ids), **filters))
    )


def announced_requests(conn: Any, stop: threading.Event | None = None) -> Iterator[list[str]]:
    """The ids of new requests, as each statement that recorded some announces them on flux_requests (until
    `stop`), from the moment this returns. They are announced only while a row of flux.request_followers says
    someone follows: this keeps one alive, and removes it at the end."""
    follower = start_following(conn)
    with db.translate_errors():
        conn.execute(f"LISTEN {CHANNEL}")
    return _announced(conn, follower, stop)


def _announced(conn: Any, follower: int, stop: threading.Event | None) -> Iterator[list[str]]:
    renewed = time.monotonic()
    try:
        while stop is None or not stop.is_set():
            with db.translate_errors():
                notices = list(conn.notifies(timeout=1.0, stop_after=1))
            for notice in notices:
                yield notice.payload.split(",")
            if time.monotonic() - renewed > _RENEW_S:
                _renew(conn, follower)
                renewed = time.monotonic()
    finally:
        if not conn.closed:
            stop_following(conn, follower)


def start_following(conn: Any, *, inbox: bool = False) -> int:
    """Register a follower of new requests (their ids are announced while one is live); with `inbox`, the ids
    also wait in flux.request_follower_inbox for `take_followed`. Expired followers are cleared first."""
    with db.translate_errors():
        conn.execute("DELETE FROM flux.request_followers WHERE expires_at < now()")
        conn.execute(
            "DELETE FROM flux.request_follower_inbox i WHERE NOT EXISTS"
            " (SELECT FROM flux.request_followers f WHERE f.id = i.follower_id)"
        )
        (follower,) = conn.execute(
            "INSERT INTO flux.request_followers (expires_at, keeps_inbox) VALUES (now() + %s, %s)"
            " RETURNING id",
            (timedelta(seconds=FOLLOWER_TTL_S), inbox),
        ).fetchone()
    return int(follower)


def take_followed(conn: Any, follower: int, **filters: Any) -> list[Row]:
    """The requests recorded since the follower's last call (oldest first, with `list_requests`'s filters, at
    most MAX_TAKEN), taken from its inbox in one transaction with their rows; the call keeps the follower
    alive for FOLLOWER_TTL_S more."""
    if not _renew(conn, follower):
        raise FollowerGone(
            f"follower {follower} was stopped, or expired after {FOLLOWER_TTL_S} s without a call",
            hint="start flux tail again",
        )
    with db.translate_errors(), conn.transaction():
        taken = conn.execute(
            "DELETE FROM flux.request_follower_inbox WHERE ctid = ANY(ARRAY(SELECT ctid"
            " FROM flux.request_follower_inbox WHERE follower_id = %s LIMIT %s)) RETURNING request_id::text",
            (follower, MAX_TAKEN),
        ).fetchall()
        ids = [request_id for (request_id,) in taken]
        return list(reversed(list_requests(conn, ids=ids, limit=len(ids), **filters))) if ids else []


def stop_following(conn: Any, follower: int) -> None:
    """Remove a follower (and its inbox); nothing happens when it is already gone."""
    with db.translate_errors():
        conn.execute("DELETE FROM flux.request_followers WHERE id = %s", (follower,))
        conn.execute("DELETE FROM flux.request_follower_inbox WHERE follower_id = %s", (follower,))


def _renew(conn: Any, follower: int) -> bool:
    """Keep a live follower alive FOLLOWER_TTL_S more; False when it is gone or expired."""
    with db.translate_errors():
        cursor = conn.execute(
            "UPDATE flux.request_followers SET expires_at = now() + %s WHERE id = %s AND expires_at > now()",
            (timedelta(seconds=FOLLOWER_TTL_S), follower),
        )
    return bool(cursor.rowcount)
