"""`flux incident replay` on requests recorded through the gateway, with real Postgres and real Deno: a
request replayed on unchanged code is `same` (exit 0), on changed code `diverged` with its first divergence
(exit 1), and one that cannot run is an `error` (exit 2); `--json`, windows, `--version`, secrets; the
replay is recorded (`flux trace ls --kind replay`, `flux trace diff`); the management API's
`POST /flux/api/requests/{id}/replay`, directly and through FLUX_URL."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cli import incident
from cli.main import app
from cli.remote import Remote
from flux.api.admin import create_admin_key
from flux.api.deploy import deploy
from flux.config import Settings, load_settings
from flux.queue import push
from flux.queue.worker import QueueWorker, WorkerOptions
from tests.fixtures.gateway import GatewayClient, gateway_client
from tests.fixtures.processes import copy_project, flux_server, run_flux
from tests.fixtures.projects import NOTES_TOML

Conn = psycopg.Connection[Any]
ROOT = Path(__file__).resolve().parents[1]
FLUX_TOML = (
    NOTES_TOML
    + """
[[routes]]
method = "GET"
path = "/secret"
function = "secret"
auth = "none"
"""
)
ADD_NOTE = """export default async (req, ctx) => {
  if (!req.body?.text) throw new Error("no text");
  const values = {body: req.body.text};
  const note = await ctx.db.query({insert: "notes", values, returning: ["id", "body"]});
  return {status: 201, body: note.rows[0]};
}"""
GET_NOTE = """export default async (req, ctx) => {
  const found = await ctx.db.query({select: "notes", where: {id: {eq: Number(req.params.id)}}});
  return found.rows[0] ?? null;
}"""
SECRET = "export default async (req, ctx) => ({length: (await ctx.secrets.get('token')).length})"
NOTES = (
    "CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL);\n"
    "GRANT SELECT, INSERT ON notes TO flux_anon;\n"
)
SAME_LINE = re.compile(r"^([0-9a-f]{8})  (\S+ \S+)  same  \(replay ([0-9a-f]{8}), (\S+) db, [\d.]+ ms\)$")
SUMMARY = re.compile(r"^(\d+) same · (\d+) diverged · (\d+) drift · (\d+) could not run · [\d.]+ replays/s$")
KEY = base64.b64encode(b"k" * 32).decode()


def _project(folder: Path, add_note: str = ADD_NOTE) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "flux.toml").write_text(FLUX_TOML)
    for name, code in (("add_note", add_note), ("get_note", GET_NOTE), ("secret", SECRET)):
        (folder / "functions" / name).mkdir(parents=True, exist_ok=True)
        (folder / "functions" / name / "index.ts").write_text(code)
    (folder / "migrations").mkdir(exist_ok=True)
    (folder / "migrations" / "0001_notes.sql").write_text(NOTES)
    return folder


@pytest.fixture
def settings(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FLUX_SECRET_KEY", KEY)
    project = _project(tmp_path / "project")
    settings = load_settings(project, env={})
    deploy(dsn, settings)
    return settings


@pytest.fixture
def client(settings: Settings, dsn: str) -> Any:
    with gateway_client(settings, dsn) as client:
        yield client


@pytest.fixture
def admin(conn: Conn) -> dict[str, str]:
    return {"authorization": f"Bearer {create_admin_key(conn, 'tests').key}"}


@pytest.fixture
def recorded(client: GatewayClient, admin: dict[str, str]) -> dict[str, str]:
    """Requests through the gateway, by name: their ids."""
    assert (
        client.simulate_put("/flux/api/secrets/token", json={"value": "t0k3n"}, headers=admin).status_code
        == 204
    )
    answers = {
        "hello": client.simulate_post("/notes", json={"text": "hello"}),
        "world": client.simulate_post("/notes", json={"text": "world"}),
        "failed": client.simulate_post("/notes", json={}),
        "refused": client.simulate_get("/nowhere"),
        "read": client.simulate_get("/notes/1"),
        "secret": client.simulate_get("/secret"),
    }
    assert answers["secret"].json == {"length": 5}
    return {name: answer.headers["x-request-id"] for name, answer in answers.items()}


def flux(
    settings: Settings, dsn: str, *args: str, env: dict[str, str] | None = None, catch: bool = False
) -> Any:
    """`flux ARGS` for the project, on its database; an exception other than a `typer.Exit` fails the test,
    unless `catch`."""
    return CliRunner().invoke(
        app, [*args, "--project", str(settings.project_dir)],
        env={"DATABASE_URL": dsn, "FLUX_SECRET_KEY": KEY, **(env or {})}, catch_exceptions=catch,
    )  # fmt: skip


def test_unchanged_code_replays_same_exit_0_and_the_replay_is_recorded(
    settings: Settings, dsn: str, recorded: dict[str, str], conn: Conn
) -> None:
    original = recorded["hello"]
    done = flux(settings, dsn, "incident", "replay", original[:8])  # a prefix only it has is enough
    assert done.exit_code == 0, done.output
    line, summary = done.output.splitlines()
    match = SAME_LINE.match(line)
    assert match and match.group(1, 2, 4) == (original[:8], "POST /notes", "recorded"), line
    assert SUMMARY.match(summary) and summary.startswith("1 same · 0 diverged · 0 drift · 0 could not run")
    replay_id = conn.execute(
        "SELECT id::text FROM flux.requests WHERE replay_of = %s", [original]
    ).fetchone()[0]
    assert replay_id.startswith(match.group(3))
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 2  # nothing written
    assert conn.execute("SELECT count(*) FROM flux.requests WHERE kind = 'replay'").fetchone()[0] == 1

    listed = flux(settings, dsn, "trace", "ls", "--kind", "replay")
    assert [line.split()[2] for line in listed.output.splitlines()] == [replay_id], listed.output
    originals = flux(settings, dsn, "trace", "ls", "--kind", "http").output.splitlines()
    assert replay_id not in "".join(originals) and len(originals) == len(recorded)
    bad_kind = flux(settings, dsn, "trace", "ls", "--kind", "nope", catch=True)
    assert bad_kind.exit_code != 0 and "FX607" in str(bad_kind.exception)
    replays_of = flux(settings, dsn, "trace", "ls", "--replay-of", original[:8])  # a prefix only it has
    assert [line.split()[2] for line in replays_of.output.splitlines()] == [replay_id], replays_of.output
    other = next(request for request in recorded.values() if request != original)
    assert flux(settings, dsn, "trace", "ls", "--replay-of", other).output == ""
    not_one = flux(settings, dsn, "trace", "ls", "--replay-of", "nope", catch=True)
    assert not_one.exit_code != 0 and "FX503" in str(not_one.exception)

    diff = flux(settings, dsn, "trace", "diff", original, replay_id)
    assert diff.exit_code == 0, diff.output
    lines = diff.output.splitlines()
    assert lines[0].startswith(f"a {original}  POST /notes  201") and lines[1].startswith(
        f"b {replay_id}  POST /notes  201"
    )
    assert "db:insert(notes)" in diff.output
    for mode in ("live", "as-of"):
        again = flux(settings, dsn, "incident", "replay", original, "--db", mode, "--no-record")
        assert again.exit_code == 0, again.output
        assert f"same  (not recorded, {mode} db, " in again.output.splitlines()[0]
    assert conn.execute("SELECT count(*) FROM flux.requests WHERE kind = 'replay'").fetchone()[0] == 1


def test_changed_code_diverges_exit_1_with_the_first_divergence(
    settings: Settings, dsn: str, recorded: dict[str, str], tmp_path: Path
) -> None:
    changed = _project(tmp_path / "changed", ADD_NOTE.replace("req.body.text}", "req.body.text + '!'}"))
    done = flux(settings, dsn, "incident", "replay", recorded["hello"], "--code", str(changed))
    assert done.exit_code == 1, done.output
    lines = done.output.splitlines()
    assert lines[0] == f"{recorded['hello'][:8]}  POST /notes  diverged"
    assert (
        lines[1]
        == "  first: call db.query#0 db:insert(notes): was called with other arguments (args.values.body)"
    )
    assert lines[2] == '    args.values.body: "hello" → "hello!"'
    assert lines[3].startswith("  then: error: the replay failed: FX506 db.query with these arguments is not")
    assert lines[-1].startswith("0 same · 1 diverged · 0 drift · 0 could not run · ")

    as_json = flux(settings, dsn, "incident", "replay", recorded["hello"], recorded["read"], "--code",
                   str(changed), "--db", "live", "--json")  # fmt: skip
    assert as_json.exit_code == 1, as_json.output
    answer = json.loads(as_json.output)
    assert set(answer) == {"results", "summary"}
    assert set(answer["summary"]) == {"same", "diverged", "drift", "error", "per_second"}
    assert (answer["summary"]["same"], answer["summary"]["diverged"]) == (1, 1)
    first, second = answer["results"]
    assert (first["request_id"], first["verdict"], second["verdict"]) == (
        recorded["hello"],
        "diverged",
        "same",
    )
    assert {"request_id", "replay_id", "verdict", "divergence", "divergences"} <= set(first)
    assert first["divergence"] == first["divergences"][0] and second["divergence"] is None
    assert (
        first["divergence"]["kind"] == "call" and first["divergence"]["at"] == "db.query#0 db:insert(notes)"
    )
    assert first["divergence"]["changes"] == [{"path": "args.values.body", "recorded": "hello",
                                               "replayed": "hello!"}]  # fmt: skip
    assert {"kind", "at", "recorded", "replayed", "message"} <= set(first["divergence"])
    assert any(d["kind"] == "mutation" for d in first["divergences"])  # live: the write it would make


def test_what_cannot_run_is_an_error_exit_2(
    settings: Settings, dsn: str, recorded: dict[str, str], tmp_path: Path
) -> None:
    refused = flux(settings, dsn, "incident", "replay", recorded["hello"], recorded["refused"])
    assert refused.exit_code == 2, refused.output
    lines = refused.output.splitlines()
    assert SAME_LINE.match(lines[0])
    assert lines[1] == f"{recorded['refused'][:8]}  GET /nowhere  error"
    assert lines[2].startswith("  FX507: request ") and "before any function ran" in lines[2]
    assert lines[-1].startswith("1 same · 0 diverged · 0 drift · 1 could not run")
    unknown = flux(settings, dsn, "incident", "replay", "00000000-dead")
    assert (
        unknown.exit_code == 2 and "00000000  error\n  FX503: no request has an id starting" in unknown.output
    )
    for args, words in (
        (["--db", "yesterday"], "error FX508: --db 'yesterday' is not a database mode"),
        (["--code", "recorded", "--version", "1"], "error FX508: --version 1 picks a deployment's code"),
        (["--code", str(tmp_path / "nowhere")], "error FX510: --code"),
        (["--route", "/notes"], "error FX508: --route picks requests from a window"),
    ):
        done = flux(settings, dsn, "incident", "replay", recorded["hello"], *args)
        assert done.exit_code == 2 and words in done.output, (args, done.output)
    replay_kind = flux(settings, dsn, "incident", "replay", "--kind", "replay")
    assert replay_kind.exit_code == 2 and "error FX508: a replay is not replayed again" in replay_kind.output


def test_a_window_replays_the_requests_that_ran_code_oldest_first(
    settings: Settings, dsn: str, recorded: dict[str, str]
) -> None:
    flux(settings, dsn, "incident", "replay", recorded["hello"])  # a replay, which no window replays
    done = flux(settings, dsn, "incident", "replay", "--since", "1h", "--code", "recorded")
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    expected = [recorded[name][:8] for name in ("hello", "world", "failed", "read", "secret")]
    assert [line.split()[0] for line in lines[:-1]] == expected, (
        done.output
    )  # not the refusal, nor the replay
    assert lines[-1].startswith("5 same · 0 diverged · 0 drift · 0 could not run")
    routed = flux(settings, dsn, "incident", "replay", "--route", "/notes", "--status", "201", "--limit", "1")
    assert [line.split()[0] for line in routed.output.splitlines()[:-1]] == [recorded["world"][:8]]
    empty = flux(settings, dsn, "incident", "replay", "--until", "2000-01-01T00:00:00+00:00")
    assert empty.exit_code == 0 and empty.output.startswith("no recorded request")
    for args, words in (
        (["--limit", "0"], "error FX607: --limit 0 is outside 1-10000"),
        (["--since", "999999999999d"], "error FX508: --since '999999999999d' is neither"),
        (["--kind", "nope"], "error FX607: --kind 'nope' is not a kind of request"),
    ):
        refused = flux(settings, dsn, "incident", "replay", *args)
        assert refused.exit_code == 2 and words in refused.output, (args, refused.output)
    bad = flux(settings, dsn, "incident", "replay", "--since", "yesterday")
    assert (
        bad.exit_code == 2
        and "error FX508: --since 'yesterday' is neither a period nor a moment" in bad.output
    )


def test_version_picks_a_deployments_code(settings: Settings, dsn: str, recorded: dict[str, str]) -> None:
    (settings.project_dir / "functions" / "add_note" / "index.ts").write_text(ADD_NOTE.replace("201", "202"))
    second = deploy(dsn, settings)
    active = flux(settings, dsn, "incident", "replay", recorded["hello"])  # the active code: version 2
    assert active.exit_code == 1 and "status: the response's status was 201, now 202" in active.output
    first = flux(settings, dsn, "incident", "replay", recorded["hello"], "--version", "1")
    assert first.exit_code == 0, first.output
    missing = flux(settings, dsn, "incident", "replay", recorded["hello"], "--version", str(second.id + 5))
    assert missing.exit_code == 2 and f"FX602: no deployment {second.id + 5}" in missing.output


def test_a_missing_secret_key_stops_only_the_replays_that_read_a_secret(
    settings: Settings, dsn: str, recorded: dict[str, str]
) -> None:
    assert flux(settings, dsn, "incident", "replay", recorded["secret"]).exit_code == 0
    other_key = {"FLUX_SECRET_KEY": base64.b64encode(b"o" * 32).decode()}
    done = flux(settings, dsn, "incident", "replay", recorded["read"], recorded["secret"], env=other_key)
    assert done.exit_code == 2, done.output
    lines = done.output.splitlines()
    assert SAME_LINE.match(lines[0]) and lines[1].endswith("GET /secret  error")
    assert lines[2] == "  FX604: secret 'token' was stored under another key"


def test_the_api_replays_a_request(client: GatewayClient, admin: dict[str, str], recorded: dict[str, str],
                                   conn: Conn) -> None:  # fmt: skip
    path = f"/flux/api/requests/{recorded['hello']}/replay"
    unkeyed = client.simulate_post(path, body=b"not json", headers={"content-type": "application/json"})
    assert unkeyed.status_code == 401 and unkeyed.json["code"] == "FX606"  # the key before the body
    answer = client.simulate_post(path, json={"db": "as-of", "code": "recorded"}, headers=admin)
    assert answer.status_code == 200, answer.json
    assert answer.json["verdict"] == "same" and answer.json["request_id"] == recorded["hello"]
    kind = conn.execute(
        "SELECT kind, replay_of::text FROM flux.requests WHERE id = %s", [answer.json["replay_id"]]
    )
    assert kind.fetchone() == ("replay", recorded["hello"])
    unrecorded = client.simulate_post(path, json={"record": False}, headers=admin).json
    assert unrecorded["verdict"] == "same" and unrecorded["replay_id"] is None
    refused = client.simulate_post(f"/flux/api/requests/{recorded['refused']}/replay", headers=admin)
    assert refused.status_code == 200 and refused.json["verdict"] == "error"
    assert refused.json["error"]["code"] == "FX507"
    for body, code in (
        ({"db": "later"}, "FX508"),
        ({"code": "./here"}, "FX508"),
        ({"record": "yes"}, "FX607"),
        ({"version": 2**70}, "FX508"),  # no 500 from a number past bigint
    ):
        bad = client.simulate_post(path, json=body, headers=admin)
        assert bad.status_code == 400 and bad.json["code"] == code, (body, bad.json)
    gone = client.simulate_post("/flux/api/requests/00000000-dead/replay", headers=admin)
    assert gone.status_code == 404 and gone.json["code"] == "FX503"
    listed = client.simulate_get("/flux/api/requests", params={"kind": "replay"}, headers=admin).json["items"]
    assert [row["id"] for row in listed] == [answer.json["replay_id"]]
    window = client.simulate_get("/flux/api/requests", params={"replayable": "true", "since_s": 3600},
                                 headers=admin).json["items"]  # fmt: skip
    assert recorded["refused"] not in {row["id"] for row in window} and len(window) == 5
    secret = client.simulate_post(f"/flux/api/requests/{recorded['secret']}/replay", headers=admin).json
    assert secret["verdict"] == "same", secret

    def listed(**params: str) -> list[dict[str, Any]]:
        return client.simulate_get("/flux/api/requests", params=params, headers=admin).json["items"]

    assert listed(until="2000-01-01T00:00:00+00:00") == [] and len(listed(since="2000-01-01T00:00:00Z")) > 5
    naive = client.simulate_get("/flux/api/requests", params={"since": "2000-01-01T00:00:00"}, headers=admin)
    assert naive.status_code == 400 and naive.json["code"] == "FX607"


def test_replay_through_flux_url(
    dsn: str, conn: Conn, project_dir: Path, flux_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(project_dir)
    env = {**flux_env, "DATABASE_URL": dsn, "FLUX_SECRET_KEY": KEY}
    with flux_server(project_dir, env) as (url, _):
        original = _post_note(url, "hi")
        remote = {k: v for k, v in env.items() if k != "DATABASE_URL"}
        remote |= {"FLUX_URL": url, "FLUX_ADMIN_KEY": create_admin_key(conn, "cli").key}
        done = run_flux(["incident", "replay", original[:8]], remote, project_dir)
        assert done.returncode == 0, done.stderr
        line, _ = done.stdout.splitlines()
        assert SAME_LINE.match(line) and line.startswith(f"{original[:8]}  POST /notes  same")
        window = run_flux(
            ["incident", "replay", "--since", "1h", "--db", "as-of", "--json"], remote, project_dir
        )
        assert window.returncode == 0, window.stderr
        results = json.loads(window.stdout)["results"]
        assert [r["request_id"] for r in results] == [original] and results[0]["verdict"] == "same"
        folder = run_flux(["incident", "replay", original, "--code", str(project_dir)], remote, project_dir)
        assert (
            folder.returncode == 2
            and "error FX508: --code" in folder.stderr
            and "unset FLUX_URL" in folder.stderr
        )
        odd = run_flux(["incident", "replay", "../why", "00000000"], remote, project_dir)
        assert odd.returncode == 2 and "  FX503: '../why' is not a request id" in odd.stdout, odd.stdout
        assert "  FX503: no request has an id starting 00000000" in odd.stdout
        listed = run_flux(["trace", "ls", "--kind", "replay"], remote, project_dir)
        assert len(listed.stdout.splitlines()) == 2, listed.stdout  # the two replays above
        of = run_flux(["trace", "ls", "--replay-of", original], remote, project_dir)
        assert sorted(line.split()[2] for line in of.stdout.splitlines()) == sorted(
            line.split()[2] for line in listed.stdout.splitlines()
        ), of.stdout
        later = [_post_note(url, text) for text in ("a", "b", "c")]
        monkeypatch.setattr(incident, "API_PAGE", 2)  # pages of two, as of 500 for a larger window
        via_api = incident._ViaApi(
            Remote(url, remote["FLUX_ADMIN_KEY"]), "recorded", "active", None, False, True
        )
        filters = {"since": timedelta(hours=1), "limit": 3, "replayable": True}
        assert [row["id"] for row in via_api.targets(filters)] == later[::-1]
        assert [row["id"] for row in via_api.targets(filters | {"limit": 9})] == [*later[::-1], original]
    replays = conn.execute("SELECT count(*) FROM flux.requests WHERE replay_of = %s", [original])
    assert replays.fetchone()[0] == 2


def _post_note(url: str, text: str) -> str:
    """POST /notes to the server at `url`; the request's id."""
    data = json.dumps({"text": text}).encode()
    request = urllib.request.Request(f"{url}/notes", data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as answered:
        return str(answered.headers["x-request-id"])


@pytest.mark.slow
def test_a_window_of_1000_quickstart_requests_replays_same(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUX_SECRET_KEY", KEY)
    project = copy_project(ROOT / "examples" / "quickstart", tmp_path / "quickstart")
    settings = load_settings(project, env={})
    deploy(dsn, settings)
    with gateway_client(settings, dsn) as client:
        for n in range(1000):
            assert client.simulate_post("/notes", json={"text": f"note {n}"}).status_code == 201
    done = flux(settings, dsn, "incident", "replay", "--route", "/notes", "--limit", "1000", "--json")
    assert done.exit_code == 0, done.output[-2000:]
    summary = json.loads(done.output)["summary"]
    assert summary["same"] == 1000 and summary["diverged"] == summary["drift"] == summary["error"] == 0
    print(f"\n1000 quickstart replays: {summary['per_second']} replays/s")


def test_a_job_run_replays_like_a_request(
    settings: Settings, dsn: str, recorded: dict[str, str], conn: Conn
) -> None:
    push(conn, [{"function": "add_note", "payload": {"text": "from a job"}}])
    worker = QueueWorker(settings, dsn, WorkerOptions(concurrency=1, poll_s=0.1))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while conn.execute("SELECT count(*) FROM flux.requests WHERE kind = 'job'").fetchone()[0] == 0:
            assert time.monotonic() < deadline, "the job did not run"
            time.sleep(0.1)
    finally:
        worker.stop()
        thread.join(20)
    job_run = conn.execute("SELECT id::text FROM flux.requests WHERE kind = 'job'").fetchone()[0]
    done = flux(settings, dsn, "incident", "replay", "--kind", "job", "--db", "as-of")
    assert done.exit_code == 0, done.output
    line, summary = done.output.splitlines()
    assert line.startswith(f"{job_run[:8]}  job add_note  same  (replay ") and summary.startswith("1 same")


def test_code_at_a_git_revision(settings: Settings, dsn: str, recorded: dict[str, str]) -> None:
    project = settings.project_dir
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "flux.toml", "functions", "migrations"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "notes"], cwd=project, check=True)
    (project / "functions" / "add_note" / "index.ts").write_text(
        ADD_NOTE.replace("201", "202")
    )  # not committed
    edited = flux(settings, dsn, "incident", "replay", recorded["hello"], "--code", str(project))
    assert edited.exit_code == 1 and "status: the response's status was 201, now 202" in edited.output
    committed = flux(settings, dsn, "incident", "replay", recorded["hello"], "--code", "git:HEAD")
    assert committed.exit_code == 0, committed.output
    unknown = flux(settings, dsn, "incident", "replay", recorded["hello"], "--code", "git:nope")
    assert unknown.exit_code == 2 and "error FX511: git:nope names no commit" in unknown.output
