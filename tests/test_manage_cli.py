"""`flux secrets`, `flux tenants`, `flux keys`, `flux deploy`, `flux deployments ls` and `flux rollback` on a
real Postgres: a secret set from the command line reaches the function and is stored nowhere in clear text."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from flux.api.deploy import deploy
from flux.config import load_settings
from flux.errors import InvalidSecretName, NotFound
from tests.fixtures.gateway import GatewayClient, gateway_client

Conn = psycopg.Connection[Any]
SECRET = "sk_live_9f8e7d6c5b4a3210"
FLUX_TOML = """
[[routes]]
method = "GET"
path = "/secret"
function = "uses_secret"
auth = "none"

[[routes]]
method = "GET"
path = "/mine"
function = "uses_secret"
auth = "key"
"""
USES_SECRET = """export default async (req, ctx) => {
  const key = await ctx.secrets.get('api_key');
  console.log('calling the bank with', key);
  return {length: key.length, tenant: req.user?.tenant_id ?? null};
}"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str) -> Path:
    monkeypatch.delenv("FLUX_SECRET_KEY", raising=False)  # the project's key file, shared by CLI and server
    (tmp_path / "flux.toml").write_text(FLUX_TOML)
    (tmp_path / "functions" / "uses_secret").mkdir(parents=True)
    (tmp_path / "functions" / "uses_secret" / "index.ts").write_text(USES_SECRET)
    return tmp_path


def flux(dsn: str, *args: str, input: str | None = None) -> Any:
    """Run `flux ARGS` in process against `dsn`; the result, with any FluxError as `.exception`."""
    return CliRunner().invoke(app, list(args), input=input, env={"DATABASE_URL": dsn}, catch_exceptions=True)


def _length(client: GatewayClient, expected: int) -> Any:
    deadline = time.monotonic() + 2
    while (result := client.simulate_get("/secret")).json.get("length") != expected:
        assert time.monotonic() < deadline, result.json
        time.sleep(0.05)
    return result


