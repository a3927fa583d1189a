"""Statements sent straight through libpq, several to a round trip: how the request path talks to Postgres.

A list of statements goes out as one libpq pipeline closed by one Sync, so it costs one round trip, and runs
in one transaction: the one a BEGIN earlier on the connection opened, else an implicit one ending at the Sync.
Each statement is prepared once per connection (by its text and parameter types, named `flux_N`; the least
recently used are deallocated past `MAX_PREPARED`). Values are dumped and rows loaded by psycopg's own
adapters, with Flux's JSON on top (`jsontext.adapt`), so a value means the same as through a psycopg cursor.

Why not psycopg's cursors and pipeline: they cost about 40 to 70 µs of Python a statement, which was most of
what the gateway spent over a hand-written endpoint (docs/performance-log.md). A connection used here must be
in no psycopg pipeline, and is used by one thread at a time (its lock is held).
"""

from __future__ import annotations

import select
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer

from flux import jsontext
from flux.errors import UnsupportedStatement

MAX_PREPARED = 256  # prepared statements kept per connection
_TEXT = pq.Format.TEXT
_INVALID_STATEMENT_NAME = "26000"  # a prepared statement Postgres no longer has (DEALLOCATE ALL, DISCARD)
_RESULT_TYPE_CHANGED = "0A000"  # "cached plan must not change result type": its table's columns changed
Key = tuple[bytes, tuple[int, ...]]  # a prepared statement: its text and its parameters' types


@dataclass(frozen=True)
class Statement:
    """One SQL statement with `$n` placeholders and its values."""

    sql: bytes
    params: Sequence[Any] = ()


@dataclass(frozen=True)
class Result:
    """What the last statement of a round trip answered: its rows (tuples), column names and row count."""

    rows: list[tuple[Any, ...]]
    columns: list[str]
    rowcount: int


BEGIN = Statement(b"BEGIN")
COMMIT = Statement(b"COMMIT")
ROLLBACK = Statement(b"ROLLBACK")


def run(
    conn: psycopg.Connection[Any], statements: Sequence[Statement], *, answer: int = -1, prepare: bool = True
) -> Result:
    """Run `statements` in one round trip and answer the last one's result (or statement `answer`'s, counted
    from the end when negative); the first statement that fails raises its psycopg error (the ones after it
    do not run). A connection that is not in autocommit gets a BEGIN first when no transaction is open, as
    psycopg would send. Not `prepare`: each is sent unnamed, on a connection where code Flux does not trust
    may have put its own SQL under the names of Flux's."""
    with conn.lock:
        pgconn = conn.pgconn
        if pgconn.pipeline_status != pq.PipelineStatus.OFF:
            raise psycopg.InterfaceError("the connection is in a psycopg pipeline")
        if not conn.autocommit and pgconn.transaction_status == pq.TransactionStatus.IDLE:
            statements = [BEGIN, *statements]
        state = _state(conn)
        dumped = [state.dump(statement) for statement in statements]  # a bad value fails before any is sent
        sent = _exchange(conn, state, dumped, prepare=prepare)
        stale = state.evictions()
        if stale:  # past MAX_PREPARED: a round trip more, rarely
            deallocate = [_Dumped(b"DEALLOCATE " + name, (b"", ()), None, (), ()) for name in stale]
            _exchange(conn, state, deallocate, prepare=False)
        return state.load(sent.answers[answer], conn)


def prepared_names(conn: psycopg.Connection[Any]) -> list[str]:
    """The names of Flux's statements prepared on `conn`, as this module knows them."""
    return [name.decode() for name in _state(conn).prepared.values()]


def forget_prepared(conn: psycopg.Connection[Any]) -> None:
    """Flux's statements are no longer prepared on `conn` (DEALLOCATE ALL was sent): each is prepared anew at
    its next use."""
    _state(conn).prepared.clear()


@dataclass
class _Dumped:
    sql: bytes
    key: Key
    values: Sequence[Any] | None
    types: Sequence[int]
    formats: Sequence[pq.Format]


