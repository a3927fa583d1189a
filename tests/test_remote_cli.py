"""The CLI through a running server's management API: `flux login`, `flux invoke`, and the management
commands with FLUX_URL set."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from flux.api.admin import create_admin_key
from tests.fixtures.processes import FLUX, free_port, wait_for_http

FLUX_TOML = """
[[routes]]
method = "POST"
path = "/echo"
function = "echo"
auth = "none"
"""
ECHO = "export default async (req, ctx) => ({echo: req.body, secret: await ctx.secrets.get('token')})"


def test_login_invoke_and_manage_through_the_server(
    dsn: str, conn: psycopg.Connection[Any], project_dir: Path, flux_env: dict[str, str], tmp_path: Path
) -> None:
    (project_dir / "flux.toml").write_text(FLUX_TOML)
    (project_dir / "functions" / "echo").mkdir(parents=True)
    (project_dir / "functions" / "echo" / "index.ts").write_text(ECHO)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**flux_env, "DATABASE_URL": dsn, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("FLUX_SECRET_KEY", None)
    server = subprocess.Popen(
        [*FLUX, "server", "--port", str(port)], cwd=project_dir, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    admin_key = create_admin_key(conn, "cli").key

    def flux(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        remote = {k: v for k, v in env.items() if k != "DATABASE_URL"} | {"FLUX_URL": url}
        return subprocess.run([*FLUX, *args], cwd=project_dir, env=remote, input=input, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    try:
        wait_for_http(f"{url}/ready", timeout=30, process=server)
        refused = flux("invoke", "echo")
        assert refused.returncode == 1 and "error FX606: no admin key for" in refused.stderr
        logged = flux("login", input=admin_key + "\n")
        assert logged.returncode == 0 and "logged in to" in logged.stdout, logged.stderr
        assert (tmp_path / "config" / "flux" / "credentials.json").stat().st_mode & 0o777 == 0o600
        assert flux("secrets", "set", "token", "t0k3n").returncode == 0
        invoked = flux("invoke", "echo", "--data", '{"n": 1}')
        assert invoked.returncode == 0, invoked.stderr
        assert json.loads(invoked.stdout) == {"echo": {"n": 1}, "secret": "t0k3n"}
        for spelling in ("-d", "--payload"):  # as `flux queue push`; --payload is the old, hidden name
            same = flux("invoke", "echo", spelling, '{"n": 1}')
            assert same.returncode == 0 and json.loads(same.stdout) == json.loads(invoked.stdout), same.stderr
        request_id = invoked.stderr.split("request ")[1].strip()
        assert flux("tenants", "create", "acme").returncode == 0
        assert "acme" in flux("tenants", "ls").stdout
        assert "token" in flux("secrets", "ls").stdout
        (project_dir / "functions" / "echo" / "index.ts").write_text(ECHO.replace("echo:", "echoed:"))
        (project_dir / "migrations").mkdir()
        (project_dir / "migrations" / "0001_things.sql").write_text(
            "CREATE TABLE things (id int PRIMARY KEY);\n"
        )
        uploaded = flux("deploy")  # built here, uploaded: the server has none of this code yet
        assert uploaded.returncode == 0, uploaded.stderr
        assert uploaded.stdout == "applied migrations/0001_things.sql\ndeployed version 2\n"
        assert "already active" in flux("deploy").stdout
        deadline = time.monotonic() + 2
        while "echoed" not in (again := flux("invoke", "echo", "--data", "2")).stdout:
            assert time.monotonic() < deadline, again.stdout
        missing = flux("invoke", "nope")
        assert missing.returncode == 1 and "error FX605" in missing.stderr
        bad = flux("invoke", "echo", "--data", "{nope")
        assert bad.returncode == 1 and "error FX607: --data is not JSON" in bad.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    row = conn.execute(
        "SELECT r.function, r.deployment_id IS NOT NULL, r.output->'body'->>'secret', s.output->>'caller'"
        " FROM flux.requests r JOIN flux.spans s ON s.request_id = r.id AND s.module = 'gateway'"
        " WHERE r.id = %s",
        (request_id,),
    ).fetchone()
    assert row is not None and row[:3] == ("echo", True, "[secret:token]") and '"admin_key"' in row[3]
