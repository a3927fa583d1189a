"""`flux init`: a new project that deploys and answers on both its routes (TypeScript and Python), whose code
runs as the service role with no GRANT of its own, and a folder that is a project already is left alone."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from flux.api.admin import create_admin_key
from flux.api.deploy import deploy
from flux.config import load_settings
from flux.errors import InvalidProject
from flux.runtime.build import build_function
from tests.fixtures.gateway import gateway_client
from tests.fixtures.processes import FLUX, free_port, run_flux, wait_for_http


def test_a_new_project_deploys_and_answers(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX_SECRET_KEY", raising=False)
    folder = tmp_path / "shop"
    made = CliRunner().invoke(app, ["init", str(folder)])
    assert made.exit_code == 0, made.output
    assert (folder / ".gitignore").read_text().strip().endswith(".flux/")
    assert "\n__pycache__/\n" in (folder / ".gitignore").read_text()
    assert 'name = "shop"' in (folder / "flux.toml").read_text()
    settings = load_settings(folder, env={})
    assert deploy(dsn, settings).created
    with gateway_client(settings, dsn) as client:
        added = client.simulate_post("/notes", json={"text": "first"})
        assert added.status_code == 201 and added.json == {"id": 1, "body": "first"}
        assert client.simulate_post("/notes", json={}).status_code == 400
        assert client.simulate_get("/notes/count").json == {"count": 1}
    assert not list(folder.glob("functions/*/__pycache__"))  # the build of count_notes left nothing there
    again = CliRunner().invoke(app, ["init", str(folder)])
    assert isinstance(again.exception, InvalidProject) and "already has" in again.exception.message


@pytest.mark.slow
def test_a_new_projects_code_runs_as_the_service_role_with_no_grant_of_its_own(
    dsn: str, conn: psycopg.Connection[Any], project_dir: Path, flux_env: dict[str, str]
) -> None:
    """`flux invoke` (service by default) and a job pushed from the CLI write to the project's table."""
    folder = project_dir / "shop"
    assert CliRunner().invoke(app, ["init", str(folder)]).exit_code == 0
    deploy(dsn, load_settings(folder, env={}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**flux_env, "DATABASE_URL": dsn}
    env.pop("FLUX_URL", None)
    server = subprocess.Popen(
        [*FLUX, "server", "--no-deploy", "--port", str(port), "--queue-workers", "1"], cwd=folder, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    remote = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    remote |= {"FLUX_URL": url, "FLUX_ADMIN_KEY": create_admin_key(conn, "tests").key}
    try:
        wait_for_http(f"{url}/ready", timeout=30, process=server)
        invoked = run_flux(["invoke", "add_note", "--data", '{"text": "hi"}'], remote, folder)
        assert invoked.returncode == 0, invoked.stdout + invoked.stderr
        assert json.loads(invoked.stdout) == {"id": 1, "body": "hi"}
        assert invoked.stderr.startswith("status 201  request ")
        pushed = run_flux(["queue", "push", "add_note", "-d", '{"text": "x"}'], env, folder)
        assert pushed.stdout == "job 1\n", pushed.stderr
        deadline = time.monotonic() + 30
        job_query = "SELECT status, last_error FROM flux.all_jobs WHERE id = 1"
        while (job := conn.execute(job_query).fetchone()) != ("done", None):
            assert job is not None and job[0] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert conn.execute("SELECT body FROM notes ORDER BY id").fetchall() == [("hi",), ("x",)]


@pytest.mark.parametrize(("lang", "source"), [("go", "main.go"), ("ruby", "handler.rb")])
def test_a_new_project_in_go_or_ruby_has_an_add_note_that_builds_and_answers(
    tmp_path: Path, call: Any, lang: str, source: str
) -> None:
    """The rest of the project is the one the test above deploys; its add_note runs through the runtime."""
    folder = tmp_path / "shop"
    made = CliRunner().invoke(app, ["init", str(folder), "--lang", lang])
    assert made.exit_code == 0, made.output
    add_note = folder / "functions" / "add_note"
    assert (add_note / source).exists() and not (add_note / "index.ts").exists()
    assert (folder / "functions" / "count_notes" / "app.py").exists()
    fn = build_function(add_note, folder / ".flux" / "build")
    added = call(fn, {"method": "POST", "path": "/notes", "body": {"text": "first"}})
    assert added.error is None, added.error
    assert (added.response.status, added.response.body) == (201, {"id": 1, "body": "first"})
    assert call(fn, {"method": "POST", "path": "/notes", "body": {}}).response.status == 400
    unknown = CliRunner().invoke(app, ["init", str(tmp_path / "other"), "--lang", "cobol"])
    assert isinstance(unknown.exception, InvalidProject) and "cobol" in unknown.exception.message
