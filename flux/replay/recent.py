"""Recent traffic replayed on other code: the functions whose code a new version changes, their latest
recorded requests (http, job and cron runs, never replays), each replayed and the results summed up. The
deploy gate (`flux deploy --gate`, flux/api/deploy.py) judges a candidate version by it before activating it,
and `flux dev` (flux/devloop.py) prints one line of it after each save."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, cast

from flux import db, jsontext
from flux.errors import InvalidGateOption
from flux.replay.bisect import behaviour_of
from flux.replay.engine import Replay, ReplayResult
from flux.replay.host import Mode
from flux.replay.requests import replay_request
from flux.replay.state import grants_ahead
from flux.trace.diff import canonical

Row = dict[str, Any]
GateVerdict = Literal["passed", "accepted", "refused"]
KINDS = ("http", "job", "cron")  # what ran on its own: no replay, no explain
GATE_MODES = ("recorded", "as-of")  # live would judge the code on today's data, which it never saw
DEFAULT_LAST = 200
MAX_LAST = 10_000
SHOWN = 5  # divergences a summary keeps (the first ones)
VALUE_WIDTH = 40  # a value in the one-line summary, shortened to this many characters

_ACTIVE_FUNCTIONS = """
SELECT f.name, f.sha256, f.limits
  FROM flux.deployment_functions f JOIN flux.deployments d ON d.id = f.deployment_id
 WHERE CASE WHEN %s::bigint IS NULL THEN d.active ELSE d.id = %s END
"""
_RECENT = """
SELECT r.id::text, r.started_at, r.kind, r.method, r.path, r.function, r.status, r.route_id, r.code_sha
  FROM flux.requests r
 WHERE (r.function = ANY(%s) OR r.route_id = ANY(%s)) AND r.kind = ANY(%s) AND r.code_sha IS NOT NULL
   AND (%s::interval IS NULL OR r.started_at >= now() - %s::interval)
 ORDER BY r.started_at DESC LIMIT %s
