"""`make bench`: every scenario against its floor or peer, side by side, printed as one table and written to
bench/results/<date>-<short sha>.json (`python -m bench --quick`: `make bench-quick`, smaller and shorter).
`python -m bench NAME...` runs the older, more talkative scenarios on their own (`replay`, `bisect`, ...).
Against DATABASE_URL, or a throwaway embedded Postgres."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import (
    bisect,
    data_engine,
    function_cpu,
    gateway,
    inspect,
    queue,
    replay,
    request_cost,
    runtime,
    session_reset,
    track_overhead,
)
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
    "function_cpu": function_cpu,
    "request_cost": request_cost,
}


@contextmanager
def database() -> Iterator[str]:
    """DATABASE_URL, or an embedded Postgres of its own (removed after); migrated."""
    dsn = os.environ.get("DATABASE_URL")
    if dsn:
        migrate.migrate(dsn)
        yield dsn
        return
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-"))
    folder.chmod(0o755)
    try:
        with EmbeddedPostgres(folder / "pg") as embedded_dsn:
            migrate.migrate(embedded_dsn)
            yield embedded_dsn
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(arguments: list[str]) -> None:
    options = [a for a in arguments if a.startswith("--")]
    names = [a for a in arguments if not a.startswith("--")]
    if set(options) - {"--quick"}:
        sys.exit(f"unknown option {' '.join(sorted(set(options) - {'--quick'}))}; there is --quick")
    if not names:
        from bench import suite

        with database() as dsn:
            sys.exit(suite.main(dsn, quick="--quick" in options))
    unknown = set(names) - set(BENCHES)
    if unknown:
        sys.exit(f"no benchmark {', '.join(sorted(unknown))}; there are {', '.join(BENCHES)}")
    chosen: list[Callable[[str], None]] = [BENCHES[name].run for name in names]
    with database() as dsn:
        for run in chosen:
            run(dsn)


main(sys.argv[1:])
