"""The table `make bench` prints: each scenario in turn, Flux against its floor or peer side by side, then one
table and its JSON file. A scenario that fails prints as an `error` row (and the run exits 1); the others
still run. `FLUX_BENCH_ONLY=web,runtime` runs only those scenarios (by the names in SCENARIOS)."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

from bench import scenarios, table, web
from bench.table import Row

Scenario = Callable[[str, bool], list[Row]]
# name -> (what its rows are called if it fails, the function)
SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "web": ("data engine and whole path over HTTP", web.rows),
    "runtime": ("runtime", scenarios.runtime_rows),
    "queue": ("queue vs procrastinate", scenarios.queue_rows),
    "tracking": ("mutation tracking", scenarios.tracking_rows),
    "replay": ("replay", scenarios.replay_rows),
    "trace_store": ("trace store at scale", scenarios.trace_store_rows),  # last: it may leave a big store
}


def main(dsn: str, quick: bool) -> int:
    only = [name for name in os.environ.get("FLUX_BENCH_ONLY", "").split(",") if name]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        print(f"FLUX_BENCH_ONLY names no scenario {sorted(unknown)}; there are {', '.join(SCENARIOS)}")
        return 2
    started = time.monotonic()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    for name, (label, scenario) in SCENARIOS.items():
        if only and name not in only:
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        clock = time.monotonic()
        try:
            found = scenario(dsn, quick)
        except Exception as exc:  # one scenario's failure is its row; the others still run
            traceback.print_exc()
            found = [Row(label, "", None, None, "", error=f"{type(exc).__name__}: {str(exc)[:200]}")]
        timings[name] = round(time.monotonic() - clock, 1)
        print(f"bench: {name} took {timings[name]:.0f} s", file=sys.stderr, flush=True)
        rows += found
    elapsed = time.monotonic() - started
    command = "make bench-quick" if quick else "make bench"
    print()
    print(f"{command}: {len(rows)} rows in {elapsed:.0f} s; ratio = Flux / floor, the median of paired rounds"
          " [lowest-highest]")  # fmt: skip
    print(table.render(rows))
    path = table.write_json(rows, {"command": command, "quick": quick, "seconds": round(elapsed, 1),
                                   "scenario_seconds": timings})  # fmt: skip
    print(f"written to {path.relative_to(table.ROOT) if path.is_relative_to(table.ROOT) else path}")
    return 1 if any(row.error for row in rows) else 0
