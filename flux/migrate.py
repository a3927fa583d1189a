"""The migration runner: applies Flux's `sql/` and a project's `migrations/`, each file once, in order.

Before a project's migrations it gives flux_service its default rights on what they create in schema public
(`flux.grant_service_defaults()`); after the files it keeps span partitions ahead (`flux.maintain()`), tracks
every table a project's migrations created (`flux.track_all()`, unless commented `@flux:untracked`) and
applies the column policies as GRANTs.

`sql/migrations/NNNN_name.sql` and a project's `migrations/NNNN_name.sql` run once each, in one transaction
with their `flux.schema_migrations` row; `sql/functions/*.sql` (CREATE OR REPLACE) run again whenever their
checksum changes. A session advisory lock serialises concurrent runners. The runner refuses an applied file
that was edited and a database that has migrations this code does not know.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

import pglast
import psycopg

from flux import db
from flux.errors import (
    DatabaseNewerThanCode,
    DatabaseNotMigrated,
    MigrationEdited,
    MigrationFailed,
    MigrationFileInvalid,
)

Kind = Literal["flux", "function", "project"]
State = Literal["applied", "pending", "changed", "unknown"]

# Any constant works as long as every runner uses the same one; this is "flux.migrate" as a 64-bit number.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"flux.migrate").digest()[:8], "big", signed=True)
_MIGRATION_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


def sql_dir() -> Path:
    """Flux's own SQL: `sql/` beside the package in a checkout, `flux/_sql` in an installed wheel."""
    checkout = Path(__file__).resolve().parent.parent / "sql"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / "_sql"


@dataclass(frozen=True)
class Migration:
    """One SQL file the runner applies."""

    kind: Kind
    version: str
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return self.path.name if self.kind != "project" else f"migrations/{self.path.name}"


@dataclass(frozen=True)
class MigrationStatus:
    """Where one file stands against the database (`unknown`: applied, but no such file in this code)."""

    kind: Kind
    version: str
    name: str
    state: State
    applied_at: datetime | None


def load_versioned(folder: Path, kind: Kind) -> list[Migration]:
    """Read `NNNN_name.sql` files: numbered 0001 upwards with no gap, each valid SQL."""
    if not folder.is_dir():
        return []
    return versioned({path: path.read_text() for path in folder.glob("*.sql")}, kind)


def versioned(files: dict[Path, str], kind: Kind) -> list[Migration]:
    """`NNNN_name.sql` files given by path and text (read from a folder, or uploaded with a deploy)."""
    migrations = []
    for path, sql in sorted(files.items()):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationFileInvalid(
                f"{path} is not named NNNN_snake_name.sql", hint="rename it, e.g. 0002_add_orders.sql"
            )
        migrations.append(_parse(path, kind, match["version"], match["name"], sql))
    for expected, migration in enumerate(migrations, start=1):
        if int(migration.version) != expected:
            raise MigrationFileInvalid(
                f"{migration.path} should be numbered {expected:04d}: migrations are numbered without gaps",
                hint=f"rename it to {expected:04d}_{migration.name}.sql",
            )
    return migrations


def load_functions(folder: Path) -> list[Migration]:
    """Read the repeatable `CREATE OR REPLACE` files, applied in file-name order."""
    return [
        _parse(path, "function", path.stem, path.stem, path.read_text())
        for path in sorted(folder.glob("*.sql"))
    ]


def _parse(path: Path, kind: Kind, version: str, name: str, sql: str) -> Migration:
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        message, position = (*exc.args, 0)[:2]
        raise MigrationFileInvalid(
            f"{path} has a syntax error at line {_line(sql, position)}: {message}",
            hint="fix the SQL and run again",
        ) from exc
    for raw in statements:
        refusal = _outside_a_transaction(raw.stmt)
        if refusal:
            raise MigrationFileInvalid(
                f"{path} line {_line(sql, raw.stmt_location)}: {refusal} cannot run inside a migration",
                hint="each file runs in one transaction the runner commits; remove it, or run it by hand",
            )
    return Migration(kind=kind, version=version, name=name, path=path, sql=sql)


