"""Deploys: a project folder becomes one version in Postgres, and one version is active.

`deploy` builds every function (a function whose sources did not change is not built again), checks routes,
schedules and limits against them, compiles its components into the project's cache (so that no request
waits for a compile: a Python function's takes 15-30 s), and then, in one transaction: stores the built code
by sha256, applies the project's migrations, syncs the routes and the schedules (`[[cron]]`), records the
version with its functions and git commit, and activates it. A failure anywhere changes nothing. Deploying
what is already active makes no new version.

`rollback` activates an earlier version: its code (stored by sha256, so exactly the old bytes) and its routes.
Migrations only go forward; a rollback does not undo them, nor change the schedules.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from flux import db, migrate
from flux.config import Settings
from flux.errors import (
    ActiveVersionChanged,
    DeployGateRefused,
    DeploymentNotFound,
    InvalidConfig,
    InvalidGateOption,
    InvalidProject,
    InvalidRequest,
    VersionRefusedByGate,
)
from flux.gateway.routes import sync_routes
from flux.queue import cron
from flux.replay import Recording, Replay, built_code, deployed_code
from flux.replay.engine import CodeFor
from flux.replay.recent import (
    Reference,
    Window,
    changed_functions,
    functions_of,
    gate_json,
    gate_record,
    gate_verdict,
    moved_routes,
    recent_requests,
    replay_recent,
)
from flux.runtime import compile_ahead, project_cache
from flux.runtime.build import build_function, source_of
from flux.runtime.invoke import Function
from flux.runtime.limits import FunctionLimits

_LIMIT_KEYS = {"timeout_ms", "memory_mb", "fuel"}
_RUNTIMES = ("wasm", "component", "typescript", "javascript")


@dataclass(frozen=True)
class Deployment:
    id: int
    content_sha: str
    created: bool  # False when this very content was already the active version
    migrations: tuple[migrate.Migration, ...] = ()  # the project's migrations this deploy applied
    gate: dict[str, Any] | None = None  # the deploy gate's verdict (`gate_record`), when it ran


@dataclass(frozen=True)
class Gate:
    """The deploy gate: how its replays run (all but the code: the candidate's is put in), which requests, and
    whether a divergence is accepted. In as-of mode the functions' SQL runs on `runs_on`, a request
    connection."""

    how: Replay
    window: Window = dataclasses.field(default_factory=Window)
    accept: bool = False
    runs_on: Any = None
    # a server's (`time.monotonic()`): its worker must answer before gunicorn's timeout kills it
    deadline: float | None = None


@dataclass(frozen=True)
class Bundle:
    """One version, built: what `deploy_bundle` stores and activates (here, or on a server it was uploaded
    to through the management API)."""

    project: str
    git_commit: str | None
    routes: tuple[dict[str, Any], ...]
    functions: Mapping[str, tuple[Function, str]]  # name -> (built function, source language)
    migrations: tuple[migrate.Migration, ...]  # the project's, in order
    cron: tuple[dict[str, Any], ...] = ()  # the project's schedules

    @property
    def content_sha(self) -> str:
        content = {
            "functions": {
                name: [f.sha256, f.runtime, vars(f.limits)] for name, (f, _) in sorted(self.functions.items())
            },
            "routes": list(self.routes),
            "migrations": [m.checksum for m in self.migrations],
        }
        if self.cron:  # left out when empty, so versions made before schedules keep their sha
            content["cron"] = list(self.cron)
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def deploy(dsn: str, settings: Settings, *, git_commit: str | None = None) -> Deployment:
    """Build and deploy the project in `settings.project_dir`, and make it the active version. Flux's own
    migrations must be applied already (`flux.migrate.migrate`): they are not part of the project's
    version."""
    bundle = bundle_project(settings, git_commit=git_commit)
    with db.connect(dsn, autocommit=True) as conn:
        return deploy_bundle(conn, bundle, compile_into=project_cache(settings.project_dir))


def bundle_project(settings: Settings, *, git_commit: str | None = None) -> Bundle:
    """Build every function of the project, with its limits (`deploy_bundle` checks the routes)."""
    functions = build_project(settings)
    migrations = migrate.load_versioned(settings.project_migrations, "project")
    return Bundle(settings.name, git_commit or _git_commit(settings), tuple(dict(r) for r in settings.routes),
                  functions, tuple(migrations), tuple(dict(c) for c in settings.cron))  # fmt: skip


def deploy_bundle(
    conn: psycopg.Connection[Any],
    bundle: Bundle,
    *,
    compile_into: Path | None = None,
    gate: Gate | None = None,
) -> Deployment:
    """Store and activate `bundle` in one transaction on `conn` (nothing changes if any step fails); with
    `compile_into` (a runtime cache), its components are compiled there first. With `gate`, recent requests
    are replayed on it first (`conn` in autocommit: each replay's record commits on its own), and a refused
    version is stored, not activated, and FX515 raised."""
    _check_routes(bundle.routes, bundle.functions)
    _check_cron(bundle.cron, bundle.functions)
    if compile_into is not None:
        compile_ahead((function for function, _ in bundle.functions.values()), compile_into)
    content_sha = bundle.content_sha
    verdict = None
    if gate is not None:
        with db.translate_errors():
            active = conn.execute("SELECT id, content_sha FROM flux.deployments WHERE active").fetchone()
        if active is not None and active[1] == content_sha:
            return Deployment(active[0], content_sha, created=False)
        judged_against = active[0] if active is not None else None
        verdict = run_gate(conn, bundle, gate, judged_against)
        if verdict["verdict"] == "refused":
            with conn.transaction(), db.translate_errors():
                refused = _store(conn, bundle.project, content_sha, bundle.git_commit, list(bundle.routes),
                                 bundle.functions, verdict)  # fmt: skip
            diverged, replayed = verdict["summary"]["diverged"], verdict["replayed"]
            raise DeployGateRefused(
                f"the deploy gate: {diverged} of {replayed} recent requests behave otherwise on the"
                f" candidate; nothing was activated (version {refused} is kept, refused)",
                details={"version": refused, **verdict},
                hint="fix the code, or deploy anyway with --accept-divergence",
            )
        if verdict["incomplete"]:
            asked = verdict["incomplete"] + verdict["replayed"]
            raise InvalidGateOption(
                f"the deploy gate replayed {verdict['replayed']} of {asked}"
                " recent requests before the server had to answer (gunicorn ends a request after 30 s),"
                " with no divergence so far; nothing was activated",
                details=verdict,
                hint="ask for fewer (--last 1000, --since 10m), or run the gate where the database is"
                " (DATABASE_URL=… flux deploy --gate)",
            )
    with conn.transaction():
        active = conn.execute(
            "SELECT id, content_sha FROM flux.deployments WHERE active FOR UPDATE"
        ).fetchone()
        if active is not None and active[1] == content_sha:
            return Deployment(active[0], content_sha, created=False)
        if gate is not None and (active[0] if active is not None else None) != judged_against:
            # the verdict is about what the candidate changes in another version than the one it replaces
            raise ActiveVersionChanged(
                f"version {active[0] if active is not None else 'none'} was activated while the gate ran"
                f" (it judged the candidate against version {judged_against}); nothing was activated",
                hint="deploy again: the gate then replays what the candidate changes in the active version",
            )
        applied = migrate.migrate_project_in(conn, list(bundle.migrations))
        try:
            sync_routes(conn, bundle.routes)
        except InvalidConfig as exc:  # the project's mistake, wherever the routes came from
            raise InvalidProject(exc.message, hint=exc.hint) from None
        cron.sync_project(conn, bundle.cron)
        with db.translate_errors():
            deployment_id = _store(conn, bundle.project, content_sha, bundle.git_commit, list(bundle.routes),
                                   bundle.functions, verdict)  # fmt: skip
            _activate(conn, deployment_id)
    return Deployment(deployment_id, content_sha, created=True, migrations=tuple(applied), gate=verdict)


def run_gate(
    conn: psycopg.Connection[Any], bundle: Bundle, gate: Gate, against: int | None = None
) -> dict[str, Any]:
    """Replay the latest recorded requests of every function whose code or limits `bundle` changes (against
    version `against`, by default the active one) on `bundle`'s code, recorded as replays; the verdict
    (`gate_record`)."""
    candidate = {name: function for name, (function, _) in bundle.functions.items()}
    functions = changed_functions(
        conn,
        {name: function.sha256 for name, function in candidate.items()},
        against,
        {name: vars(function.limits) for name, function in candidate.items()},
    )
    routes = moved_routes(conn, list(bundle.routes), candidate)
    rows = recent_requests(conn, functions, gate.window, routes)
    how = dataclasses.replace(gate.how, code_for=_candidate_code(candidate, routes))
    # a request served by older code than the version replaced is judged against its replay on that version
    # (after an accepted divergence, its recording shows behaviour no longer wanted); not recorded
    reference = Reference(
        dataclasses.replace(
            gate.how, code_for=_once_per_function(deployed_code(conn, against)), record=False
        ),
        functions_of(conn, against),
    )
    summary = replay_recent(
        conn, functions, rows, how, gate.runs_on, deadline=gate.deadline, reference=reference
    )
    summary.routes = sorted({routes[row["route_id"]][1] for row in rows if row.get("route_id") in routes})
    # `incomplete`: the requests left unreplayed when the deadline came (0 when every one was)
    return {**gate_record(summary, gate.window, gate_verdict(summary, gate.accept)),
            "incomplete": len(rows) - len(summary.results)}  # fmt: skip


def _once_per_function(code_for: CodeFor) -> CodeFor:
    """`code_for`, reading each function's code once (not once per request replayed)."""
    read: dict[tuple[str, bool], Function] = {}

    def once(recording: Recording) -> Function:
        key = (str(recording.request["function"]), recording.builtin)
        if key not in read:
            read[key] = code_for(recording)
        return read[key]

    return once


def _candidate_code(candidate: Mapping[str, Function], routes: Mapping[int, tuple[str, str]]) -> CodeFor:
    """The candidate's code for a recording: the function its route now runs, when the candidate hands the
    route to another function, else the function of its name."""
    by_name = built_code(candidate)

    def code_for(recording: Recording) -> Function:
        route = recording.request.get("route_id")
        if isinstance(route, int) and route in routes and not recording.builtin:
            return candidate[routes[route][0]]
        return by_name(recording)

    return code_for


def bundle_to_json(bundle: Bundle, with_code: set[str]) -> dict[str, Any]:
    """`bundle` as the management API takes it: the code (base64) of the functions whose sha256 is in
    `with_code` (the server has the others already)."""
    return {
        "project": bundle.project,
        "git_commit": bundle.git_commit,
        "routes": list(bundle.routes),
        "functions": [
            {"name": name, "runtime": f.runtime, "language": language, "sha256": f.sha256,
             "limits": vars(f.limits), "code": _base64(f.code) if f.sha256 in with_code else None}
            for name, (f, language) in sorted(bundle.functions.items())
        ],
        "migrations": [{"file": m.path.name, "sql": m.sql} for m in bundle.migrations],
        "cron": list(bundle.cron),
    }  # fmt: skip


def bundle_from_json(conn: psycopg.Connection[Any], body: Mapping[str, Any]) -> Bundle:
    """A bundle uploaded through the management API; code it left out must be stored already."""
    functions: dict[str, tuple[Function, str]] = {}
    for item in _list_of_objects(body, "functions"):
        name, runtime, sha = item.get("name"), item.get("runtime"), item.get("sha256")
        if not isinstance(name, str) or runtime not in _RUNTIMES or not isinstance(sha, str):
            raise InvalidRequest("each function needs a name, a runtime and a sha256", hint="see flux deploy")
        code = _uploaded_code(conn, name, sha, item.get("code"))
        limits = item.get("limits") or {}
        if not isinstance(limits, dict):
            raise InvalidRequest(f"function {name}: limits is an object", hint="timeout_ms, memory_mb, fuel")
        language = str(item.get("language") or runtime)
        functions[name] = (Function(name, runtime, code, sha, _limits(name, limits)), language)
    files = {}
    for item in _list_of_objects(body, "migrations"):
        if (
            not isinstance(item.get("file"), str)
            or not isinstance(item.get("sql"), str)
            or "/" in item["file"]
        ):
            raise InvalidRequest("each migration needs a file name and its sql", hint="e.g. 0001_notes.sql")
        files[Path("migrations") / item["file"]] = item["sql"]
    routes = _list_of_objects(body, "routes")
    schedules = _list_of_objects(body, "cron") if "cron" in body else []
    git_commit = body.get("git_commit")
    return Bundle(str(body.get("project") or "project"), git_commit if isinstance(git_commit, str) else None,
                  tuple(routes), functions, tuple(migrate.versioned(files, "project")),
                  tuple(schedules))  # fmt: skip


def _base64(code: bytes) -> str:
    return base64.b64encode(code).decode()


def missing_artifacts(conn: Any, shas: list[str]) -> list[str]:
    """Which of these sha256s Flux does not have the code of."""
    with db.translate_errors():
        rows = conn.execute("SELECT sha256 FROM flux.artifacts WHERE sha256 = ANY(%s)", (shas,)).fetchall()
    have = {row[0] for row in rows}
    return [sha for sha in shas if sha not in have]


def _uploaded_code(conn: Any, name: str, sha: str, code: Any) -> bytes:
    if code is None:
        row = conn.execute("SELECT code FROM flux.artifacts WHERE sha256 = %s", (sha,)).fetchone()
        if row is None:
            raise InvalidProject(f"function {name}: no code with sha256 {sha[:12]}", hint="upload its code")
        return bytes(row[0])
    try:
        data = base64.b64decode(code, validate=True) if isinstance(code, str) else None
    except ValueError:
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != sha:
        raise InvalidRequest(f"function {name}: its code is not base64 of bytes with sha256 {sha[:12]}",
                             hint="send the built code, base64")  # fmt: skip
    return data


def _list_of_objects(body: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    items = body.get(key) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InvalidRequest(f"{key} is a list of objects", hint="see flux deploy")
    return items


def rollback(dsn: str, version: int) -> None:
    """Make deployment `version` the active one again, with its routes."""
    with db.connect(dsn) as conn:
        rollback_in(conn, version)


def rollback_in(conn: psycopg.Connection[Any], version: int) -> None:
    """`rollback` on a connection of the caller's, in one transaction."""
    with conn.transaction():
        row = conn.execute(
            "SELECT routes, gate->>'verdict' FROM flux.deployments WHERE id = %s", (version,)
        ).fetchone()
        if row is None:
            raise DeploymentNotFound(
                f"there is no version {version}", hint="`flux deployments ls` lists them"
            )
        if row[1] == "refused":  # never activated: its migrations were never applied
            raise VersionRefusedByGate(
                f"version {version} was refused by the deploy gate and never activated",
                hint="deploy its code again with flux deploy --accept-divergence",
            )
        sync_routes(conn, tuple(row[0]))
        with db.translate_errors():
            _activate(conn, version)


def list_deployments(conn: Any, limit: int | None = None, before: int | None = None) -> list[dict[str, Any]]:
    """Versions, newest first (`limit` of them, older than `before`), with their functions' code shas."""
    return db.fetch_dicts(
        conn,
        "SELECT d.id AS version, d.active, d.created_at, d.created_by, d.git_commit,"
        " d.gate->>'verdict' AS gate,"
        " coalesce(jsonb_object_agg(f.name, f.sha256) FILTER (WHERE f.name IS NOT NULL), '{}') AS functions"
        " FROM flux.deployments d LEFT JOIN flux.deployment_functions f ON f.deployment_id = d.id"
        " WHERE %s::bigint IS NULL OR d.id < %s GROUP BY d.id ORDER BY d.id DESC LIMIT %s",
        (before, before, limit),
    )


def build_project(settings: Settings) -> dict[str, tuple[Function, str]]:
    """Every function of the project, built: name -> (the Function, its source language)."""
    root = settings.project_dir / "functions"
    folders = (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.is_dir()
        else []
    )
    unknown = sorted(set(settings.function_limits) - {folder.name for folder in folders})
    if unknown:
        raise InvalidProject(
            f"flux.toml [functions.{unknown[0]}]: there is no functions/{unknown[0]}/",
            hint="add the function, or remove its section",
        )
    built = {}
    for folder in folders:
        limits = _limits(folder.name, settings.function_limits.get(folder.name, {}))
        function = build_function(folder, settings.project_dir / ".flux" / "build", limits)
        built[folder.name] = (function, _language(folder, function))
    return built


def _limits(name: str, given: Mapping[str, Any]) -> FunctionLimits:
    unknown = sorted(set(given) - _LIMIT_KEYS)
    if unknown:
        raise InvalidProject(
            f"flux.toml [functions.{name}]: unknown limit {unknown[0]!r}",
            hint=f"limits: {', '.join(sorted(_LIMIT_KEYS))}",
        )
    try:
        return FunctionLimits(**given)
    except InvalidConfig as exc:
        raise InvalidProject(
            f"flux.toml [functions.{name}]: {exc.message}", hint="use a positive whole number"
        ) from None


def _language(folder: Path, function: Function) -> str:
    return source_of(folder)[0] if function.runtime in ("wasm", "component") else function.runtime


def _check_routes(routes: tuple[dict[str, Any], ...], functions: Mapping[str, Any]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for number, route in enumerate(routes, 1):
        method, path = str(route.get("method", "?")).upper(), str(route.get("path", "?"))
        where = f"flux.toml route {number} ({method} {path})"
        if (method, path) in seen:
            raise InvalidProject(f"{where} repeats route {seen[(method, path)]}", hint="keep one of them")
        seen[(method, path)] = number
        name = route.get("function")
        if name not in functions:
            raise InvalidProject(
                f"{where}: there is no function {name!r} in functions/",
                hint=f"add functions/{name}/ or fix the name",
            )


def _check_cron(entries: tuple[dict[str, Any], ...], functions: Mapping[str, Any]) -> None:
    for number, entry in enumerate(entries, 1):
        schedule = cron.parse_schedule(entry, f"flux.toml cron {number}")
        if schedule.function not in functions:
            raise InvalidProject(
                f"flux.toml cron {number} ({schedule.name}): there is no function {schedule.function!r}"
                " in functions/",
                hint=f"add functions/{schedule.function}/ or fix the name",
            )


def _store(conn: psycopg.Connection[Any], project: str, content_sha: str, git_commit: str | None,
           routes: list[dict[str, Any]], functions: Mapping[str, tuple[Function, str]],
           gate: dict[str, Any] | None = None) -> int:  # fmt: skip
    for function, _ in functions.values():
        conn.execute(
            "INSERT INTO flux.artifacts (sha256, runtime, code) VALUES (%s, %s, %s)"
            " ON CONFLICT (sha256) DO NOTHING",
            (function.sha256, function.runtime, function.code),
        )
    row = conn.execute(
        "INSERT INTO flux.deployments (project, content_sha, git_commit, routes, gate)"
        " VALUES (%s, %s, %s, %s::jsonb, %s::jsonb) RETURNING id",
        (project, content_sha, git_commit, json.dumps(routes), gate_json(gate) if gate is not None else None),
    ).fetchone()
    assert row is not None
    for name, (function, language) in functions.items():
        conn.execute(
            "INSERT INTO flux.deployment_functions (deployment_id, name, runtime, sha256, language, limits)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
            (row[0], name, function.runtime, function.sha256, language, json.dumps(vars(function.limits))),
        )
    return int(row[0])


def _activate(conn: psycopg.Connection[Any], deployment_id: int) -> None:
    conn.execute("UPDATE flux.deployments SET active = false WHERE active AND id <> %s", (deployment_id,))
    conn.execute(
        "UPDATE flux.deployments SET active = true, activated_at = now() WHERE id = %s", (deployment_id,)
    )


def _git_commit(settings: Settings) -> str | None:
    """The project's git commit (with `-dirty` when files changed since), or None outside a repository."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.project_dir, capture_output=True,
                              text=True, timeout=10)  # fmt: skip
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=settings.project_dir,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
