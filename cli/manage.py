"""Managing a project from the command line: `flux deploy`, `flux deployments ls`, `flux rollback`,
`flux secrets`, `flux tenants` and `flux keys`, on DATABASE_URL or the project's embedded Postgres."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

ProjectDir = Annotated[Path, typer.Option("--project", help="The Flux project folder.", file_okay=False)]

secrets_app = typer.Typer(help="Secrets functions read with ctx.secrets.get (encrypted at rest).",
                          no_args_is_help=True)  # fmt: skip
tenants_app = typer.Typer(help="Tenants: who API keys act for, and their rate limits.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys callers send as `authorization: Bearer flux_...`.", no_args_is_help=True
)
deployments_app = typer.Typer(help="Deployed versions of the project.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("rollback")(rollback)
    app.add_typer(deployments_app, name="deployments")
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(keys_app, name="keys")


@contextmanager
def _connection(project: Path) -> Iterator[Any]:
    """An autocommit connection to DATABASE_URL or the project's embedded Postgres, migrated."""
    from cli.db import database_for
    from flux import db, migrate

    with database_for(project) as (dsn, _):
        migrate.migrate(dsn)
        with db.connect(dsn, autocommit=True) as conn:
            yield conn


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


# -- deployments ---------------------------------------------------------------------------------------------


def deploy(
    project: Annotated[Path, typer.Argument(help="The Flux project folder.", file_okay=False)] = Path("."),
) -> None:
    """Build every function, apply the project's migrations, sync routes, and activate it all as one
    version."""
    from cli.db import database_for
    from flux.api.deploy import deploy as run_deploy
    from flux.config import load_settings

    settings = load_settings(project)
    with database_for(project) as (dsn, _):
        deployment = run_deploy(dsn, settings)
    if deployment.created:
        typer.echo(f"deployed version {deployment.id}")
    else:
        typer.echo(f"version {deployment.id} is already active with this code; nothing to deploy")


def rollback(version: Annotated[int, typer.Argument(help="The version to make active again.")],
             project: ProjectDir = Path(".")) -> None:  # fmt: skip
    """Make an earlier version active again: its code, exactly, and its routes (migrations stay)."""
    from cli.db import database_for
    from flux.api.deploy import rollback as run_rollback

    with database_for(project) as (dsn, _):
        run_rollback(dsn, version)
    typer.echo(f"version {version} is active")


@deployments_app.command("ls")
def deployments_ls(project: ProjectDir = Path(".")) -> None:
    """Every version, newest first: active or not, when, by whom, the git commit and each function's sha."""
    from flux.api.deploy import list_deployments

    with _connection(project) as conn:
        rows = list_deployments(conn)
    for row in rows:
        marker = "*" if row["active"] else " "
        functions = " ".join(f"{name}={sha[:12]}" for name, sha in sorted(row["functions"].items()))
        commit = (row["git_commit"] or "-")[:18]
        typer.echo(f"{marker} {row['version']:>4}  {_when(row['created_at'])}  {commit:<18}  {functions}")


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
    from flux.api.secrets import check_name, load_key, set_secret

    check_name(name)
    if value is None:
        value = sys.stdin.read().rstrip("\n")
    key = load_key(project.resolve())
    with _connection(project) as conn:
        set_secret(conn, key, name, value)
    typer.echo(f"set {name}")


@secrets_app.command("ls")
def secrets_ls(project: ProjectDir = Path(".")) -> None:
    """Secret names and when each was set (never values)."""
    from flux.api.secrets import list_secrets

    with _connection(project) as conn:
        for name, updated_at in list_secrets(conn):
            typer.echo(f"{name:<32} {_when(updated_at)}")


@secrets_app.command("rm")
def secrets_rm(name: Annotated[str, typer.Argument(help="The secret to remove.")],
               project: ProjectDir = Path(".")) -> None:  # fmt: skip
    """Remove a secret; functions that read it then get FX308."""
    from flux.api.secrets import remove_secret

    with _connection(project) as conn:
        remove_secret(conn, name)
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
    from flux.api.keys import create_tenant

    with _connection(project) as conn:
        tenant_id = create_tenant(conn, name, rate_per_s, burst)
    typer.echo(f"tenant {name} {tenant_id}")


@tenants_app.command("ls")
def tenants_ls(project: ProjectDir = Path(".")) -> None:
    """Every tenant with its rate limit and number of live keys."""
    from flux.api.keys import list_tenants

    with _connection(project) as conn:
        for row in list_tenants(conn):
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
    from flux.api.keys import create_key

    if admin:
        _create_admin_key(project, name, expires_in)
        return
    with _connection(project) as conn:
        created = create_key(conn, role, tenant, name)
    typer.echo(created.key)
    tenant = f" tenant {created.tenant}" if created.tenant else ""
    typer.echo(f"key {created.id} ({created.prefix}…) role {created.role}{tenant}; store it now,"
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
    with _connection(project) as conn:
        created = create_admin_key(conn, name, lifetime)
    typer.echo(created.key)
    until = f", until {_when(created.expires_at)}" if created.expires_at else ""
    typer.echo(f"admin key {created.id} ({created.prefix}…){until}; store it now, it is not shown again",
               err=True)  # fmt: skip


@keys_app.command("ls")
def keys_ls(project: ProjectDir = Path(".")) -> None:
    """Every key by id and prefix, with its role, tenant and state."""
    from flux.api.keys import list_keys

    with _connection(project) as conn:
        for row in list_keys(conn):
            state = f"revoked {_when(row['revoked_at'])}" if row["revoked_at"] else "live"
            typer.echo(
                f"{row['id']:>4}  {row['prefix']}…  {row['role']:<8} {row['tenant'] or '-':<16} {state}"
            )


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or prefix.")],
                project: ProjectDir = Path(".")) -> None:  # fmt: skip
    """Revoke a key; every server refuses it from its next request."""
    from flux.api.keys import revoke_key

    with _connection(project) as conn:
        key_id = revoke_key(conn, key)
    typer.echo(f"revoked key {key_id}")
