"""Postgres access: connections and the pool, the per-request GUCs, and the one place psycopg errors become
FluxErrors (an `FX…` SQLSTATE raised by PL/pgSQL maps to the class with that code)."""

from __future__ import annotations

import functools
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from flux import jsontext, pipeline
from flux.errors import (
    ConstraintViolation,
    DatabaseUnreachable,
    DatabaseUnsupported,
    FluxError,
    InternalError,
    InvalidQueryShape,
    InvalidValue,
    PermissionDenied,
    QueryTimedOut,
    error_for_code,
)
from flux.pipeline import Statement

MINIMUM_SERVER_VERSION = 140000
CONNECT_TIMEOUT_S = 5


def describe_dsn(dsn: str) -> str:
    """The DSN as it is safe to print: host, port and database, never the password."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DATABASE_URL>"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def connect(dsn: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open one connection; an unreachable server or an old one is a FluxError, not a traceback."""
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUnreachable(
            "DATABASE_URL is not a valid connection string",
            hint="use the form postgresql://user:password@host:5432/dbname",
        ) from exc
    except psycopg.OperationalError as exc:
        reason = _redact(_first_line(str(exc)), dsn)
        raise DatabaseUnreachable(
            f"cannot connect to Postgres at {describe_dsn(dsn)}: {reason}",
            hint="check DATABASE_URL and that the server runs, or unset it to use the embedded Postgres",
        ) from exc
    if conn.info.server_version < MINIMUM_SERVER_VERSION:
        version = conn.info.server_version
        conn.close()
        raise DatabaseUnsupported(
            f"Postgres {version // 10000} at {describe_dsn(dsn)} is too old",
            hint="Flux needs PostgreSQL 14 or newer",
        )
    return conn


def ensure_database(maintenance_dsn: str, name: str) -> None:
    """Create database `name` on the server behind `maintenance_dsn` unless it exists."""
    with connect(maintenance_dsn, autocommit=True) as conn, translate_errors():
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                pass  # another process created it between the check and here


def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, name: str = "flux", autocommit: bool = False
) -> ConnectionPool:
    """A connection pool for one Flux process; it opens lazily, so a bad DSN fails at the first checkout.
    Request pools are `autocommit`: the gateway's own statements commit at once, and each request opens
    its transaction itself."""
    return ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        check=_check_session,  # a connection given back with raw SQL's leftovers (its request ended abruptly)
        # flux.pipeline prepares the statements; psycopg's own would be deallocated with ours on rollbacks
        kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": autocommit, "prepare_threshold": None},
    )


_IDLE = psycopg.pq.TransactionStatus.IDLE


class _Held(threading.local):
    conn: psycopg.Connection[Any] | None = None
    until = 0.0  # when the connection goes back to the pool (time.monotonic)


class HeldConnections:
    """A pool's connections for requests: each thread keeps the one it used, for its next request, instead of
    taking one from the pool and giving it back each time (about 15 µs a request). A connection goes back to
    the pool, which rolls back, resets or replaces it, when a request leaves it broken, inside a transaction
    or with raw SQL's leftovers in its session (a request ends with `reset_session`, unless it ended
    abruptly), when it ends by an exception, and after `KEEP_S`, so that the pool's lifetime limit still
    applies."""

    KEEP_S = 60.0

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._mine = _Held()
        self._held: set[psycopg.Connection[Any]] = set()
        self._lock = threading.Lock()

    def connection(self) -> HeldConnections:
        """`with held.connection() as conn:` this thread's connection for one request."""
        return self

    def __enter__(self) -> psycopg.Connection[Any]:
        mine = self._mine
        conn = mine.conn
        if conn is None or time.monotonic() > mine.until:
            if conn is not None:
                self._give_back(conn)
            conn = mine.conn = self.pool.getconn()
            mine.until = time.monotonic() + self.KEEP_S
            with self._lock:
                self._held.add(conn)
        return conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        conn = self._mine.conn
        if conn is None:
            return  # already given back (by a nested use on this thread)
        if (
            exc is not None
            or conn.closed
            or conn.pgconn.transaction_status != _IDLE
            or session_untrusted(conn)
        ):
            self._give_back(conn)  # the pool rolls it back, and resets its session before handing it out

    def close(self) -> None:
        """Give every held connection back to the pool (at shutdown: no request runs any more)."""
        with self._lock:
            held, self._held = self._held, set()
        for conn in held:
            self.pool.putconn(conn)

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        self._mine.conn = None
        with self._lock:
            if conn not in self._held:
                return  # `close` gave it back already
            self._held.discard(conn)
        self.pool.putconn(conn)


