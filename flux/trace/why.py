"""`flux why <id>`: what a request needs explaining with. The span that failed (the innermost failed one) with
its input and error; the data its database calls read; the rows it changed; and, for each row it read or
changed, the change made before it and the request, function and code version that made it (from
`flux.mutations`, one index scan on mutations_row_idx per row).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flux import db, jsontext
from flux.errors import TableNotTracked
from flux.trace.state import TrackedTable, tracked_table
from flux.trace.tree import Trace, trace_from_record, trace_record

Row = dict[str, Any]
MAX_ROWS_PER_READ = 20  # rows of one read whose earlier changes are looked up
_NO_ID_LIMIT = 2**63 - 1

_CHANGE_BEFORE = """
SELECT m.id AS mutation_id, m.at, m.op, m.changed, m.request_id::text, r.function, r.code_sha,
       r.deployment_id, m.actor
  FROM flux.mutations m
  LEFT JOIN flux.requests r ON r.id = m.request_id
 WHERE m.table_schema = %s AND m.table_name = %s AND m.row_pk = %s::jsonb
   AND m.id < %s AND m.at <= %s AND m.request_id IS DISTINCT FROM %s::uuid
 ORDER BY m.id DESC
 LIMIT 1
"""


@dataclass(frozen=True)
class EarlierChange:
    """The change to one row made before the request: by which request, function and code."""

    table: str
    pk: dict[str, Any]
    read_or_written: str  # "read" or "written"
    change: Row | None  # None: no change recorded before (the row predates tracking, or came with a seed)


@dataclass(frozen=True)
class Why:
    trace: Trace
    failed: Row | None  # the innermost span that failed
    reads: list[Row] = field(default_factory=list)  # the database calls that read, in order
    earlier: list[EarlierChange] = field(default_factory=list)

    @property
    def writes_rolled_back(self) -> bool:
        """Whether the request tried to write and failed: its writes were undone with it."""
        return not self.trace.request["ok"] and any(
            span["module"] == "data" and span["name"].startswith(_WRITES) for span in self.trace.spans
        )


def why_record(explained: Why) -> dict[str, Any]:
    """`explained` as one JSON object (the management API's answer)."""
    return {
        "record": trace_record(explained.trace), "failed": explained.failed, "reads": explained.reads,
        "earlier": [dataclasses.asdict(change) for change in explained.earlier],
    }  # fmt: skip


def why_from_record(record: dict[str, Any]) -> Why:
    """A Why back from `why_record`'s object (its times as datetimes already)."""
    earlier = [EarlierChange(**change) for change in record["earlier"]]
    return Why(trace_from_record(record["record"]), record["failed"], record["reads"], earlier)


def explain_request(conn: Any, trace: Trace) -> Why:
    """Why `trace` went as it did."""
    failed_seqs = {span["seq"] for span in trace.spans if not span["ok"]}
    parents_of_failures = {span["parent_seq"] for span in trace.spans if not span["ok"]}
    failed = next((s for s in trace.spans if s["seq"] in failed_seqs - parents_of_failures), None)
    reads = [s for s in trace.spans if s["module"] == "data" and _is_read(s["name"]) and s["ok"]]
    ended = trace.request["started_at"] + timedelta(microseconds=trace.request["duration_us"] or 0)
    earlier: list[EarlierChange] = []
    seen: set[tuple[str, str]] = set()

    def add(schema: str, table: str, pk: dict[str, Any], how: str, below: int, until: Any) -> None:
        key = (f"{schema}.{table}", jsontext.display(pk, sort_keys=True))  # exact: the jsonb the key matches
        if key not in seen:
            seen.add(key)
            found = db.fetch_dicts(
                conn,
                _CHANGE_BEFORE,
                (schema, table, key[1], below, until, trace.request["id"]),
                exact_numbers=True,
            )
            earlier.append(EarlierChange(key[0], pk, how, found[0] if found else None))

    for span in reads:  # the change each row had when the request read it
        table = _tracked(conn, _table_of(span["name"]))
        if table is None:
            continue
        columns = table.key_columns
        for row in (span["output"] or {}).get("rows", [])[:MAX_ROWS_PER_READ]:
            if isinstance(row, dict) and all(c in row for c in columns):
                add(table.schema, table.name, {c: row[c] for c in columns}, "read", _NO_ID_LIMIT, ended)
    for m in trace.mutations:  # the change before the request's own
        add(m["table_schema"], m["table_name"], m["row_pk"], "written", m["id"], "infinity")
    return Why(trace, failed, reads, earlier)


def _is_read(name: str) -> bool:
    return name.startswith(("db:select(", "sql:select("))


_WRITES = ("db:insert(", "db:update(", "db:delete(", "sql:insert(", "sql:update(", "sql:delete(")


def _table_of(name: str) -> str:
    return name[name.find("(") + 1 : -1] if name.endswith(")") else ""


def _tracked(conn: Any, table: str) -> TrackedTable | None:
    """The tracked table a span names (None for one that is not tracked)."""
    if not table:
        return None
    try:
        return tracked_table(conn, table)
    except TableNotTracked:
        return None
