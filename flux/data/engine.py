"""Run a JSON query on a connection already inside a request transaction: parse, plan, compile, execute.

A select answers `{"rows": [...], "after": cursor or null}` (plus `"count"` when asked); a write answers
`{"count": n}` plus `"rows"` when it asked for `returning`. With `"explain_policies": true` the answer also
lists the column rules and the row-level security policies that applied. Raw SQL (`run_sql`) is for the
service role only.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any
from uuid import UUID

from flux import db
from flux.data.catalog import Catalog
from flux.data.plan import (
    Limits,
    Output,
    Planned,
    Role,
    SelectPlan,
    encode_cursor,
    plan_request,
    row_children,
    row_values,
)
from flux.data.raw import RawStatement, inspect_raw_sql, require_service_role
from flux.data.request import InsertRequest, Problems, SelectRequest, parse_request
from flux.data.shape import shape_key
from flux.data.sql import compile_plan
from flux.errors import (
    AnswerTooLarge,
    ColumnNotReadable,
    FluxError,
    QueryTooDeep,
    RawSqlForbidden,
    TooManyRows,
)
from flux.jsontext import nests_deeper_than

Json = Any


_DEFAULT_LIMITS = Limits()
try:
    _LIBC: Any = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim  # noqa: B018 (glibc only)
except (OSError, AttributeError):
    _LIBC = None
# How deeply a query may nest (`[]` is one level), as a request body may (jsontext.MAX_DEPTH): checked first.
MAX_QUERY_DEPTH = 128


def prepare(query: Json, catalog: Catalog, role: Role, limits: Limits | None = None) -> Planned:
    """Validate and plan a query; every problem at once as one InvalidQuery (FX100).

    A query of a shape planned before reuses that plan and only binds its own values (see data/shape.py)."""
    limits = limits or _DEFAULT_LIMITS
    if nests_deeper_than(query, MAX_QUERY_DEPTH):  # before any other work: every step below walks the query
        problems = Problems()
        problems.add(QueryTooDeep.code, "", f"the query nests deeper than {MAX_QUERY_DEPTH} levels",
                     "send a flatter query: fewer nested lists, objects or conditions")  # fmt: skip
        problems.raise_if_any()
    key = shape_key(query)
    cached: Planned | None = catalog.plans.get((role, limits, key)) if key is not None else None
    if cached is not None:
        try:
            params = [source.extract(query) for source in cached.sources]
        except (KeyError, IndexError, TypeError, ValueError):
            pass  # not the shape it seemed: plan it in full below
        else:
            return cached.bound(params)
    problems = Problems()
    request = parse_request(query, problems)
    planned = plan_request(request, catalog, role, problems, limits) if request else None
    if isinstance(request, InsertRequest):
        _check_children(request, catalog, role, problems, limits)
    problems.raise_if_any()
    assert planned is not None
    planned.sql = compile_plan(planned.plan)
    if isinstance(planned.plan, SelectPlan) and planned.plan.count == "planned":
        unlimited = replace(
            planned.plan, limit=None, offset=None, cursor_keys=(), cursor_names=(), answer_bytes=None
        )
        planned.count_sql = "EXPLAIN (FORMAT JSON) " + compile_plan(unlimited)
    if key is not None:
        size = len(key) + len(planned.sql) + len(planned.count_sql or "")
        catalog.plans.put((role, limits, key), planned, size)
    return planned


def run_query(
    conn: Any, query: Json, catalog: Catalog, role: Role, limits: Limits | None = None
) -> dict[str, Json]:
    """Execute one JSON query in the caller's transaction (role and claims already set)."""
    limits = limits or _DEFAULT_LIMITS
    planned = prepare(query, catalog, role, limits)
    request = planned.request
    if isinstance(request, InsertRequest) and _has_children(request, catalog):
        result = _insert_nested(conn, request, catalog, role, limits)  # never cached: its own values
    elif isinstance(request, SelectRequest):
        result = _select(conn, planned, request, limits)
    else:
        result = _write(conn, planned)
    if planned.request.explain_policies:
        result["policies"] = {"columns": planned.policies, "row_level": row_level_policies(conn, planned)}
    return result


def _has_children(request: InsertRequest, catalog: Catalog) -> bool:
    table = catalog.table(request.table)
    return table is not None and any(row_children(table, row) for row in request.rows)


def _write(conn: Any, planned: Planned) -> dict[str, Json]:
    row = db.execute_raw(conn, planned.sql, planned.params)
    assert row is not None
    rows, count = row
    return {"count": count} | ({"rows": rows} if rows is not None else {})