class _TranslateErrors:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, psycopg.Error):
            raise from_postgres(exc) from exc


_TRANSLATE_ERRORS = _TranslateErrors()


def translate_errors() -> _TranslateErrors:
    """Turn any psycopg error raised inside into the matching FluxError, keeping it as `__cause__` (a context
    manager; a class, not a generator: it wraps every statement of the request path)."""
    return _TRANSLATE_ERRORS


def from_postgres(exc: psycopg.Error) -> FluxError:
    """Map a psycopg error to a FluxError: FX SQLSTATEs by code, a lost server to FX801, the rest to FX900."""
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return DatabaseUnreachable(
            f"lost the connection to Postgres: {_first_line(str(exc))}",
            hint="check that the server is running and reachable",
        )
    diag = exc.diag
    message = diag.message_primary or _first_line(str(exc))
    if isinstance(exc, psycopg.DataError) and exc.sqlstate is None:  # refused before it reached the server
        return InvalidValue(message, hint="send text without NUL characters, in values the column takes")
    state = exc.sqlstate or ""
    if state.startswith("FX"):
        return error_for_code(state, message, details=diag.message_detail, hint=diag.message_hint)
    if state == "42501":
        return PermissionDenied(message, hint="grant the role access, or check the row-level security policy")
    if state == "57014":
        return QueryTimedOut(message, hint="narrow the query or add an index")
    if state.startswith("23"):
        # Postgres's DETAIL ("Failing row contains (...)") can show columns the role may not read: left out.
        details = {"constraint": diag.constraint_name, "table": diag.table_name, "column": diag.column_name}
        return ConstraintViolation(message, details=details, hint="change the values, or use on_conflict")
    if state.startswith("22") or state in (
        "42804",
        "42846",
        "42883",
    ):  # bad value, type mismatch, no operator
        return InvalidValue(message, hint="send a value of the column's type")
    if state == "42601" and "tsquery" in message:  # the text of an `fts` search is not to_tsquery syntax
        return InvalidValue(message, hint="write to_tsquery syntax ('fat & (rat | cat)'), or use wfts")
    if state == "42P10":
        return InvalidQueryShape(
            message, hint="name the columns of a primary key or unique index in on_conflict"
        )
    return error_for_code("FX900", message, details={"sqlstate": exc.sqlstate}, hint=diag.message_hint)