def _outside_a_transaction(statement: object) -> str | None:
    """Name a statement that would commit part of a file, or that Postgres refuses inside a transaction."""
    ast = pglast.ast
    if isinstance(statement, ast.TransactionStmt):
        return "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT)"
    if isinstance(statement, ast.VacuumStmt | ast.CreatedbStmt | ast.DropdbStmt | ast.AlterSystemStmt):
        return type(statement).__name__.removesuffix("Stmt").upper()
    if isinstance(statement, ast.IndexStmt | ast.DropStmt) and statement.concurrent:
        return "CONCURRENTLY"
    if isinstance(statement, ast.ReindexStmt) and any(
        option.defname == "concurrently" for option in statement.params or ()
    ):
        return "REINDEX CONCURRENTLY"
    return None


def _line(sql: str, position: object) -> int:
    return sql.count("\n", 0, max(int(str(position or 0)), 0)) + 1


def flux_migrations() -> list[Migration]:
    """Flux's own schema, then its functions, in the order the runner applies them."""
    root = sql_dir()
    return load_versioned(root / "migrations", "flux") + load_functions(root / "functions")


def all_migrations(project_migrations: Path | None = None) -> list[Migration]:
    """Everything one migrate applies: Flux's schema and functions, then the project's own migrations."""
    project = load_versioned(project_migrations, "project") if project_migrations else []
    return flux_migrations() + project


def migrate(dsn: str, *, project_migrations: Path | None = None) -> list[Migration]:
    """Bring the database up to date; returns what was applied (empty when it already was)."""
    migrations = all_migrations(project_migrations)
    with db.connect(dsn, autocommit=True) as conn, _migration_lock(conn):
        _bootstrap(conn)
        applied_rows = _applied(conn)
        _refuse_drift(migrations, applied_rows, project_migrations is not None)
        pending = [m for m in migrations if _state(m, applied_rows) in ("pending", "changed")]
        for migration in (m for m in pending if m.kind != "project"):
            _apply(conn, migration)
        with db.translate_errors():
            _before_project(conn)
        for migration in (m for m in pending if m.kind == "project"):
            _apply(conn, migration)
        with db.translate_errors():
            conn.execute("SELECT flux.maintain()")
            _after_project(conn, project_migrations is not None and project_migrations.is_dir())
    return pending


def migrate_project_in(conn: psycopg.Connection[Any], project: list[Migration]) -> list[Migration]:
    """Apply the project's pending migrations inside the caller's transaction (a deploy: if anything after
    fails, they roll back with it). Flux's own migrations must be current already."""
    migrations = flux_migrations() + project
    with db.translate_errors():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    applied_rows = _applied(conn)
    _refuse_drift(migrations, applied_rows, True)
    pending = [m for m in migrations if _state(m, applied_rows) in ("pending", "changed")]
    if any(m.kind != "project" for m in pending):
        raise DatabaseNotMigrated("Flux's own migrations are not applied", hint="run `flux db migrate` first")
    with db.translate_errors():
        _before_project(conn)
    for migration in pending:
        _apply(conn, migration)
    with db.translate_errors():
        _after_project(conn, bool(project))
    return pending


def _before_project(conn: psycopg.Connection[Any]) -> None:
    # What the project's migrations (and later this role in psql) create in public is flux_service's at once:
    # the project's code runs as it, and should need no GRANT to it. Default privileges belong to the role
    # that creates, so each role that migrates sets its own.
    conn.execute("SELECT flux.grant_service_defaults()")


def _after_project(conn: psycopg.Connection[Any], has_project: bool) -> None:
    if has_project:
        conn.execute("SELECT flux.track_all()")  # the project's tables record their writes
    conn.execute("SELECT flux.apply_column_policies()")