def _select(conn: Any, planned: Planned, request: SelectRequest, limits: Limits) -> dict[str, Json]:
    count = None
    if request.count is None:
        rows = [row[0] for row in db.execute_rows(conn, planned.sql, planned.params)]
    else:
        found = db.execute_raw(conn, planned.sql, planned.params)
        assert found is not None
        rows, count = found
    page_size = planned.page_size if planned.page_size is not None else limits.max_rows
    more = len(rows) > page_size
    if more and request.limit is None:
        raise TooManyRows(
            f"{request.table} has more than {limits.max_rows} matching rows",
            hint=f'add a "limit" of at most {limits.max_rows} and page with "after"',
        )
    rows = rows[:page_size]
    plan_outputs = planned.plan.outputs if isinstance(planned.plan, SelectPlan) else ()
    answer_rows = len(rows)
    if any(output.embed is not None for output in plan_outputs):
        answer_rows += _check_embedded(rows, plan_outputs, limits.max_rows)
    if answer_rows > limits.max_answer_rows:
        del rows
        _release_memory()
        raise AnswerTooLarge(
            f"the answer has {answer_rows} rows with those of its relations, over {limits.max_answer_rows}"
            " (max_answer_rows)",
            hint="ask for fewer rows (a limit on each relation), or page with after",
        )
    after = None
    plan = planned.plan
    assert isinstance(plan, SelectPlan)
    if more and rows and plan.cursor_fields:
        after = encode_cursor([rows[-1][field] for field in plan.cursor_fields])
    if plan.cursor_names:  # hidden order columns: only there for the cursor
        for item in rows:
            for key in plan.cursor_names:
                del item[key]
    result: dict[str, Json] = {"rows": rows, "after": after, "more": more}
    if request.count == "exact":
        result["count"] = count
    elif request.count == "planned":
        result["count"] = _planned_count(conn, planned)
    return result


def _release_memory() -> None:
    """Give the memory a too big answer took back to the system (glibc keeps freed memory for later)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _check_embedded(rows: list[Json], outputs: tuple[Output, ...], max_rows: int) -> int:
    """Refuse an embedded list that reached its cap (max_rows + 1 rows fetched): never a cut list. Returns
    how many embedded rows there are, at every level."""
    found = 0
    for output in outputs:
        if output.embed is None:
            continue
        for row in rows:
            value = row.get(output.key)
            children = value if output.many else [value]
            if output.many and value is not None and len(value) > max_rows:
                raise TooManyRows(
                    f"{output.key} has more than {max_rows} related rows",
                    hint=f'give the relation a "limit" of at most {max_rows}, or query it on its own',
                )
            children = [c for c in children or () if c]
            found += len(children) + _check_embedded(children, output.embed.outputs, max_rows)
    return found


def _planned_count(conn: Any, planned: Planned) -> int:
    """The planner's row estimate for the query without its limit: cheap on huge tables, not exact."""
    plan = planned.plan
    assert isinstance(plan, SelectPlan)
    # The limit, offset and answer bound parameters come last; the estimate goes without them.
    first = plan.limit or plan.answer_bytes
    params = planned.params[: first.index - 1] if first else planned.params
    explained = db.execute_raw(conn, planned.count_sql, params)
    assert explained is not None
    node = explained[0][0]["Plan"]
    while node.get("Node Type") == "Aggregate" and node.get("Plans"):  # the json_agg over the rows
        node = node["Plans"][0]
    return int(node["Plan Rows"])


def _insert_nested(
    conn: Any, request: InsertRequest, catalog: Catalog, role: Role, limits: Limits
) -> dict[str, Json]:
    """Insert each parent row, then its child rows carrying the parent's key, all in the caller's transaction.

    Each parent is its own INSERT because the children need the key it was given (a serial id, say). A parent
    that `on_conflict` skipped (do nothing) inserts no children."""
    table = catalog.table(request.table)
    assert table is not None
    asked = list(request.returning or ())
    conflict = request.on_conflict
    returned: list[Json] = []
    count = 0
    for row in request.rows:
        children = row_children(table, row)
        relations = {name: table.relations[name] for name in children}
        keys = sorted({c for relation in relations.values() for c in relation.columns} - set(asked))
        parent: dict[str, Json] = {
            "insert": request.table,
            "values": [row_values(table, row)],
            "returning": asked + keys,
        }
        if conflict is not None:
            parent["on_conflict"] = {"columns": list(conflict.columns), "do": conflict.action,
                                     "update": list(conflict.update)}  # fmt: skip
        result = _write(conn, prepare(parent, catalog, role, limits))
        count += result["count"]
        if not result["rows"]:
            continue
        (inserted,) = result["rows"]
        for name, child_rows in children.items():
            relation = relations[name]
            link = {
                theirs: inserted[mine]
                for mine, theirs in zip(relation.columns, relation.target_columns, strict=True)
            }
            linked = tuple(replace(child, values={**child.values, **link}) for child in child_rows)
            target = catalog.table(relation.target)
            child = InsertRequest(relation.target, linked, returning=target.primary_key if target else None)
            inserted[name] = _insert_nested(conn, child, catalog, role, limits).get("rows")
        for key in keys:
            del inserted[key]
        returned.append(inserted)
    return {"count": count} | ({"rows": returned} if request.returning else {})


