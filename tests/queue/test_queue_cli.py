"""`flux queue` on the database, and jobs through a running `flux server`: its queue process runs them, and
the CLI reaches them through the management API (FLUX_URL); schedules through the API."""

from __future__ import annotations

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
from tests.fixtures.gateway import gateway_client
from tests.fixtures.processes import FLUX, free_port, processes_left, wait_for_http

Conn = psycopg.Connection[Any]
FLUX_TOML = """name = "mail"

[[cron]]
name = "digest"
schedule = "30 7 * * 1-5"
timezone = "Europe/Riga"
function = "hello"
"""
HELLO = "export default async (req, ctx) => ({hello: req.body?.to ?? 'nobody'})"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "flux.toml").write_text(FLUX_TOML)
    (tmp_path / "functions" / "hello").mkdir(parents=True)
    (tmp_path / "functions" / "hello" / "index.ts").write_text(HELLO)
    return tmp_path


def flux(dsn: str, *args: str) -> Any:
    return CliRunner().invoke(
        app, list(args), env={"DATABASE_URL": dsn, "FLUX_URL": None}, catch_exceptions=True
    )


def test_queue_commands_on_the_database(dsn: str, conn: Conn, project: Path) -> None:
    deploy(dsn, load_settings(project, env={}))
    assert flux(dsn, "queue", "push", "hello", "-d", '{"to": "ada"}', "--key", "k1").output == "job 1\n"
    again = flux(dsn, "queue", "push", "hello", "--key", "k1")
    assert again.output == "job 1 (already pushed with this key)\n"
    later = flux(dsn, "queue", "push", "hello", "--delay-ms", "600000", "-q", "mail")
    assert later.output == "job 3\n"  # the second push of "k1" drew a number it did not use
    unknown = flux(dsn, "queue", "push", "helo")
    assert unknown.exit_code == 1 and unknown.exception is not None
    assert getattr(unknown.exception, "code", None) == "FX402"
    listed = flux(dsn, "queue", "ls").output.splitlines()
    assert [line.split()[:3] for line in listed] == [["3", "queued", "mail"], ["1", "queued", "default"]]
    shown = flux(dsn, "queue", "show", "1").output
    assert "idempotency_key:   k1" in shown and 'payload:           {"to": "ada"}' in shown
    assert flux(dsn, "queue", "cancel", "3").output == "job 3 is cancelled\n"
    assert flux(dsn, "queue", "retry", "3").output == "job 3 is queued\n"
    conn.execute("SELECT flux.claim_jobs('w', ARRAY['default'], 1, 30)")
    conn.execute("""SELECT flux.fail_job(1, 'w', 1, NULL, '{"code": "FX300", "message": "no"}')""")
    conn.execute("UPDATE flux.jobs SET max_attempts = 2, run_at = now() WHERE id = 1")
    conn.execute("SELECT flux.claim_jobs('w', ARRAY['default'], 1, 30)")
    conn.execute("""SELECT flux.fail_job(1, 'w', 2, NULL, '{"code": "FX300", "message": "no"}')""")
    dead = flux(dsn, "queue", "dead").output.splitlines()
    assert len(dead) == 1 and dead[0].split()[:2] == ["1", "dead"] and dead[0].endswith("FX300")
    stats = flux(dsn, "queue", "stats").output.splitlines()
    assert stats[0].split()[:3] == ["queue", "queued", "sched"]
    assert [line.split()[:7] for line in stats[1:]] == [
        ["default", "0", "0", "0", "0", "1", "0"], ["mail", "1", "0", "0", "0", "0", "0"]
    ]  # fmt: skip
    refused = flux(dsn, "queue", "cancel", "1")
    assert getattr(refused.exception, "code", None) == "FX405"
    (schedule,) = flux(dsn, "queue", "cron").output.splitlines()
    assert schedule.split()[:4] == ["digest", "30", "7", "*"] and schedule.endswith("project")


def test_every_json_input_is_data_and_payload_is_its_old_name(dsn: str, project: Path) -> None:
    deploy(dsn, load_settings(project, env={}))
    for n, spelling in enumerate(("--data", "-d", "--payload"), start=1):
        assert flux(dsn, "queue", "push", "hello", spelling, f'{{"n": {n}}}').output == f"job {n}\n"
        assert f'payload:           {{"n": {n}}}' in flux(dsn, "queue", "show", str(n)).output
    both = flux(dsn, "queue", "push", "hello", "--data", "1", "--payload", "2")
    assert _error(both) == ("FX401", "--data and --payload are one option (--payload is its old name)")
    assert _error(flux(dsn, "queue", "push", "hello", "--payload", "{nope"))[1].startswith(
        "--payload is not JSON"
    )
    for command in (["queue", "push"], ["invoke"]):  # one spelling in the help: --data
        shown = flux(dsn, *command, "--help").output
        assert "--data" in shown and "-d" in shown and "--payload" not in shown, command
    refused = _error(flux(dsn, "invoke", "hello", "--payload", "{nope"))  # refused before a server is asked
    assert refused[0] == "FX607" and refused[1].startswith("--payload is not JSON")