class _ConnectionState:
    """A connection's adapters (psycopg's, with Flux's JSON) and its prepared statements."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        # psycopg deallocates every prepared statement after a rollback when it has prepared some itself:
        # ours with them. Flux prepares its own, so psycopg prepares none on a connection used here.
        conn.prepare_threshold = None
        self.context = psycopg.RawCursor(conn)
        jsontext.adapt(self.context)
        # One transformer to dump values and one to load rows, for the connection's life (as a psycopg cursor
        # keeps its own): each caches the adapter it found for a type, which a new one would look up again.
        self.dumper = Transformer(self.context)
        self.loader = Transformer(self.context)
        self.prepared: OrderedDict[Key, bytes] = OrderedDict()
        self.named = 0

    def dump(self, statement: Statement) -> _Dumped:
        if not statement.params:
            return _Dumped(statement.sql, (statement.sql, ()), None, (), ())
        dumper = self.dumper
        values = dumper.dump_sequence(statement.params, [PyFormat.AUTO] * len(statement.params))
        types = tuple(dumper.types or ())
        return _Dumped(statement.sql, (statement.sql, types), values, types, tuple(dumper.formats or ()))

    def load(self, result: Any, conn: psycopg.Connection[Any]) -> Result:
        """A statement's result as rows of Python values."""
        if not result.nfields:
            rowcount = result.command_tuples
            return Result([], [], -1 if rowcount is None else rowcount)
        loader = self.loader
        loader.set_pgresult(result)
        rows: list[tuple[Any, ...]] = loader.load_rows(0, result.ntuples, tuple)
        encoding = conn.info.encoding
        columns = [(result.fname(i) or b"").decode(encoding) for i in range(result.nfields)]
        rowcount = result.command_tuples
        return Result(rows, columns, -1 if rowcount is None else rowcount)

    def name_for(self, key: Key) -> tuple[bytes, bool]:
        """The statement's prepared name, and whether it must be prepared first."""
        name = self.prepared.get(key)
        if name is not None:
            self.prepared.move_to_end(key)
            return name, False
        self.named += 1
        return f"flux_{self.named}".encode(), True

    def evictions(self) -> list[bytes]:
        """Names to deallocate, oldest first: past MAX_PREPARED, down to three quarters of it (so that a
        connection running ever new statements deallocates in batches)."""
        if len(self.prepared) <= MAX_PREPARED:
            return []
        excess = len(self.prepared) - MAX_PREPARED * 3 // 4
        return [self.prepared.popitem(last=False)[1] for _ in range(excess)]


def _state(conn: psycopg.Connection[Any]) -> _ConnectionState:
    """The connection's state, kept on the connection (a weak-keyed table would never let it go: the state's
    cursor refers to the connection)."""
    state: _ConnectionState | None = getattr(conn, "_flux_pipeline", None)
    if state is None:
        state = _ConnectionState(conn)
        conn._flux_pipeline = state  # type: ignore[attr-defined]
    return state


@dataclass
class _Sent:
    results: list[Any]  # every result, in order (a prepare's, then its statement's)
    keys: list[Key | None]  # the statement behind each result
    answers: list[Any]  # each statement's result
    prepared: list[tuple[Any, Key, bytes]]  # (prepare's result, key, name)
    copied: str | None = None  # a COPY to or from the client that was stopped ("TO STDOUT", "FROM STDIN")


def _exchange(
    conn: psycopg.Connection[Any], state: _ConnectionState, dumped: list[_Dumped], *, prepare: bool = True
) -> _Sent:
    """One round trip; the first error Postgres answered is raised. A connection lost or interrupted
    mid-pipeline is closed: its state is unknown."""
    try:
        sent = _round_trip(conn.pgconn, state, dumped, prepare=prepare)
    except BaseException:
        conn.close()
        raise
    _raise_first_error(sent, state, conn)
    return sent


