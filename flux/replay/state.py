"""The database a `live` or `as-of` replay runs on, inside its own transaction, which is always rolled back.

`live` takes back the original request's own writes (so its inserts do not collide with the rows it made),
except on rows others wrote since, then runs on today's data. `as-of` takes back every write made to the
tables the request touched since it began (its own and those of later or concurrent writers), so they are as
the request found them. Both happen in flux.rewind_tables, set-based. Either way the recorded values the
database generated (serial ids, now() defaults, random uuids) are pinned to the writes run again
(flux.replay_pins). What this locks: the rows it takes back or writes, until the replay ends (other writers
of those rows wait; readers never do; no table lock beyond ROW EXCLUSIVE, but, in as-of, SHARE UPDATE
EXCLUSIVE on flux.mutations when it is free, to summarize its BRIN index: vacuums of it wait, writes do not).

The writes of others that may explain a difference in what the request read are listed as its `drift`: in
`as-of`, those that began while the original ran (it may have read them); in `live`, the writes since.

The transaction is a request connection's (logged in as flux_authenticator, as the gateway's are): the
function's SQL never runs as the owner, even if it leaves the request's role. The owner's part (rewind, pins,
reading the replay's mutations back) is done by SECURITY DEFINER functions that work only for a replay the
owner's connection granted (flux.replay_grants, under a secret only this process knows), in the one
transaction that took the grant up, and set the database up only once, before the run's first database call
(the engine has it made while Deno starts the run, or before the run in the other runtimes). Replays
back to back (`grants_ahead`: a window, a bisect, a deploy gate) write the next one's grant with their own
record, so that they take theirs up without a round trip of their own."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flux import db, jsontext, pipeline, randomness
from flux.data.raw import inspect_raw_sql
from flux.data.request import Embed, Problems, parse_request
from flux.errors import FluxError, InvalidFunctionResponse, QueryTimedOut, RewindFailed
from flux.pipeline import Statement
from flux.replay.recording import Recording

Row = dict[str, Any]

# A grant for one replay; those older than a minute go (flux.replay_prepare no longer takes them up), but
# not one a running replay holds (SKIP LOCKED: this never waits for it).
_GRANT = b"""
WITH expired AS (DELETE FROM flux.replay_grants
                  WHERE secret_sha256 IN (SELECT g.secret_sha256 FROM flux.replay_grants AS g
                                           WHERE g.granted_at < pg_catalog.now() - interval '1 minute'
                                             FOR UPDATE SKIP LOCKED))
INSERT INTO flux.replay_grants (secret_sha256, replay_id) VALUES (pg_catalog.sha256($1::bytea), $2::uuid)
"""
_PREPARE = (
    b"SELECT flux.replay_prepare($1::bytea, $2::uuid, $3::text::jsonb, $4::boolean, $5::text[],"
    b" pg_catalog.current_setting('search_path'), $6::text[], $7::text[], $8::timestamptz, $9::timestamptz)"
)
_CAPTURED = Statement(b"SELECT * FROM flux.replay_captured()")
_UNGRANT = b"DELETE FROM flux.replay_grants WHERE secret_sha256 = pg_catalog.sha256($1::bytea)"
_TIMEOUT = b"SELECT pg_catalog.set_config('statement_timeout', $1, true)"
_LOCK_NOT_AVAILABLE = "55P03"  # flux.rewind_tables waits for a row lock at most 500 ms
# Back to the connecting role and the connection's settings, whatever the function set for the rest of its
# transaction (a statement timeout the read of its writes would exceed, a client encoding that cannot carry
# them), with the search path it may have moved put back (to pg_catalog, then pg_temp): its own functions,
# operators and types must not be found by the statements after it.
_NO_ROLE = [
    Statement(b"RESET ALL"),
    Statement(
        b"SELECT pg_catalog.set_config('role', 'none', true),"
        b" pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)"
    ),
]


@dataclass(frozen=True)
class Grant:
    """What lets a replay set its database up (flux.replay_grants): the secret its row is written under, the
    replay's id, and when it was written (time.monotonic())."""

    secret: bytes
    replay_id: str
    written: float

    @staticmethod
    def new() -> Grant:
        return Grant(secrets.token_bytes(32), randomness.uuid4(), time.monotonic())

    def statement(self) -> Statement:
        """What writes the grant, on the owner's connection."""
        return Statement(_GRANT, [self.secret, self.replay_id])

    def end(self) -> Statement:
        """What deletes it once its replay's transaction has ended (nothing is left behind); the engine sends
        it with the replay's record."""
        return Statement(_UNGRANT, [self.secret])


