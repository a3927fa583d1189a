"""The host API every executor shares: the operations a function may call (`db.query`, `db.sql`, `queue.push`,
`fetch`, `secrets.get`, `log`, `now`, `random`), each run in the request's transaction and recorded as a span
with its full input and output.

A failed call answers the function with `{code, message}` (`Host.answer`); a database error also aborts the
request's transaction, so later database calls fail with FX309 and the request ends failed, its writes undone.
"""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flux import db
from flux.data import Catalog, Limits
from flux.data.engine import run_query, run_statement
from flux.data.raw import inspect_raw_sql
from flux.errors import (
    FluxError,
    FunctionTimedOut,
    InvalidHostCall,
    SecretNotFound,
    TransactionAborted,
    UnknownHostCall,
)
from flux.runtime.fetch import REDACTED, SENSITIVE_HEADERS, FetchPolicy, fetch
from flux.trace.recorder import Recorder, error_record

Json = Any

MAX_RANDOM_BYTES = 65_536
LOG_LEVELS = ("debug", "info", "warn", "error")
_QUERY_KINDS = ("select", "insert", "update", "delete")


@dataclass
class Host:
    """One request's host: its transaction (begun by the first database call), catalog, role and record."""

    transaction: db.RequestTransaction
    catalog: Catalog
    role: str
    recorder: Recorder
    secrets: Mapping[str, str] = field(default_factory=dict)
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    limits: Limits = field(default_factory=Limits)
    clock_ns: Callable[[], int] = time.time_ns
    traceparent: str | None = None  # sent on each fetch, so the callee continues the request's trace
    wrote: bool = False  # whether the request changed data (its record then commits synchronously)
    aborted: FluxError | None = (
        None  # what ended the run: a database error (its transaction is lost), or time
    )
    marked_span: int | None = None  # the span flux.span_seq names in the transaction (see database_work)
    run_deadline: float | None = None  # when the run's time is up (time.monotonic), set by its executor

    def answer(self, op: Any, args: Any) -> dict[str, Json]:
        """`call` as the function gets it: `{"ok": true, "value": ...}` or `{"ok": false, "error": ...}`."""
        try:
            return {"ok": True, "value": self.call(op, args)}
        except FluxError as exc:
            problems = getattr(exc, "problems", None)  # a refused query lists every problem
            error = {"code": exc.code, "message": exc.message} | ({"problems": problems} if problems else {})
            return {"ok": False, "error": error}

    def call(self, op: Any, args: Any) -> Json:
        """Run one host operation as a span; a FluxError is recorded on the span and raised."""
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            error = UnknownHostCall(f"no host operation {op!r}", hint=f"use one of {', '.join(_OPS)}")
            self.recorder.event(
                "runtime", f"call:{str(op)[:64]}", input=args, ok=False, error=error_record(error)
            )
            raise error
        module, name = _span_of(op, args)
        span = self.recorder.start(module, name, input=recorded_input(op, args))
        try:
            value = self.perform(op, args)
        except FluxError as exc:
            self.recorder.finish(span, error=exc)
            raise
        except Exception as exc:  # a bug in Flux, still recorded on the span and returned as FX900
            self.recorder.finish(span, error=exc)
            raise db.as_flux_error(exc) from exc
        self.recorder.finish(span, output=_output_of(op, args, value))
        return value

    def run_started(self) -> None:
        """Called by an executor whose runs go on in a process of their own (`Executor.runs_apart`) once it
        has handed the run over, before it serves the run's calls: the host may do work of its own meanwhile
        (a replay sets its database up). Nothing here."""

    def perform(self, op: str, args: Json) -> Json:
        """Run the known operation `op` and answer its value (a replay's host answers from the recording)."""
        return _OPS[op](self, args)

    # -- operations -----------------------------------------------------------------------------------------

    def db_query(self, args: Json) -> Json:
        if not isinstance(args, dict):
            raise InvalidHostCall("db.query takes one JSON query object")
        writes = "select" not in args
        with self.database_work(writes=writes):
            result = run_query(self.conn, args, self.catalog, self.role, self.limits)  # type: ignore[arg-type]
        self.wrote |= writes
        return result

    def db_sql(self, args: Json) -> Json:
        if not isinstance(args, dict) or not isinstance(args.get("sql"), str):
            raise InvalidHostCall("db.sql takes {sql: string, params?: [values]}")
        params = args.get("params", [])
        if not isinstance(params, list):
            raise InvalidHostCall("db.sql params are a list, bound to $1, $2, ...")
        statement = inspect_raw_sql(args["sql"])
        writes = statement.kind != "read"
        # What it runs may reach past the request's transaction (a function of the project's that runs text):
        # Flux trusts the session no more until the request ends, and then resets it.
        db.distrust_session(self.conn)
        with self.database_work(writes=writes):
            result = run_statement(self.conn, statement, params, self.role)  # type: ignore[arg-type]
        self.wrote |= writes
        return result

    def queue_push(self, args: Json) -> Json:
        with self.database_work(writes=True):
            _check_push(args)
            row = db.execute_raw(
                self.conn,
                "SELECT flux.enqueue($1, $2::jsonb,"
                " coalesce($3::timestamptz, now() + make_interval(secs => coalesce($4::bigint, 0) / 1000.0)),"
                " coalesce($5::int, 0), coalesce($6::text, 'default'), $7, coalesce($8::int, 5))",
                [args["function"], db.JsonParam(args.get("payload")),
                 *(args.get(key) for key in ("run_at", "delay_ms", "priority", "queue", "idempotency_key",
                                             "max_attempts"))],
            )  # fmt: skip
        assert row is not None
        self.wrote = True
        job = row[0]
        return {k: job[k] for k in ("id", "queue", "function", "status", "run_at", "idempotency_key")}

    def fetch(self, args: Json) -> Json:
        if self.traceparent and isinstance(args, dict):
            given = args.get("headers")
            headers: dict[str, Any] = given if isinstance(given, dict) else {}
            if not any(str(name).lower() == "traceparent" for name in headers):
                args = {**args, "headers": {**headers, "traceparent": self.traceparent}}
        try:
            return fetch(args, self.fetch_policy, run_deadline=self.run_deadline)
        except FunctionTimedOut as exc:  # the run's time ran out during the fetch: the run ends with it
            self.abort_run(exc)
            raise

    def secrets_get(self, args: Json) -> Json:
        name = args.get("name") if isinstance(args, dict) else None
        if not isinstance(name, str):
            raise InvalidHostCall("secrets.get takes {name: string}")
        value = self.secrets.get(name)
        if value is None:
            raise SecretNotFound(f"no secret named {name!r}", hint=f"set it: flux secrets set {name}")
        self.recorder.redact(name, value)
        return value

    def log(self, args: Json) -> Json:
        if not isinstance(args, dict) or not isinstance(args.get("message"), str):
            raise InvalidHostCall("log takes {message: string, level?: debug|info|warn|error, fields?}")
        if args.get("level", "info") not in LOG_LEVELS:
            raise InvalidHostCall(f"log level is one of {', '.join(LOG_LEVELS)}")
        return None

    def now(self, args: Json) -> Json:
        """Milliseconds since the Unix epoch (with a fraction down to the microsecond)."""
        return round(self.clock_ns() / 1_000_000, 3)

    def random(self, args: Json) -> Json:
        """`{bytes: n}` random bytes, base64; recorded, so a replay gets the same ones."""
        count = args.get("bytes", 32) if isinstance(args, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_RANDOM_BYTES:
            raise InvalidHostCall(f"random takes {{bytes: n}} with n from 1 to {MAX_RANDOM_BYTES}")
        return base64.b64encode(os.urandom(count)).decode()

    def abort_run(self, error: FluxError) -> None:
        """End the run with `error` however the function handles it, and mark the current call's span so
        (its replay then ends the run there too, with the recorded error)."""
        self.aborted = error
        seq = self.recorder.current
        if seq is not None:
            span = self.recorder.spans[seq]
            span.attributes = {**(span.attributes or {}), "aborted": True}

    # -- the request's transaction --------------------------------------------------------------------------

    @property
    def conn(self) -> Any:
        return self.transaction.conn

    def database_work(self, *, writes: bool = False) -> _DatabaseWork:
        """`with host.database_work():` work in the request's transaction, begun here if it is the first:
        refused once a database error aborted it (Postgres would refuse every later statement), and such an
        error is remembered. Work that `writes` names its span in `flux.span_seq`, so the mutations it makes
        are linked to the span."""
        if isinstance(self.aborted, FunctionTimedOut):  # the run's time ran out during a fetch
            raise self.aborted
        if self.aborted is not None:
            raise TransactionAborted(
                f"an earlier database call failed ({self.aborted.code}), so this request's transaction is"
                " rolled back",
                hint="let the error end the request; its writes are undone",
            )
        self.transaction.begin()  # queued to go with the work's first statement
        span_seq = self.recorder.current if writes else None
        if span_seq != self.marked_span:  # a read after a write clears it
            self.transaction.mark("flux.span_seq", "" if span_seq is None else str(span_seq))
            self.marked_span = span_seq
        return _DatabaseWork(self)


class _DatabaseWork:
    """The `with` block of `Host.database_work`: a database error that ended the transaction is remembered.
    (A class rather than a generator: every database call of a request goes through it.)"""

    __slots__ = ("host",)

    def __init__(self, host: Host) -> None:
        self.host = host

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, FluxError) and db.transaction_failed(self.host.conn):
            self.host.aborted = exc
            recorder, seq = self.host.recorder, self.host.recorder.current
            if seq is not None:  # the call's span says so: its replay ends the run as this one ends
                span = recorder.spans[seq]
                span.attributes = {**(span.attributes or {}), "aborted": True}