def _round_trip(
    pgconn: Any, state: _ConnectionState, dumped: list[_Dumped], *, prepare: bool = True
) -> _Sent:
    """Send every statement (preparing those new to the connection, unless not `prepare`) and a Sync; read
    every result."""
    preparing: list[tuple[int, Key, bytes]] = []
    named_here: dict[Key, bytes] = {}  # prepared in this pipeline (a statement may come twice)
    answers: list[int] = []
    keys: list[Key | None] = []  # the statement behind each result
    pgconn.enter_pipeline_mode()
    for item in dumped:
        if not prepare:
            pgconn.send_query_params(item.sql, item.values, item.types or None, item.formats or None, _TEXT)
            answers.append(len(keys))
            keys.append(None)
            continue
        name = named_here.get(item.key)
        if name is None:
            name, new = state.name_for(item.key)
            if new:
                pgconn.send_prepare(name, item.sql, item.types or None)
                preparing.append((len(keys), item.key, name))
                keys.append(item.key)
                named_here[item.key] = name
        pgconn.send_query_prepared(name, item.values, item.formats or None, _TEXT)
        answers.append(len(keys))
        keys.append(item.key)
    pgconn.pipeline_sync()
    _flush(pgconn)
    copied: list[str] = []
    results = _results(pgconn, copied)
    pgconn.exit_pipeline_mode()
    return _Sent(
        results,
        keys,
        [results[index] for index in answers],
        [(results[index], key, name) for index, key, name in preparing],
        copied[0] if copied else None,
    )


def _flush(pgconn: Any) -> None:
    while pgconn.flush() == 1:
        if _wait(pgconn, write=True):
            pgconn.consume_input()  # the server answers while we send: read, or both sides block


_COPY_IN = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_BOTH)


def _results(pgconn: Any, copied: list[str]) -> list[Any]:
    """Every result up to the pipeline's Sync (one per message that asks for one). A COPY to or from the
    client would wait for a copy stream no caller here reads or writes: the rows of a COPY TO STDOUT are read
    and dropped (it is named in `copied`, and refused once the round trip is done); a COPY FROM STDIN is
    refused at once."""
    results: list[Any] = []
    while True:
        while pgconn.is_busy():
            _wait(pgconn)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            continue  # the end of one statement's results
        status = result.status
        if status == pq.ExecStatus.PIPELINE_SYNC:
            return results
        if status in _COPY_IN:
            # The server took the pipeline's Sync, and any statement after the COPY, as copy data: the session
            # cannot be brought back in step, so it ends here (the caller closes the connection).
            raise _copy_refused("FROM STDIN")
        if status == pq.ExecStatus.COPY_OUT:
            copied.append("TO STDOUT")
            _drain_copy(pgconn)
            continue
        results.append(result)


def _copy_refused(way: str) -> UnsupportedStatement:
    return UnsupportedStatement(
        f"COPY ... {way} cannot run on a request's connection: it carries no copy stream",
        details={"statement": f"COPY {way}"},
        hint="select the rows, or insert them (INSERT ... SELECT * FROM jsonb_to_recordset($1))",
    )


def _drain_copy(pgconn: Any) -> None:
    """Read a COPY TO STDOUT's rows to its end (its result follows)."""
    while True:
        size, _ = pgconn.get_copy_data(1)
        if size == 0:
            _wait(pgconn)
            pgconn.consume_input()
        elif size < 0:
            return


def _wait(pgconn: Any, *, write: bool = False) -> bool:
    """Wait until the socket can be read (or written, with `write`); whether there is something to read."""
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN | (select.POLLOUT if write else 0))
    events = 0
    for _, event in poller.poll():
        events |= event
    return bool(events & (select.POLLIN | select.POLLERR | select.POLLHUP))


def _raise_first_error(sent: _Sent, state: _ConnectionState, conn: psycopg.Connection[Any]) -> None:
    """Keep the statements prepared (a prepare is not undone by a failure after it), then raise the first
    error Postgres answered."""
    for result, prepared, name in sent.prepared:
        if result.status == pq.ExecStatus.COMMAND_OK:
            state.prepared[prepared] = name
    if sent.copied is not None:
        raise _copy_refused(sent.copied)
    for result, key in zip(sent.results, sent.keys, strict=True):
        if result.status == pq.ExecStatus.FATAL_ERROR:
            error = errors.error_from_result(result, encoding=conn.info.encoding)
            if error.sqlstate == _INVALID_STATEMENT_NAME:
                state.prepared.clear()  # prepared anew at their next use
            elif error.sqlstate == _RESULT_TYPE_CHANGED and key is not None:
                state.prepared.pop(key, None)  # prepared anew, under another name, at its next use
            raise error
