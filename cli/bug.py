"""`flux bug bisect --request ID --good REV --bad REV`: the first commit of the project's git history at which
recorded requests misbehave, found by replaying them on commits built in temporary worktrees (the user's
checkout, index and stash are never touched). It runs in this process against DATABASE_URL or the project's
embedded Postgres, since it builds this machine's git history. Exit 0 when it named a culprit (or a range),
2 when it could not run."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli._options import ProjectDir

if TYPE_CHECKING:
    from flux.replay.bisect import Answer, Judged, Step

app = typer.Typer(help="Bugs: find the commit that broke a recorded request (`flux bug bisect`).",
                  no_args_is_help=True)  # fmt: skip
Row = dict[str, Any]
SHORT = 12  # a commit's sha as shown

Requests = Annotated[
    list[str] | None,
    typer.Option("--request", help="A recorded request id (or a prefix only it has); repeat it for more."),
]
Good = Annotated[str, typer.Option("--good", help="A revision where the requests behave well.")]
Bad = Annotated[str, typer.Option("--bad", help="A later revision where they do not.")]
Expect = Annotated[
    str | None,
    typer.Option(
        "--expect",
        help="Good means this holds on the replayed response, e.g. 'status == 200 && body.total > 0'."
        " Without it, good means the replay behaves as at --good.",
    ),
]
Mode = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="recorded, live or as-of. Default: as-of when the database accepts request connections, else"
        " recorded.",
    ),
]
Repo = Annotated[
    Path | None,
    typer.Option("--repo", help="The project's folder in the git repository to bisect (default --project).",
                 file_okay=False),
]  # fmt: skip
FirstParent = Annotated[
    bool, typer.Option("--first-parent", help="Only the first-parent line of --bad (a merge counts as one).")
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object: the culprit, every step, the counts.")]


@app.command("bisect")
def bisect(
    request: Requests = None,
    good: Good = ...,  # type: ignore[assignment]
    bad: Bad = ...,  # type: ignore[assignment]
    expect: Expect = None,
    mode: Mode = None,
    repo: Repo = None,
    first_parent: FirstParent = False,
    as_json: AsJson = False,
    project: ProjectDir = Path("."),
) -> None:
    """Find the first commit between --good and --bad at which the requests misbehave: each candidate is
    built in a temporary git worktree and the requests replayed on it. Exit 0: a culprit (or a range) was
    found; 2: bisect could not run (endpoints that do not judge as given, a revision, a request)."""
    from cli._output import print_error
    from flux.errors import FluxError

    try:
        answer, used, why, rows = _bisect(request or [], good, bad, expect, mode, repo, first_parent, project,
                                    progress=sys.stderr.isatty() and not as_json)  # fmt: skip
    except FluxError as error:
        print_error(error)
        raise typer.Exit(2) from None
    if as_json:
        from flux import jsontext

        typer.echo(jsontext.dumps_text({**answer.to_json(), "db": used, "db_because": why}))
    else:
        typer.echo("\n".join(answer_lines(answer, used, rows, color=sys.stdout.isatty())))


def _bisect(
    given: list[str], good: str, bad: str, expect: str | None, mode: str | None, repo: Path | None,
    first_parent: bool, project: Path, *, progress: bool,
) -> tuple[Answer, str, str, dict[str, Row]]:  # fmt: skip
    """The answer, the database mode used and why that one, and the requests' rows."""
    from cli._code import commits_between
    from flux.errors import InvalidBisect
    from flux.replay import MODES
    from flux.replay.predicate import parse

    if not given:
        raise InvalidBisect("no request to bisect", hint="give --request ID (flux trace ls lists them)")
    predicate = parse(expect) if expect is not None else None
    if mode is not None and mode not in MODES:
        raise InvalidBisect(f"--db {mode!r} is not a database mode", hint=f"one of {', '.join(MODES)}")
    folder = project.resolve()
    _refuse_server_only(folder)
    source = (repo or folder).resolve()
    good_commit, candidates = commits_between(source, good, bad, first_parent=first_parent)
    with _Session(folder, source, given, mode) as session:
        from flux.replay.bisect import Bisect

        if progress:
            steps = math.ceil(math.log2(len(candidates))) + 1
            sys.stderr.write(f"bisecting {len(candidates)} commits: about {steps} replays after checking"
                             f" --good and --bad ({session.mode} db)\n")  # fmt: skip
        engine = Bisect(session.requests, session.build, session.replay_at, predicate,
                        _progress if progress else None)  # fmt: skip
        answer = engine.run(good_commit, candidates)
        answer.builds, answer.cache_hits = session.cache.builds, session.cache.hits
        return answer, session.mode, session.why, session.rows