def _check_push(args: Json) -> None:
    if not isinstance(args, dict) or not isinstance(args.get("function"), str):
        raise InvalidHostCall(
            "queue.push takes {function, payload?, delay_ms?, run_at?, priority?, queue?, "
            "idempotency_key?, max_attempts?}"
        )
    delay_ms = args.get("delay_ms")
    if delay_ms is not None and (not isinstance(delay_ms, int) or isinstance(delay_ms, bool) or delay_ms < 0):
        raise InvalidHostCall("queue.push delay_ms is a whole number of milliseconds, 0 or more")
    for key, kind in (("run_at", str), ("priority", int), ("queue", str), ("idempotency_key", str),
                      ("max_attempts", int)):  # fmt: skip
        if args.get(key) is not None and not isinstance(args[key], kind):
            raise InvalidHostCall(f"queue.push {key} is a {kind.__name__}")


def not_json(exc: ValueError) -> dict[str, Json]:
    """The answer to a host call whose text is not JSON (from a Wasm function)."""
    return {"ok": False, "error": {"code": InvalidHostCall.code, "message": f"the call is not JSON: {exc}"}}


_OPS: dict[str, Callable[[Host, Json], Json]] = {
    "db.query": Host.db_query,
    "db.sql": Host.db_sql,
    "queue.push": Host.queue_push,
    "fetch": Host.fetch,
    "secrets.get": Host.secrets_get,
    "log": Host.log,
    "now": Host.now,
    "random": Host.random,
}


