"""`make bench`: run every benchmark against DATABASE_URL, or a throwaway embedded Postgres."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench import data_engine, gateway, runtime, track_overhead
from flux import migrate
from flux.postgres import EmbeddedPostgres


def main() -> None:
    dsn = os.environ.get("DATABASE_URL")
    if dsn:
        migrate.migrate(dsn)
        track_overhead.run(dsn)
        data_engine.run(dsn)
        runtime.run(dsn)
        gateway.run(dsn)
        return
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-"))
    folder.chmod(0o755)
    try:
        with EmbeddedPostgres(folder / "pg") as embedded_dsn:
            migrate.migrate(embedded_dsn)
            track_overhead.run(embedded_dsn)
            data_engine.run(embedded_dsn)
            runtime.run(embedded_dsn)
            gateway.run(embedded_dsn)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


main()
