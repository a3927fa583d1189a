"""flux_service may read and write every table a project makes in schema public, with no GRANT of the
project's own (its code runs as it: `flux invoke`, queue jobs); flux_anon and flux_user get only what is
granted."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from flux import migrate
from tests.fixtures.postgres import PostgresServer

Conn = psycopg.Connection[Any]
TABLE_RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
NOTES = """CREATE TABLE notes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE tags (id serial PRIMARY KEY, name text NOT NULL);
CREATE VIEW note_bodies AS SELECT body FROM notes;
GRANT SELECT, INSERT ON notes TO flux_anon;
"""


def _project(folder: Path, *files: str) -> Path:
    folder.mkdir(exist_ok=True)
    for number, body in enumerate(files, start=1):
        (folder / f"{number:04d}_step{number}.sql").write_text(body)
    return folder


def _rights(conn: Conn, role: str, table: str) -> set[str]:
    return {
        right
        for right in TABLE_RIGHTS
        if conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, right)).fetchone() == (True,)
    }


def _as_service(conn: Conn, *statements: str) -> list[Any]:
    """Run `statements` as flux_service in one rolled-back transaction; the last one's rows."""
    rows: list[Any] = []
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE flux_service")
        for statement in statements:
            cursor = conn.execute(statement.encode())
            rows = cursor.fetchall() if cursor.description else []
    return rows


def test_the_service_role_may_use_every_table_a_projects_migrations_create(
    empty_dsn: str, tmp_path: Path
) -> None:
    migrate.migrate(empty_dsn, project_migrations=_project(tmp_path / "migrations", NOTES))
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        for table in ("notes", "tags", "note_bodies"):
            assert _rights(conn, "flux_service", table) == set(TABLE_RIGHTS), table
        written = _as_service(
            conn,
            "INSERT INTO notes (body) VALUES ('hi')",
            "INSERT INTO tags (name) VALUES ('a')",  # a serial column: nextval on its sequence
            "UPDATE notes SET body = 'ho'",
            "SELECT setval('tags_id_seq', 10)",
            "DELETE FROM tags",
            "TRUNCATE tags",
            "SELECT body FROM note_bodies",
        )
        assert written == [("ho",)]
        # anon and user get nothing they were not granted
        assert _rights(conn, "flux_anon", "notes") == {"SELECT", "INSERT"}
        assert _rights(conn, "flux_user", "notes") == set()
        for role in ("flux_anon", "flux_user"):
            assert _rights(conn, role, "tags") == _rights(conn, role, "note_bodies") == set()
            assert conn.execute(
                "SELECT has_sequence_privilege(%s, 'tags_id_seq', 'USAGE')", (role,)
            ).fetchone() == (False,)
        # nor do Flux's own tables open to the service role
        assert _rights(conn, "flux_service", "flux.requests") == set()


def test_tables_made_later_in_psql_are_the_service_roles_and_a_revoke_on_one_stays(
    empty_dsn: str, tmp_path: Path
) -> None:
    folder = _project(tmp_path / "migrations", NOTES)
    migrate.migrate(empty_dsn, project_migrations=folder)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, total numeric)")
        assert _rights(conn, "flux_service", "orders") == set(TABLE_RIGHTS)
        assert _as_service(conn, "INSERT INTO orders (total) VALUES (1) RETURNING id") == [(1,)]
        assert _rights(conn, "flux_anon", "orders") == _rights(conn, "flux_user", "orders") == set()
        conn.execute("REVOKE ALL ON notes FROM flux_service")
    _project(folder, NOTES, "CREATE TABLE invoices (id int PRIMARY KEY);")
    migrate.migrate(empty_dsn, project_migrations=folder)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert _rights(conn, "flux_service", "notes") == set()  # the DBA's REVOKE is not undone
        assert _rights(conn, "flux_service", "invoices") == set(TABLE_RIGHTS)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            _as_service(conn, "SELECT * FROM notes")


def test_tables_a_second_role_migrates_are_the_service_roles_too(
    pg_server: PostgresServer, template_database: str, tmp_path: Path
) -> None:
    """Default privileges belong to the creating role: Flux migrated by one role, the project by another."""
    suffix = uuid.uuid4().hex[:8]
    role, database = f"deployer_{suffix}", f"flux_second_{suffix}"
    with pg_server.admin() as admin:
        admin.execute(f"CREATE ROLE {role} SUPERUSER NOLOGIN".encode())
    dsn = pg_server.create_database(database, template=template_database)
    try:
        as_role = conninfo.make_conninfo(dsn, options=f"-c role={role}")
        migrate.migrate(as_role, project_migrations=_project(tmp_path / "migrations", NOTES))
        with psycopg.connect(dsn, autocommit=True) as conn:
            owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'tags'").fetchone()
            assert owner == (role,)
            assert _rights(conn, "flux_service", "tags") == set(TABLE_RIGHTS)
            assert _as_service(conn, "INSERT INTO tags (name) VALUES ('a') RETURNING id") == [(1,)]
    finally:
        pg_server.drop_database(database)
        with pg_server.admin() as admin:
            admin.execute(f"DROP ROLE {role}".encode())


def test_a_database_migrated_before_has_its_tables_given_to_the_service_role(empty_dsn: str) -> None:
    """Migration 0013 grants what a project made before it (the runner's defaults cover what comes after)."""
    migrate.migrate(empty_dsn)
    upgrade = next(m for m in migrate.flux_migrations() if m.version == "0013")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM flux_service")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM flux_service")
        conn.execute("CREATE TABLE legacy (id serial PRIMARY KEY)")  # as a table made before this Flux
        assert _rights(conn, "flux_service", "legacy") == set()
        conn.execute(upgrade.sql.encode())
        assert _rights(conn, "flux_service", "legacy") == set(TABLE_RIGHTS)
        assert conn.execute(
            "SELECT has_sequence_privilege('flux_service', 'legacy_id_seq', 'USAGE')"
        ).fetchone() == (True,)
        assert _rights(conn, "flux_anon", "legacy") == _rights(conn, "flux_user", "legacy") == set()