def test_a_secret_reaches_the_function_and_is_nowhere_in_clear(
    dsn: str, conn: Conn, project: Path, pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert (
        flux(dsn, "secrets", "set", "api_key", "--project", str(project), input=SECRET + "\n").exit_code == 0
    )
    assert (project / ".flux" / "secret.key").stat().st_mode & 0o777 == 0o600
    deployed = flux(dsn, "deploy", str(project))
    assert deployed.exit_code == 0 and deployed.output.startswith("deployed version "), deployed.output
    with gateway_client(load_settings(project, env={}), dsn) as client:
        _length(client, len(SECRET))
        rotated = "sk_live_rotated"
        assert flux(dsn, "secrets", "set", "api_key", rotated, "--project", str(project)).exit_code == 0
        result = _length(client, len(rotated))  # the next requests see the new value
        log = conn.execute(
            "SELECT input->>'message' FROM flux.spans WHERE request_id = %s AND module = 'log'",
            (result.headers["x-request-id"],),
        ).fetchone()
        assert log == ("calling the bank with [secret:api_key]",)
        assert flux(dsn, "secrets", "rm", "api_key", "--project", str(project)).exit_code == 0
        deadline = time.monotonic() + 2
        while (missing := client.simulate_get("/secret")).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert missing.json["code"] == "FX308"  # the function's read of it fails
    dump = subprocess.run(
        [str(pg_server.bindir / "pg_dump"), dsn], capture_output=True, text=True, check=True
    )
    assert "CREATE TABLE flux.secrets" in dump.stdout
    for value in (SECRET, rotated):
        assert value not in dump.stdout and value not in caplog.text
    listed = flux(dsn, "secrets", "ls", "--project", str(project))
    assert listed.exit_code == 0 and listed.output == ""
    bad = flux(dsn, "secrets", "set", "not-an-identifier", "x", "--project", str(project))
    assert isinstance(bad.exception, InvalidSecretName)


def test_tenants_and_keys_from_the_command_line(dsn: str, project: Path) -> None:
    made = flux(
        dsn, "tenants", "create", "acme", "--rate-per-s", "5", "--burst", "10", "--project", str(project)
    )
    assert made.exit_code == 0 and made.output.startswith("tenant acme ")
    tenant_id = made.output.split()[2]
    created = flux(dsn, "keys", "create", "--tenant", "acme", "--name", "ci", "--project", str(project))
    assert created.exit_code == 0, created.output
    key = created.stdout.splitlines()[0]
    assert key.startswith("flux_")
    assert flux(dsn, "deploy", str(project)).exit_code == 0
    with gateway_client(load_settings(project, env={}), dsn) as client:
        assert flux(dsn, "secrets", "set", "api_key", "k", "--project", str(project)).exit_code == 0
        mine = client.simulate_get("/mine", headers={"authorization": f"Bearer {key}"})
        assert mine.status_code == 200 and mine.json["tenant"] == tenant_id
        listed = flux(dsn, "keys", "ls", "--project", str(project)).output
        assert key[:12] in listed and "acme" in listed and "live" in listed and key not in listed
        assert flux(dsn, "keys", "revoke", key[:12], "--project", str(project)).exit_code == 0
        deadline = time.monotonic() + 2  # every process drops the key from its cache (NOTIFY)
        while (
            refused := client.simulate_get("/mine", headers={"authorization": f"Bearer {key}"})
        ).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert refused.status_code == 401
    tenants = flux(dsn, "tenants", "ls", "--project", str(project)).output
    assert "acme" in tenants and "5/s burst 10" in tenants and "0 keys" in tenants
    again = flux(dsn, "keys", "revoke", key[:12], "--project", str(project))
    assert isinstance(again.exception, NotFound)
    unknown = flux(dsn, "keys", "create", "--tenant", "nobody", "--project", str(project))
    assert isinstance(unknown.exception, NotFound)


def test_deployments_ls_and_rollback_from_the_command_line(dsn: str, project: Path) -> None:
    first = flux(dsn, "deploy", str(project))
    assert first.exit_code == 0, first.output
    old = first.output.split()[-1]  # "deployed version N"
    (project / "functions" / "uses_secret" / "index.ts").write_text(USES_SECRET.replace("length", "size"))
    new = flux(dsn, "deploy", str(project)).output.split()[-1]
    assert "already active" in flux(dsn, "deploy", str(project)).output
    versions = [
        line.split() for line in flux(dsn, "deployments", "ls", "--project", str(project)).output.splitlines()
    ]
    assert [v[:2] for v in versions] == [["*", new], [old, versions[1][1]]]
    assert all(any(part.startswith("uses_secret=") for part in v) for v in versions)
    assert flux(dsn, "rollback", old, "--project", str(project)).output == f"version {old} is active\n"
    after = [
        line.split() for line in flux(dsn, "deployments", "ls", "--project", str(project)).output.splitlines()
    ]
    assert after[0][0] == new and after[1][:2] == ["*", old]


def _git(project: Path, *args: str) -> str:
    identity = ["-c", "user.name=Flux", "-c", "user.email=test@flux.invalid", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *identity, *args], cwd=project, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_deployments_ls_shows_a_dirty_commit_and_keeps_its_columns(dsn: str, project: Path) -> None:
    (project / ".gitignore").write_text(".flux/\n")
    _git(project, "init", "-q")
    _git(project, "add", ".")
    _git(project, "commit", "-q", "-m", "first")
    sha = _git(project, "rev-parse", "HEAD")
    assert flux(dsn, "deploy", str(project)).exit_code == 0  # clean: the short sha
    source = project / "functions" / "uses_secret" / "index.ts"
    source.write_text(USES_SECRET.replace("length", "size"))
    assert flux(dsn, "deploy", str(project)).exit_code == 0  # an edit not committed: the same sha, dirty
    source.write_text(USES_SECRET.replace("length", "count"))
    named = "release-2026.12-hotfix-for-the-bank-call"  # what a CI upload may send as its commit
    deploy(dsn, load_settings(project), git_commit=named)

    listed = flux(dsn, "deployments", "ls", "--project", str(project)).output.splitlines()
    assert [line.split()[-2] for line in listed] == [named, f"{sha[:12]}-dirty", sha[:12]]
    assert len({line.index("uses_secret=") for line in listed}) == 1, listed  # one column, aligned
