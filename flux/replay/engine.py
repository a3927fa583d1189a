"""One replay: a recorded request run again on chosen code with a host that answers from the recording
(host.py), on the database its mode asks for (state.py), then compared with the recording: its calls as it
ran, then the mutations it would have made, its error, status and response. The verdict is `same`,
`diverged` (the code behaves otherwise), `drift` (the data it read changed, not the code) or `error` (it
could not run). A replay is recorded as a request of kind `replay`, never answers a client, never enqueues,
and its transaction is always rolled back."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from flux import db, randomness
from flux.data import Catalog, Limits
from flux.errors import FluxError, InvalidFunctionResponse
from flux.pipeline import Statement
from flux.replay.divergence import END, Divergence, changes_between
from flux.replay.host import Mode, ReplayHost, columns_set
from flux.replay.recording import Recording
from flux.replay.state import (
    Grant,
    State,
    captured_mutations,
    end_run,
    keep_ahead,
    next_grant,
    open_state,
    take_grant,
)
from flux.runtime.fetch import FetchPolicy
from flux.runtime.invoke import Executor, Function, run_attributes
from flux.runtime.limits import FunctionLimits
from flux.runtime.response import Response, error_response, to_response
from flux.trace.diff import canonical
from flux.trace.recorder import Recorder, error_record

Json = Any
Row = dict[str, Any]
Verdict = Literal["same", "diverged", "drift", "error"]
CodeFor = Callable[[Recording], Function]  # the code a replay runs for a recording
TIMED_OUT_HEADROOM = 2  # a replay of a run cut off by its time limit has this many times its limit


@dataclass(frozen=True)
class Replay:
    """How to replay: the code, the database mode and what may go out."""

    executor: Executor
    code_for: CodeFor
    catalog: Catalog
    mode: Mode = "recorded"
    live_fetch: bool = False
    record: bool = True
    secrets: Mapping[str, str] = field(default_factory=dict)
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    limits: Limits = field(default_factory=Limits)


@dataclass
class ReplayResult:
    request_id: str
    replay_id: str | None
    verdict: Verdict
    divergences: list[Divergence] = field(default_factory=list)
    error: Row | None = None  # why it could not run
    state: State | None = None
    server_us: int = 0
    response: Row | None = None  # what the replay answered, `{status, headers, body}` (an error's too)

    @property
    def divergence(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None

    def to_json(self) -> dict[str, Json]:
        first = self.divergence
        state = self.state
        return {
            "request_id": self.request_id,
            "replay_id": self.replay_id,
            "verdict": self.verdict,
            "divergence": first.to_json() if first else None,
            "divergences": [d.to_json() for d in self.divergences],
            "error": self.error,
            "drift": state.drift if state else [],
            "not_rewound": state.not_rewound if state else [],
            "undone": state.undone if state else 0,
            "triggers_off": state.triggers_off if state else None,
        }


def replay(conn: Any, recording: Recording, how: Replay, runs_on: Any = None) -> ReplayResult:
    """Run `recording` again as `how` says, record the replay (unless `how.record` is off), and judge it.
    `conn` is the owner's connection (it reads the code, grants the replay's transaction and writes its
    record); in live and as-of mode the function's SQL runs on `runs_on`, a request connection (logged in as
    flux_authenticator, autocommit, as the gateway's are), never on the owner's."""
    if how.mode != "recorded" and runs_on is None:
        raise ValueError(f"a {how.mode} replay runs its function on a request connection: pass runs_on")
    clock = time.perf_counter_ns()
    try:
        function = how.code_for(recording)
    except FluxError as exc:
        return ReplayResult(recording.id, None, "error", error=error_record(exc))
    if recording.timed_out:  # it must get as far as the original did, on a machine as busy as may be
        function = dataclasses.replace(function, limits=_more_time(function.limits))
    grant: Grant | None = None
    if how.mode != "recorded":
        try:
            grant = take_grant(conn)
        except FluxError as exc:
            return ReplayResult(recording.id, None, "error", error=error_record(exc))
    replay_id = grant.replay_id if grant is not None else randomness.uuid4()
    caller = recording.caller
    recorder = Recorder(replay_id, caller.tenant_id)
    transaction = db.RequestTransaction(
        conn if how.mode == "recorded" else runs_on,  # recorded: no statement runs
        role=caller.role,
        request_id=replay_id,
        claims=dict(caller.claims),
        tenant_id=caller.tenant_id,
        statement_timeout_ms=how.limits.timeout_for(caller.role),
    )
    host = ReplayHost(
        transaction,
        how.catalog,
        caller.role,
        recorder,
        how.secrets,
        how.fetch_policy,
        how.limits,
        recording=recording,
        mode=how.mode,
        live_fetch=how.live_fetch,
    )
    started_us = time.time_ns() // 1000
    opened: list[State] = []
    if grant is not None:
        # The database is set up while the run starts in a process of its own (Deno's: the rewind and Deno's
        # start overlap); otherwise before the run, so that the run's time is its own.
        timeout_ms = how.limits.timeout_for(caller.role)
        host.setup = lambda: opened.append(
            open_state(conn, transaction, recording, grant, how.mode, timeout_ms)
        )
        if not how.executor.runs_apart(function):
            host.set_up()
        if host.setup_error is not None:
            return _could_not_set_up(recording, transaction, host.setup_error)
    mutations: list[Row] = []
    span = (
        None
        if recording.builtin
        else recorder.start(
            "runtime", f"function:{function.name}", attributes=run_attributes(function, caller)
        )
    )
    error: FluxError | None = None
    response: Response | None = None
    try:
        response = to_response(how.executor.execute(function, recording.input, host))
        if host.aborted is not None:
            raise host.aborted
    except FluxError as exc:
        error = exc
    except Exception as exc:  # a bug in Flux: still judged and recorded, as FX900
        error = db.as_flux_error(exc)
    if host.cut_off is not None:  # cut off where the original was: it ends as the original did
        error = host.cut_off
    host.set_up()  # a run that ended before it started (a worker that failed to start), if it did not
    if host.setup_error is not None:
        return _could_not_set_up(recording, transaction, host.setup_error)
    state = opened[0] if opened else None
    try:
        if state is not None:
            mutations = captured_mutations(transaction.conn)
    except FluxError as exc:  # the run ended its own session, or wrote what cannot be read back: its error
        error = error or exc
    finally:
        if state is not None:
            end_run(transaction)
        else:
            transaction.rollback()
    if error is not None:
        response = error_response(error, replay_id)
    assert response is not None
    if span is not None:
        recorder.finish(span, output=response.to_json() if error is None else None, error=error)
    divergences = _judge(recording, host, response, error, mutations)
    verdict = _verdict(divergences, state)
    answered = host.as_recorded(response.to_json())  # secrets as `[secret:NAME]`, as a record keeps them
    duration_us = (time.perf_counter_ns() - clock) // 1000
    # The grant goes with the record (and the next replay's is written, in grants_ahead): one round trip
    # (alone when the replay is not recorded).
    ahead = next_grant(conn) if grant is not None else None
    after = [grant.end()] if grant is not None else []
    if ahead is not None:
        after.append(ahead.statement())
    if not how.record:
        if after:
            _write_ahead(conn, after, ahead)
        return ReplayResult(recording.id, replay_id, verdict, divergences, None, state, duration_us, answered)
    row = {
        "kind": "replay",
        "method": recording.request.get("method"),
        "path": recording.request.get("path"),
        "function": recording.request.get("function"),
        "code_sha": function.sha256,
        "deployment_id": function.deployment_id,
        "started_us": started_us,
        "duration_us": duration_us,
        "input": recording.input,
        "replay_of": recording.id,
        "ok": error is None,
        "status": response.status,
        "output": response.to_json() if error is None else None,
        "error": error_record(error) if error is not None else None,
    }
    try:
        record = recorder.statements(row)
    except InvalidFunctionResponse:  # the run answered JSON nested deeper than a record can hold
        record = None
    if after or record:
        _write_ahead(conn, [*after, *(record or [])], ahead)
    if record is None:
        too_deep = InvalidFunctionResponse(
            "the replay's response or one of its calls nests JSON deeper than 254 levels, which no record can"
            " hold: it is not recorded",
            hint="return and send JSON that nests less deeply",
        )
        # What was recorded nested less deeply, so what nests past it is a divergence already found: judged as
        # one (an `error` would say the code was not judged, and the deploy gate would let it through).
        judged: Verdict = "diverged" if divergences else "error"
        return ReplayResult(recording.id, None, judged, divergences, error_record(too_deep), state)
    return ReplayResult(recording.id, replay_id, verdict, divergences, None, state, duration_us, answered)


def _could_not_set_up(
    recording: Recording, transaction: db.RequestTransaction, error: FluxError
) -> ReplayResult:
    """The replay whose database could not be set up (`open_state` failed): it could not run."""
    transaction.rollback()
    return ReplayResult(recording.id, None, "error", error=error_record(error))


def _write_ahead(conn: Any, statements: list[Statement], ahead: Grant | None) -> None:
    """Write a replay's record (and its grant's end), with the grant of the next replay on `conn`, `ahead`."""
    db.write_alone(conn, statements, durable=False)
    if ahead is not None:
        keep_ahead(conn, ahead)


def _more_time(limits: FunctionLimits) -> FunctionLimits:
    """The limits of the replay of a run that its time limit cut off: twice the time. The replay is cut off
    where the original was (at its first call past the recorded ones, see ReplayHost), so the extra time is
    spent only by code that spins with no call, and it keeps a replay slower than the original (answers from
    a busier database, a colder cache) from stopping short of the calls the original made."""
    return dataclasses.replace(limits, timeout_ms=limits.timeout_ms * TIMED_OUT_HEADROOM)


def _judge(
    recording: Recording, host: ReplayHost, response: Response, error: FluxError | None, mutations: list[Row]
) -> list[Divergence]:
    """Every divergence, in the order the run met them: its calls and their writes, then calls it did not
    make, then how it ended."""
    divergences = list(host.divergences)
    made = set(host.matched.values())
    divergences += [Divergence.missing_call(call) for call in recording.calls if call.key not in made]
    if host.mode != "recorded" and not recording.failed:  # a failed run's writes were rolled back unrecorded
        divergences += _mutation_divergences(recording, host, mutations)
    request = recording.request
    scrub = host.as_recorded  # secrets redacted, as the record keeps them
    timed_out_at_its_end = recording.timed_out and error is None and not divergences
    if not timed_out_at_its_end:
        recorded_error = request.get("error")
        replayed_error = scrub(error_record(error)) if error is not None else None
        if changes_between("code", (recorded_error or {}).get("code"), (replayed_error or {}).get("code")):
            message = _error_message(recorded_error, replayed_error)
            # Both sides, always: the side that did not fail shows what it answered instead.
            was = recorded_error if recorded_error is not None else {"response": request.get("output")}
            now = replayed_error if replayed_error is not None else {"response": scrub(response.to_json())}
            divergences.append(Divergence("error", "error", was, now, message))
        elif recorded_error is None:
            if request.get("status") != response.status:
                divergences.append(
                    Divergence(
                        "status",
                        "response.status",
                        request.get("status"),
                        response.status,
                        f"the response's status was {request.get('status')}, now {response.status}",
                    )
                )
            output, replayed = request.get("output") or {}, scrub(response.to_json())
            changes = changes_between("response", output, replayed)
            if changes:
                shown = ", ".join(change.path for change in changes[:3])
                divergences.append(
                    Divergence(
                        "output",
                        "response",
                        output,
                        replayed,
                        f"the response differs at {shown}",
                        changes,
                    )
                )
    return sorted(divergences, key=lambda d: d.order)


def _mutation_divergences(recording: Recording, host: ReplayHost, mutations: list[Row]) -> list[Divergence]:
    """The replay's writes against the recorded ones, call by call (each matched call's writes in order)."""
    replayed: dict[str, list[Row]] = {}
    orders: dict[str, int] = {}
    for mutation in mutations:
        key = host.matched.get(mutation["span_seq"], f"new call {mutation['span_seq']}")
        replayed.setdefault(key, []).append(mutation)
        orders.setdefault(key, mutation["span_seq"] if mutation["span_seq"] is not None else END)
    found: list[Divergence] = []
    seq_of = {key: seq for seq, key in host.matched.items()}
    for call in recording.calls:
        orders.setdefault(call.key, seq_of.get(call.key, END - 1))
    for key in dict.fromkeys([*(call.key for call in recording.calls), *replayed]):
        recorded_rows = recording.by_key[key].mutations if key in recording.by_key else []
        seq = orders[key]
        span = host.recorder.spans[seq] if seq < len(host.recorder.spans) else None
        written = set(columns_set(span.input) or ()) if span is not None and span.module == "data" else set()
        found += _rows_compared(key, recorded_rows, replayed.get(key, []), seq, written)
    return found


def _rows_compared(
    key: str, recorded: list[Row], replayed: list[Row], order: int, written: set[str]
) -> list[Divergence]:
    """The writes of one call, pair by pair. The columns its query set come first among a row's changes: they
    are what a changed query changed (the values the database generated are pinned, unless a raw SQL write
    ran with other arguments, and then they differ too, after)."""
    found = []
    for a, b in _paired(recorded, replayed):
        either = a if a is not None else b
        assert either is not None
        where = f"{key} {either['op']} {either['table_schema']}.{either['table_name']} {_key_text(either)}"
        if a is None or b is None:
            verb = "is new" if a is None else "was not made"
            found.append(
                Divergence("mutation", where, a and _row(a), b and _row(b), f"{where} {verb}", order=order)
            )
            continue
        changes = changes_between("row", _row(a), _row(b))
        changes.sort(key=lambda change: change.path.removeprefix("row.new.") not in written)  # stable
        if changes:
            shown = ", ".join(change.path for change in changes[:3])
            state = bool(
                changes_between("old", a["old"], b["old"])
            )  # the row was not as the original found it
            found.append(
                Divergence(
                    "mutation", where, _row(a), _row(b), f"{where} differs at {shown}", changes, order, state
                )
            )
    return found


def _paired(recorded: list[Row], replayed: list[Row]) -> list[tuple[Row | None, Row | None]]:
    """A call's recorded and replayed writes, paired by table, operation and key (an UPDATE of many rows meets
    them in the order they lie on disk, which a rewind may change), then the rest in order."""

    def identity(mutation: Row) -> tuple[str, str, str, str]:
        key = canonical(mutation["row_pk"])
        return (mutation["table_schema"], mutation["table_name"], mutation["op"], key)

    waiting: dict[tuple[str, str, str, str], list[Row]] = {}
    for mutation in replayed:
        waiting.setdefault(identity(mutation), []).append(mutation)
    pairs: list[tuple[Row | None, Row | None]] = []
    unmatched: list[Row] = []
    for mutation in recorded:
        same_key = waiting.get(identity(mutation))
        if same_key:
            pairs.append((mutation, same_key.pop(0)))
        else:
            unmatched.append(mutation)
    left = [mutation for rows in waiting.values() for mutation in rows]
    left.sort(key=replayed.index)
    pairs += list(itertools.zip_longest(unmatched, left))
    return pairs


def _row(mutation: Row) -> Row:
    return {
        "table": f"{mutation['table_schema']}.{mutation['table_name']}",
        "op": mutation["op"],
        "key": mutation["row_pk"],
        "old": mutation["old"],
        "new": mutation["new"],
    }


def _key_text(mutation: Row) -> str:
    return ", ".join(f"{k}={v}" for k, v in (mutation["row_pk"] or {}).items())


def _error_message(recorded: Row | None, replayed: Row | None) -> str:
    if recorded is None:
        return (
            f"the replay failed: {replayed and replayed.get('code')} {replayed and replayed.get('message')}"
        )
    if replayed is None:
        return f"the original failed ({recorded.get('code')}); the replay did not"
    return f"the original failed with {recorded.get('code')}, the replay with {replayed.get('code')}"


def _verdict(divergences: list[Divergence], state: State | None) -> Verdict:
    """`same` without divergences; `drift` when the first is a difference in the data a call read or wrote
    with the same arguments (live and as-of: the code asked what it asked the first time, and the database
    answered otherwise, so the data changed, not the code; `state.drift` lists the writes by others that may
    explain it, though a writer whose transaction began before the request cannot always be named); else
    `diverged`."""
    if not divergences:
        return "same"
    if state is not None and divergences[0].state:
        return "drift"
    return "diverged"
