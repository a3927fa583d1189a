"""`make bench`: run every benchmark (or those named: `python -m bench gateway runtime`) against DATABASE_URL,
or a throwaway embedded Postgres."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench import bisect, data_engine, gateway, inspect, queue, replay, runtime, session_reset, track_overhead
from flux import migrate
from flux.postgres import EmbeddedPostgres

BENCHES = {
    "track_overhead": track_overhead,
    "data_engine": data_engine,
    "runtime": runtime,
    "gateway": gateway,
    "inspect": inspect,
    "queue": queue,
    "replay": replay,
    "bisect": bisect,
    "session_reset": session_reset,
}


def main(names: list[str]) -> None:
    unknown = set(names) - set(BENCHES)
    if unknown:
        sys.exit(f"no benchmark {', '.join(sorted(unknown))}; there are {', '.join(BENCHES)}")
    chosen = [BENCHES[name] for name in names or BENCHES]
    dsn = os.environ.get("DATABASE_URL")
    if dsn:
        _run(dsn, chosen)
        return
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-"))
    folder.chmod(0o755)
    try:
        with EmbeddedPostgres(folder / "pg") as embedded_dsn:
            _run(embedded_dsn, chosen)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(dsn: str, benches: list) -> None:
    migrate.migrate(dsn)
    for bench in benches:
        bench.run(dsn)


main(sys.argv[1:])