def status(dsn: str, *, project_migrations: Path | None = None) -> list[MigrationStatus]:
    """Every known file's state, then any applied migration this code does not have."""
    migrations = all_migrations(project_migrations)
    with db.connect(dsn, autocommit=True) as conn:
        applied_rows = _applied(conn) if _has_bookkeeping(conn) else {}
    rows = [
        MigrationStatus(
            m.kind,
            m.version,
            m.name,
            _state(m, applied_rows),
            applied_rows.get((m.kind, m.version), {}).get("at"),
        )
        for m in migrations
    ]
    known = {(m.kind, m.version) for m in migrations}
    for (kind, version), row in sorted(applied_rows.items()):
        if (kind, version) not in known and (kind != "project" or project_migrations is not None):
            if kind != "function":
                rows.append(MigrationStatus(cast(Kind, kind), version, row["name"], "unknown", row["at"]))
    return rows


def is_current(dsn: str, *, project_migrations: Path | None = None) -> bool:
    """True when nothing is pending, changed or unknown."""
    return all(row.state == "applied" for row in status(dsn, project_migrations=project_migrations))


def require_current(dsn: str) -> None:
    """Refuse to work on a database that lacks (or has other) Flux migrations than this code."""
    if not is_current(dsn):
        raise DatabaseNotMigrated(
            f"the database at {db.describe_dsn(dsn)} is not migrated to this version of Flux",
            hint="run `flux db migrate` first",
        )


class _migration_lock:
    """Hold the runner's session advisory lock for the duration of a `with` block."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))

    def __exit__(self, *exc_info: object) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _bootstrap(conn: psycopg.Connection[Any]) -> None:
    with db.translate_errors(), conn.transaction():
        conn.execute((sql_dir() / "bootstrap.sql").read_text().encode())


def _has_bookkeeping(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('flux.schema_migrations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def applied_checksums(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], str]:
    """(kind, version) -> checksum of everything recorded as applied."""
    return {key: row["checksum"] for key, row in _applied(conn).items()}


def _applied(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], dict[str, Any]]:
    rows = conn.execute("SELECT kind, version, name, checksum, applied_at FROM flux.schema_migrations")
    return {
        (kind, version): {"name": name, "checksum": checksum, "at": applied_at}
        for kind, version, name, checksum, applied_at in rows
    }


def _state(migration: Migration, applied: dict[tuple[str, str], dict[str, Any]]) -> State:
    row = applied.get((migration.kind, migration.version))
    if row is None:
        return "pending"
    return "applied" if row["checksum"] == migration.checksum else "changed"


def _refuse_drift(
    migrations: Sequence[Migration], applied: dict[tuple[str, str], dict[str, Any]], with_project: bool
) -> None:
    edited = [m for m in migrations if m.kind != "function" and _state(m, applied) == "changed"]
    if edited:
        raise MigrationEdited(
            f"{edited[0].label} was edited after it was applied",
            details={"files": [m.label for m in edited]},
            hint="restore the file and put the change in a new migration",
        )
    known = {(m.kind, m.version) for m in migrations}
    kinds: Iterable[str] = ("flux", "project") if with_project else ("flux",)
    for kind in kinds:
        unknown = sorted(v for (k, v) in applied if k == kind and (k, v) not in known)
        if unknown:
            row = applied[(kind, unknown[0])]
            where = "this Flux" if kind == "flux" else "the project's migrations folder"
            raise DatabaseNewerThanCode(
                f"the database has migration {unknown[0]}_{row['name']} that {where} does not have",
                details={"kind": kind, "versions": unknown},
                hint="upgrade the code (or check out the branch that added it) before migrating",
            )


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO flux.schema_migrations (kind, version, name, checksum) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (kind, version) DO UPDATE"
                " SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, applied_at = now()",
                (migration.kind, migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        diag = exc.diag
        where = ""
        if diag.statement_position:
            line = migration.sql.count("\n", 0, int(diag.statement_position) - 1) + 1
            where = f" at line {line}"
        raise MigrationFailed(
            f"{migration.label} failed{where}: {diag.message_primary or str(exc).strip()}",
            details={"file": str(migration.path), "sqlstate": exc.sqlstate, "context": diag.context},
            hint="it was rolled back and nothing after it ran; fix the file and migrate again",
        ) from exc
