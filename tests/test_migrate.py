"""The migration runner against a real Postgres: order, idempotence, locking, drift and failure."""

from __future__ import annotations

import shutil
import threading
import uuid
import warnings
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from flux import migrate
from flux.errors import DatabaseNewerThanCode, MigrationEdited, MigrationFailed, MigrationFileInvalid
from tests.fixtures.postgres import PostgresServer


def _write(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(body)
    return path


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname <> 'pg_catalog'"
        )
        return {row[0] for row in rows if not row[0].startswith("information_schema")}


def test_fresh_migrate_applies_every_file_once_then_is_a_no_op(empty_dsn: str) -> None:
    applied = migrate.migrate(empty_dsn)
    assert [m.label for m in applied] == [m.label for m in migrate.flux_migrations()]
    assert {"flux.requests", "flux.spans", "flux.mutations", "flux.schema_migrations"} <= _tables(empty_dsn)

    assert migrate.migrate(empty_dsn) == []
    assert migrate.is_current(empty_dsn)


def test_two_concurrent_migrates_both_succeed(empty_dsn: str) -> None:
    results: list[object] = []

    def run() -> None:
        try:
            results.append(migrate.migrate(empty_dsn))
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert all(isinstance(result, list) for result in results), results
    applied_counts = sorted(len(result) for result in results)  # type: ignore[arg-type]
    assert applied_counts == [0, len(migrate.flux_migrations())]


def test_an_edited_applied_migration_is_refused(empty_dsn: str, tmp_path: Path) -> None:
    project = tmp_path / "migrations"
    path = _write(project, "0001_orders.sql", "CREATE TABLE orders (id int PRIMARY KEY);\n")
    migrate.migrate(empty_dsn, project_migrations=project)

    path.write_text("CREATE TABLE orders (id bigint PRIMARY KEY);\n")
    with pytest.raises(MigrationEdited, match=r"0001_orders\.sql was edited") as caught:
        migrate.migrate(empty_dsn, project_migrations=project)
    assert caught.value.code == "FX811"
    assert [row.state for row in migrate.status(empty_dsn, project_migrations=project)][-1] == "changed"


def test_a_database_newer_than_the_code_is_refused(empty_dsn: str, tmp_path: Path) -> None:
    project = tmp_path / "migrations"
    _write(project, "0001_orders.sql", "CREATE TABLE orders (id int PRIMARY KEY);\n")
    _write(project, "0002_items.sql", "CREATE TABLE items (id int PRIMARY KEY);\n")
    migrate.migrate(empty_dsn, project_migrations=project)

    (project / "0002_items.sql").unlink()
    with pytest.raises(DatabaseNewerThanCode, match="0002_items") as caught:
        migrate.migrate(empty_dsn, project_migrations=project)
    assert caught.value.code == "FX812"


