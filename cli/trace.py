"""`flux trace <id>`: a request's span tree with latency bars, its mutations and jobs; `flux trace ls`: recent
requests. Colours only on a terminal; `--json` prints the whole record, `--full` every input and output."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli._options import ProjectDir, period

BAR_WIDTH = 24


class _TraceGroup(TyperGroup):
    """`flux trace <id>` is `flux trace show <id>`: anything that is not a subcommand is an id."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args.insert(0, "show")
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=_TraceGroup, help="Requests as they were recorded: `flux trace <id>`, `flux trace ls`,"
                  " `flux trace diff <a> <b>`.",
                  no_args_is_help=True)  # fmt: skip
# The filters `flux trace ls` and `flux tail` share.
RouteFilter = Annotated[str | None, typer.Option(help="Only this path.")]
FunctionFilter = Annotated[str | None, typer.Option(help="Only this function.")]
StatusFilter = Annotated[int | None, typer.Option(help="Only this HTTP status.")]
KindFilter = Annotated[
    str | None, typer.Option(help="Only this kind: http, job, cron or replay (`flux incident replay`'s).")
]
ErrorsFilter = Annotated[bool, typer.Option("--errors", help="Only failed requests.")]
SlowFilter = Annotated[
    float | None, typer.Option("--slow", help="Only requests that took this many ms or more.")
]


@app.command("show")
def show(
    request_id: Annotated[str, typer.Argument(help="The request id, or a prefix only it has.")],
    as_json: Annotated[bool, typer.Option("--json", help="The whole record as JSON.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Print every span's input and output.")] = False,
    project: ProjectDir = Path("."),
) -> None:
    """A request's span tree in execution order: latency bars, ok or error, and what it changed."""
    from cli.backends import backend
    from flux.trace.tree import trace_record

    with backend(project, reads_only=True) as records:
        trace = records.trace(request_id)
    if as_json:
        from flux import jsontext

        typer.echo(jsontext.dumps_text(trace_record(trace)))
        return
    typer.echo("\n".join(render(trace, full=full, color=sys.stdout.isatty())))


@app.command("diff")
def diff(
    first: Annotated[str, typer.Argument(help="One request id (or a prefix only it has).")],
    second: Annotated[str, typer.Argument(help="The request to compare with it.")],
    as_json: Annotated[bool, typer.Option("--json", help="The differences as JSON.")] = False,
    project: ProjectDir = Path("."),
) -> None:
    """How the second request differs from the first: spans added, missing or changed, latency per span,
    outputs, and mutations (same rows, other values)."""
    from cli.backends import backend
    from flux.trace.diff import diff_traces

    with backend(project, reads_only=True) as records:
        a, b = records.trace(first), records.trace(second)
    differences = diff_traces(a, b)
    if as_json:
        import dataclasses

        from flux import jsontext

        shown = {
            "a": a.request["id"], "b": b.request["id"], "same": differences.same,
            "request": [dataclasses.asdict(c) for c in differences.request],
            "spans": [dataclasses.asdict(d) | {"delta_us": d.delta_us} for d in differences.spans],
            "mutations": [dataclasses.asdict(m) for m in differences.mutations],
        }  # fmt: skip
        typer.echo(jsontext.dumps_text(shown))
        return
    typer.echo("\n".join(render_diff(differences, color=sys.stdout.isatty())))


@app.command("export")
def export(
    request_id: Annotated[str, typer.Argument(help="The request id, or a prefix only it has.")],
    format: Annotated[
        str, typer.Option("--format", help="otlp-json (OTLP/JSON) or otlp-protobuf (binary, for /v1/traces).")
    ] = "otlp-json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here, not to stdout.")] = None,
    project: ProjectDir = Path("."),
) -> None:
    """A request as an OpenTelemetry trace that Jaeger, Grafana Tempo or any collector loads."""
    from cli.backends import backend
    from flux.errors import InvalidRequest
    from flux.trace import otlp

    if format not in ("otlp-json", "otlp-protobuf"):
        raise InvalidRequest(f"--format {format!r} is not known", hint="use otlp-json or otlp-protobuf")
    with backend(project, reads_only=True) as records:
        trace = records.trace(request_id)
    data = (
        otlp.to_otlp_json(trace).encode() + b"\n" if format == "otlp-json" else otlp.to_otlp_protobuf(trace)
    )
    if output is not None:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@app.command("ls")
