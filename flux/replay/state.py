"""The database a `live` or `as-of` replay runs on, inside its own transaction, which is always rolled back.

`live` takes back the original request's own writes (so its inserts do not collide with the rows it made),
then runs on today's data. `as-of` takes back every write made to the tables the request touched since it
began (its own and those of later or concurrent requests), newest first, so they are as the request found
them. Either way the recorded values the database generated (serial ids, now() defaults, random uuids) are
pinned to the writes run again (flux.replay_pins). What this locks: the rows it takes back, until the replay
ends (other writers of those rows wait; readers never do).

Writes by other requests that the replay cannot take apart from the request's own reads are its *drift*: in
`as-of`, those that ran while the original did (it may have read them); in `live`, every later write to a
table it touched."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flux import db, jsontext
from flux.data.raw import inspect_raw_sql
from flux.data.request import Embed, Problems, parse_request
from flux.errors import FluxError
from flux.replay.recording import Recording

Row = dict[str, Any]

_TOUCHED = """
SELECT t.table_schema, t.table_name FROM flux.tracked_tables t
 WHERE t.table_ref = ANY (SELECT pg_catalog.to_regclass(name) FROM unnest(%s::text[]) AS name)
    OR (t.table_schema, t.table_name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""
# The mutations to take back, and those of other requests among them that may have changed what the original
# read (see the module's docstring). `at` is when the writing transaction began; `id` orders each row's
# mutations as their transactions committed.
_UNDO = """
WITH own AS (
    SELECT min(id) AS first, max(id) AS last FROM flux.mutations WHERE request_id = %(request)s
), candidates AS (
    SELECT m.id, m.request_id, m.at, m.table_schema, m.table_name, m.op, m.row_pk
      FROM flux.mutations m, own
     WHERE m.request_id = %(request)s
        OR (%(as_of)s AND (m.table_schema, m.table_name) IN (SELECT * FROM unnest(%(schemas)s::text[],
                                                                                 %(names)s::text[]))
            AND (m.at >= %(started)s OR m.id >= own.first))
)
SELECT id, request_id IS DISTINCT FROM %(request)s AS other, at < %(ended)s AS concurrent, table_schema,
       table_name, op, row_pk
  FROM candidates ORDER BY id
"""
_LATER = """
SELECT m.id, m.table_schema, m.table_name, m.op, m.row_pk FROM flux.mutations m
 WHERE m.request_id IS DISTINCT FROM %(request)s
   AND (m.table_schema, m.table_name) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
   AND (m.at >= %(started)s OR m.id > (SELECT coalesce(max(id), 0) FROM flux.mutations
                                        WHERE request_id = %(request)s))
 ORDER BY m.id LIMIT 100
"""
_PIN = """
INSERT INTO flux.replay_pins (replay_id, call, position, table_schema, table_name, op, row_pk, old, new)
SELECT %s::uuid, p->>0, (p->>1)::int, p->>2, p->>3, p->>4, p->5, NULLIF(p->6, 'null'), NULLIF(p->7, 'null')
  FROM jsonb_array_elements(%s::jsonb) AS p
"""
_CAPTURE = (
    "SELECT id, span_seq, table_schema, table_name, op, row_pk, old, new, changed FROM flux.mutations"
    " WHERE request_id = %s ORDER BY id"
)


@dataclass
class State:
    """What the replay did to the database before the run, and the writes of others it could not undo."""

    mode: str
    undone: int = 0
    drift: list[Row] = field(default_factory=list)  # other requests' writes that may explain a difference
    not_rewound: list[str] = field(default_factory=list)  # tables as-of could not take back (gone, untracked)


def open_state(
    conn: Any, transaction: db.RequestTransaction, recording: Recording, replay_id: str, mode: str
) -> State:
    """Begin the replay's transaction on `conn` and set its database up for `mode` (live or as-of); then the
    transaction runs as the request's role, claims and tenant, under the replay's id."""
    request = recording.request
    touched = _touched_tables(conn, recording)
    schemas, names = [t[0] for t in touched], [t[1] for t in touched]
    started = request["started_at"]
    window = {
        "request": recording.id,
        "as_of": mode == "as-of",
        "schemas": schemas,
        "names": names,
        "started": started,
        "ended": started + timedelta(microseconds=request["duration_us"] or 0),
    }
    conn.execute("BEGIN")
    state = State(mode)
    undo = db.fetch_dicts(conn, _UNDO, window)
    if mode == "as-of":
        state.drift = [row for row in undo if row["other"] and row["concurrent"]]
        state.not_rewound = _untracked_reads(conn, recording, touched)
    else:
        state.drift = db.fetch_dicts(conn, _LATER, window)
    if undo:
        superuser = conn.execute("SELECT current_setting('is_superuser') = 'on'").fetchone()[0]
        if superuser:  # the tables' own triggers must not touch the values put back
            conn.execute("SET LOCAL session_replication_role = replica")
        missing = conn.execute("SELECT flux.undo_mutations(%s)", [[row["id"] for row in undo]]).fetchone()[0]
        state.not_rewound += [table for table in missing or [] if table not in state.not_rewound]
        if superuser:
            conn.execute("SET LOCAL session_replication_role = origin")
        state.undone = len(undo)
    pins = [
        [call.key, position, m["table_schema"], m["table_name"], m["op"], m["row_pk"], m["old"], m["new"]]
        for call in recording.calls
        for position, m in enumerate(call.mutations)
        if m["op"] in ("INSERT", "UPDATE")
    ]
    if pins:
        conn.execute(_PIN, [replay_id, jsontext.dumps_text(pins)])
    transaction.apply()
    transaction.begun = True
    return state


def captured_mutations(conn: Any, replay_id: str) -> list[Row]:
    """The mutations the replay's run made (read before its transaction is rolled back), or none if a
    database error ended the transaction (the original's would have been rolled back too)."""
    if db.transaction_failed(conn):
        return []
    conn.execute("SELECT set_config('role', 'none', true)")
    return db.fetch_dicts(conn, _CAPTURE, (replay_id,), exact_numbers=True)


def _touched_tables(conn: Any, recording: Recording) -> list[tuple[str, str]]:
    """The tracked tables the request wrote or named in a query."""
    written = sorted(recording.tables())
    rows = conn.execute(
        _TOUCHED, [sorted(_named_tables(recording)), [t[0] for t in written], [t[1] for t in written]]
    ).fetchall()
    return sorted({(row[0], row[1]) for row in rows})


def _untracked_reads(conn: Any, recording: Recording, touched: list[tuple[str, str]]) -> list[str]:
    """Tables the request named that exist but are not tracked: as-of cannot take their changes back."""
    rows = conn.execute(
        "SELECT c.oid::regclass::text FROM unnest(%s::text[]) AS name"
        " JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(name)"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
        " AND (n.nspname, c.relname) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        [sorted(_named_tables(recording)), [t[0] for t in touched], [t[1] for t in touched]],
    ).fetchall()
    return sorted({row[0] for row in rows})


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