def _span_of(op: str, args: Json) -> tuple[str, str]:
    """The span's module and name: `db:select(orders)`, `sql:update(orders)`, `fetch:GET example.com`, ..."""
    fields = args if isinstance(args, dict) else {}
    if op == "db.query":
        for kind in _QUERY_KINDS:
            if kind in fields:
                return "data", f"db:{kind}({str(fields[kind])[:64]})"
        return "data", "db:query(?)"
    if op == "db.sql":
        try:
            return "data", inspect_raw_sql(str(fields.get("sql", ""))).span_name
        except FluxError:
            return "data", "sql"
    if op == "queue.push":
        return "queue", f"queue:push({str(fields.get('function', '?'))[:64]})"
    if op == "fetch":
        host = [part.rpartition("@")[2] for part in str(fields.get("url", "")).split("/")[2:3]]  # no userinfo
        return "fetch", f"fetch:{str(fields.get('method', 'GET')).upper()[:8]} {(host or ['?'])[0][:64]}"
    if op == "secrets.get":
        return "secrets", f"secrets:get({str(fields.get('name', '?'))[:64]})"
    if op == "log":
        return "log", f"log:{str(fields.get('level', 'info'))[:8]}"
    return "clock", f"clock:{op}"


_OPS_OF_MODULES = {"queue": "queue.push", "fetch": "fetch", "secrets": "secrets.get", "log": "log"}


def op_of_span(module: str, name: str) -> str | None:
    """The operation whose call `_span_of` named so (a replay reads a record's calls back by it), or None for
    a span that is no host call (the gateway's, the run's, a built-in explain's)."""
    if module == "data":
        if name == "db:explain":
            return None
        return "db.query" if name.startswith("db:") else "db.sql"
    if module == "clock":
        return name.removeprefix("clock:")
    return _OPS_OF_MODULES.get(module)


def recorded_input(op: str, args: Json) -> Json:
    """What the span keeps of a call's arguments: everything, but the values of a fetch's credential headers
    (`authorization`, `cookie`, ...), which are `[redacted]` whatever they hold (a replay compares a fetch's
    arguments in this form)."""
    if op != "fetch" or not isinstance(args, dict):
        return args
    kept = args
    if isinstance(args.get("headers"), dict):
        headers = {
            name: REDACTED if str(name).lower() in SENSITIVE_HEADERS else value
            for name, value in args["headers"].items()
        }
        kept = {**kept, "headers": headers}
    url = args.get("url")
    if isinstance(url, str) and "@" in url:  # a password in the URL (`https://user:password@host/`)
        try:
            parts = urllib.parse.urlsplit(url)
            password = parts.password
        except ValueError:
            password = None
        if password:
            user, _, host = parts.netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:{REDACTED}@{host}"
            kept = {**kept, "url": urllib.parse.urlunsplit(parts._replace(netloc=netloc))}
    return kept


def _output_of(op: str, args: Json, value: Json) -> Json:
    """What the span keeps of a call's result: everything, but a secret's value."""
    if op == "secrets.get":
        return f"[secret:{args['name']}]"
    return value
