"""A recorded request as a replay reads it: its input and caller, and its host calls in order, each with its
arguments, its answer and the mutations it made, numbered per operation (the 2nd `db.query`, the 1st
`fetch`), which is how a replay's calls are matched to the recorded ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flux import jsontext
from flux.errors import NotReplayable
from flux.runtime import Caller
from flux.runtime.host import op_of_span
from flux.trace.tree import Trace

Row = dict[str, Any]
Json = Any
BUILTIN_SHA = "builtin"
TIMED_OUT = "FX301"
ROLES = ("anon", "user", "service")
# How deeply a recorded value may nest. orjson writes at most 254 levels, and a replay writes recorded values
# inside its own record and its report (a few levels more): a recording edited to nest deeper is refused.
MAX_DEPTH = 240


@dataclass(frozen=True)
class RecordedCall:
    """One host call of the recording: `key` is its operation and number (`db.query#1`, from 0)."""

    key: str
    op: str
    seq: int
    name: str
    args: Json
    ok: bool
    value: Json
    error: Json
    clock_ms: Json  # a Deno run's clock after the call (kept on the span)
    aborted: bool = False  # its error ended the request's transaction (the run then ends with it)
    mutations: list[Row] = field(default_factory=list)  # its writes (of a failed run: see `_returned_rows`)


@dataclass(frozen=True)
class Recording:
    request: Row
    caller: Caller
    calls: list[RecordedCall]
    mutations: list[Row]
    by_key: Mapping[str, RecordedCall]

    @property
    def id(self) -> str:
        return str(self.request["id"])

    @property
    def input(self) -> Json:
        return self.request["input"]

    @property
    def builtin(self) -> bool:
        return self.request.get("code_sha") == BUILTIN_SHA

    @property
    def failed(self) -> bool:
        """Whether the run failed: then its writes were rolled back, and flux.mutations has none of them."""
        return self.request.get("error") is not None

    @property
    def timed_out(self) -> bool:
        """Whether the run was cut off by its time limit (a wall-clock event, not the code's choice)."""
        return (self.request.get("error") or {}).get("code") == TIMED_OUT

    def tables(self) -> set[tuple[str, str]]:
        """The tracked tables the request wrote (its mutations say which)."""
        return {(m["table_schema"], m["table_name"]) for m in self.mutations}


def recording_of(trace: Trace) -> Recording:
    """The recording of `trace`'s request; NotReplayable when no code of the user's ran in it."""
    request = trace.request
    if request.get("kind") == "replay":
        raise NotReplayable(
            f"request {request['id']} is itself a replay",
            hint=f"replay the original: {request.get('replay_of')}",
        )
    if not request.get("function") or not request.get("code_sha"):
        raise NotReplayable(
            f"request {request['id']} was answered by the gateway before any function ran",
            hint="replay a request that ran a function (flux trace ls)",
        )
    if request["function"] == "db.explain":
        raise NotReplayable(
            "an explain runs no code to replay", hint="replay a /db/query or a function's request"
        )
    _check_record(trace)
    calls: list[RecordedCall] = []
    counts: dict[str, int] = {}
    mutations_by_span: dict[int, list[Row]] = {}
    for mutation in trace.mutations:
        mutations_by_span.setdefault(mutation["span_seq"], []).append(mutation)
    failed = request.get("error") is not None
    for span in trace.spans:
        op = op_of_span(span["module"], str(span["name"]))
        if op is None:
            continue
        number = counts[op] = counts.get(op, -1) + 1
        calls.append(
            RecordedCall(
                key=f"{op}#{number}",
                op=op,
                seq=span["seq"],
                name=span["name"],
                args=span["input"],
                ok=span["ok"],
                value=span["output"],
                error=span["error"],
                clock_ms=(span["attributes"] or {}).get("clock_ms"),
                aborted=(span["attributes"] or {}).get("aborted") is True,
                mutations=_returned_rows(span) if failed else mutations_by_span.get(span["seq"], []),
            )
        )
    return Recording(request, _caller(trace), calls, trace.mutations, {call.key: call for call in calls})


def _check_record(trace: Trace) -> None:
    """NotReplayable when the record is not as Flux writes it (it was edited): a value nests deeper than
    MAX_DEPTH, or an error, a span's attributes or a mutation's rows are not objects. A replay of such a
    record could not write its own record or its report, or would read it wrong."""
    request = trace.request
    values = [
        ("the request's " + name, request.get(name), name == "error") for name in ("input", "output", "error")
    ]
    values += [
        (f"span {span['seq']}'s {name}", span[name], name in ("error", "attributes"))
        for span in trace.spans
        for name in ("input", "output", "error", "attributes")
    ]
    values += [
        (f"mutation {m['id']}'s {name}", m[name], True)
        for m in trace.mutations
        for name in ("row_pk", "old", "new")
    ]
    for where, value, an_object in values:
        if an_object and not isinstance(value, (dict, type(None))):
            problem = "is not an object"
        elif isinstance(value, (dict, list)) and jsontext.nests_deeper_than(value, MAX_DEPTH):
            problem = f"nests deeper than {MAX_DEPTH} levels"
        else:
            continue
        raise NotReplayable(
            f"request {request['id']}'s record was not written by Flux: {where} {problem}",
            hint="restore the record, or replay another request",
        )


def _returned_rows(span: Row) -> list[Row]:
    """The rows an insert or update of a failed run returned, as the mutations they were before the rollback
    took them back (with the columns it returned only): what the database generated for them (an identity, a
    now() default or trigger, a random uuid) is known from its answer alone; a replay pins it from there."""
    args, output = span["input"], span["output"]
    if span["module"] != "data" or not (span["ok"] and isinstance(args, dict) and isinstance(output, dict)):
        return []
    op = "INSERT" if "insert" in args else "UPDATE" if "update" in args else None
    table, rows = args.get(str(op).lower()), output.get("rows")
    if op is None or not isinstance(table, str) or not isinstance(rows, list):
        return []
    schema, _, name = table.rpartition(".")  # queries name a table bare in public (flux.data.catalog)
    return [
        {"span_seq": span["seq"], "table_schema": schema or "public", "table_name": name, "op": op,
         "row_pk": {}, "old": None, "new": row}
        for row in rows
        if isinstance(row, dict)
    ]  # fmt: skip


def _caller(trace: Trace) -> Caller:
    """Who the request ran as: the role on its runtime span (or its gateway's decision), its claims (the
    `user` of its input) and its tenant."""
    role = None
    for span in trace.spans:
        attributes, output = span["attributes"] or {}, span["output"]
        if span["module"] == "runtime" and attributes.get("role"):
            role = attributes["role"]
        elif span["module"] == "gateway" and isinstance(output, dict) and role is None:
            role = (output.get("caller") or {}).get("role")
    request = trace.request
    if role is None:  # recorded before runs kept their role: a job runs as service unless its pusher was less
        role = "service" if request.get("kind") in ("job", "cron") else "anon"
    if role not in ROLES:  # a replay takes on the role: only one a request may run as
        raise NotReplayable(
            f"request {request['id']}'s record was not written by Flux: it ran as {str(role)[:40]!r},"
            f" not one of {', '.join(ROLES)}",
            hint="restore the record, or replay another request",
        )
    given = request["input"] if isinstance(request.get("input"), dict) else {}
    claims: dict[str, Json] = given["user"] if isinstance(given.get("user"), dict) else {}
    tenant = request.get("tenant_id")
    return Caller(role=str(role), claims=claims, tenant_id=str(tenant) if tenant else None)
