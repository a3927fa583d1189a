"""Parse a JSON query into typed request objects, checking its shape (keys and JSON types) but no names.

Every problem is collected with a JSON pointer; `plan.py` adds the name problems and raises them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from flux.errors import InvalidQuery, InvalidQueryShape, QueryTooDeep

Json = Any


@dataclass(frozen=True)
class Problem:
    code: str
    pointer: str
    message: str
    hint: str | None = None

    def to_dict(self) -> dict[str, str]:
        found = {"code": self.code, "pointer": self.pointer or "/", "message": self.message}
        return found | ({"hint": self.hint} if self.hint else {})


class Problems:
    """Collects every problem in a query; `raise_if_any` raises one InvalidQuery listing them, with the code
    of the first (problems are listed in the order found: the query's shape first, then its names)."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, code: str, pointer: str, message: str, hint: str | None = None) -> None:
        self.items.append(Problem(code, pointer, message, hint))

    def shape(self, pointer: str, message: str, hint: str | None = None) -> None:
        self.add(InvalidQueryShape.code, pointer, message, hint)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        first = self.items[0]
        more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
        raise InvalidQuery(
            f"{first.message} at {first.pointer or '/'}{more}",
            problems=[p.to_dict() for p in self.items],
            hint=first.hint,
        )


@dataclass(frozen=True)
class Embed:
    """A related table inside `columns`: `{"orders": ["id"]}` or `{"orders": {"columns": [...], ...}}`."""

    name: str
    pointer: str
    columns: tuple[str | Embed, ...]
    where: Json = None
    order: tuple[OrderBy, ...] = ()
    limit: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class OrderBy:
    column: str
    pointer: str
    desc: bool = False
    nulls: Literal["first", "last"] | None = None


@dataclass(frozen=True)
class Aggregate:
    function: str
    column: str  # "*" for count(*)
    output: str
    pointer: str


@dataclass(frozen=True)
class SelectRequest:
    table: str
    columns: tuple[str | Embed, ...]
    where: Json = None
    order: tuple[OrderBy, ...] = ()
    limit: int | None = None
    offset: int | None = None
    after: str | None = None
    count: Literal["exact", "planned"] | None = None
    aggregates: tuple[Aggregate, ...] = ()
    group_by: tuple[str, ...] = ()
    explain_policies: bool = False


@dataclass(frozen=True)
class InsertRow:
    """One row to insert. A key whose value is an object or a list of objects may be a json column or a child
    relation: `values` holds every key, `children` the child reading, and the planner keeps the one the
    catalog allows (see plan.row_values and plan.row_children)."""

    pointer: str
    values: dict[str, Json]
    children: dict[str, tuple[InsertRow, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class OnConflict:
    columns: tuple[str, ...]
    action: Literal["nothing", "update"]
    update: tuple[str, ...]


@dataclass(frozen=True)
class InsertRequest:
    table: str
    rows: tuple[InsertRow, ...]
    returning: tuple[str, ...] | None = None
    on_conflict: OnConflict | None = None
    explain_policies: bool = False


@dataclass(frozen=True)
class UpdateRequest:
    table: str
    values: dict[str, Json]
    where: Json = None
    all_rows: bool = False
    returning: tuple[str, ...] | None = None
    explain_policies: bool = False


@dataclass(frozen=True)
class DeleteRequest:
    table: str
    where: Json = None
    all_rows: bool = False
    returning: tuple[str, ...] | None = None
    explain_policies: bool = False


Request = SelectRequest | InsertRequest | UpdateRequest | DeleteRequest

AGGREGATES = ("count", "sum", "avg", "min", "max")
_OPERATIONS = ("select", "insert", "update", "delete")
_KEYS = {
    "select": {"select", "columns", "where", "order", "limit", "offset", "after", "count", "aggregate",
               "group_by", "explain_policies"},
    "insert": {"insert", "values", "returning", "on_conflict", "explain_policies"},
    "update": {"update", "set", "where", "all", "returning", "explain_policies"},
    "delete": {"delete", "where", "all", "returning", "explain_policies"},
}  # fmt: skip
_EMBED_KEYS = {"columns", "where", "order", "limit", "offset"}


def require_query_object(query: Json, source: str) -> None:
    """Refuse, as the engine would, a body that is not one query object: `source` is what sent it."""
    if isinstance(query, dict):
        return
    problems = Problems()
    if query is None:
        problems.shape("", f"{source} needs a body: one JSON query object", 'e.g. {"select": "users"}')
    else:
        kind = (
            "a list" if isinstance(query, list) else "a string" if isinstance(query, str)
            else "true or false" if isinstance(query, bool) else "a number"
        )  # fmt: skip
        problems.shape("", f"a query is a JSON object, and {source} got {kind}", 'e.g. {"select": "users"}')
    problems.raise_if_any()


def parse_request(query: Json, problems: Problems) -> Request | None:
    """The typed request, or None when the query is too malformed to go on (problems say why)."""
    if not isinstance(query, dict):
        problems.shape("", "a query must be a JSON object", 'e.g. {"select": "users"}')
        return None
    operations = [op for op in _OPERATIONS if op in query]
    if len(operations) != 1:
        problems.shape(
            "", "a query names exactly one of select, insert, update, delete", 'e.g. {"select": "users"}'
        )
        return None
    operation = operations[0]
    for key in query:
        if key not in _KEYS[operation]:
            problems.shape(
                f"/{escape_pointer(key)}", f"unknown key {key!r} in {operation}", _one_of(_KEYS[operation])
            )
    table = query[operation]
    if not isinstance(table, str) or not table:
        problems.shape(f"/{operation}", f"{operation} takes a table name", f'e.g. {{"{operation}": "users"}}')
        return None
    explain = _boolean(query, "explain_policies", "", problems)
    if operation == "select":
        return _parse_select(query, table, explain, problems)
    if operation == "insert":
        return _parse_insert(query, table, explain, problems)
    where, all_rows = query.get("where"), _boolean(query, "all", "", problems)
    if where is None and not all_rows:
        problems.shape(
            "/where",
            f'{operation} needs a where, or "all": true to touch every row',
            'e.g. "where": {"id": {"eq": 1}}',
        )
    returning = _names(query.get("returning"), "/returning", problems, allow_star=True)
    if operation == "update":
        values = query.get("set")
        if not isinstance(values, dict) or not values:
            problems.shape(
                "/set", "update needs a set object of column: value", 'e.g. "set": {"status": "paid"}'
            )
            values = {}
        return UpdateRequest(table, dict(values), where, all_rows, returning, explain)
    return DeleteRequest(table, where, all_rows, returning, explain)


def _parse_select(query: dict[str, Json], table: str, explain: bool, problems: Problems) -> SelectRequest:
    aggregates = _aggregates(query.get("aggregate"), problems)
    group_by = _names(query.get("group_by"), "/group_by", problems) or ()
    default_columns: Json = [] if aggregates else ["*"]
    columns = _columns(query.get("columns", default_columns), "/columns", problems)
    count = query.get("count")
    if count not in (None, "exact", "planned"):
        problems.shape("/count", 'count is "exact" or "planned"', 'e.g. "count": "exact"')
        count = None
    after = query.get("after")
    if after is not None and not isinstance(after, str):
        problems.shape("/after", "after takes the cursor string a previous page returned")
        after = None
    if group_by and not aggregates:
        problems.shape("/group_by", "group_by needs an aggregate", 'e.g. "aggregate": {"count": "*"}')
    return SelectRequest(
        table=table,
        columns=columns,
        where=query.get("where"),
        order=_order(query.get("order"), "/order", problems),
        limit=_count(query, "limit", "", problems),
        offset=_count(query, "offset", "", problems),
        after=after,
        count=count,
        aggregates=aggregates,
        group_by=group_by,
        explain_policies=explain,
    )


MAX_NESTING = 16  # far past any limit the planner allows; keeps hostile input from exhausting the stack


def _columns(value: Json, pointer: str, problems: Problems, depth: int = 0) -> tuple[str | Embed, ...]:
    if depth > MAX_NESTING:
        problems.add(QueryTooDeep.code, pointer, f"relations nest deeper than {MAX_NESTING}")
        return ()
    if not isinstance(value, list):
        problems.shape(
            pointer, "columns is a list of names and relation objects", 'e.g. ["id", {"orders": ["id"]}]'
        )
        return ()
    items: list[str | Embed] = []
    for i, item in enumerate(value):
        at = f"{pointer}/{i}"
        if isinstance(item, str) and item:
            items.append(item)
        elif isinstance(item, dict) and item:
            items.extend(
                _embed(name, spec, f"{at}/{escape_pointer(name)}", problems, depth)
                for name, spec in item.items()
            )
        else:
            problems.shape(at, "a column is a name or a {relation: columns} object")
    return tuple(items)


def _embed(name: str, spec: Json, pointer: str, problems: Problems, depth: int) -> Embed:
    if isinstance(spec, list):
        return Embed(name, pointer, _columns(spec, pointer, problems, depth + 1))
    if not isinstance(spec, dict):
        problems.shape(
            pointer, f"relation {name!r} takes a list of columns or an object", 'e.g. {"orders": ["id"]}'
        )
        return Embed(name, pointer, ())
    for key in spec:
        if key not in _EMBED_KEYS:
            problems.shape(
                f"{pointer}/{escape_pointer(key)}", f"unknown key {key!r} in a relation", _one_of(_EMBED_KEYS)
            )
    return Embed(
        name,
        pointer,
        _columns(spec.get("columns", ["*"]), f"{pointer}/columns", problems, depth + 1),
        where=spec.get("where"),
        order=_order(spec.get("order"), f"{pointer}/order", problems),
        limit=_count(spec, "limit", pointer, problems),
        offset=_count(spec, "offset", pointer, problems),
    )


def _order(value: Json, pointer: str, problems: Problems) -> tuple[OrderBy, ...]:
    if value is None:
        return ()
    single = not isinstance(value, list)
    found = []
    for i, item in enumerate([value] if single else value):
        at = pointer if single else f"{pointer}/{i}"
        if isinstance(item, str):
            found.append(OrderBy(item, at))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("col"), str):
            problems.shape(
                at, "an order item is a column name or {col, desc, nulls}", '{"col": "id", "desc": true}'
            )
            continue
        for key in item:
            if key not in ("col", "desc", "nulls"):
                problems.shape(
                    f"{at}/{escape_pointer(key)}", f"unknown key {key!r} in order", "use col, desc, nulls"
                )
        nulls = item.get("nulls")
        if nulls not in (None, "first", "last"):
            problems.shape(f"{at}/nulls", 'nulls is "first" or "last"')
            nulls = None
        found.append(OrderBy(item["col"], at, desc=_boolean(item, "desc", at, problems), nulls=nulls))
    return tuple(found)


def _aggregates(value: Json, problems: Problems) -> tuple[Aggregate, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        problems.shape(
            "/aggregate", "aggregate maps a function to a column", '{"count": "*", "sum": "total"}'
        )
        return ()
    found = []
    for function, columns in value.items():
        at = f"/aggregate/{escape_pointer(function)}"
        if function not in AGGREGATES:
            problems.shape(at, f"unknown aggregate {function!r}", _one_of(AGGREGATES))
            continue
        if isinstance(columns, str):
            found.append(Aggregate(function, columns, function, at))
        elif isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns):
            found.extend(
                Aggregate(function, c, f"{function}_{c}", f"{at}/{i}") for i, c in enumerate(columns)
            )
        else:
            problems.shape(at, f"{function} takes a column name or a list of them")
    return tuple(found)


def _parse_insert(query: dict[str, Json], table: str, explain: bool, problems: Problems) -> InsertRequest:
    values = query.get("values")
    if isinstance(values, dict):
        values = [values]
    rows: list[InsertRow] = []
    if not isinstance(values, list) or not values:
        problems.shape(
            "/values", "insert needs values: one row object or a list of them", '"values": {"name": "a"}'
        )
    else:
        for i, row in enumerate(values):
            rows.extend(_row(row, f"/values/{i}", problems))
    on_conflict = None
    spec = query.get("on_conflict")
    if spec is not None:
        on_conflict = _on_conflict(spec, problems)
    returning = _names(query.get("returning"), "/returning", problems, allow_star=True)
    return InsertRequest(table, tuple(rows), returning, on_conflict, explain)


def _row(row: Json, pointer: str, problems: Problems) -> list[InsertRow]:
    if not isinstance(row, dict) or not row:
        problems.shape(pointer, "a row is an object of column: value")
        return []
    children: dict[str, tuple[InsertRow, ...]] = {}
    for key, value in row.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) and v for v in value):
            items = value
        elif isinstance(value, dict) and value:
            items = [value]
        else:
            continue
        at = f"{pointer}/{escape_pointer(key)}"
        children[key] = tuple(r for i, item in enumerate(items) for r in _row(item, f"{at}/{i}", problems))
    return [InsertRow(pointer, dict(row), children)]


