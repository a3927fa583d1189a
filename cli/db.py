"""`flux db`: migrate, show migration status, and drop old span partitions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli._options import ProjectDir

if TYPE_CHECKING:
    from flux.config import Settings

app = typer.Typer(help="The database: migrations and retention.", no_args_is_help=True)


@contextmanager
def database_for(
    project: Path, *, reads_only: bool = False, flux_url_works: bool = False
) -> Iterator[tuple[str, Path]]:
    """DATABASE_URL, or the project's embedded Postgres for the length of the command. A command that
    `reads_only` never creates one: outside a project, or before the project's first `flux dev`, it is FX807
    (whose hint names FLUX_URL when the command could have gone through a server: `flux_url_works`)."""
    from flux.config import load_settings
    from flux.server import database

    settings = load_settings(project)
    if reads_only and not settings.database_url:
        require_embedded_database(settings, flux_url_works=flux_url_works)
    with database(settings) as dsn:
        yield dsn, settings.project_migrations


def require_embedded_database(settings: Settings, *, flux_url_works: bool) -> None:
    """Refuse (FX807) unless `settings` name a project whose embedded Postgres exists already."""
    from flux.errors import NoDatabase
    from flux.postgres import cluster_exists

    unset = "neither DATABASE_URL nor FLUX_URL is set" if flux_url_works else "DATABASE_URL is not set"
    server = ", or set FLUX_URL to its server" if flux_url_works else ""
    folder = settings.project_dir
    to_database = f"set DATABASE_URL to its database{server}"
    if not (folder / "flux.toml").is_file():
        raise NoDatabase(
            f"no database to read: {folder} is not a Flux project (no flux.toml), and {unset}",
            hint=f"run it inside a Flux project (or pass --project DIR), {to_database}",
        )
    if not cluster_exists(settings.data_dir):
        raise NoDatabase(
            f"no database to read: the project in {folder} has no embedded Postgres yet, and {unset}",
            hint=f"`flux dev` (or `flux deploy`) creates it; or {to_database}",
        )


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

    with database_for(project, reads_only=True) as (dsn, project_migrations):
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
