"""`flux incident replay ID…`: recorded requests run again on chosen code with side effects off, each judged
`same`, `diverged`, `drift` or `error` (could not run) with its first divergence, then a summary; with no ID,
the recorded requests of a window (`--since`, `--route`, …), oldest first. On the database (DATABASE_URL or
the project's embedded Postgres), or, when FLUX_URL is set, on that server (`POST /flux/api/requests/{id}/
replay`). Exit 0 when every replay is `same`, 1 when any diverged or drifted, 2 when any could not run."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer

from cli._options import ProjectDir, period

if TYPE_CHECKING:
    from flux.errors import FluxError

app = typer.Typer(help="Incidents: replay recorded requests on chosen code (`flux incident replay ID`).",
                  no_args_is_help=True)  # fmt: skip
Row = dict[str, Any]
VERDICTS = ("same", "diverged", "drift", "error")
API_PAGE = 500  # the most requests one call of the management API lists
WINDOW_LIMIT = 100  # the requests a window replays when --limit is not given: the latest of the window
SHOWN_CHANGES = 5  # paths shown under the first divergence
SHOWN_REST = 5  # further divergences shown, one line each
VALUE_WIDTH = 60  # a value shown in a change, shortened to this many characters
_ID = re.compile(r"^[0-9a-f-]{1,36}$")  # a request id, or a prefix of one
_CODE_HELP = (
    "The code to run: active (the active deployment's, the default), recorded (what served each request),"
    " a project folder (built as flux deploy builds it, nothing activated), or git:REV (that revision of"
    " the project's repository, built in a temporary worktree)."
)
_DB_HELP = "recorded (answers from the recording), live (today's data, rolled back) or as-of (as it was)."
RequestIds = Annotated[
    list[str] | None,
    typer.Argument(help="Request ids (or prefixes only they have). None: the window's requests."),
]
Mode = Annotated[str, typer.Option("--db", help=_DB_HELP)]
Code = Annotated[str, typer.Option("--code", help=_CODE_HELP)]
Version = Annotated[int | None, typer.Option("--version", help="Deployment N's code.")]
LiveFetch = Annotated[bool, typer.Option("--live-fetch", help="Let fetches the recording lacks go out.")]
NoRecord = Annotated[bool, typer.Option("--no-record", help="Do not record the replays.")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object: every result and the summary.")]
Since = Annotated[
    str | None, typer.Option(help="Window: since this long ago (15m, 2h, 1d) or this moment (ISO 8601).")
]
Until = Annotated[str | None, typer.Option(help="Window: until this long ago, or this moment.")]
Route = Annotated[str | None, typer.Option(help="Window: only this path.")]
Function = Annotated[str | None, typer.Option(help="Window: only this function.")]
Status = Annotated[int | None, typer.Option(help="Window: only this HTTP status.")]
Kind = Annotated[str | None, typer.Option(help="Window: only http, job or cron requests.")]
Limit = Annotated[int | None, typer.Option(help=f"Window: its latest N (default {WINDOW_LIMIT}).")]


@app.command("replay")
def replay(
    request_ids: RequestIds = None,
    mode: Mode = "recorded",
    code: Code = "active",
    version: Version = None,
    live_fetch: LiveFetch = False,
    no_record: NoRecord = False,
    as_json: AsJson = False,
    since: Since = None,
    until: Until = None,
    route: Route = None,
    function: Function = None,
    status: Status = None,
    kind: Kind = None,
    limit: Limit = None,
    project: ProjectDir = Path("."),
) -> None:
    """Run recorded requests again on chosen code, side effects off, and say for each whether it behaves as
    recorded (`same`) or where it first differs. Exit 0: all same; 1: any diverged or drifted; 2: any could
    not run."""
    from cli._output import print_error
    from flux.errors import FluxError

    window = {"since": since, "until": until, "route": route, "function": function, "status": status,
              "kind": kind, "limit": limit}  # fmt: skip
    try:
        options = _options(request_ids or [], window, mode, code, version)
        with _replayer(project, mode, code, version, live_fetch, not no_record) as replayer:
            results = _run(replayer, request_ids or [], options, mode, as_json)
    except FluxError as error:
        print_error(error)
        raise typer.Exit(2) from None
    raise typer.Exit(_exit_code(results))


def _options(request_ids: list[str], window: Row, mode: str, code: str, version: int | None) -> Row:
    """The window's filters for the request listing (FX508 for options that do not fit)."""
    from flux.errors import InvalidReplayOption
    from flux.replay import check_options

    check_options(mode, code, version)
    given = [f"--{name}" for name, value in window.items() if value is not None]
    if request_ids and given:
        raise InvalidReplayOption(
            f"{given[0]} picks requests from a window, and request ids were given too",
            hint="give request ids, or a window (--since, --until, --route, …)",
        )
    if window["kind"] == "replay":
        raise InvalidReplayOption("a replay is not replayed again", hint="replay its original (replay_of)")
    return {
        "since": _moment(window["since"], "--since"), "until": _moment(window["until"], "--until"),
        "route": window["route"], "function": window["function"], "status": window["status"],
        "kind": window["kind"], "limit": WINDOW_LIMIT if window["limit"] is None else window["limit"],
        "replayable": True,
    }  # fmt: skip