def _error(result: Any) -> tuple[str | None, str]:
    """The FX code and message a command failed with."""
    return getattr(result.exception, "code", None), getattr(result.exception, "message", "")


def test_schedules_through_the_management_api(dsn: str, conn: Conn, project: Path) -> None:
    deploy(dsn, load_settings(project, env={}))
    admin = {"authorization": f"Bearer {create_admin_key(conn, 'tests').key}"}
    with gateway_client(load_settings(project, env={}), dsn) as client:
        made = client.simulate_put(
            "/flux/api/cron/hourly", headers=admin,
            json={"schedule": "0 * * * *", "function": "hello", "payload": {"to": "ops"}},
        )  # fmt: skip
        assert made.status_code == 200 and made.json["source"] == "api" and made.json["timezone"] == "UTC"
        assert made.json["next_run_at"].endswith(":00:00Z") or made.json["next_run_at"].endswith(
            ":00:00+00:00"
        )
        for body in ({"schedule": "every hour", "function": "hello"},
                     {"schedule": "* * * * *", "function": "hello", "timezone": "Europe"}):  # fmt: skip
            bad = client.simulate_put("/flux/api/cron/x", headers=admin, json=body)
            assert bad.status_code == 400 and bad.json["code"] == "FX406", bad.json
        for path, params, code in (("/flux/api/state/a.b.c.d/history", "key=1", "FX504"),
                                   ("/flux/api/requests", "since_s=99999999999999", "FX607")):  # fmt: skip
            refused = client.simulate_get(path, headers=admin, query_string=params)
            assert refused.status_code < 500 and refused.json["code"] == code, refused.json
        theirs = client.simulate_put("/flux/api/cron/digest", headers=admin,
                                     json={"schedule": "* * * * *", "function": "hello"})  # fmt: skip
        assert theirs.status_code == 400 and "comes from flux.toml" in theirs.json["message"]
        names = [item["name"] for item in client.simulate_get("/flux/api/cron", headers=admin).json["items"]]
        assert names == ["digest", "hourly"]
        assert client.simulate_delete("/flux/api/cron/hourly", headers=admin).status_code == 204
        assert client.simulate_delete("/flux/api/cron/hourly", headers=admin).json["code"] == "FX605"
        pushed = client.simulate_post("/flux/api/jobs", headers=admin, json={"jobs": [{"function": "nope"}]})
        assert pushed.status_code == 400 and pushed.json["code"] == "FX402"
        pushed = client.simulate_post("/flux/api/jobs", headers=admin, json={"jobs": [{"function": "hello"}]})
        assert pushed.status_code == 201 and pushed.json["items"][0]["created"]
        (waiting,) = client.simulate_get("/flux/api/jobs/stats", headers=admin).json["items"]
        assert waiting["queued"] == 1 and waiting["oldest_due_s"] >= 0
    # a deploy keeps the API's schedules and the project's in sync with flux.toml
    assert conn.execute("SELECT name, source FROM flux.cron").fetchall() == [("digest", "project")]


@pytest.mark.slow
def test_flux_server_runs_jobs_and_the_cli_reaches_them_through_its_api(
    dsn: str, conn: Conn, project: Path, flux_env: dict[str, str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**flux_env, "DATABASE_URL": dsn}
    server = subprocess.Popen(
        [*FLUX, "server", str(project), "--port", str(port), "--queue-workers", "1"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    remote = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    remote |= {"FLUX_URL": url, "FLUX_ADMIN_KEY": create_admin_key(conn, "cli").key}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FLUX, *args], env=remote, capture_output=True, text=True, timeout=60)

    try:
        wait_for_http(f"{url}/ready", timeout=30, process=server)
        assert run("login").returncode == 0
        pushed = run("queue", "push", "hello", "-d", '{"to": "ada"}')
        assert pushed.stdout == "job 1\n", pushed.stderr
        deadline = time.monotonic() + 20
        while "status:            done" not in (shown := run("queue", "show", "1")).stdout:
            assert time.monotonic() < deadline, shown.stdout + shown.stderr
            time.sleep(0.2)
        assert "  attempt 1  " in shown.stdout and shown.stdout.rstrip().endswith("ok")
        assert "digest" in run("queue", "cron").stdout
        assert run("queue", "stats").stdout.splitlines()[1].split()[:2] == ["default", "0"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    output = conn.execute(
        "SELECT r.kind, r.output->'body' FROM flux.requests r WHERE r.kind = 'job'"
    ).fetchall()
    assert output == [("job", {"hello": "ada"})]
    assert processes_left(str(project)) == []  # the queue process stopped with the server