def _refuse_server_only(folder: Path) -> None:
    """FX514 when FLUX_URL is set and there is no database here: a server cannot build this machine's git
    history, so bisect replays against the database itself."""
    from flux.config import load_settings
    from flux.errors import InvalidBisect
    from flux.postgres import cluster_exists

    if not os.environ.get("FLUX_URL"):
        return
    settings = load_settings(folder)
    if settings.database_url or ((folder / "flux.toml").is_file() and cluster_exists(settings.data_dir)):
        return
    raise InvalidBisect(
        "FLUX_URL is set, but bisect builds your git history here and replays against the database itself,"
        " and there is none here",
        hint="set DATABASE_URL to the server's database (or run inside the project, with its embedded"
        " Postgres)",
    )


class _Session:
    """What a bisect replays with: the database (and a request connection for live and as-of), the requests'
    rows, the runtime, the build cache."""

    def __init__(self, folder: Path, source: Path, given: list[str], mode: str | None) -> None:
        self.folder, self.source, self.given, self.asked = folder, source, given, mode
        self.stack = ExitStack()

    def __enter__(self) -> _Session:
        try:
            self._open()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _open(self) -> None:
        import tempfile

        from cli._code import BuildCache
        from cli.backends import database_connection
        from flux import db
        from flux.config import load_settings
        from flux.data import load_catalog
        from flux.errors import FluxError
        from flux.gateway.handler import WithBuiltins
        from flux.replay import Replay, built_code, grants_ahead, recording_of
        from flux.runtime import Runtime, project_cache
        from flux.runtime.fetch import FetchPolicy
        from flux.runtime.secrets import SealedSecrets, load_key
        from flux.trace.tree import load_trace, resolve_request_id

        folder = self.folder
        conn = self.conn = self.stack.enter_context(database_connection(folder, reads_only=True))
        self.requests: list[str] = []
        self.rows: dict[str, Row] = {}
        for given in self.given:  # each must exist and be replayable before anything is built
            request_id = resolve_request_id(conn, given)
            trace = load_trace(conn, request_id, with_jobs=False)
            recording_of(trace)
            if request_id not in self.requests:
                self.requests.append(request_id)
                self.rows[request_id] = trace.request
        self.runs_on = None
        if self.asked is None:
            try:
                self.runs_on = self.stack.enter_context(db.request_connection(conn))
                self.mode, self.why = "as-of", "the database accepts request connections"
            except FluxError as exc:
                self.mode, self.why = "recorded", f"no request connection: {exc.message}"
        else:
            self.mode, self.why = self.asked, "--db"
            if self.mode != "recorded":
                self.runs_on = self.stack.enter_context(db.request_connection(conn))
        if self.runs_on is not None:  # each replay writes the next one's grant with its record
            self.stack.enter_context(grants_ahead(conn))
        cache = (
            project_cache(folder)
            if (folder / "flux.toml").is_file()
            else Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix="flux-bisect-")))
        )
        runtime = Runtime(cache, deno_workers=1)
        self.stack.callback(runtime.close)
        self.cache = BuildCache()
        self.how = Replay(
            WithBuiltins(runtime), built_code({}), load_catalog(conn), mode=self.mode,  # type: ignore[arg-type]
            secrets=SealedSecrets(conn, lambda: load_key(folder)),
            fetch_policy=FetchPolicy(allow=load_settings(folder).fetch_allow),
        )  # fmt: skip

    def build(self, commit: Any) -> Any:
        from cli._code import functions_from_git

        return functions_from_git(self.source, commit.sha, cache=self.cache)

    def replay_at(self, request_id: str, functions: Any) -> Any:
        from flux.replay import built_code, replay_request

        how = dataclasses.replace(self.how, code_for=built_code(functions))
        return replay_request(self.conn, request_id, how, self.runs_on).result


