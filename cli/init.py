"""`flux init [DIR]`: start a project from a small working one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("init")(init)


def init(
    folder: Annotated[
        Path, typer.Argument(help="Where to make the project (default: here).", file_okay=False)
    ] = Path("."),
    lang: Annotated[
        str, typer.Option("--lang", help="The language of its add_note function: typescript, go or ruby.")
    ] = "typescript",
) -> None:
    """Write a project with one TypeScript (or Go, or Ruby) and one Python function, a migration and its
    routes."""
    from flux.scaffold import init_project

    for path in init_project(folder, lang):
        typer.echo(f"wrote {path}")
    where = "" if folder == Path(".") else f" {folder}"
    typer.echo(f"next: flux dev{where}, then curl -X POST localhost:4000/notes -d '{{\"text\": \"hi\"}}'"
               " -H 'content-type: application/json'")  # fmt: skip