def _moment(text: str | None, option: str) -> timedelta | datetime | None:
    """A period ago (`15m`, `2h`, `1d`) or a moment (ISO 8601; without an offset, this machine's time)."""
    from flux.errors import InvalidReplayOption

    if text is None:
        return None
    try:
        ago = period(text.strip())
        if ago is not None:
            return ago
        moment = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):
        raise InvalidReplayOption(
            f"{option} {text!r} is neither a period nor a moment",
            hint=f"e.g. {option} 2h, or 2026-01-31T09:00",
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


class Replayer(Protocol):
    def targets(self, filters: Row) -> list[Row]: ...
    def replay(self, given: str, row: Row | None) -> tuple[Row | None, Row]: ...


@contextmanager
def _replayer(
    project: Path, mode: str, code: str, version: int | None, live_fetch: bool, record: bool
) -> Iterator[Replayer]:
    """What replays: the server at FLUX_URL, or this process on the database."""
    from cli.remote import remote

    api = remote()
    if api is not None:
        yield _ViaApi(api, mode, code, version, live_fetch, record)
        return
    from cli.backends import database_connection

    with database_connection(project, reads_only=True, flux_url_works=True) as conn, ExitStack() as stack:
        yield _ViaDatabase(conn, project, stack, mode, code, version, live_fetch, record)


class _ViaDatabase:
    """Replays in this process: the runtime, catalog and secrets as the server has them, on the database."""

    def __init__(
        self, conn: Any, project: Path, stack: ExitStack, mode: str, code: str, version: int | None,
        live_fetch: bool, record: bool,
    ) -> None:  # fmt: skip
        import tempfile

        from cli._code import code_source
        from flux import db
        from flux.config import load_settings
        from flux.data import load_catalog
        from flux.gateway.handler import WithBuiltins
        from flux.replay import Replay, built_code, grants_ahead, stored_code
        from flux.runtime import Runtime, project_cache
        from flux.runtime.fetch import FetchPolicy
        from flux.runtime.secrets import SealedSecrets, load_key

        self.conn = conn
        # live and as-of run the function's SQL on a request connection, as the server does
        self.runs_on = stack.enter_context(db.request_connection(conn)) if mode != "recorded" else None
        if self.runs_on is not None:  # each replay writes the next one's grant with its record
            stack.enter_context(grants_ahead(conn))
        folder = project.resolve()
        built = code_source(code, folder)  # None for the code the database holds
        code_for = built_code(built) if built is not None else stored_code(conn, code, version)
        # A project keeps compiled code where its server does; elsewhere it lasts for this command only.
        cache = (
            project_cache(folder)
            if (folder / "flux.toml").is_file()
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flux-replay-")))
        )
        runtime = Runtime(cache, deno_workers=1)
        stack.callback(runtime.close)
        self.how = Replay(
            WithBuiltins(runtime), code_for, load_catalog(conn), mode=mode,  # type: ignore[arg-type]
            live_fetch=live_fetch, record=record, secrets=SealedSecrets(conn, lambda: load_key(folder)),
            fetch_policy=FetchPolicy(allow=load_settings(folder).fetch_allow),
        )  # fmt: skip

    def targets(self, filters: Row) -> list[Row]:
        from flux.trace.tree import list_requests

        return list_requests(self.conn, **filters)

    def replay(self, given: str, row: Row | None) -> tuple[Row | None, Row]:
        from flux.replay import replay_request

        replayed = replay_request(self.conn, given, self.how, self.runs_on)
        return replayed.request, replayed.result.to_json()


class _ViaApi:
    """Replays on the server at FLUX_URL: only code it holds (recorded, active, a version) can run there."""

    def __init__(
        self, api: Any, mode: str, code: str, version: int | None, live_fetch: bool, record: bool
    ) -> None:
        from flux.errors import InvalidReplayOption
        from flux.replay import STORED_CODE

        if code not in STORED_CODE:
            raise InvalidReplayOption(
                f"--code {code}: the server at FLUX_URL replays, and it cannot see this machine's folders"
                " or git history",
                hint="unset FLUX_URL to replay on that code here (against DATABASE_URL or the project's"
                " database), or deploy it and give --version N",
            )
        self.api = api
        self.body = {"db": mode, "code": code, "version": version, "live_fetch": live_fetch, "record": record}

    def targets(self, filters: Row) -> list[Row]:
        """The window's latest requests, newest first, a page at a time (the API answers at most API_PAGE):
        each page ends where the one before ended (`until` its last), without the rows seen already."""
        from cli.backends import ViaApi

        api, wanted = ViaApi(self.api), filters["limit"]
        rows: list[Row] = []
        seen: set[str] = set()
        page_filters = dict(filters)
        while len(rows) < wanted:
            asked = min(API_PAGE, wanted - len(rows) + 1)  # and the last one again, where `until` is
            page = api.requests(page_filters | {"limit": asked})
            new = [row for row in page if row["id"] not in seen]
            rows += new[: wanted - len(rows)]
            seen.update(row["id"] for row in new)
            if not new or len(page) < asked:
                break
            page_filters["until"] = page[-1]["started_at"]
        return rows

    def replay(self, given: str, row: Row | None) -> tuple[Row | None, Row]:
        from flux.errors import RequestNotFound

        if row is None:  # an id or prefix from the command line: its row for the line shown
            if not _ID.match(given.strip().lower()):  # nor a path of the API's other routes
                raise RequestNotFound(f"{given!r} is not a request id", hint="copy it from flux trace ls")
            row = self.api.call("GET", f"/flux/api/requests/{given.strip()}")["request"]
            assert row is not None
            given = str(row["id"])
        body = {k: v for k, v in self.body.items() if v is not None}
        return row, self.api.call("POST", f"/flux/api/requests/{given}/replay", body, exact_numbers=True)


def _run(replayer: Replayer, request_ids: list[str], filters: Row, mode: str, as_json: bool) -> list[Row]:
    """Replay each request (those given, or the window's, oldest first), printing each result as it comes,
    then the summary; every result."""
    from flux.errors import FluxError

    if request_ids:
        targets: list[tuple[str, Row | None]] = [(given, None) for given in request_ids]
    else:
        targets = [(row["id"], row) for row in reversed(replayer.targets(filters))]
        if not targets and not as_json:
            typer.echo("no recorded request that ran a function is in the window", err=True)
    color = sys.stdout.isatty() and not as_json
    results: list[Row] = []
    started = time.perf_counter()
    for given, row in targets:
        clock = time.perf_counter()
        try:
            row, result = replayer.replay(given, row)
        except FluxError as exc:  # an id no request has, or the server refused: this one could not run
            result = _could_not_run(given, exc)
        results.append(result)
        if not as_json:
            took_ms = (time.perf_counter() - clock) * 1000
            typer.echo("\n".join(result_lines(row, result, mode, took_ms, color=color)))
    elapsed = time.perf_counter() - started
    summary = {verdict: sum(r["verdict"] == verdict for r in results) for verdict in VERDICTS}
    summary["per_second"] = round(len(results) / elapsed, 1) if results and elapsed > 0 else 0.0
    if as_json:
        from flux import jsontext

        typer.echo(jsontext.dumps_text({"results": results, "summary": summary}))
    else:
        typer.echo(
            f"{summary['same']} same · {summary['diverged']} diverged · {summary['drift']} drift"
            f" · {summary['error']} could not run · {summary['per_second']:g} replays/s"
        )
    return results


def _could_not_run(given: str, exc: FluxError) -> Row:
    from flux.replay import ReplayResult
    from flux.trace.recorder import error_record

    return ReplayResult(given, None, "error", error=error_record(exc)).to_json()


def _exit_code(results: list[Row]) -> int:
    verdicts = {result["verdict"] for result in results}
    if "error" in verdicts:
        return 2
    return 1 if verdicts & {"diverged", "drift"} else 0


def result_lines(
    row: Row | None, result: Row, mode: str, took_ms: float, *, color: bool = False
) -> list[str]:
    """One replay as lines: `ID8  METHOD PATH  verdict`, then its first divergence with the paths that
    differ (recorded → replayed), the others one a line; or why it could not run."""
    from cli.trace import painter

    paint = painter(color)
    verdict = result["verdict"]
    colour = {"same": "green", "diverged": "red", "drift": "yellow", "error": "red"}[verdict]
    head = "  ".join(part for part in (result["request_id"][:8], _what(row), paint(verdict, colour)) if part)
    if verdict == "same":
        replay_id = result["replay_id"]
        recorded = f"replay {replay_id[:8]}" if replay_id else "not recorded"
        return [f"{head}  ({recorded}, {mode} db, {took_ms:.1f} ms)"]
    lines = [head]
    if verdict == "error":
        error = result["error"] or {}
        lines.append(f"  {error.get('code', 'FX900')}: {error.get('message', '')}")
        if error.get("hint"):
            lines.append(f"  hint: {error['hint']}")
        return lines
    first, *rest = result["divergences"]
    lines.append(f"  first: {_divergence(first)}")
    for change in first["changes"][:SHOWN_CHANGES]:
        lines.append(f"    {change['path']}: {_short(change['recorded'])} → {_short(change['replayed'])}")
    if len(first["changes"]) > SHOWN_CHANGES:
        lines.append(f"    … and {len(first['changes']) - SHOWN_CHANGES} more")
    for index, divergence in enumerate(rest[:SHOWN_REST]):
        lines.append(f"  {'then: ' if index == 0 else '      '}{_divergence(divergence)}")
    if len(rest) > SHOWN_REST:
        lines.append(f"        … and {len(rest) - SHOWN_REST} more (--json has them all)")
    if verdict == "drift":
        tables = sorted({f"{d['table_schema']}.{d['table_name']}" for d in result["drift"]})
        lines.append(f"  drift: {len(result['drift'])} writes by other requests to {', '.join(tables)}"
                     " changed what it read")  # fmt: skip
    if result["not_rewound"]:
        lines.append(f"  not rewound: {', '.join(result['not_rewound'])}")
    return lines


def _what(row: Row | None) -> str:
    if row is None:
        return ""
    if row.get("method"):
        return f"{row['method']} {row.get('path') or ''}".strip()
    return f"{row.get('kind') or ''} {row.get('function') or ''}".strip()


def _divergence(divergence: Row) -> str:
    """`kind at: what happened`, the place said once."""
    at, message = divergence["at"], divergence["message"]
    if message.startswith(at):
        return f"{divergence['kind']} {at}: {message[len(at) :].strip()}"
    return f"{divergence['kind']}: {message}"


def _short(value: Any) -> str:
    from cli.trace import value as shown

    text = shown(value)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"