@dataclass
class _Ahead:
    depth: int = 0  # grants_ahead contexts open on the connection
    grant: Grant | None = None  # written, for the next replay there


# The owner connections whose replays write the next one's grant ahead (grants_ahead). flux.replay_prepare
# takes a grant up within a minute of its writing; one written ahead more than _AHEAD_FOR_S ago is replaced.
_AHEAD: weakref.WeakKeyDictionary[Any, _Ahead] = weakref.WeakKeyDictionary()
_AHEAD_LOCK = threading.Lock()
_AHEAD_FOR_S = 30.0


@contextlib.contextmanager
def grants_ahead(owner: Any) -> Iterator[None]:
    """Within it, each live or as-of replay on the owner connection `owner` writes the next one's grant with
    its own record, so that replays back to back (a window, a bisect, a deploy gate) take theirs up without a
    round trip of their own; the one left unused is deleted at the end."""
    with _AHEAD_LOCK:
        ahead = _AHEAD.setdefault(owner, _Ahead())
        ahead.depth += 1
    try:
        yield
    finally:
        with _AHEAD_LOCK:
            ahead.depth -= 1
            left = ahead.grant if ahead.depth == 0 else None
            if ahead.depth == 0:
                del _AHEAD[owner]
        if left is not None and not owner.closed:
            db.write_alone(owner, [left.end()], durable=False)


def take_grant(owner: Any) -> Grant:
    """The grant for a live or as-of replay on the owner connection `owner`: the one an earlier replay wrote
    ahead there, while fresh; else one written now (a round trip, which deletes a stale one)."""
    with _AHEAD_LOCK:
        ahead = _AHEAD.get(owner)
        kept = ahead.grant if ahead is not None else None
        if ahead is not None:
            ahead.grant = None  # taken
    if kept is not None and time.monotonic() - kept.written < _AHEAD_FOR_S:
        return kept
    grant = Grant.new()
    stale = [kept.end()] if kept is not None else []
    with db.translate_errors():
        pipeline.run(owner, [*stale, grant.statement()])
    return grant


def next_grant(owner: Any) -> Grant | None:
    """A grant to write with a replay's record on `owner` for the next replay there, when in grants_ahead;
    keep_ahead once written."""
    with _AHEAD_LOCK:
        return Grant.new() if owner in _AHEAD else None


def keep_ahead(owner: Any, grant: Grant) -> None:
    """Once `grant` (next_grant's) is written on `owner`, the next replay there takes it up (take_grant)."""
    with _AHEAD_LOCK:
        ahead = _AHEAD.get(owner)
        if ahead is not None:
            ahead.grant = grant
            return
    db.write_alone(owner, [grant.end()], durable=False)  # grants_ahead ended meanwhile


@dataclass
class State:
    """What the replay did to the database before the run, and the writes of others it could not undo."""

    mode: str
    undone: int = 0
    drift: list[Row] = field(default_factory=list)  # other requests' writes that may explain a difference
    not_rewound: list[str] = field(default_factory=list)  # tables as-of could not take back (gone, untracked)
    triggers_off: bool = False  # whether the tables' own triggers were off while it took writes back


