"""The committed `sql/schema.sql` is exactly what a fresh migrate produces (`make schema` rewrites it)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from flux import migrate
from tests.fixtures.postgres import PostgresServer

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "sql" / "schema.sql"
DUMPED_FROM_MAJOR = 15  # pg_dump's output differs between major versions
_VOLATILE_PREFIXES = ("-- Dumped from", "-- Dumped by", "\\restrict", "\\unrestrict")
# Every daily partition (spans_YYYYMMDD, job_history_YYYYMMDD, any later one): named after the day the migrate
# ran, so the dump leaves them out and holds no date. Their parents and default partitions stay in.
DATED_PARTITIONS = "flux.*_[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]"


def dump_schema(pg_server: PostgresServer, dsn: str) -> str:
    """pg_dump of schema `flux`, without the dated partitions and the lines that change per run."""
    pg_dump = str(pg_server.bindir / "pg_dump")
    result = subprocess.run(
        [pg_dump, "--schema-only", "--schema=flux", "--no-owner", f"--exclude-table={DATED_PARTITIONS}",
         "-d", dsn],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if not line.startswith(_VOLATILE_PREFIXES)]
    return "\n".join(lines).strip() + "\n"


def _skip_unless_dumped_major(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        major = conn.info.server_version // 10000
    if major != DUMPED_FROM_MAJOR:
        pytest.skip(f"sql/schema.sql is dumped from PostgreSQL {DUMPED_FROM_MAJOR}; this server is {major}")


def test_a_fresh_migrate_equals_the_committed_schema_dump(pg_server: PostgresServer, empty_dsn: str) -> None:
    _skip_unless_dumped_major(empty_dsn)
    migrate.migrate(empty_dsn)
    dumped = dump_schema(pg_server, empty_dsn)
    if os.environ.get("FLUX_WRITE_SCHEMA"):
        SCHEMA_FILE.write_text(dumped)
    assert dumped == SCHEMA_FILE.read_text(), (
        "sql/schema.sql is stale: run `make schema` and commit the result"
    )


_DATED_PARTITIONS_SQL = """
    SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent IN ('flux.spans'::regclass, 'flux.job_history'::regclass) AND c.relname ~ '_[0-9]{8}$'
"""


def test_the_dump_holds_no_date_so_it_matches_on_any_day(pg_server: PostgresServer, empty_dsn: str) -> None:
    """As if the migrate had run a week later: the partitions it made are those of other days."""
    _skip_unless_dumped_major(empty_dsn)
    migrate.migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        made_by_migrate = [row[0] for row in conn.execute(_DATED_PARTITIONS_SQL)]
        for parent in ("flux.spans", "flux.job_history"):
            conn.execute(
                "SELECT flux.create_day_partitions(%s, current_date + 8, current_date + 14)", (parent,)
            )
        for name in made_by_migrate:
            conn.execute(sql.SQL("DROP TABLE flux.{}").format(sql.Identifier(name)))
        left = [row[0] for row in conn.execute(_DATED_PARTITIONS_SQL)]
    dumped = dump_schema(pg_server, empty_dsn)
    assert made_by_migrate and left and not set(made_by_migrate) & set(left)
    assert not re.search(r"_20[0-9]{6}\b", dumped), "the schema dump names a dated partition"
    assert dumped == SCHEMA_FILE.read_text()
