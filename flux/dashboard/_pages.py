"""What the pages show, shaped from what the API's functions read: a route's error rate and percentiles over
the requests listed, and a trace as the waterfall script takes it."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

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
    duration in µs from the request's start, ok), its input, output and error by seq, and the mutations each
    span made."""
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
    }
