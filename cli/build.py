"""`flux build <function>`: compile a function of the project (functions/<name>/) to what Flux runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli._options import ProjectDir


def register(app: typer.Typer) -> None:
    app.command("build")(build)


def build(
    function: Annotated[str, typer.Argument(help="The function's folder name under functions/.")],
    project: ProjectDir = Path("."),
) -> None:
    """Build one function: Wasm sources are compiled into .flux/build/, TypeScript and JavaScript are checked
    for a source file and run as written."""
    from flux.errors import InvalidFunctionCode
    from flux.runtime.build import build_function

    folder = project / "functions" / function
    if not folder.is_dir():
        raise InvalidFunctionCode(f"no function folder {folder}", hint="functions live in functions/<name>/")
    built = build_function(folder, project / ".flux" / "build")
    where = (
        project / ".flux" / "build" / f"{function}.wasm" if built.runtime in ("wasm", "component") else folder
    )
    typer.echo(
        f"built {function}: {built.runtime}, {len(built.code)} bytes, sha256 {built.sha256[:12]} ({where})"
    )