def _on_conflict(spec: Json, problems: Problems) -> OnConflict | None:
    if not isinstance(spec, dict):
        problems.shape("/on_conflict", "on_conflict is an object", '{"columns": ["email"], "do": "nothing"}')
        return None
    columns = _names(spec.get("columns"), "/on_conflict/columns", problems) or ()
    action = spec.get("do", "nothing")
    if action not in ("nothing", "update"):
        problems.shape("/on_conflict/do", 'do is "nothing" or "update"')
        return None
    update = _names(spec.get("update"), "/on_conflict/update", problems) or ()
    if action == "update" and not (columns and update):
        problems.shape("/on_conflict", "do update needs the conflict columns and the columns to update",
                       '{"columns": ["email"], "do": "update", "update": ["name"]}')  # fmt: skip
    return OnConflict(columns, action, update)


def _names(value: Json, pointer: str, problems: Problems, allow_star: bool = False) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.shape(pointer, "expected a list of column names")
        return None
    if not allow_star and "*" in value:
        problems.shape(pointer, '"*" is not allowed here')
    return tuple(value)


def _count(spec: dict[str, Json], key: str, pointer: str, problems: Problems) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.shape(f"{pointer}/{key}", f"{key} is a whole number of rows, 0 or more")
        return None
    return value


def _boolean(spec: dict[str, Json], key: str, pointer: str, problems: Problems) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        problems.shape(f"{pointer}/{key}", f"{key} is true or false")
        return False
    return value


def escape_pointer(key: object) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return str(key).replace("~", "~0").replace("/", "~1")


def _one_of(options: object) -> str:
    return "use one of: " + ", ".join(sorted(options))  # type: ignore[call-overload]