def test_an_unknown_flux_migration_is_refused(empty_dsn: str) -> None:
    migrate.migrate(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        conn.execute(
            "INSERT INTO flux.schema_migrations (kind, version, name, checksum)"
            " VALUES ('flux', '9999', 'future', 'x')"
        )
    with pytest.raises(DatabaseNewerThanCode, match="9999_future"):
        migrate.migrate(empty_dsn)


def test_a_failing_migration_rolls_back_and_names_the_line(empty_dsn: str, tmp_path: Path) -> None:
    project = tmp_path / "migrations"
    _write(project, "0001_ok.sql", "CREATE TABLE ok_table (id int PRIMARY KEY);\n")
    _write(
        project,
        "0002_broken.sql",
        "CREATE TABLE half_done (id int PRIMARY KEY);\n\nINSERT INTO no_such_table VALUES (1);\n",
    )
    with pytest.raises(MigrationFailed, match=r"0002_broken.sql failed at line 3: relation") as caught:
        migrate.migrate(empty_dsn, project_migrations=project)
    assert caught.value.code == "FX810"

    tables = _tables(empty_dsn)
    assert "public.ok_table" in tables
    assert "public.half_done" not in tables
    states = {row.version: row.state for row in migrate.status(empty_dsn, project_migrations=project)}
    assert (states["0001"], states["0002"]) == ("applied", "pending")


def test_misnamed_gapped_or_unparseable_files_are_refused_before_anything_runs(
    empty_dsn: str, tmp_path: Path
) -> None:
    project = tmp_path / "migrations"
    _write(project, "0001_first.sql", "CREATE TABLE first (id int PRIMARY KEY);\n")
    bad = _write(project, "0003_third.sql", "SELECT 1;\n")
    with pytest.raises(MigrationFileInvalid, match="should be numbered 0002"):
        migrate.migrate(empty_dsn, project_migrations=project)
    bad.unlink()

    _write(project, "2_second.sql", "SELECT 1;\n")
    with pytest.raises(MigrationFileInvalid, match="NNNN_snake_name"):
        migrate.migrate(empty_dsn, project_migrations=project)
    (project / "2_second.sql").unlink()

    _write(project, "0002_typo.sql", "SELECT 1;\nCREAT TABLE x (id int);\n")
    with pytest.raises(MigrationFileInvalid, match="syntax error at line 2"):
        migrate.migrate(empty_dsn, project_migrations=project)
    assert "public.first" not in _tables(empty_dsn)


def test_a_changed_function_file_is_reapplied(
    empty_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "sql"
    shutil.copytree(migrate.sql_dir(), copy)
    monkeypatch.setattr(migrate, "sql_dir", lambda: copy)
    migrate.migrate(empty_dsn)

    claims = copy / "functions" / "010_claims.sql"
    claims.write_text(claims.read_text().replace("SELECT flux.claim('sub')", "SELECT 'changed'::text"))
    applied = migrate.migrate(empty_dsn)

    assert [m.label for m in applied] == ["010_claims.sql"]
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT flux.user_id()").fetchone() == ("changed",)


def test_flux_migration_files_are_consecutive_with_a_purpose_line() -> None:
    root = migrate.sql_dir()
    files = sorted((root / "migrations").glob("*.sql")) + sorted((root / "functions").glob("*.sql"))
    for path in files:
        assert path.read_text().startswith("-- Purpose: "), path
    versions = [m.version for m in migrate.load_versioned(root / "migrations", "flux")]
    assert versions == [f"{n:04d}" for n in range(1, len(versions) + 1)]


@pytest.mark.parametrize(
    "statement",
    [
        "COMMIT;",
        "BEGIN;",
        "VACUUM orders;",
        "CREATE INDEX CONCURRENTLY orders_x_idx ON orders (id);",
        "REINDEX INDEX CONCURRENTLY orders_pkey;",
    ],
)
def test_statements_that_would_break_the_files_transaction_are_refused(
    empty_dsn: str, tmp_path: Path, statement: str
) -> None:
    project = tmp_path / "migrations"
    _write(project, "0001_orders.sql", f"CREATE TABLE orders (id int PRIMARY KEY);\n{statement}\nSELECT 1;\n")
    with pytest.raises(
        MigrationFileInvalid, match=r"0001_orders\.sql line 2: .* cannot run inside a migration"
    ):
        migrate.migrate(empty_dsn, project_migrations=project)
    assert "public.orders" not in _tables(empty_dsn)


def test_a_role_that_is_not_superuser_can_migrate(pg_server: PostgresServer) -> None:
    """A managed Postgres gives no superuser: CREATEROLE and owning the database must be enough."""
    suffix = uuid.uuid4().hex[:8]
    role, database = f"migrator_{suffix}", f"flux_owned_{suffix}"
    with pg_server.admin() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN CREATEROLE".encode())
        admin.execute(f"CREATE DATABASE {database} OWNER {role}".encode())
    try:
        dsn = conninfo.make_conninfo(pg_server.dsn(database), user=role)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the BYPASSRLS warning arrives as a notice, not a Python warning
            applied = migrate.migrate(dsn)
        assert applied
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("SELECT flux.track('t')")
            conn.execute("INSERT INTO t VALUES (1)")
            assert conn.execute("SELECT count(*) FROM flux.mutations").fetchone() == (1,)
    finally:
        pg_server.drop_database(database)
        with pg_server.admin() as admin:
            admin.execute(f"DROP OWNED BY {role}".encode())
            admin.execute(f"DROP ROLE {role}".encode())


def test_a_projects_tables_are_tracked_unless_they_opt_out(empty_dsn: str, tmp_path: Path) -> None:
    project = tmp_path / "migrations"
    _write(
        project,
        "0001_tables.sql",
        "CREATE TABLE notes (id int PRIMARY KEY, body text);\n"
        "CREATE TABLE scratch (id int PRIMARY KEY);\n"
        "COMMENT ON TABLE scratch IS 'cache only @flux:untracked';\n"
        "CREATE TABLE logs (line text);\n",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        migrate.migrate(empty_dsn, project_migrations=project)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT table_name FROM flux.tracked_tables").fetchall() == [("notes",)]
        conn.execute("INSERT INTO notes VALUES (1, 'hi')")
        assert conn.execute("SELECT op FROM flux.mutations").fetchall() == [("INSERT",)]


def test_the_ascending_time_indexes_migration_rebuilds_only_what_is_descending(empty_dsn: str) -> None:
    """0012 rebuilds a descending time index of flux.requests and leaves those already ascending."""
    migrate.migrate(empty_dsn)
    file = migrate.sql_dir() / "migrations" / "0012_requests_time_indexes_ascending.sql"
    indexes = (
        "SELECT c.relname, c.oid, pg_get_indexdef(c.oid) FROM pg_class c"
        " WHERE c.relname LIKE 'requests_%started_at_idx' ORDER BY 1"
    )
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX flux.requests_started_at_idx")
        conn.execute("CREATE INDEX requests_started_at_idx ON flux.requests (started_at DESC)")
        before = {name: (oid, definition) for name, oid, definition in conn.execute(indexes)}
        conn.execute(file.read_text())
        after = {name: (oid, definition) for name, oid, definition in conn.execute(indexes)}
    assert "DESC" in before["requests_started_at_idx"][1]
    assert after["requests_started_at_idx"][1].endswith("USING btree (started_at)")
    assert after["requests_started_at_idx"][0] != before["requests_started_at_idx"][0]
    for untouched in ("requests_function_started_at_idx", "requests_failed_started_at_idx"):
        assert after[untouched] == before[untouched]
