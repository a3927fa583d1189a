"""Managing a project from the command line: `flux deploy`, `flux deployments ls`, `flux rollback`,
`flux secrets`, `flux tenants` and `flux keys`, on DATABASE_URL or the project's embedded Postgres."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli._options import OldDataName, ProjectDir, json_data
from cli.backends import backend, database_connection

secrets_app = typer.Typer(help="Secrets functions read with ctx.secrets.get (encrypted at rest).",
                          no_args_is_help=True)  # fmt: skip
tenants_app = typer.Typer(help="Tenants: who API keys act for, and their rate limits.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys callers send as `authorization: Bearer flux_...`.", no_args_is_help=True
)
deployments_app = typer.Typer(help="Deployed versions of the project.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("invoke")(invoke)
    app.command("login")(login)
    app.command("rollback")(rollback)
    app.add_typer(deployments_app, name="deployments")
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(keys_app, name="keys")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


# -- deployments ---------------------------------------------------------------------------------------------


_GATE_HELP = (
    "Before activating, replay the latest recorded requests of every function whose code changed on the new"
    " code, and activate only if none diverged (the default with [deploy] gate in flux.toml)."
)


def deploy(
    project: Annotated[Path, typer.Argument(help="The Flux project folder.", file_okay=False)] = Path("."),
    gate: Annotated[bool | None, typer.Option("--gate/--no-gate", help=_GATE_HELP)] = None,
    last: Annotated[
        int | None, typer.Option(help="Gate: the latest N requests of the changed functions (default 200).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Gate: the requests since this long ago (15m, 2h, 1d).")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option("--db", help="Gate: recorded (the default; answers from the recording) or as-of."),
    ] = None,
    accept_divergence: Annotated[
        bool, typer.Option("--accept-divergence", help="Gate: activate even if replays diverged.")
    ] = False,
) -> None:
    """Build every function, apply the project's migrations, sync routes, and activate it all as one
    version: on the database, or (with FLUX_URL set) uploaded to that server. With the gate, exit 1 and
    activate nothing when a replayed request diverged."""
    from cli.db import database_for
    from cli.remote import remote
    from flux import migrate
    from flux.api.deploy import bundle_project, bundle_to_json
    from flux.config import load_settings
    from flux.errors import DeployGateRefused

    settings = load_settings(project)
    options = _gate_options(settings, gate, last, since, mode, accept_divergence)
    api = remote()
    try:
        if api is not None:  # built here, uploaded to the server's management API, which runs the gate
            bundle = bundle_project(settings)
            shas = sorted({function.sha256 for function, _ in bundle.functions.values()})
            missing = set(api.call("POST", "/flux/api/artifacts/missing", {"sha256": shas})["missing"])
            body = bundle_to_json(bundle, missing) | ({"gate": options.to_body()} if options else {})
            answer = api.call("POST", "/flux/api/deployments", body, exact_numbers=True)
            version, created, migrations = answer["version"], answer["created"], answer["migrations"]
            verdict = answer.get("gate")
        else:
            with database_for(project) as (dsn, _):
                migrate.migrate(dsn)  # Flux's own schema; the project's migrations go with the deploy
                deployment = _deploy_here(dsn, settings, options)
            version, created, verdict = deployment.id, deployment.created, deployment.gate
            migrations = [m.label for m in deployment.migrations]
    except DeployGateRefused as refused:
        _print_gate(refused.details or {})
        from cli._output import print_error

        print_error(refused)
        raise typer.Exit(1) from None
    if verdict is not None:
        _print_gate(verdict)
    for label in migrations:
        typer.echo(f"applied {label}")
    if created:
        accepted = (
            " (divergence accepted)" if verdict is not None and verdict["verdict"] == "accepted" else ""
        )
        typer.echo(f"deployed version {version}{accepted}")
    else:
        typer.echo(f"version {version} is already active with this code; nothing to deploy")


def _gate_options(
    settings: Any, gate: bool | None, last: int | None, since: str | None, mode: str | None, accept: bool
) -> Any:
    """The gate's options from the flags and `[deploy] gate` in flux.toml, or None for no gate. A gate flag
    (--last, --since, --db, --accept-divergence) turns the gate on; with --no-gate it is FX516."""
    from datetime import timedelta

    from cli._options import period
    from flux.errors import InvalidGateOption
    from flux.replay.recent import DEFAULT_LAST, MAX_LAST, GateOptions, Window, check_mode

    flags = (("--last", last), ("--since", since), ("--db", mode), ("--accept-divergence", accept or None))
    given = [name for name, value in flags if value is not None]
    if gate is False:
        if given:
            raise InvalidGateOption(f"{given[0]} is an option of the gate, and --no-gate skips it",
                                    hint="give one of them")  # fmt: skip
        return None
    configured = dict(settings.deploy_gate or {})
    if gate is None and not given and not configured:
        return None
    if last is not None and since is not None:
        raise InvalidGateOption("--last and --since each pick the requests", hint="give one of them")
    if last is not None or since is not None:  # the flags pick the window, not flux.toml's
        configured.pop("last", None)
        configured.pop("since", None)
    since = since if since is not None else configured.get("since")
    last = last if last is not None else configured.get("last")
    ago: timedelta | None = None
    if since is not None:
        try:
            ago = period(since.strip())
        except (ValueError, OverflowError):
            ago = None
        if ago is None:
            raise InvalidGateOption(f"--since {since!r} is not a period", hint="e.g. --since 2h")
    window = Window(last if last is not None else MAX_LAST if ago is not None else DEFAULT_LAST, ago)
    return GateOptions(window, check_mode(mode or configured.get("db", "recorded")), accept)


def _deploy_here(dsn: str, settings: Any, options: Any) -> Any:
    """Deploy on the database; with `options`, the gate runs in this process, as the server would run it."""
    from contextlib import ExitStack

    from flux import db
    from flux.api.deploy import Gate, bundle_project, deploy, deploy_bundle
    from flux.data import load_catalog
    from flux.gateway.handler import WithBuiltins
    from flux.replay import Replay, built_code
    from flux.runtime import Runtime, project_cache
    from flux.runtime.fetch import FetchPolicy
    from flux.runtime.secrets import SealedSecrets, load_key

    if options is None:
        return deploy(dsn, settings)
    folder = settings.project_dir
    bundle = bundle_project(settings)
    with db.connect(dsn, autocommit=True) as conn, ExitStack() as stack:
        runtime = Runtime(project_cache(folder), deno_workers=1)
        stack.callback(runtime.close)
        runs_on = stack.enter_context(db.request_connection(conn)) if options.mode == "as-of" else None
        how = Replay(
            WithBuiltins(runtime), built_code({}), load_catalog(conn), mode=options.mode,
            secrets=SealedSecrets(conn, lambda: load_key(folder)),
            fetch_policy=FetchPolicy(allow=settings.fetch_allow),
        )  # fmt: skip
        gate = Gate(how, options.window, options.accept, runs_on)
        return deploy_bundle(conn, bundle, compile_into=project_cache(folder), gate=gate)


SHOWN_DIVERGENCES = 3  # replays shown in full under the gate's summary


def _print_gate(verdict: dict[str, Any]) -> None:
    """The gate's summary (which functions changed, what was replayed, the counts), then the first replays
    that did not behave as recorded, as `flux incident replay` shows them."""
    from cli.incident import result_lines

    if not verdict:
        return
    functions = ", ".join(verdict.get("functions") or []) or "none"
    if verdict.get("routes"):
        functions += f") and routes handed to another function ({', '.join(verdict['routes'])}"
    summary = verdict.get("summary") or {}
    took_ms = float(verdict.get("took_ms") or 0)
    typer.echo(f"gate: {verdict.get('replayed', 0)} recent requests of changed functions ({functions})"
               f" replayed on the new code, {verdict.get('db')} db, {took_ms:.0f} ms")  # fmt: skip
    if verdict.get("references"):
        typer.echo(f"gate: {verdict['references']} of them served by older code than the active version's:"
                   " judged against their replay on the active version")  # fmt: skip
    typer.echo(f"gate: {summary.get('same', 0)} same · {summary.get('diverged', 0)} diverged"
               f" · {summary.get('drift', 0)} drift · {summary.get('error', 0)} could not run")  # fmt: skip
    for item in (verdict.get("divergences") or [])[:SHOWN_DIVERGENCES]:
        for line in result_lines(item["request"], item["result"], str(verdict.get("db")), 0.0):
            typer.echo(line)


def rollback(version: Annotated[int, typer.Argument(help="The version to make active again.")],
             project: ProjectDir = Path(".")) -> None:  # fmt: skip
    """Make an earlier version active again: its code, exactly, and its routes (migrations stay)."""
    with backend(project) as manager:
        manager.rollback(version)
    typer.echo(f"version {version} is active")


@deployments_app.command("ls")
def deployments_ls(project: ProjectDir = Path(".")) -> None:
    """Every version, newest first: active or not, when, by whom, the git commit, each function's sha, and
    the deploy gate's verdict when it ran (passed, accepted, refused)."""
    with backend(project, reads_only=True) as manager:
        rows = manager.list_deployments()
    commits = [_commit_label(row["git_commit"]) for row in rows]
    width = max([18, *map(len, commits)])  # a short sha and `-dirty`, or a longer name uploaded as the commit
    for row, commit in zip(rows, commits, strict=True):
        marker = "*" if row["active"] else " "
        functions = " ".join(f"{name}={sha[:12]}" for name, sha in sorted(row["functions"].items()))
        when = _when(row["created_at"])
        gate = f"  gate {row['gate']}" if row.get("gate") else ""  # the deploy gate's verdict, when it ran
        typer.echo(f"{marker} {row['version']:>4}  {when}  {commit:<{width}}  {functions}{gate}")


_SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})(-dirty)?$")


def _commit_label(git_commit: str | None) -> str:
    """A git sha as its first 12 digits, keeping `-dirty`; any other text as it was recorded, whole."""
    if not git_commit:
        return "-"
    sha = _SHA.match(git_commit)
    return sha[1][:12] + (sha[2] or "") if sha else git_commit


# -- the server's management API -------------------------------------------------------------------------


def invoke(
    function: Annotated[str, typer.Argument(help="The function of the active version to call.")],
    data: Annotated[
        str | None, typer.Option("--data", "-d", metavar="<json>", help="Its request body, as JSON.")
    ] = None,
    payload: OldDataName = None,
    role: Annotated[str, typer.Option(help="The role it runs as: anon, user or service.")] = "service",
) -> None:
    """Call a function through the server (FLUX_URL, default http://127.0.0.1:4000) and print its answer; the
    status and request id go to standard error (`flux trace <id>` shows the run)."""
    import json

    from cli.remote import remote
    from flux.errors import InvalidRequest

    body = json_data(data, payload, InvalidRequest, '{"text": "hi"}')
    api = remote(required=True)
    assert api is not None
    answer = api.call("POST", f"/flux/api/functions/{function}/invoke", {"data": body, "role": role})
    output = answer["body"]
    typer.echo(output if isinstance(output, str) else json.dumps(output, indent=2, ensure_ascii=False))
    typer.echo(f"status {answer['status']}  request {answer['request_id']}", err=True)
    if answer["status"] >= 400:
        raise typer.Exit(1)