def _progress(step: Step) -> None:
    commit, judged = step.commit, step.judged
    said = judged.judgement if judged.reason is None else f"skip ({_first_line(judged.reason)})"
    sys.stderr.write(f"  {commit.sha[:SHORT]}  {said:<5}  {commit.subject[:60]}  ({step.left} left)\n")


def answer_lines(answer: Answer, mode: str, rows: dict[str, Row], *, color: bool = False) -> list[str]:
    """The culprit (or the range) with its author and date, how the requests replay there, then the counts."""
    culprit = answer.first_bad.commit
    lines: list[str] = []
    if len(answer.suspects) > 1:
        lines.append(f"the first bad commit is one of {len(answer.suspects)}: the commits before"
                     f" {culprit.sha[:SHORT]} could not be judged")  # fmt: skip
        reasons = {judged.commit.sha: judged.reason for judged in answer.skipped}
        for commit in answer.suspects:
            why = f"skipped: {_first_line(reasons[commit.sha] or '')}" if commit.sha in reasons else "bad"
            lines.append(f"  {commit.sha[:SHORT]}  {commit.subject}  ({commit.author}, {commit.date}; {why})")
    else:
        lines.append(f"first bad commit: {culprit.sha[:SHORT]}  {culprit.subject}")
        lines.append(f"  {culprit.author}, {culprit.date}")
    lines.append(f"replayed at {culprit.sha[:SHORT]}:")
    lines += _runs(answer.first_bad, mode, rows, color)
    if not any(run.shown is not None for run in answer.first_bad.runs):
        lines += _compared(answer, mode, rows, color)
    skipped = answer.skipped
    lines.append(
        f"{answer.candidates} commits after --good: {answer.replays} replays after the endpoint checks"
        f" ({answer.endpoint_replays} at the endpoints), {len(skipped)} skipped, {answer.builds} functions"
        f" built, {answer.cache_hits} reused from the cache"
    )
    for judged in skipped:
        if judged.commit not in answer.suspects:
            lines.append(f"  skipped {judged.commit.sha[:SHORT]}: {_first_line(judged.reason or '')}")
    return lines


def _compared(answer: Answer, mode: str, rows: dict[str, Row], color: bool) -> list[str]:
    """Without --expect: how the bad request replayed at --good, when that differs from its recording (the
    recording is of the bad behaviour), and the command that shows both replays side by side."""
    lines: list[str] = []
    bad = answer.first_bad.runs[-1]
    reference = next(run for run in answer.good.runs if run.request_id == bad.request_id)
    if reference.result.verdict != "same":
        lines.append(f"replayed at --good {answer.good.commit.sha[:SHORT]}:")
        lines += _runs(dataclasses.replace(answer.good, runs=[reference]), mode, rows, color)
    if bad.result.replay_id and reference.result.replay_id:
        lines.append(
            f"  compare: flux trace diff {reference.result.replay_id[:8]} {bad.result.replay_id[:8]}"
        )
    return lines


def _runs(judged: Judged, mode: str, rows: dict[str, Row], color: bool) -> list[str]:
    """How each request replayed at a commit, as `flux incident replay` shows it, indented."""
    from cli.incident import result_lines

    lines = []
    for run in judged.runs:
        row = rows.get(run.request_id)
        replayed = result_lines(row, run.result.to_json(), mode, run.result.server_us / 1000, color=color)
        if run.shown is not None:
            holds = "holds" if run.good else "does not hold"
            replayed.insert(1, f"  --expect {holds}: {run.shown}")
        lines += [f"  {line}" for line in replayed]
    return lines


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text
