"""`flux explain`: the SQL, parameters, role, policies and Postgres plan of a JSON query, not run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli._options import ProjectDir
from cli.db import database_for


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)


def explain(
    query_file: Annotated[
        Path, typer.Argument(help="A JSON query, or - for standard input.", allow_dash=True)
    ],
    role: Annotated[str, typer.Option("--role", help="anon, user or service.")] = "user",
    claims: Annotated[str, typer.Option("--claims", help="The caller's claims as JSON.")] = "{}",
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
    project: ProjectDir = Path("."),
) -> None:
    """Show what a JSON query would run: SQL, parameters, role, column rules, RLS policies and the plan.

    A query with problems is refused with the first problem's code and every problem listed."""
    import sys
    from dataclasses import asdict

    from flux import db
    from flux.data import load_catalog
    from flux.data.explain import explain as explain_query
    from flux.errors import InvalidConfig, InvalidQuery

    text = sys.stdin.read() if str(query_file) == "-" else query_file.read_text()
    try:
        query, claim_values = json.loads(text), json.loads(claims)
    except json.JSONDecodeError as exc:
        raise InvalidQuery(f"not valid JSON: {exc}", hint="check the query file and --claims") from exc
    if role not in ("anon", "user", "service"):
        raise InvalidConfig(f"--role {role!r} is not a Flux role", hint="use anon, user or service")
    with database_for(project, reads_only=True) as (dsn, _), db.connect(dsn) as conn:
        try:
            explanation = explain_query(conn, query, load_catalog(conn), role, claim_values)  # type: ignore[arg-type]
        except InvalidQuery as refused:
            if not as_json:
                raise  # printed with every problem, one a line
            body = {k: v for k, v in refused.to_dict().items() if v is not None and k != "request_id"}
            typer.echo(json.dumps(body, indent=2))  # as the HTTP answer has it: code, message, hint, problems
            raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(asdict(explanation), indent=2, default=str))
        return
    typer.echo(f"role     flux_{explanation.role}")
    typer.echo(f"sql      {explanation.sql}")
    typer.echo(f"params   {json.dumps(explanation.params, default=str)}")
    typer.echo("columns  " + ("; ".join(explanation.column_rules) or "no column rules apply"))
    for policy in explanation.row_level:
        typer.echo(f"rls      {json.dumps(policy)}")
    typer.echo("plan")
    for line in explanation.plan:
        typer.echo(f"  {line}")
