"""`flux why <id>`: the span that failed with its input and error, the data the request read, what it changed,
and who changed each of those rows before it (request, function, code version)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.state import who
from cli.trace import changes, headline, painter

MAX_SHOWN_ROWS = 5


def register(app: typer.Typer) -> None:
    app.command("why")(why)


def why(
    request_id: Annotated[str, typer.Argument(help="The request id, or a prefix only it has.")],
    project: Annotated[
        Path, typer.Option("--project", help="The Flux project folder.", file_okay=False)
    ] = Path("."),
) -> None:
    """Why a request failed (or did what it did): the failing span, what it read and changed, and who
    changed those rows before it."""
    from cli.backends import backend

    with backend(project, reads_only=True) as records:
        explained = records.why(request_id)
    typer.echo("\n".join(render_why(explained, color=sys.stdout.isatty())))


def render_why(explained: Any, *, color: bool = False) -> list[str]:
    paint = painter(color)
    trace = explained.trace
    lines = [f"request {headline(trace.request, paint)}"]
    error = trace.request["error"]
    if explained.failed is not None:
        span = explained.failed
        given = (
            trace.request["input"] if span["module"] == "runtime" else span["input"]
        )  # the function's is the request
        failure = span["error"] or {}
        lines += ["", paint(f"failed in {span['name']}", "red"), f"  input: {_json(given)}",
                  f"  error: {failure.get('code')}: {failure.get('message')}"]  # fmt: skip
        stack = (failure.get("details") or {}).get("stack")
        if isinstance(stack, str):
            lines += [f"    {line.strip()}" for line in stack.splitlines()[1:]]
        details = {k: v for k, v in (failure.get("details") or {}).items() if k != "stack" and v is not None}
        if details:
            lines.append(f"  details: {_json(details)}")
    elif error:  # no step failed: the request's own end did (a built-in's commit, say)
        lines += ["", paint(f"failed: {error.get('code')}: {error.get('message')}", "red")]
    else:
        lines += ["", "it did not fail"]
    if explained.reads:
        lines += ["", "it read"]
    for span in explained.reads:
        rows = (span["output"] or {}).get("rows", [])
        lines.append(
            f"  {span['name']}  {len(rows)} row{'s' * (len(rows) != 1)}  input: {_json(span['input'])}"
        )
        lines += [f"    {_json(row)}" for row in rows[:MAX_SHOWN_ROWS]]
        if len(rows) > MAX_SHOWN_ROWS:
            lines.append(f"    ... and {len(rows) - MAX_SHOWN_ROWS} more")
    if trace.mutations:
        lines += ["", "it changed"]
        lines += [
            f"  {m['op']:<6} {m['table_name']} {_json(m['row_pk'])}  {changes(m)}" for m in trace.mutations
        ]
    elif explained.writes_rolled_back:
        lines += ["", "it changed nothing: its writes were rolled back with the failure"]
    if explained.earlier:
        lines += ["", "before it"]
    for earlier in explained.earlier:
        row = f"  {earlier.table} {_json(earlier.pk)} ({earlier.read_or_written})"
        change = earlier.change
        if change is None:
            lines.append(f"{row}: no change recorded before")
            continue
        columns = ", ".join(change["changed"] or [])
        lines.append(f"{row}: {change['op']} of {columns or 'no column'} at {change['at']:%Y-%m-%d %H:%M:%S}")
        lines.append(f"    by {who(change)}")
    return lines


def _json(value: Any) -> str:
    from flux import jsontext

    return jsontext.display(value)