def open_state(
    owner: Any,
    transaction: db.RequestTransaction,
    recording: Recording,
    grant: Grant,
    mode: str,
    timeout_ms: int | None = None,
) -> State:
    """Begin the replay's transaction on the request connection `transaction` runs on (after
    `db.reset_session`, should an earlier request's raw SQL have left anything in its session) and set its
    database up for `mode` (live or as-of) there, through flux.replay_prepare under `grant` (written on the
    owner connection `owner`, take_grant): one round trip. Then the transaction runs as the request's role,
    claims and tenant, under the replay's id (those settings go with its first statement). The rewind has
    the request role's statement timeout (`timeout_ms`): it holds every row it takes back until the replay
    ends, so a request with a long history since is not rewound for longer than a request of that role may
    run a statement."""
    request = recording.request
    written = sorted(recording.tables())
    started = request["started_at"]
    ended = started + timedelta(microseconds=request["duration_us"] or 0)
    pins = [
        [call.key, position, m["table_schema"], m["table_name"], m["op"], m["row_pk"], m["old"], m["new"]]
        for call in recording.calls
        for position, m in enumerate(call.mutations)
        if m["op"] in ("INSERT", "UPDATE")
    ]
    prepare = Statement(
        _PREPARE,
        [grant.secret, recording.id, jsontext.dumps_text(pins), mode == "as-of",
         sorted(_named_tables(recording)), [t[0] for t in written], [t[1] for t in written], started, ended],
    )  # fmt: skip
    limit = [Statement(_TIMEOUT, [str(timeout_ms)])] if timeout_ms is not None else []
    try:
        with db.translate_errors():
            # What an earlier request's raw SQL left in the session (temporary views named like a table a
            # project's function reads, a search path, statements under Flux's names) is gone first; the
            # gateway resets such a connection when that request ends, so this is rarely more than a check.
            db.reset_session(transaction.conn)
            rewound = pipeline.run(transaction.conn, [pipeline.BEGIN, *limit, prepare]).rows[0][0]
    except FluxError as exc:
        db.write_alone(owner, [grant.end()], durable=False)
        if isinstance(exc, QueryTimedOut):
            raise RewindFailed(
                f"{mode} could not take back the writes it had to within the statement timeout of"
                f" {timeout_ms} ms: too many were made since the request",
                hint="replay with --db recorded (it needs no database), or a more recent request",
            ) from exc
        if (exc.details or {}).get("sqlstate") == _LOCK_NOT_AVAILABLE:
            raise RewindFailed(
                f"{mode} could not take back the writes it had to: another session is writing those rows",
                hint="replay again once that write is done, or with --db recorded (it needs no database)",
            ) from exc
        raise RewindFailed(
            f"{mode} could not take back the writes it had to: {exc.message}",
            hint="replay with --db recorded (it needs no database state); docs/replay.md says what as-of"
            " cannot rewind",
        ) from exc
    transaction.apply(with_next=True)
    transaction.begun = True
    return State(mode, rewound["undone"], rewound["drift"], rewound["not_rewound"], rewound["triggers_off"])


def end_run(transaction: db.RequestTransaction) -> None:
    """Roll the replay's run back on its request connection, and, when the run sent raw SQL (the only way it
    could leave a session-level lock, a setting or a statement under Flux's names there: raw SQL makes no
    functions), put the session back as Flux left it (`db.reset_session`): the connection may be the
    gateway's, for the requests that come next. Nothing to do on a connection the run lost (it ended its
    session): its transaction ended with it."""
    try:
        transaction.rollback()
    except FluxError:  # FX801, or the server's own word for why it ended the session
        if not transaction.conn.closed:
            raise
    db.reset_session(transaction.conn)  # never raises: a connection it cannot reset is closed


def captured_mutations(runner: Any) -> list[Row]:
    """The mutations the replay's run made on the request connection `runner`, read and its transaction rolled
    back in one round trip (end_run finds nothing more to roll back then), or none if a database error ended
    the transaction (the original's would have been rolled back too). Raises FX303 when they hold JSON nested
    deeper than Python reads, and the error that ended the session when the run ended it: the engine takes
    either as the run's error."""
    if db.transaction_failed(runner):
        return []
    db.take_unsent(runner)  # settings no statement carried (a run that made no database call)
    try:
        with db.translate_errors():
            # after raw SQL, Flux's statement names may be the run's own: sent unnamed then
            trusted = not db.session_untrusted(runner)
            read_back = [*_NO_ROLE, _CAPTURED, pipeline.ROLLBACK]
            result = pipeline.run(runner, read_back, answer=-2, prepare=trusted)
    except RecursionError as exc:  # past orjson's 1024 levels, Python's decoder runs out of stack
        raise InvalidFunctionResponse(
            "the replayed run wrote JSON nested deeper than a replay can read back, so its writes are not"
            " compared",
            hint="write JSON that nests less deeply",
        ) from exc
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def _named_tables(recording: Recording) -> set[str]:
    """The tables the request's queries name (and embed), as the queries spell them."""
    names: set[str] = set()
    for call in recording.calls:
        if call.op == "db.query":
            parsed = parse_request(call.args, Problems()) if isinstance(call.args, dict) else None
            if parsed is not None:
                names.add(parsed.table)
                names |= _embedded(getattr(parsed, "columns", ()))
        elif call.op == "db.sql" and isinstance(call.args, dict):
            try:
                names |= set(inspect_raw_sql(str(call.args.get("sql", ""))).tables)
            except FluxError:
                continue
    return names


def _embedded(columns: Any) -> set[str]:
    found: set[str] = set()
    for column in columns or ():
        if isinstance(column, Embed):
            found |= {column.name} | _embedded(column.columns)
    return found
