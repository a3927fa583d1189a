"""The plan cache: a query's shape is the query with its values replaced by their JSON types, so queries that
differ only in values share one plan, and each new query just binds its values (see plan.ValueSource).

Values are what the planner binds as parameters: operands of filter operators (but `is`, and a text search's
`config`), insert and update values, and `offset`. Everything else (names, operators, `is`, `config`, `limit`,
nesting) is part of the shape, and queries whose planning reads a value's content (a cursor in `after`; object
or list values in inserts, which may be child rows) are not cached at all.

A key is linear in the query's size: a container's type is written once, as text, and never re-quoted by the
levels above it (quoting at each level doubled the key per level of nesting). `prepare` refuses a query that
nests too deeply before it asks for its key.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from flux.data.plan import OPERATORS, TEXT_SEARCHES


def shape_key(query: Any) -> str | None:
    """A string equal for queries of the same shape, or None when the query must be planned every time."""
    if not isinstance(query, dict) or "after" in query:
        return None
    try:
        return _shape(query)
    except RecursionError:  # nesting no real query has; the planner refuses it
        return None


def _shape(query: dict[str, Any]) -> str | None:
    shape: dict[str, Any] = {}
    for key, value in query.items():
        if key == "where":
            shape[key] = _where(value)
        elif key == "columns":
            shape[key] = _columns(value)
        elif key == "values":
            rows = value if isinstance(value, list) else [value]
            if not all(isinstance(row, dict) for row in rows):
                return None
            if any(isinstance(v, (dict, list)) for row in rows for v in row.values()):
                return None
            shape[key] = (
                [{k: _type(v) for k, v in row.items()} for row in rows]
                if isinstance(value, list)
                else {k: _type(v) for k, v in value.items()}
            )
        elif key == "set" and isinstance(value, dict):
            shape[key] = {k: _type(v) for k, v in value.items()}
        elif key == "offset":
            is_count = isinstance(value, int) and not isinstance(value, bool) and value > 0
            shape[key] = "<count>" if is_count else value  # anything else is planned (and refused) as itself
        else:
            shape[key] = value
    return repr(shape)  # JSON types only (parsed JSON), so equal reprs mean equal shapes


def _where(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    shaped: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("and", "or") and isinstance(value, list):
            shaped[key] = [_where(item) for item in value]
        elif key == "not":
            shaped[key] = [_where(item) for item in value] if isinstance(value, list) else _where(value)
        elif isinstance(value, dict):
            # Operators of a column, or the where of a relation: operands become types, the rest recurses.
            shaped[key] = {
                op: _operand(op, operand) if op in OPERATORS else _where({op: operand})[op]
                for op, operand in value.items()
            }
        else:
            shaped[key] = _type(value)  # shorthand `{"column": value}`; null stays null (it means `is null`)
    return shaped


def _operand(op: str, operand: Any) -> Any:
    if op == "is":
        return operand
    if op in TEXT_SEARCHES and isinstance(operand, dict):
        # A search's configuration is checked against the catalog when planned: it is part of the shape.
        return {"<search>": {k: v if k == "config" else _type(v) for k, v in operand.items()}}
    return _type(operand)


def _columns(items: Any) -> Any:
    if not isinstance(items, list):
        return items
    shaped: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            shaped.append({name: _embed(spec) for name, spec in item.items()})
        else:
            shaped.append(item)
    return shaped


def _embed(spec: Any) -> Any:
    if isinstance(spec, list):
        return _columns(spec)
    if isinstance(spec, dict):
        return {
            k: _where(v) if k == "where" else _columns(v) if k == "columns" else v for k, v in spec.items()
        }
    return spec


def _type(value: Any) -> Any:
    """What the planner may look at in a value: its JSON type, and for containers the types inside."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float, Decimal)):
        return "<number>"
    if isinstance(value, str):
        return "<string>"
    if isinstance(value, (list, dict)):
        return "<json>" + _container(value)
    return repr(type(value))


def _container(value: Any) -> str:
    """A JSON value's types as text: `[...]` holds the distinct types of a list's items (sorted), `{...}` each
    key (JSON-quoted, the only text taken from the value) and its type. Linear in the value's size."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return "n"
    if isinstance(value, str):
        return "s"
    if isinstance(value, list):
        return "[" + ",".join(sorted({_container(v) for v in value})) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + _container(v) for k, v in value.items()) + "}"
    return repr(type(value))
