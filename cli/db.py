"""`flux db`: migrate, show migration status, and drop old span partitions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The database: migrations and retention.", no_args_is_help=True)

ProjectDir = Annotated[Path, typer.Option("--project", help="The Flux project folder.", file_okay=False)]


@contextmanager
def database_for(project: Path) -> Iterator[tuple[str, Path]]:
    """DATABASE_URL, or the project's embedded Postgres for the length of the command."""
    from flux.config import load_settings
    from flux.server import database

    settings = load_settings(project)
    with database(settings) as dsn:
        yield dsn, settings.project_migrations


@app.command()
def migrate(project: ProjectDir = Path(".")) -> None:
    """Apply Flux's migrations and the project's own; a no-op when the database is current."""
    from flux import migrate as runner

    with database_for(project) as (dsn, project_migrations):
        applied = runner.migrate(dsn, project_migrations=project_migrations)
    for migration in applied:
        typer.echo(f"applied  {migration.kind:<8} {migration.label}")
    typer.echo(f"{len(applied)} applied" if applied else "database is up to date")


@app.command()
def status(project: ProjectDir = Path(".")) -> None:
    """List every migration with its state: applied, pending, changed (edited) or unknown (newer)."""
    from flux import migrate as runner

    with database_for(project) as (dsn, project_migrations):
        rows = runner.status(dsn, project_migrations=project_migrations)
    for row in rows:
        when = row.applied_at.strftime("%Y-%m-%d %H:%M:%S") if row.applied_at else "-"
        name = row.name if row.kind == "function" else f"{row.version}_{row.name}"
        typer.echo(f"{row.state:<8} {row.kind:<8} {name:<28} {when}")
    if any(row.state != "applied" for row in rows):
        raise typer.Exit(1)


_DURATION = re.compile(r"^(?P<amount>\d+)(?P<unit>[dh])$")


def parse_keep(text: str) -> str:
    """`30d` or `12h` as a Postgres interval; anything else is an FX502."""
    from flux.errors import InvalidRetention

    match = _DURATION.match(text.strip())
    if match is None or int(match["amount"]) == 0:
        raise InvalidRetention(
            f"--keep {text!r} is not a positive period", hint="use days or hours, e.g. 30d or 12h"
        )
    unit = "days" if match["unit"] == "d" else "hours"
    return f"{int(match['amount'])} {unit}"


@app.command()
def retention(
    keep: Annotated[str, typer.Option("--keep", help="How much recent trace data to keep, e.g. 30d.")],
    project: ProjectDir = Path("."),
) -> None:
    """Drop the daily partitions of spans and finished jobs older than --keep (requests and mutations are
    kept)."""
    from flux import migrate as runner

    interval = parse_keep(keep)
    with database_for(project) as (dsn, _):
        runner.require_current(dsn)
        dropped = _drop_day_partitions(dsn, interval)
    for name in dropped:
        typer.echo(f"dropped  flux.{name}")
    typer.echo(f"{len(dropped)} partitions dropped")


def _drop_day_partitions(dsn: str, interval: str) -> list[str]:
    from flux import db

    with db.connect(dsn) as conn, db.translate_errors():
        dropped = [
            row[0]
            for table in ("flux.spans", "flux.job_history")
            for row in conn.execute("SELECT flux.drop_day_partitions(%s, %s::interval)", (table, interval))
        ]
        conn.commit()
    return dropped
