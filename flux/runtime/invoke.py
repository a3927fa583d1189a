"""One run of a function as one request: its transaction, its host, its record.

The function's database work, its queue pushes, the request row and every span commit together. When the run
fails, the user's writes roll back and the request, its spans and its error are written in a second, short
transaction: nothing is lost. A request that wrote nothing commits its record without waiting for the flush
to disk (`synchronous_commit = off`): recording a read must not make it a durable write. The transaction
begins with the function's first database call (`db.RequestTransaction`), so a function that never calls the
database costs one round trip.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from flux import db, randomness
from flux.data import Catalog, Limits
from flux.errors import DatabaseUnreachable, FluxError
from flux.pipeline import Statement
from flux.runtime.fetch import FetchPolicy
from flux.runtime.host import Host
from flux.runtime.limits import FunctionLimits
from flux.runtime.response import Response, error_response, to_response
from flux.trace.recorder import Recorder, error_record
from flux.trace.writer import RecordWriter

Json = Any
_DEFAULT_LIMITS = Limits()
RuntimeKind = Literal["wasm", "component", "typescript", "javascript", "builtin"]


@dataclass(frozen=True)
class Function:
    """A function's code: a Wasm core module or component, or one TypeScript or JavaScript module for Deno.
    `sha256` is the code's (compiled code is cached under it); `deployment_id` the deployment it came from."""

    name: str
    runtime: RuntimeKind
    code: bytes
    sha256: str
    limits: FunctionLimits = field(default_factory=FunctionLimits)
    deployment_id: int | None = None


class Executor:
    """What runs a function's code; `flux.runtime.Runtime` picks one per function."""

    def execute(self, function: Function, request: Json, host: Host) -> Json:
        raise NotImplementedError

    def prepare(self, function: Function) -> None:
        """Start getting `function` ready to run (compiling it, in the background), so that its first request
        does not wait for that; returns at once."""

    def runs_apart(self, function: Function) -> bool:
        """Whether `function` runs in a process of its own, so that the host is free while it starts: such an
        executor calls `Host.run_started` once the run is handed over."""
        return False


@dataclass(frozen=True)
class Caller:
    """Who the request runs as: the database role, the claims and the tenant."""

    role: str = "anon"
    claims: Mapping[str, Json] = field(default_factory=dict)
    tenant_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    request_id: str
    response: Response
    error: FluxError | None = None


def run_attributes(function: Function, caller: Caller) -> dict[str, Json]:
    """The runtime span's attributes: the runtime, and the role the run had (a replay runs as it again)."""
    return {"runtime": function.runtime, "role": caller.role}


def invoke(
    conn: Any,
    executor: Executor,
    function: Function,
    request: Json,
    *,
    catalog: Catalog,
    caller: Caller = Caller(),
    secrets: Mapping[str, str] | None = None,
    fetch_policy: FetchPolicy | None = None,
    limits: Limits | None = None,
    kind: str = "http",
    request_id: str | None = None,
    parent_request_id: str | None = None,
    recorder: Recorder | None = None,
    record: Mapping[str, Json] | None = None,
    traceparent: str | None = None,
    records: RecordWriter | None = None,
    started: tuple[int, int] | None = None,
    commit_with: Statement | None = None,
    reads_only: bool = False,
) -> Outcome:
    """Run `function` with `request` as input, in one transaction on `conn`, and record it.

    The gateway passes its `recorder` (already holding its span), extra request-row columns in `record`
    (route_id, trace_id), the `traceparent` that outbound fetches carry, and when the request `started`
    (wall clock in µs, monotonic clock in ns). With `records`, the record of a run that changed no data is
    written off the request path. `commit_with` (a statement) commits with the record of a run
    that succeeded: a queue worker marks its job done there. With the run's database work, its refusal fails
    the run; for a run that never used the database it goes with the record (written off the path), so a
    crash can only make the job run again. A run known to make `reads_only` calls (a `/db/query` select)
    sends each with its settings in an implicit transaction, with no BEGIN nor COMMIT."""
    request_id = request_id or (recorder.request_id if recorder else randomness.uuid4())
    limits = limits or _DEFAULT_LIMITS
    recorder = recorder or Recorder(request_id, caller.tenant_id)
    started_us, clock = started or (time.time_ns() // 1000, time.perf_counter_ns())
    fields = request if isinstance(request, dict) else {}
    row: dict[str, Json] = {
        "kind": kind, "method": fields.get("method"), "path": fields.get("path"), "function": function.name,
        "code_sha": function.sha256, "deployment_id": function.deployment_id, "started_us": started_us,
        "input": request, "parent_request_id": parent_request_id, **(record or {}),
    }  # fmt: skip
    # A built-in (`POST /db/query`) runs no code: its host call's span is the whole run.
    span = (
        None
        if function.runtime == "builtin"
        else recorder.start(
            "runtime", f"function:{function.name}", attributes=run_attributes(function, caller)
        )
    )
    transaction = db.RequestTransaction(
        conn, role=caller.role, request_id=request_id, claims=dict(caller.claims), tenant_id=caller.tenant_id,
        statement_timeout_ms=limits.timeout_for(caller.role), reads_only=reads_only,
    )  # fmt: skip
    try:
        policy = fetch_policy or FetchPolicy()
        host = Host(
            transaction,
            catalog,
            caller.role,
            recorder,
            secrets or {},
            policy,
            limits,
            traceparent=traceparent,
        )
        response = to_response(executor.execute(function, request, host))
        if host.aborted is not None:  # the function caught a database error: its transaction is lost
            raise host.aborted
        output = response.to_json()
        if span is not None:
            recorder.finish(span, output=output)
        row |= {"ok": True, "status": response.status, "output": output}
        row["duration_us"] = (time.perf_counter_ns() - clock) // 1000
        # A `commit_with` waits for no batch once the run used the database: a statement Flux took for a read
        # can still write (a select of a function that writes), and those writes must not commit without it.
        if records is not None and not host.wrote and not (commit_with and transaction.begun):
            transaction.end()
            records.submit(recorder.record(row, then=commit_with))
        else:
            statements = recorder.statements(row)
            transaction.commit([*statements, commit_with] if commit_with else statements, durable=host.wrote)
        db.reset_session(conn)  # after raw SQL only: the next request finds the session as Flux left it
        return Outcome(request_id, response)
    except FluxError as exc:
        error = exc
    except Exception as exc:  # a bug in Flux: still recorded, answered as FX900
        error = db.as_flux_error(exc)
    try:
        transaction.rollback()
    except FluxError:
        if not conn.closed:
            raise  # a connection that died took its transaction with it: nothing to undo
    if span is not None and span.duration_us is None:
        recorder.finish(span, error=error)
    row |= {"ok": False, "status": error.http_status, "error": error_record(error)}
    row["duration_us"] = (time.perf_counter_ns() - clock) // 1000
    try:
        recorder.write(conn, row)
    except FluxError as failed:
        if records is None or not (isinstance(failed, DatabaseUnreachable) or conn.closed):
            raise
        # The request's connection is gone (Postgres restarted, the connection was terminated): the record
        # writer writes it on another connection, as soon as Postgres answers again.
        records.submit(recorder.record(row))
    finally:
        db.reset_session(conn)
    return Outcome(request_id, error_response(error, request_id), error)
