"""Deploys: a project folder becomes a version; redeploys and rollbacks change what every worker runs, and
each request row names the version and code sha that served it; a failed deploy changes nothing."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.api.deploy import deploy, list_deployments, rollback
from flux.config import load_settings
from flux.errors import DeploymentNotFound, FluxError, InvalidFunctionCode, InvalidProject, MigrationFailed
from tests.fixtures.gateway import GatewayClient, gateway_client

Conn = psycopg.Connection[Any]
FLUX_TOML = """name = "greeter"

[[routes]]
method = "GET"
path = "/greet"
function = "greet"
auth = "none"

[functions.greet]
timeout_ms = 5000
"""
NOTES = (
    "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\nGRANT SELECT ON notes TO flux_anon;\n"
)


def _greet(version: str) -> str:
    return f"export default async (req, ctx) => ({{version: '{version}'}})"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "flux.toml").write_text(FLUX_TOML)
    (tmp_path / "functions" / "greet").mkdir(parents=True)
    (tmp_path / "functions" / "greet" / "index.ts").write_text(_greet("v1"))
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_notes.sql").write_text(NOTES)
    return tmp_path


def _deploy(dsn: str, project: Path) -> Any:
    return deploy(dsn, load_settings(project, env={}))


def _served(client: GatewayClient, conn: Conn, version: str) -> tuple[Any, ...]:
    """Call /greet until it answers `version` (a deploy reaches every worker by NOTIFY); its request row."""
    deadline = time.monotonic() + 2
    while (result := client.simulate_get("/greet")).json != {"version": version}:
        assert time.monotonic() < deadline, f"still {result.json}, not {version}"
        time.sleep(0.05)
    row = conn.execute(
        "SELECT deployment_id, code_sha, function FROM flux.requests WHERE id = %s",
        (result.headers["x-request-id"],),
    ).fetchone()
    assert row is not None
    return tuple(row)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_deploy_redeploy_and_rollback_each_serve_their_own_code(dsn: str, conn: Conn, project: Path) -> None:
    first = _deploy(dsn, project)
    assert first.created and _deploy(dsn, project) == first.__class__(first.id, first.content_sha, False)
    with gateway_client(load_settings(project, env={}), dsn) as client:
        assert _served(client, conn, "v1") == (first.id, _sha(_greet("v1")), "greet")
        (project / "functions" / "greet" / "index.ts").write_text(_greet("v2"))
        second = _deploy(dsn, project)
        assert second.created and second.id > first.id
        assert _served(client, conn, "v2") == (second.id, _sha(_greet("v2")), "greet")
        rollback(dsn, first.id)
        assert _served(client, conn, "v1") == (first.id, _sha(_greet("v1")), "greet")
    versions = list_deployments(conn)
    assert [(v["version"], v["active"]) for v in versions] == [(second.id, False), (first.id, True)]
    assert versions[1]["functions"] == {"greet": _sha(_greet("v1"))}
    limits = conn.execute(
        "SELECT limits->>'timeout_ms' FROM flux.deployment_functions WHERE deployment_id = %s", (first.id,)
    ).fetchone()
    assert limits == ("5000",)  # [functions.greet] in flux.toml
    with pytest.raises(DeploymentNotFound):
        rollback(dsn, 999)


def _state(conn: Conn) -> tuple[Any, ...]:
    """What a deploy may change: the active version, the routes, the project's applied migrations."""
    return (
        conn.execute("SELECT id FROM flux.deployments WHERE active").fetchall(),
        conn.execute("SELECT method, path, function FROM flux.routes ORDER BY id").fetchall(),
        conn.execute(
            "SELECT version FROM flux.schema_migrations WHERE kind = 'project' ORDER BY 1"
        ).fetchall(),
    )


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ("bad_migration", MigrationFailed, "0002_broken"),
        (
            "missing_function",
            InvalidProject,
            "flux.toml route 2 (POST /orders): there is no function 'orders'",
        ),
        ("duplicate_route", InvalidProject, "flux.toml route 2 (GET /greet) repeats route 1"),
        ("bad_wat", InvalidFunctionCode, "index.wat"),
        ("bad_ts", InvalidFunctionCode, "greet/index.ts:1:44: Expression expected"),
        ("unknown_limit", InvalidProject, "[functions.greet]: unknown limit 'cpu'"),
    ],
)
def test_a_failed_deploy_changes_nothing(
    dsn: str, conn: Conn, project: Path, change: str, error: type[FluxError], words: str
) -> None:
    _deploy(dsn, project)
    before = _state(conn)
    (project / "functions" / "greet" / "index.ts").write_text(
        _greet("v2")
    )  # changed too, and must not go live
    toml = project / "flux.toml"
    if change == "bad_migration":
        (project / "migrations" / "0002_broken.sql").write_text(
            "CREATE TABLE later (id int PRIMARY KEY);\nINSERT INTO nowhere VALUES (1);\n"
        )
    elif change == "missing_function":
        route = '[[routes]]\nmethod = "POST"\npath = "/orders"\nfunction = "orders"\n\n'
        toml.write_text(FLUX_TOML.replace("[functions.greet]", route + "[functions.greet]"))
    elif change == "duplicate_route":
        route = '[[routes]]\nmethod = "GET"\npath = "/greet"\nfunction = "greet"\n\n'
        toml.write_text(FLUX_TOML.replace("[functions.greet]", route + "[functions.greet]"))
    elif change == "bad_wat":
        (project / "functions" / "broken").mkdir()
        (project / "functions" / "broken" / "index.wat").write_text(
            "(module (func $f (result i32) (i32.nope)))"
        )
    elif change == "bad_ts":
        (project / "functions" / "greet" / "index.ts").write_text(
            "export default async (req, ctx) => ({v: 1 +})"
        )
    else:
        toml.write_text(FLUX_TOML + "cpu = 2\n")
    with pytest.raises(error) as raised:
        _deploy(dsn, project)
    assert words in raised.value.message
    assert _state(conn) == before
    assert conn.execute("SELECT to_regclass('public.later')").fetchone() == (None,)


def test_an_unchanged_function_is_not_built_again(dsn: str, project: Path) -> None:
    (project / "functions" / "wat_fn").mkdir()
    (project / "functions" / "wat_fn" / "index.wat").write_text(
        '(module (memory (export "memory") 1) (data (i32.const 16) "{}")'
        ' (func (export "flux_alloc") (param i32) (result i32) (i32.const 1024))'
        ' (func (export "flux_handle") (param i32 i32) (result i64) (i64.const 68719476738)))'
    )
    _deploy(dsn, project)
    built = project / ".flux" / "build" / "wat_fn.wasm"
    stamp = built.stat().st_mtime_ns
    (project / "functions" / "greet" / "index.ts").write_text(_greet("v2"))
    assert _deploy(dsn, project).created
    assert built.stat().st_mtime_ns == stamp
