"""Two requests side by side (`flux trace diff A B`): their span trees aligned, what each span did differently
(latency, ok or error, input, output), and how their mutations differ.

A span is aligned by its path in the tree: the module and name of each ancestor and of itself, and its place
among siblings with the same module and name (the second `db:select(orders)` under a function matches the
second one in the other request). Mutations are aligned by the span that made them, then table, operation
and order, so a re-run that inserted the same row under another serial id shows as the same insert with
another key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from flux import jsontext
from flux.trace.tree import Trace

Row = dict[str, Any]
Status = Literal["same", "changed", "added", "missing"]
# Spans whose output is a clock reading or random bytes differ on every run; only their presence is compared.
_UNCOMPARED_OUTPUT = {"clock"}
MAX_CHANGES = 20  # per span or mutation, the rest counted


@dataclass(frozen=True)
class Change:
    """One value that differs: where (`output.rows[0].body`), and its value in each request."""

    path: str
    a: Any
    b: Any


@dataclass(frozen=True)
class SpanDiff:
    status: Status
    depth: int
    name: str
    a: Row | None
    b: Row | None
    changes: list[Change] = field(default_factory=list)

    @property
    def delta_us(self) -> int | None:
        if self.a is None or self.b is None:
            return None
        return int(self.b["duration_us"] or 0) - int(self.a["duration_us"] or 0)


@dataclass(frozen=True)
class MutationDiff:
    status: Status
    table: str
    op: str
    a: Row | None
    b: Row | None
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class TraceDiff:
    a: Trace
    b: Trace
    request: list[Change]  # status, ok, error, output of the requests themselves
    spans: list[SpanDiff]
    mutations: list[MutationDiff]

    @property
    def same(self) -> bool:
        statuses = [d.status for d in self.spans] + [m.status for m in self.mutations]
        return not self.request and all(status == "same" for status in statuses)


def diff_traces(a: Trace, b: Trace) -> TraceDiff:
    """How request `b` differs from request `a`."""
    request = [
        change
        for column in ("status", "ok", "error", "output")
        for change in compare(column, a.request.get(column), b.request.get(column))
    ]
    keys_a, keys_b = _span_keys(a.spans), _span_keys(b.spans)
    spans = _aligned(
        [keys_a[s["seq"]] for s in a.spans], [keys_b[s["seq"]] for s in b.spans], a.spans, b.spans, _span_diff
    )
    marks_a, marks_b = _mutation_keys(a.mutations, keys_a), _mutation_keys(b.mutations, keys_b)
    mutations = _aligned(marks_a, marks_b, a.mutations, b.mutations, _mutation_diff)
    return TraceDiff(a, b, request, spans, mutations)


def compare(path: str, a: Any, b: Any) -> list[Change]:
    """Every leaf where `a` and `b` differ, by path; a value present on one side only is one change."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [change for key in _union(a, b) for change in compare(f"{path}.{key}", a.get(key), b.get(key))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            change
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for change in compare(f"{path}[{i}]", x, y)
        ]
    return [] if canonical(a) == canonical(b) else [Change(path, a, b)]


def _span_keys(spans: list[Row]) -> dict[int, tuple[Any, ...]]:
    """Each span's alignment key: its ancestors' keys, its module and name, its place among such siblings."""
    keys: dict[int, tuple[Any, ...]] = {}
    seen: dict[tuple[Any, ...], int] = {}
    for span in spans:  # execution order: a parent comes before its children
        parent = keys.get(span["parent_seq"], ()) if span["parent_seq"] is not None else ()
        sibling = (parent, span["module"], span["name"])
        seen[sibling] = seen.get(sibling, -1) + 1
        keys[span["seq"]] = (*parent, (span["module"], span["name"], seen[sibling]))
    return keys


def _mutation_keys(mutations: list[Row], span_keys: dict[int, tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    seen: dict[tuple[Any, ...], int] = {}
    keys = []
    for m in mutations:
        where = (span_keys.get(m["span_seq"]), m["table_schema"], m["table_name"], m["op"])
        seen[where] = seen.get(where, -1) + 1
        keys.append((*where, seen[where]))
    return keys


def _aligned(
    keys_a: list[Any], keys_b: list[Any], rows_a: list[Row], rows_b: list[Row], pair: Any
) -> list[Any]:
    """Rows of both sides in one sequence, matched by key in order (difflib), each compared by `pair`."""
    merged = []
    matcher = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False)
    for tag, a_from, a_to, b_from, b_to in matcher.get_opcodes():
        if tag == "equal":
            merged += [pair(rows_a[a_from + i], rows_b[b_from + i]) for i in range(a_to - a_from)]
            continue
        merged += [pair(row, None) for row in rows_a[a_from:a_to]]
        merged += [pair(None, row) for row in rows_b[b_from:b_to]]
    return merged


def _span_diff(a: Row | None, b: Row | None) -> SpanDiff:
    either = a if a is not None else b
    assert either is not None
    if a is None or b is None:
        return SpanDiff("added" if a is None else "missing", either["depth"], either["name"], a, b)
    changes = compare("ok", a["ok"], b["ok"]) + compare("error", a["error"], b["error"])
    changes += compare("input", a["input"], b["input"])
    if a["module"] not in _UNCOMPARED_OUTPUT:
        changes += compare("output", a["output"], b["output"])
    return SpanDiff("changed" if changes else "same", b["depth"], b["name"], a, b, changes)


def _mutation_diff(a: Row | None, b: Row | None) -> MutationDiff:
    either = a if a is not None else b
    assert either is not None
    table = f"{either['table_schema']}.{either['table_name']}"
    if a is None or b is None:
        return MutationDiff("added" if a is None else "missing", table, either["op"], a, b)
    changes = compare("key", a["row_pk"], b["row_pk"]) + compare("old", a["old"], b["old"])
    changes += compare("new", a["new"], b["new"])
    return MutationDiff("changed" if changes else "same", table, a["op"], a, b, changes)


def _union(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [*a, *(key for key in b if key not in a)]


def canonical(value: Any) -> str:
    """`value` as text that is equal for equal JSON (keys sorted, numbers by value)."""
    return jsontext.display(_numbers_by_value(value), sort_keys=True)


def _numbers_by_value(value: Any) -> Any:
    """`value` with each number as a Decimal without trailing zeros: JSON's `12.50`, `12.5` and Postgres's
    `12.5` are one number, however each side spelled it."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float, Decimal)):
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        return number.normalize() if number.is_finite() else value
    if isinstance(value, dict):
        return {key: _numbers_by_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers_by_value(item) for item in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Whether `a` and `b` are the same JSON value (key order and number spelling aside)."""
    return canonical(a) == canonical(b)
