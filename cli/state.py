"""`flux state history TABLE KEY` and `flux state blame TABLE KEY`: one row's versions, and who last set each
of its columns (a request, its function and code, or the database user for writes made outside Flux)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli._options import ProjectDir
from cli.trace import changes, value

app = typer.Typer(help="Rows as their changes were recorded: history and blame.", no_args_is_help=True)
Table = Annotated[str, typer.Argument(help="The tracked table, e.g. notes or shop.orders.")]
Key = Annotated[str, typer.Argument(help="The row's primary key: its value, or JSON such as '{\"id\": 1}'.")]


@app.command("history")
def history(table: Table, key: Key, project: ProjectDir = Path(".")) -> None:
    """Every version of one row, oldest first: the operation, each changed column old → new, and who."""
    from cli.backends import backend

    with backend(project, reads_only=True) as records:
        versions = records.row_history(table, key)
    if not versions:
        typer.echo(f"no recorded change to {table} {key}")
    for version in versions:
        typer.echo(f"{version['at']:%Y-%m-%d %H:%M:%S}  {version['op']:<6}  {who(version)}")
        changed = changes(version)
        if changed:
            typer.echo(f"    {changed}")


@app.command("blame")
def blame(
    table: Table,
    key: Annotated[str | None, typer.Argument(help="One row's primary key; without it, every row.")] = None,
    limit: Annotated[int, typer.Option(help="Without a key: how many rows, by key.")] = 100,
    project: ProjectDir = Path("."),
) -> None:
    """For each column of one row, the change that last set it, and who made it; without a key, each row's
    last change."""
    from cli.backends import backend

    with backend(project, reads_only=True) as records:
        if key is None:
            rows = records.table_blame(table, limit)
        else:
            columns = records.row_blame(table, key)
    if key is None:
        if not rows:
            typer.echo(f"no recorded change to a row of {table}")
        for row in rows:
            typer.echo(f"{value(row['row_pk'])}  {row['op']:<6}  {row['at']:%Y-%m-%d %H:%M:%S}"
                       f"  ({', '.join(row['changed'] or [])})  {who(row)}")  # fmt: skip
        return
    if not columns:
        typer.echo(f"no recorded change to {table} {key}")
    width = max((len(c["column_name"]) for c in columns), default=0)
    values = {c["column_name"]: value(c["value"]) for c in columns}
    value_width = min(30, max((len(v) for v in values.values()), default=0))
    for column in columns:
        shown = values[column["column_name"]]
        typer.echo(f"{column['column_name']:<{width}}  {shown:<{value_width}}  {column['op']:<6}"
                   f"  {column['at']:%Y-%m-%d %H:%M:%S}  {who(column)}")  # fmt: skip


def who(change: dict[str, Any]) -> str:
    if change["request_id"] is None:
        return f"outside Flux (database user {change['actor']})"
    code = f"  code {change['code_sha'][:12]}" if change["code_sha"] else ""
    version = f"  version {change['deployment_id']}" if change["deployment_id"] else ""
    return f"request {change['request_id']}  fn={change['function'] or '-'}{version}{code}"
