"""What the pages show, shaped from what the API's functions read: a route's error rate and percentiles over
the requests listed, and a trace as the waterfall script takes it."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from flux.trace.diff import TraceDiff
from flux.trace.tree import Trace

Row = dict[str, Any]


def route_stats(rows: list[Row]) -> list[Row]:
    """Per route (method and path) of `rows`: requests, error rate, p50 and p99 latency in ms."""
    by_route: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        by_route[(row.get("method") or row["kind"], row.get("path") or row.get("function") or "")].append(row)
    stats = []
    for (method, path), group in sorted(by_route.items(), key=lambda item: -len(item[1])):
        durations = sorted(int(row["duration_us"] or 0) for row in group)
        errors = sum(1 for row in group if not row["ok"])
        stats.append({"method": method, "path": path, "count": len(group),
                      "error_rate": errors / len(group), "p50_us": _percentile(durations, 0.50),
                      "p99_us": _percentile(durations, 0.99)})  # fmt: skip
    return stats


def _percentile(ordered: list[int], fraction: float) -> int:
    """The nearest-rank percentile of an ordered, non-empty list."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def trace_data(trace: Trace) -> dict[str, Any]:
    """The trace as the waterfall draws it: each span as a row (seq, parent, depth, module, name, start and
    duration in µs from the request's start, ok), its input, output and error by seq, the mutations each
    span made, and those no span made (under seq -1; `unattached` says when the first of them came)."""
    columns = ("seq", "parent_seq", "depth", "module", "name", "offset_us", "duration_us", "ok")
    mutations: dict[int, list[Row]] = defaultdict(list)
    for m in trace.mutations:
        mutations[m["span_seq"] if m["span_seq"] is not None else -1].append(
            {
                "table": f"{m['table_schema']}.{m['table_name']}",
                "op": m["op"],
                "key": m["row_pk"],
                "old": m["old"],
                "new": m["new"],
                "changed": m["changed"],
            }
        )
    request = trace.request
    unattached = None
    if -1 in mutations:  # row changes of the request that no span made (a deferred trigger's, say)
        started, duration = request.get("started_at"), int(request.get("duration_us") or 0)
        times = [m["at"] for m in trace.mutations if m["span_seq"] is None and m.get("at") is not None]
        offset = 0
        if started is not None and times:
            offset = min(max(0, int((min(times) - started).total_seconds() * 1e6)), duration)
        unattached = {"offset_us": offset, "rows": len(mutations[-1])}
    return {
        "request": {
            "id": request["id"],
            "duration_us": request["duration_us"],
            "ok": request["ok"],
            "status": request["status"],
        },
        "columns": columns,
        "spans": [[span[name] for name in columns] for span in trace.spans],
        "details": {
            str(span["seq"]): {
                "input": span["input"],
                "output": span["output"],
                "error": span["error"],
                "attributes": span["attributes"],
            }
            for span in trace.spans
        },
        "mutations": {str(seq): rows for seq, rows in mutations.items()},
        "unattached": unattached,
    }


def first_divergence(differences: TraceDiff) -> Row | None:
    """Where two traces first part, as `flux incident replay` reports it first: the first span, in execution
    order, that was added, is missing or changed (its index in `differences.spans`); else the first row change
    that differs; else the first difference of the requests' outcome (status, error, output). None when they
    are the same."""
    spans = differences.spans
    for index, span in enumerate(spans):
        following = spans[index + 1] if index + 1 < len(spans) else None
        if (
            span.status == "missing"
            and following
            and following.status == "added"
            and following.depth == span.depth
        ):
            # one span in place of another (`GET /notes/1` where the other had `GET /notes/2`)
            name = f"{span.name} → {following.name}"
            return {"where": "span", "index": index, "status": "replaced", "name": name,
                    "seq": (span.a or {}).get("seq"), "change": None}  # fmt: skip
        if span.status != "same":
            return {"where": "span", "index": index, "status": span.status, "name": span.name,
                    "seq": (span.b or span.a or {}).get("seq"),
                    "change": span.changes[0] if span.changes else None}  # fmt: skip
    for mutation in differences.mutations:
        if mutation.status != "same":
            return {"where": "mutation", "status": mutation.status, "name": f"{mutation.op} {mutation.table}",
                    "change": mutation.changes[0] if mutation.changes else None}  # fmt: skip
    if differences.request:
        return {"where": "request", "status": "changed", "name": "the request's outcome",
                "change": differences.request[0]}  # fmt: skip
    return None