def as_flux_error(exc: BaseException) -> FluxError:
    """Any exception as a FluxError: itself, a mapped driver or pool error, else an FX900."""
    if isinstance(exc, FluxError):
        return exc
    if isinstance(exc, psycopg.Error):
        return from_postgres(exc)
    if isinstance(exc, PoolTimeout):
        return DatabaseUnreachable(
            f"no database connection within the timeout: {exc}",
            hint="check that Postgres is up and reachable",
        )
    return InternalError(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class JsonParam:
    """A parameter to bind as jsonb (a JSON object, array or scalar meant for a json/jsonb column)."""

    value: Any


@contextmanager
def request_transaction(
    conn: psycopg.Connection[Any],
    *,
    role: str,
    request_id: str,
    claims: dict[str, Any] | None = None,
    tenant_id: str | None = None,
    statement_timeout_ms: int | None = None,
    force_rollback: bool = False,
) -> Iterator[psycopg.Connection[Any]]:
    """One request's transaction, begun at once (for explain, benches and tests; a request begins its own
    lazily with `RequestTransaction`): the Flux role (anon, user, service), claims, request id and a timeout.
    `force_rollback` undoes everything at the end."""
    settings = RequestTransaction(
        conn, role=role, request_id=request_id, claims=claims, tenant_id=tenant_id,
        statement_timeout_ms=statement_timeout_ms,
    )  # fmt: skip
    with translate_errors(), conn.transaction(force_rollback=force_rollback):
        settings.apply()
        yield conn


class _Unsent:
    """The statements waiting on a connection to go with the next one run through `execute_*` (kept on the
    connection itself), and whether code Flux does not trust ran on its session since its last reset."""

    __slots__ = ("each", "next", "untrusted")

    def __init__(self) -> None:
        self.next: list[Statement] = []  # before the next statement only
        self.each: Statement | None = None  # before every statement
        self.untrusted = False  # raw SQL ran: see `distrust_session`


def _unsent(conn: psycopg.Connection[Any]) -> _Unsent:
    unsent: _Unsent | None = getattr(conn, "_flux_unsent", None)
    if unsent is None:
        unsent = conn._flux_unsent = _Unsent()  # type: ignore[attr-defined]
    return unsent


def send_with_next(conn: psycopg.Connection[Any], statement: Statement) -> None:
    """Run `statement` just before the next statement run on `conn` through this module's `execute_*`
    functions, in the same round trip: a request's BEGIN and settings ride on its first query."""
    _unsent(conn).next.append(statement)


def send_with_each(conn: psycopg.Connection[Any], statement: Statement) -> None:
    """Run `statement` before every statement run on `conn` through this module's `execute_*` functions, in
    its round trip, until `take_unsent`: the settings of a request that opens no transaction."""
    _unsent(conn).each = statement


def take_unsent(conn: psycopg.Connection[Any]) -> list[Statement]:
    """The statements `send_with_next` queued on `conn` that no statement has carried yet (now forgotten);
    `send_with_each`'s statement is forgotten too."""
    unsent = _unsent(conn)
    taken, unsent.next, unsent.each = unsent.next, [], None
    return taken


# What `reset_session` runs, in one round trip: what DISCARD ALL does (settings, role, temporary objects,
# session locks, LISTENs, cursors, sequence state) but two parts. Cached plans stay: one that named what a
# request dropped or moved (a temporary object, a search path) is planned again by Postgres anyway, and
# dropping them all has the next request plan anew every PL/pgSQL function it calls (the mutation trigger's,
# the queue's): milliseconds (bench/session_reset.py). Flux's prepared statements stay when they are intact:
# none prepared by SQL (`from_sql`: a PREPARE under one of Flux's names, through a function's EXECUTE) and
# none missing (a DEALLOCATE). Else they all go (a second round trip, `DEALLOCATE ALL`). Dropping them every
# time would have the next requests plan each of Flux's statements anew, until its generic plan.
_RESET = [
    Statement(b"CLOSE ALL"),
    Statement(b"SET SESSION AUTHORIZATION DEFAULT"),
    Statement(b"RESET ALL"),
    Statement(b"UNLISTEN *"),
    Statement(b"SELECT pg_catalog.pg_advisory_unlock_all()"),
    Statement(b"DISCARD TEMP"),
    Statement(b"DISCARD SEQUENCES"),
]
_PREPARED_INTACT = (
    b"SELECT pg_catalog.count(*) FILTER (WHERE p.from_sql OR NOT p.name OPERATOR(pg_catalog.=) ANY($1))"
    b" OPERATOR(pg_catalog.=) 0 AND pg_catalog.count(*) OPERATOR(pg_catalog.=) $2"
    b" FROM pg_catalog.pg_prepared_statements AS p"
)
_DEALLOCATE_ALL = [Statement(b"DEALLOCATE ALL")]


def distrust_session(conn: psycopg.Connection[Any]) -> None:
    """Raw SQL runs on `conn`'s session: until `reset_session`, Flux's statements there go unnamed (the SQL
    may have put its own under the names of Flux's prepared ones) and the request ends with the reset."""
    _unsent(conn).untrusted = True


def session_untrusted(conn: psycopg.Connection[Any]) -> bool:
    """Whether raw SQL ran on `conn`'s session since it was last reset."""
    unsent: _Unsent | None = getattr(conn, "_flux_unsent", None)
    return unsent is not None and unsent.untrusted


def reset_session(conn: psycopg.Connection[Any]) -> None:
    """Put back in a known state the session of a connection that raw SQL ran on, before the next request
    uses it (one round trip, only then): whatever the SQL left there (a session-wide setting, a temporary
    table or type, a prepared statement, a session lock, a LISTEN, a cursor WITH HOLD) is gone, and Flux's
    prepared statements are dropped too unless they are intact (`_RESET`). A connection that cannot be reset
    is closed (the pool replaces it). Never raises."""
    unsent: _Unsent | None = getattr(conn, "_flux_unsent", None)
    if unsent is None or not unsent.untrusted:
        return
    take_unsent(conn)
    try:
        if not conn.closed:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute(b"ROLLBACK", prepare=False)
            names = pipeline.prepared_names(conn)
            check = Statement(_PREPARED_INTACT, [names, len(names)])
            if not pipeline.run(conn, [*_RESET, check], prepare=False).rows[0][0]:
                pipeline.run(conn, _DEALLOCATE_ALL, prepare=False)
                pipeline.forget_prepared(conn)
    except Exception:  # its state is unknown: it must not serve another request
        conn.close()
        pipeline.forget_prepared(conn)
    finally:
        unsent.untrusted = False


def _check_session(conn: psycopg.Connection[Any]) -> None:
    """The pool's check as it hands a connection out (a getattr, unless raw SQL ran on it): reset it, or have
    the pool replace it."""
    reset_session(conn)
    if conn.closed:
        raise psycopg.OperationalError("the connection's session could not be reset")


def _execute(conn: psycopg.Connection[Any], query: str, params: list[Any]) -> pipeline.Result:
    """Run one statement, preceded by the statements queued for it, in one round trip."""
    unsent = _unsent(conn)
    waiting = unsent.next
    statements = [*waiting, Statement(query.encode(), _bind(params))]
    if waiting:
        unsent.next = []
    if unsent.each is not None:
        statements.insert(0, unsent.each)
    try:
        return pipeline.run(conn, statements, prepare=not unsent.untrusted)
    except psycopg.Error as exc:
        if waiting and exc.sqlstate is None and not conn.closed:
            # Refused before anything was sent (a value Postgres cannot hold): the BEGIN and settings queued
            # still wait for the next statement, or that one would run outside the request's transaction.
            unsent.next = waiting + unsent.next
        raise


def execute_raw(conn: psycopg.Connection[Any], query: str, params: list[Any]) -> tuple[Any, ...] | None:
    """Run SQL with `$n` placeholders (a compiled plan), binding JSON values as jsonb; one row back."""
    with translate_errors():
        rows = _execute(conn, query, params).rows
        return rows[0] if rows else None


def execute_command(conn: psycopg.Connection[Any], query: str, params: list[Any]) -> int:
    """Run SQL with `$n` placeholders that returns no rows; the number of rows it affected."""
    with translate_errors():
        return _execute(conn, query, params).rowcount


def _bind(params: list[Any]) -> list[Any]:
    return [Jsonb(v.value) if isinstance(v, JsonParam) else v for v in params]


def execute_rows(conn: psycopg.Connection[Any], query: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Run SQL with `$n` placeholders (a compiled plan), binding JSON values as jsonb; every row back."""
    with translate_errors():
        return _execute(conn, query, params).rows


def execute_statement(
    conn: psycopg.Connection[Any], query: str, params: list[Any]
) -> tuple[list[dict[str, Any]], int]:
    """Run one user-written statement with `$n` parameters: its rows (as dicts) and the rows it affected."""
    with translate_errors():
        result = _execute(conn, query, params)
    rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    return rows, max(result.rowcount, 0)


def fetch_dicts(
    conn: psycopg.Connection[Any], query: str, params: Any = (), *, exact_numbers: bool = False
) -> list[dict[str, Any]]:
    """Run `query` (with `%s` placeholders) and answer its rows as dicts, keyed by the column names. With
    `exact_numbers`, json and jsonb numbers keep the digits they were recorded with (`Decimal`, not float)."""
    with translate_errors(), conn.cursor(row_factory=dict_row) as cursor:
        if exact_numbers:
            jsontext.adapt(cursor)
        return cursor.execute(query, params).fetchall()


def transaction_failed(conn: psycopg.Connection[Any]) -> bool:
    """Whether a statement failed in the connection's transaction (Postgres then refuses to go on with it)."""
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR


REQUEST_ROLE = "flux_authenticator"


def request_dsn(dsn: str) -> str:
    """The DSN request connections use: the same server and database, logged in as flux_authenticator, which
    can only become a request role and write the request's record (sql/migrations/0005_authenticator.sql).
    The server must let it in without a password (trust or peer on the local socket, as the embedded
    Postgres does), or the DSN must carry its password."""
    return conninfo.make_conninfo(dsn, user=REQUEST_ROLE)


def request_connection(owner: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """A request connection (autocommit, as flux_authenticator) to the database `owner` is connected to, as
    `request_dsn` makes it from the owner's DSN."""
    password = owner.info.password
    dsn = conninfo.make_conninfo(owner.info.dsn, **({"password": password} if password else {}))
    return connect(request_dsn(dsn), autocommit=True)


def set_request_context(
    conn: psycopg.Connection[Any],
    *,
    request_id: str,
    claims_json: str,
    tenant_id: str | None = None,
    role: str | None = None,
    statement_timeout_ms: int | None = None,
) -> None:
    """Set, in one round trip, the transaction-local settings that triggers and RLS helpers read (request id,
    claims, tenant) and, when given, the Flux role (set_config('role', ..., true) is SET LOCAL ROLE) and the
    statement timeout."""
    timeout = "" if statement_timeout_ms is None else str(statement_timeout_ms)
    database_role = "" if role is None else f"flux_{role}"
    conn.execute(
        "SELECT set_config('flux.request_id', %s, true), set_config('flux.claims', %s, true),"
        " set_config('flux.tenant_id', %s, true),"
        " CASE WHEN %s <> '' THEN set_config('role', %s, true) END,"
        " CASE WHEN %s <> '' THEN set_config('statement_timeout', %s, true) END",
        (request_id, claims_json, tenant_id or "", database_role, database_role, timeout, timeout),
    )


class RequestTransaction:
    """One request's transaction on an autocommit connection, in as few round trips as it can be.

    It begins with the request's first database call (`begin`): BEGIN and the request's settings go in one
    pipeline with that call's statement, one round trip for the three. It ends with the request's record
    (`commit`): back to the connecting role, the record and COMMIT go in one pipeline. A request that never
    touched the database costs one round trip, its record, committed on its own.

    A request known to run `reads_only` (a `POST /db/query` select) takes no BEGIN nor COMMIT: each of its
    statements goes with the settings in one pipeline, which is one implicit transaction."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        role: str,
        request_id: str,
        claims: dict[str, Any] | None = None,
        tenant_id: str | None = None,
        statement_timeout_ms: int | None = None,
        reads_only: bool = False,
    ) -> None:
        if role not in ("anon", "user", "service"):
            raise ValueError(f"not a Flux role: {role!r}")
        self.conn = conn
        self.begun = False
        self.reads_only = reads_only
        self._settings = {
            "flux.request_id": request_id,
            "flux.claims": jsontext.dumps_text(claims or {}),
            "flux.tenant_id": tenant_id or "",
            "role": f"flux_{role}",
        }
        if statement_timeout_ms is not None:
            self._settings["statement_timeout"] = str(statement_timeout_ms)

    def begin(self) -> None:
        """Open the transaction as the request's role, with its settings (once; later calls do nothing). Both
        go with the request's first statement, in its round trip. For `reads_only`, the settings go with every
        statement until the request ends (`end`, `commit` or `rollback`), and there is no transaction to
        open."""
        if self.reads_only:
            send_with_each(self.conn, _settings_statement(self._settings))
        elif not self.begun:
            send_with_next(self.conn, pipeline.BEGIN)
            send_with_next(self.conn, _settings_statement(self._settings))
            self.begun = True

    def mark(self, name: str, value: str) -> None:
        """Set the transaction-local setting `name` for the statements that follow (with the next one)."""
        send_with_next(self.conn, _settings_statement({name: value}))

    def apply(self, *, with_next: bool = False) -> None:
        """Take on the request's role and settings in a transaction the caller opened: now, or `with_next`
        statement (in its round trip)."""
        if with_next:
            send_with_next(self.conn, _settings_statement(self._settings))
            return
        with translate_errors():
            pipeline.run(self.conn, [_settings_statement(self._settings)], prepare=_trusted(self.conn))

    def commit(self, record: Sequence[Statement], *, durable: bool) -> None:
        """Run `record`'s statements as the connecting role and commit them with the request's work, in one
        round trip. A request that changed no data does not wait for the commit's flush to disk."""
        if not self._open():
            write_alone(self.conn, record, durable=durable)
            return
        # The record is written as the connecting role, on pg_catalog's names first: the function may have
        # moved the search path in front of them (SET LOCAL search_path), and left types of its own in
        # pg_temp, which an empty search path finds first.
        settings = dict(_RECORD_SETTINGS)
        if not durable:
            settings["synchronous_commit"] = "off"
        statements = [_settings_statement(settings), *record, pipeline.COMMIT]
        with translate_errors():
            pipeline.run(self.conn, statements, prepare=_trusted(self.conn))
        self.begun = False

    def end(self) -> None:
        """Commit the request's work, if it began any, without a record (written elsewhere)."""
        if self._open():
            with translate_errors():
                pipeline.run(self.conn, [pipeline.COMMIT], prepare=_trusted(self.conn))
            self.begun = False

    def rollback(self) -> None:
        """Undo the request's work, if it began any."""
        take_unsent(self.conn)
        if self.conn.closed:  # lost, or closed by flux.pipeline: the transaction ended with the session
            self.begun = False
            return
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with translate_errors():
                self.conn.execute(b"ROLLBACK", prepare=False)
        self.begun = False

    def _open(self) -> bool:
        """Whether the transaction is open in Postgres (a BEGIN that no statement carried never reached it).
        Settings still waiting for a statement are dropped."""
        unsent = take_unsent(self.conn)
        if unsent[:1] == [pipeline.BEGIN]:
            self.begun = False
        return self.begun


def write_alone(
    conn: psycopg.Connection[Any], statements: Sequence[Statement], *, durable: bool = True
) -> None:
    """Run `statements` in one round trip and one transaction of their own, waiting for the flush to disk only
    when `durable`."""
    settings = dict(_RECORD_SETTINGS) if durable else {**_RECORD_SETTINGS, "synchronous_commit": "off"}
    settings.pop("role")  # no request's transaction is open: the connection is its login's
    prefix = [_settings_statement(settings)]  # a session's search path may hold functions a request made
    with translate_errors():
        pipeline.run(conn, [*prefix, *statements], prepare=_trusted(conn))


# The settings Flux's own statements run under after a request's: its login's role, and pg_catalog's names
# before any a request made (pg_temp, where a request may leave types, comes first when not named).
_RECORD_SETTINGS = {"role": "none", "search_path": "pg_catalog, pg_temp"}


def _trusted(conn: psycopg.Connection[Any]) -> bool:
    """Whether Flux may run its prepared statements on `conn` (no raw SQL ran there since its reset)."""
    return not session_untrusted(conn)


def _settings_statement(settings: dict[str, str]) -> Statement:
    """Transaction-local settings as one prepared statement (the names are Flux's own, the values bound)."""
    return Statement(_settings_sql(tuple(settings)), list(settings.values()))


@functools.lru_cache(maxsize=64)
def _settings_sql(names: tuple[str, ...]) -> bytes:
    # Qualified: a function may have moved the search path in front of pg_catalog (SET LOCAL search_path).
    calls = ", ".join(f"pg_catalog.set_config('{name}', ${i}, true)" for i, name in enumerate(names, 1))
    return f"SELECT {calls}".encode()


_URL_PASSWORD = re.compile(r"^[a-z]+://[^:/@]*:(?P<password>[^@]+)@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"\bpassword\s*=\s*(?P<password>'(?:[^'\\]|\\.)*'|\S+)")


def _redact(text: str, dsn: str) -> str:
    """`text` with the DSN's password (as written, or percent-decoded) replaced by ***."""
    match = _URL_PASSWORD.match(dsn) or _KEYWORD_PASSWORD.search(dsn)
    if match is None:
        return text
    secret = match["password"].strip("'")
    for form in {secret, urllib.parse.unquote(secret)}:
        if form:
            text = text.replace(form, "***")
    return text


def _first_line(text: str) -> str:
    """The reason alone: libpq nests it as 'connection failed: connection to server at … failed: reason'."""
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line.rsplit(" failed: ", 1)[-1]