def login(
    url: Annotated[str | None, typer.Option(help="The server (default FLUX_URL, else local).")] = None,
) -> None:
    """Store an admin key for a server, so the CLI can use its management API (with FLUX_URL set to it)."""
    import os

    from cli.remote import DEFAULT_URL, Remote, store_key

    url = (url or os.environ.get("FLUX_URL") or DEFAULT_URL).rstrip("/")
    key = os.environ.get("FLUX_ADMIN_KEY") or typer.prompt(
        "admin key (flux keys create --admin)", hide_input=True
    )
    Remote(url, key.strip()).call("GET", "/flux/api/functions")  # refused here if the key is not live
    path = store_key(url, key.strip())
    typer.echo(f"logged in to {url}; the key is in {path}")


# -- secrets -------------------------------------------------------------------------------------------------


@secrets_app.command("set")
def secrets_set(
    name: Annotated[str, typer.Argument(help="The secret's name, an identifier.")],
    value: Annotated[
        str | None, typer.Argument(help="The value; read from standard input when left out.")
    ] = None,
    project: ProjectDir = Path("."),
) -> None:
    """Store a secret (encrypted); functions see the new value at their next request."""
    from flux.api.secrets import check_name

    check_name(name)
    if value is None:
        value = sys.stdin.read().rstrip("\n")
    with backend(project) as manager:
        manager.set_secret(name, value)
    typer.echo(f"set {name}")