"""
_ROUTES = "SELECT id, method, path, function FROM flux.routes"


@dataclass(frozen=True)
class Window:
    """Which recent requests: the latest `last` of them, and only those since `since` ago when given."""

    last: int = DEFAULT_LAST
    since: timedelta | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.last <= MAX_LAST:
            raise InvalidGateOption(f"--last {self.last} is outside 1-{MAX_LAST}", hint="e.g. --last 200")
        if self.since is not None and self.since <= timedelta(0):
            raise InvalidGateOption("--since is a period before now", hint="e.g. --since 1h")

    def to_json(self) -> Row:
        since = int(self.since.total_seconds()) if self.since is not None else None
        return {"last": self.last, "since_s": since}


@dataclass(frozen=True)
class GateOptions:
    """The deploy gate's options, as `flux deploy` takes them and sends them to a server (`to_body`)."""

    window: Window = field(default_factory=Window)
    mode: Mode = "recorded"
    accept: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)

    def to_body(self) -> Row:
        return {**self.window.to_json(), "db": self.mode, "accept": self.accept}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GateOptions:
        """The options a management API call gave (`gate` of POST /flux/api/deployments); FX516 if wrong."""
        unknown = sorted(set(body) - {"last", "since_s", "db", "accept"})
        if unknown:
            raise InvalidGateOption(f"gate: unknown field {unknown[0]!r}", hint="last, since_s, db, accept")
        last, since, mode, accept = (
            body.get("last"), body.get("since_s"), body.get("db", "recorded"), body.get("accept", False)
        )  # fmt: skip
        for name, value in (("last", last), ("since_s", since)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidGateOption(f"gate: {name} is a whole number", hint=f'e.g. "{name}": 200')
        if not isinstance(mode, str) or not isinstance(accept, bool):
            raise InvalidGateOption("gate: db is text and accept true or false", hint='e.g. "db": "recorded"')
        if since is not None and not 0 < since <= 100 * 365 * 86_400:
            raise InvalidGateOption(f"gate: since_s {since} is outside 1 s to a century", hint="e.g. 3600")
        window = Window(
            last if last is not None else MAX_LAST if since is not None else DEFAULT_LAST,
            timedelta(seconds=since) if since is not None else None,
        )
        return cls(window, check_mode(mode), accept)


def functions_of(conn: Any, version: int | None = None) -> dict[str, str]:
    """The functions of deployment `version` (the active one by default): name -> code sha256."""
    return {name: sha for name, (sha, _) in _deployed(conn, version).items()}


def changed_functions(
    conn: Any,
    candidate: Mapping[str, str],
    against: int | None = None,
    limits: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """The functions of `candidate` (name -> code sha256) whose code differs from deployment `against`'s (the
    active one's by default), or whose `limits` (name -> timeout_ms, memory_mb, fuel; when given) do: a
    lower timeout changes what the same code answers. A function the other version did not have has no
    traffic to replay; one the candidate drops is not run by it. Nothing changed when no version is active."""
    deployed = _deployed(conn, against)
    return sorted(
        name
        for name, sha in candidate.items()
        if name in deployed
        and (deployed[name][0] != sha or (limits is not None and dict(limits[name]) != deployed[name][1]))
    )


def _deployed(conn: Any, version: int | None) -> dict[str, tuple[str, Any]]:
    with db.translate_errors():
        rows = conn.execute(_ACTIVE_FUNCTIONS, (version, version)).fetchall()
    return {name: (sha, limits) for name, sha, limits in rows}


def moved_routes(
    conn: Any, candidate: list[Mapping[str, Any]], functions: Mapping[str, Any]
) -> dict[int, tuple[str, str]]:
    """The routes (today's, by id) that `candidate`'s routes (flux.toml's `[[routes]]`) hand to another
    function of `functions`: route id -> (the function that serves it in the candidate, `METHOD /path`)."""
    handed = {
        (str(route.get("method", "")).upper(), str(route.get("path", ""))): str(route.get("function"))
        for route in candidate
    }
    with db.translate_errors():
        rows = conn.execute(_ROUTES).fetchall()
    return {
        route_id: (handed[(method, path)], f"{method} {path}")
        for route_id, method, path, function in rows
        if handed.get((method, path), function) != function and handed[(method, path)] in functions
    }


def recent_requests(
    conn: Any, functions: list[str], window: Window, routes: Mapping[int, Any] | None = None
) -> list[Row]:
    """The latest recorded requests of `functions`, or of the routes `routes` names, in `window`, newest
    first, across them all."""
    route_ids = sorted(routes or {})
    if not functions and not route_ids:
        return []
    with db.translate_errors():
        return db.fetch_dicts(
            conn, _RECENT, (functions, route_ids, list(KINDS), window.since, window.since, window.last)
        )


@dataclass
class Summary:
    """Recent requests replayed: each with its result, oldest first."""

    functions: list[str]
    mode: str
    results: list[tuple[Row, ReplayResult]] = field(default_factory=list)
    took_ms: float = 0.0
    routes: list[str] = field(default_factory=list)  # `METHOD /path` of routes handed to another function
    references: int = 0  # requests served by older code, judged against a replay on the active version

    def count(self, verdict: str) -> int:
        return sum(result.verdict == verdict for _, result in self.results)

    @property
    def diverged(self) -> list[tuple[Row, ReplayResult]]:
        return [(row, result) for row, result in self.results if result.verdict == "diverged"]

    def line(self) -> str:
        """`replayed 20: 18 same, 2 diverged (POST /notes: body.id 3 → "3")`: the counts, and where the first
        divergence is."""
        counts = [f"{self.count(v)} {v}" for v in ("same", "diverged", "drift") if self.count(v)]
        if self.count("error"):
            counts.append(f"{self.count('error')} could not run")
        text = f"replayed {len(self.results)}: {', '.join(counts) or 'nothing'}"
        if self.diverged:
            row, result = self.diverged[0]
            text += f" ({first_difference(row, result)}; flux incident replay {row['id'][:8]})"
        return text

    def to_json(self, shown: int = SHOWN) -> Row:
        summary = {v: self.count(v) for v in ("same", "diverged", "drift", "error")}
        return {
            "db": self.mode,
            "functions": self.functions,
            "routes": self.routes,
            "replayed": len(self.results),
            "summary": summary,
            "divergences": [
                {"request": _request_json(row), "result": result.to_json()}
                for row, result in self.results
                if result.verdict != "same"
            ][:shown],
            "took_ms": round(self.took_ms, 1),
            "references": self.references,
        }


@dataclass(frozen=True)
class Reference:
    """The version a candidate replaces, for judging requests it did not serve: `how` replays on its code
    (`shas`: function name -> its code sha256). A request recorded on other code (before a divergence that was
    accepted, say) is judged against its replay there, not against its recording."""

    how: Replay
    shas: Mapping[str, str]

    def needed_for(self, row: Row) -> bool:
        """Whether `row` was served by code other than this version's function of its name."""
        sha = self.shas.get(row.get("function") or "")
        return sha is not None and row.get("code_sha") is not None and row["code_sha"] != sha


def replay_recent(
    conn: Any,
    functions: list[str],
    rows: list[Row],
    how: Replay,
    runs_on: Any = None,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    reference: Reference | None = None,
) -> Summary:
    """Replay `rows` (newest first, as `recent_requests` lists them) oldest first, as `how` says; until `stop`
    is set, when given, or `time.monotonic()` passes `deadline` (the summary then holds fewer results than
    `rows`). With `reference`, a request recorded on other code than its version's is also replayed there,
    and judged against that replay (`against_reference`)."""
    summary = Summary(functions, how.mode)
    clock = time.perf_counter()
    with grants_ahead(conn):
        for row in reversed(rows):
            if stop is not None and stop.is_set():
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            replayed = replay_request(conn, row["id"], how, runs_on)
            result = replayed.result
            if reference is not None and reference.needed_for(row) and result.verdict in ("same", "diverged"):
                summary.references += 1
                judged = replay_request(conn, row["id"], reference.how, runs_on).result
                result = against_reference(result, judged)
            summary.results.append((row, result))
    summary.took_ms = (time.perf_counter() - clock) * 1000
    return summary


def against_reference(result: ReplayResult, reference: ReplayResult) -> ReplayResult:
    """`result` judged as bisect judges a commit against --good: `same` when it differs from the recording
    exactly as `reference` (the same request replayed on the version replaced) does, both sides; else
    `diverged`, with the divergences the reference has not (or, when it only lacks some, the reference's).
    A reference that could not run (or drifted) judges nothing: `result` stays as it was."""
    if reference.verdict not in ("same", "diverged"):
        return result
    if behaviour_of(result) == behaviour_of(reference):
        return dataclasses.replace(result, verdict="same", divergences=[])
    known = {canonical(d.to_json()) for d in reference.divergences}
    new = [d for d in result.divergences if canonical(d.to_json()) not in known]
    return dataclasses.replace(result, verdict="diverged", divergences=new or reference.divergences)


def gate_verdict(summary: Summary, accept: bool) -> GateVerdict:
    """`passed` when no replay diverged, else `accepted` (`--accept-divergence`) or `refused`. Only `diverged`
    blocks: `drift` (as-of only) says the data changed since, not the code, and `error` that a request could
    not be replayed at all (its record is not replayable, a secret cannot be read), which says nothing of the
    candidate; both are counted and shown."""
    if not summary.diverged:
        return "passed"
    return "accepted" if accept else "refused"


def gate_record(summary: Summary, window: Window, verdict: GateVerdict) -> Row:
    """What `flux.deployments.gate` keeps, and the management API answers."""
    return {"verdict": verdict, **window.to_json(), **summary.to_json()}


def gate_json(record: Row) -> str:
    """`record` as text for a jsonb column (recorded values keep their numbers digit for digit)."""
    return jsontext.dumps_text(record)


def first_difference(row: Row, result: ReplayResult) -> str:
    """`POST /notes: body.id 3 → "3"`: the request, and its first divergence's first path with both sides."""
    what = (
        f"{row['method']} {row['path']}" if row.get("method") else f"{row.get('kind')} {row.get('function')}"
    )
    first = result.divergence
    if first is None:
        return what
    if first.changes:
        change = first.changes[0]
        path = change.path.removeprefix("response.")
        return f"{what}: {path} {_short(change.a)} → {_short(change.b)}"
    return f"{what}: {first.message}"


def _short(value: Any) -> str:
    text = "∅" if value is None else jsontext.display(value)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


def _request_json(row: Row) -> Row:
    started = row.get("started_at")
    return {
        "id": row["id"], "kind": row.get("kind"), "method": row.get("method"), "path": row.get("path"),
        "function": row.get("function"), "started_at": started.isoformat() if started is not None else None,
    }  # fmt: skip


def check_mode(mode: str) -> Mode:
    """FX516 unless `mode` is one the gate replays in."""
    if mode not in GATE_MODES:
        raise InvalidGateOption(
            f"--db {mode!r}: the gate replays in {' or '.join(GATE_MODES)} mode",
            hint="recorded needs no database state; as-of runs the queries on the data as it was",
        )
    return cast(Mode, mode)