def _check_children(
    request: InsertRequest, catalog: Catalog, role: Role, problems: Problems, limits: Limits
) -> None:
    """Plan every nested child insert before anything runs, so all problems come back at once."""
    table = catalog.table(request.table)
    if table is None:
        return
    for row in request.rows:
        for name, child_rows in row_children(table, row).items():
            relation = table.relations[name]
            if not relation.many:
                continue  # the parent's planning reported it
            for (
                column
            ) in relation.columns:  # the children get the parent's key: the role must read it plainly
                rule = table.rule(column, role)
                if not rule.readable or rule.mask is not None:
                    message = f"role {role} may not read {table.key}.{column}, the key its {name} rows need"
                    problems.add(
                        ColumnNotReadable.code, f"/values/{name}", message, "insert the rows one by one"
                    )
            link = dict.fromkeys(relation.target_columns, 0)
            linked = tuple(replace(child, values={**child.values, **link}) for child in child_rows)
            child = InsertRequest(relation.target, linked)
            plan_request(child, catalog, role, problems, limits)
            _check_children(child, catalog, role, problems, limits)


def row_level_policies(conn: Any, planned: Planned) -> list[dict[str, Json]]:
    """The row-level security policies on the query's table that apply to its role, as Postgres has them."""
    table = planned.table
    row = db.execute_raw(
        conn,
        "SELECT coalesce(json_agg(json_build_object('policy', policyname, 'command', cmd, 'using', qual,"
        " 'with_check', with_check, 'permissive', permissive) ORDER BY policyname), '[]'::json),"
        " (SELECT relrowsecurity FROM pg_class WHERE oid = format('%I.%I', $1::text, $2::text)::regclass)"
        " FROM pg_policies WHERE schemaname = $1::text AND tablename = $2::text"
        " AND (roles && ARRAY[$3::name, 'public'::name])",
        [table.schema, table.name, f"flux_{planned.role}"],
    )
    assert row is not None
    policies, enabled = row
    if not enabled:
        return [{"note": f"row-level security is off for {table.key}: every row is visible to granted roles"}]
    if not policies:
        return [
            {"note": f"row-level security is on for {table.key} and no policy lets {planned.role} see rows"}
        ]
    return list(policies)


# Fails whatever the search path: the operator is named with its schema.
_END_TRANSACTION = "SELECT 1 OPERATOR(pg_catalog./) 0"


def run_sql(conn: Any, sql: str, params: list[Json], role: Role) -> dict[str, Json]:
    """Raw SQL for the service role: one statement, `$1`… parameters, run in the caller's transaction."""
    return run_statement(conn, inspect_raw_sql(sql), params, role)


def run_statement(conn: Any, statement: RawStatement, params: list[Json], role: Role) -> dict[str, Json]:
    """`run_sql` for a statement already checked by `inspect_raw_sql` (the host names its span from it)."""
    require_service_role(role)
    rows, count = db.execute_statement(conn, statement.sql, params)
    # Defence in depth: a function the statement called must not have left the request's role.
    (current,) = db.execute_rows(conn, "SELECT current_user::text", [])[0]
    if current != f"flux_{role}":
        # End the transaction with an error, so that nothing more runs as `current` and nothing of it commits,
        # however the function handles the error below (the host refuses every later call, and the run fails).
        with contextlib.suppress(FluxError):
            db.execute_rows(conn, _END_TRANSACTION, [])
        raise RawSqlForbidden(
            f"the statement changed the role to {current}", hint="raw SQL runs as the request's role, always"
        )
    return {"rows": [_jsonable(row) for row in rows], "count": count, "kind": statement.kind}


def _jsonable(value: Json) -> Json:
    """Driver values as JSON would carry them: numbers (a numeric stays an exact Decimal), ISO dates, text."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (UUID, timedelta)):
        return str(value)
    return value