@secrets_app.command("ls")
def secrets_ls(project: ProjectDir = Path(".")) -> None:
    """Secret names and when each was set (never values)."""
    with backend(project, reads_only=True) as manager:
        for row in manager.list_secrets():
            typer.echo(f"{row['name']:<32} {_when(row['updated_at'])}")


@secrets_app.command("rm")
def secrets_rm(name: Annotated[str, typer.Argument(help="The secret to remove.")],
               project: ProjectDir = Path(".")) -> None:  # fmt: skip
    """Remove a secret; functions that read it then get FX308."""
    with backend(project) as manager:
        manager.remove_secret(name)
    typer.echo(f"removed {name}")


# -- tenants and keys ----------------------------------------------------------------------------------------


@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="The tenant's unique name.")],
    rate_per_s: Annotated[float | None, typer.Option(help="Requests per second for all its keys.")] = None,
    burst: Annotated[int | None, typer.Option(help="How many requests may come at once.")] = None,
    project: ProjectDir = Path("."),
) -> None:
    """Create a tenant, optionally with a rate limit."""
    with backend(project) as manager:
        tenant_id = manager.create_tenant(name, rate_per_s, burst)
    typer.echo(f"tenant {name} {tenant_id}")


@tenants_app.command("ls")
def tenants_ls(project: ProjectDir = Path(".")) -> None:
    """Every tenant with its rate limit and number of live keys."""
    with backend(project, reads_only=True) as manager:
        for row in manager.list_tenants():
            limit = f"{row['rate_per_s']:g}/s burst {row['burst']}" if row["rate_per_s"] else "no limit"
            typer.echo(f"{row['name']:<20} {row['id']}  {limit:<22} {row['keys']} keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="anon, user or service.")] = "user",
    tenant: Annotated[str | None, typer.Option(help="The tenant (name or id) the key acts for.")] = None,
    name: Annotated[str | None, typer.Option(help="A label to recognise the key by.")] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="A key for the management API (/flux/api/).")
    ] = False,
    expires_in: Annotated[str | None, typer.Option(help="An admin key's lifetime, e.g. 30d or 12h.")] = None,
    project: ProjectDir = Path("."),
) -> None:
    """Create an API key (or, with --admin, a management API key) and print it: this is the only time its
    full text is shown."""
    if admin:
        _create_admin_key(project, name, expires_in)
        return
    with backend(project) as manager:
        created = manager.create_key(role, tenant, name)
    typer.echo(created["key"])
    tenant = f" tenant {created['tenant']}" if created["tenant"] else ""
    typer.echo(f"key {created['id']} ({created['prefix']}…) role {created['role']}{tenant}; store it now,"
               " it is not shown again", err=True)  # fmt: skip


def _create_admin_key(project: Path, name: str | None, expires_in: str | None) -> None:
    import re
    from datetime import timedelta

    from flux.api.admin import create_admin_key
    from flux.errors import InvalidConfig

    lifetime = None
    if expires_in is not None:
        match = re.fullmatch(r"(\d+)([dh])", expires_in.strip())
        if match is None or int(match[1]) == 0:
            raise InvalidConfig(
                f"--expires-in {expires_in!r} is not a positive period", hint="e.g. 30d or 12h"
            )
        lifetime = timedelta(days=int(match[1])) if match[2] == "d" else timedelta(hours=int(match[1]))
    with database_connection(project) as conn:  # admin keys are made on the database only
        created = create_admin_key(conn, name, lifetime)
    typer.echo(created.key)
    until = f", until {_when(created.expires_at)}" if created.expires_at else ""
    typer.echo(f"admin key {created.id} ({created.prefix}…){until}; store it now, it is not shown again",
               err=True)  # fmt: skip


@keys_app.command("ls")
def keys_ls(project: ProjectDir = Path(".")) -> None:
    """Every key by id and prefix, with its role, tenant and state."""
    with backend(project, reads_only=True) as manager:
        for row in manager.list_keys():
            state = f"revoked {_when(row['revoked_at'])}" if row["revoked_at"] else "live"
            typer.echo(
                f"{row['id']:>4}  {row['prefix']}…  {row['role']:<8} {row['tenant'] or '-':<16} {state}"
            )


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or prefix.")],
                project: ProjectDir = Path(".")) -> None:  # fmt: skip
    """Revoke a key; every server refuses it from its next request."""
    with backend(project) as manager:
        key_id = manager.revoke_key(key)
    typer.echo(f"revoked key {key_id}")