def ls(
    route: RouteFilter = None,
    function: FunctionFilter = None,
    status: StatusFilter = None,
    kind: KindFilter = None,
    errors: ErrorsFilter = False,
    since: Annotated[str | None, typer.Option(help="Only this recent, e.g. 15m, 2h, 1d.")] = None,
    slow: SlowFilter = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    replay_of: Annotated[
        str | None, typer.Option(help="Only the replays of this request (its id, or a prefix only it has).")
    ] = None,
    project: ProjectDir = Path("."),
) -> None:
    """Recent requests, newest first: when, id, method and path, status, duration, function."""
    from cli.backends import backend

    filters = {"route": route, "function": function, "status": status, "kind": kind, "errors": errors,
               "since": _period(since), "slow_ms": slow, "limit": limit, "replay_of": replay_of}  # fmt: skip
    with backend(project, reads_only=True) as records:
        rows = records.requests(filters)
    for row in rows:
        typer.echo(_request_line(row))


def tail(
    route: RouteFilter = None,
    function: FunctionFilter = None,
    status: StatusFilter = None,
    errors: ErrorsFilter = False,
    slow: SlowFilter = None,
    project: ProjectDir = Path("."),
) -> None:
    """New requests as they are recorded, one line each, until Ctrl-C: announced by the database
    (LISTEN/NOTIFY) or, through FLUX_URL, kept for this follower by the server between calls."""
    from cli.backends import backend

    with backend(project, reads_only=True) as records:
        rows = records.follow({"route": route, "function": function, "status": status, "errors": errors,
                               "slow_ms": slow})  # fmt: skip
        typer.echo("following new requests (Ctrl-C stops)", err=True)
        try:
            for row in rows:
                typer.echo(_request_line(row))
        except KeyboardInterrupt:
            pass


def _request_line(row: Any) -> str:
    what = f"{row['method'] or row['kind']} {row['path'] or ''}".strip()
    failed = f" {row['error_code']}" if row["error_code"] else ""
    return (
        f"{row['started_at']:%Y-%m-%d %H:%M:%S}  {row['id']}  {row['status'] or '-':>3}{failed:<7}"
        f" {_ms(row['duration_us']):>9}  {what}  fn={row['function'] or '-'}"
    )


def render(trace: Any, *, full: bool = False, color: bool = False) -> list[str]:
    """The trace as lines of text."""
    paint = painter(color)
    request = trace.request
    total = max(request["duration_us"] or 1, 1)
    lines = [
        f"request {headline(request, paint)}",
        f"{request['started_at']:%Y-%m-%d %H:%M:%S %Z}",
    ]
    if trace.job is not None:
        job = trace.job
        pusher = f"pushed by {request['parent_request_id']}"
        origin = f"cron {job['cron_name']}" if job["cron_name"] else pusher
        lines.append(f"job {job['job_id']} attempt {job['attempt']}/{job['max_attempts']}"
                     f" (queue {job['queue']}), {origin}")  # fmt: skip
    if request["error"]:
        lines.append(paint(f"error {request['error'].get('code')}: {request['error'].get('message')}", "red"))
    lines.append("")
    width = max((len(_label(span["depth"], span["name"])) for span in trace.spans), default=0)
    seqs = {span["seq"] for span in trace.spans}
    caused: dict[int, list[Any]] = {}
    for m in trace.mutations:
        if m["span_seq"] in seqs:
            caused.setdefault(m["span_seq"], []).append(m)
    for span in trace.spans:
        start = min(BAR_WIDTH - 1, int((span["offset_us"] or 0) * BAR_WIDTH / total))
        length = max(1, round((span["duration_us"] or 0) * BAR_WIDTH / total))
        bar = " " * start + "█" * min(length, BAR_WIDTH - start)
        state = "ok" if span["ok"] else paint((span["error"] or {}).get("code", "error"), "red")
        bar = paint(bar.ljust(BAR_WIDTH), "blue")
        label = _label(span["depth"], span["name"])
        lines.append(f"{label:<{width}}  {_ms(span['duration_us']):>9}  {bar}  {state}")
        if full or not span["ok"]:
            indent = "  " * (span["depth"] + 2)
            for key in ("input", "output", "error") if full else ("error",):
                if span[key] is not None:
                    lines.append(f"{indent}{key}: {value(span[key])}")
        indent = "  " * (span["depth"] + 2)
        lines += [f"{indent}{_mutation(m)}" for m in caused.get(span["seq"], [])]
    unlinked = [m for m in trace.mutations if m["span_seq"] not in seqs]
    if unlinked:
        lines += ["", "mutations" if len(unlinked) == len(trace.mutations) else "other mutations"]
        lines += [f"  {_mutation(m)}" for m in unlinked]
    if trace.jobs:
        lines += ["", "jobs"]
        for job in trace.jobs:
            lines.append(f"  job {job['id']}  {job['function']}  {job['status']} (queue {job['queue']})")
            for run in job["runs"]:
                outcome = "ok" if run["ok"] else paint(run["error"] or "error", "red")
                lines.append(f"    attempt {run['attempt']}  request {run['request_id'] or '-'}  {outcome}")
    return lines


