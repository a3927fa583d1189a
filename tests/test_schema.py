"""The committed `sql/schema.sql` is exactly what a fresh migrate produces (`make schema` rewrites it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from flux import migrate
from tests.fixtures.postgres import PostgresServer

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "sql" / "schema.sql"
DUMPED_FROM_MAJOR = 15  # pg_dump's output differs between major versions
_VOLATILE_PREFIXES = ("-- Dumped from", "-- Dumped by", "\\restrict", "\\unrestrict")


def dump_schema(pg_server: PostgresServer, dsn: str) -> str:
    """pg_dump of schema `flux`, without the dated span partitions and the lines that change per run."""
    pg_dump = str(pg_server.bindir / "pg_dump")
    result = subprocess.run(
        [pg_dump, "--schema-only", "--schema=flux", "--no-owner", "--exclude-table=flux.spans_2*", "-d", dsn],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if not line.startswith(_VOLATILE_PREFIXES)]
    return "\n".join(lines).strip() + "\n"


def test_a_fresh_migrate_equals_the_committed_schema_dump(pg_server: PostgresServer, empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        major = conn.info.server_version // 10000
    if major != DUMPED_FROM_MAJOR:
        pytest.skip(f"sql/schema.sql is dumped from PostgreSQL {DUMPED_FROM_MAJOR}; this server is {major}")
    migrate.migrate(empty_dsn)
    dumped = dump_schema(pg_server, empty_dsn)
    if os.environ.get("FLUX_WRITE_SCHEMA"):
        SCHEMA_FILE.write_text(dumped)
    assert dumped == SCHEMA_FILE.read_text(), (
        "sql/schema.sql is stale: run `make schema` and commit the result"
    )
