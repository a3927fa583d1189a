"""A row's story from `flux.mutations`: every version (`history`), who last set each column (`blame`), and,
for a whole table, each row's last change (`table_blame`).
The table must be tracked; its key is given as JSON (`{"id": 1}`) or, for a one-column primary key, as the
value alone."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from flux import db
from flux.errors import InternalError, TableNotTracked

Row = dict[str, Any]


def row_key(conn: Any, table: str, key: str) -> tuple[str, dict[str, Any]]:
    """The tracked table (as `schema.name`) and the primary key `key` names, as flux.mutations stores it."""
    tracked = tracked_table(conn, table)
    columns = tracked.key_columns
    try:
        given = json.loads(key)
    except ValueError:
        given = key  # a text key, written bare
    if not isinstance(given, dict):
        if len(columns) != 1:
            example = json.dumps(dict.fromkeys(columns, 1))
            raise TableNotTracked(f"{table}'s primary key has {len(columns)} columns",
                                  hint=f"give the key as JSON, e.g. '{example}'")  # fmt: skip
        given = {columns[0]: given}
    if sorted(given) != sorted(columns):
        raise TableNotTracked(f"{table}'s primary key is ({', '.join(columns)})", hint="give those columns")
    return tracked.ref, given


class TrackedTable(NamedTuple):
    ref: str  # as regclass prints it: `notes`, or `shop.orders` outside the search path
    schema: str  # as flux.mutations spells it
    name: str
    key_columns: list[str]  # the primary key's columns, in order


def tracked_table(conn: Any, table: str) -> TrackedTable:
    """The tracked table `table` names, and its primary-key columns (FX504 otherwise)."""
    try:
        with db.translate_errors():
            found = conn.execute(
                "SELECT t.table_ref::text, t.table_schema::text, t.table_name::text,"
                " array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))"
                " FROM flux.tracked_tables t JOIN pg_index i ON i.indrelid = t.table_ref AND i.indisprimary"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE t.table_ref = to_regclass(%s) GROUP BY t.table_ref, t.table_schema, t.table_name",
                (table,),
            ).fetchone()
    except InternalError:  # not even a name (`a.b.c.d`, another database's): to_regclass refuses to look
        found = None
    if found is None:
        raise TableNotTracked(
            f"{table} is not a tracked table", hint="SELECT * FROM flux.tracked_tables lists them"
        )
    return TrackedTable(found[0], found[1], found[2], list(found[3]))


def history(conn: Any, table: str, key: str) -> list[Row]:
    """Every version of the row, oldest first."""
    return _rows_of(conn, "flux.row_history", table, key)


def blame(conn: Any, table: str, key: str) -> list[Row]:
    """For each column of the row, the change that last set it."""
    return _rows_of(conn, "flux.row_blame", table, key)


def table_blame(conn: Any, table: str, limit: int = 100) -> list[Row]:
    """For each row of the table (up to `limit`, by key), its last change and who made it."""
    return db.fetch_dicts(
        conn,
        "SELECT * FROM flux.table_blame(%s::regclass) LIMIT %s",
        (tracked_table(conn, table).ref, limit),
        exact_numbers=True,
    )


def _rows_of(conn: Any, function: str, table: str, key: str) -> list[Row]:
    """The rows `function(table, key)` returns, once the table and key are resolved."""
    table_ref, pk = row_key(conn, table, key)
    return db.fetch_dicts(
        conn,
        f"SELECT * FROM {function}(%s::regclass, %s::jsonb)",
        (table_ref, json.dumps(pk)),
        exact_numbers=True,
    )