_MARKS = {"same": (" ", None), "changed": ("~", "yellow"), "missing": ("-", "red"), "added": ("+", "green")}


def render_diff(differences: Any, *, color: bool = False) -> list[str]:
    """`flux trace diff` as lines of text: `~` changed, `-` only in a, `+` only in b."""
    paint = painter(color)
    lines = [f"a {headline(differences.a.request, paint)}", f"b {headline(differences.b.request, paint)}"]
    if differences.same:
        return [*lines, "", "same spans, outputs and mutations"]
    lines += [f"  {_change(change)}" for change in differences.request]
    width = max((len(_label(d.depth, d.name)) for d in differences.spans), default=0)
    lines += ["", f"  {'spans':<{width}}  {'a':>9}  {'b':>9}  {'b - a':>9}"]
    for d in differences.spans:
        mark, colour = _MARKS[d.status]
        durations = [_ms(side["duration_us"]) if side else "-" for side in (d.a, d.b)]
        delta = "" if d.delta_us is None else f"{d.delta_us / 1000:+.2f} ms"
        line = f"{mark} {_label(d.depth, d.name):<{width}}  {durations[0]:>9}  {durations[1]:>9}  {delta:>9}"
        lines.append(paint(line, colour) if colour else line)
        lines += _changes(d.changes, "  " * (d.depth + 2))
    if differences.mutations:
        lines += ["", "mutations"]
    for m in differences.mutations:
        mark, colour = _MARKS[m.status]
        row = m.b or m.a
        where = "" if m.status in ("same", "changed") else f"  (only in {'b' if m.a is None else 'a'})"
        line = f"{mark} {m.op:<6} {m.table} {value(row['row_pk'])}{where}"
        lines.append(paint(line, colour) if colour else line)
        lines += _changes(m.changes, "    ")
    return lines


def _changes(changes: list[Any], indent: str) -> list[str]:
    from flux.trace.diff import MAX_CHANGES

    shown = [f"{indent}{_change(change)}" for change in changes[:MAX_CHANGES]]
    if len(changes) > MAX_CHANGES:
        shown.append(f"{indent}... and {len(changes) - MAX_CHANGES} more")
    return shown


def _change(change: Any) -> str:
    if change.path.endswith("error"):  # an error reads best as `FX300: message`
        return f"{change.path}: {_error(change.a)} → {_error(change.b)}"
    return f"{change.path}: {value(change.a)} → {value(change.b)}"


def _error(error: Any) -> str:
    if isinstance(error, dict) and "code" in error and "message" in error:
        return f"{error['code']}: {error['message']}"
    return value(error)


def headline(request: Any, paint: Any) -> str:
    what = f"{request['method'] or request['kind']} {request['path'] or ''}".strip()
    status = paint(str(request["status"]), "green" if request["ok"] else "red")
    version = f"  version {request['deployment_id']}" if request["deployment_id"] else ""
    code = f" (code {request['code_sha'][:12]})" if request["code_sha"] else ""
    return (
        f"{request['id']}  {what}  {status}  {_ms(request['duration_us'])}"
        f"  fn={request['function'] or '-'}{version}{code}"
    )


def _mutation(m: Any) -> str:
    pk = value(m["row_pk"])
    return f"{m['op']:<6} {m['table_name']} {pk}  {changes(m)}".rstrip()


def _label(depth: int, name: str) -> str:
    return f"{'  ' * depth}{name}"


def _ms(duration_us: int | None) -> str:
    return "-" if duration_us is None else f"{duration_us / 1000:.2f} ms"


def changes(mutation: Any) -> str:
    """A mutation's changed columns as `column: old → new, ...` (`∅` for no value)."""
    old, new = mutation["old"] or {}, mutation["new"] or {}
    return ", ".join(f"{c}: {value(old.get(c))} → {value(new.get(c))}" for c in mutation["changed"] or [])


def value(value: Any) -> str:
    """A recorded JSON value as its text; numbers as recorded, digit for digit (`12.50`)."""
    from flux import jsontext

    return "∅" if value is None else jsontext.display(value)


def _period(text: str | None) -> Any:
    from flux.errors import InvalidRequest

    if text is None:
        return None
    since = period(text)
    if since is None:
        raise InvalidRequest(f"--since {text!r} is not a period", hint="e.g. 15m, 2h or 1d")
    return since


def painter(color: bool) -> Any:
    codes = {"red": "31", "green": "32", "yellow": "33", "blue": "34"}
    return (lambda text, name: f"\033[{codes[name]}m{text}\033[0m") if color else (lambda text, name: text)
