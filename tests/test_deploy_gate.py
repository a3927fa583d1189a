"""The deploy gate (`flux deploy --gate`, `[deploy] gate` in flux.toml): before a version is activated, the
latest recorded requests of the functions whose code it changes are replayed on it. A candidate that changes a
route's answer is refused with the divergence shown and nothing activated; a refactor activates;
`--accept-divergence` activates; the version row keeps the verdict either way. Through FLUX_URL the server
runs the gate. Real Postgres, real Deno."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from flux.api.admin import create_admin_key
from flux.api.deploy import rollback
from flux.config import load_settings
from flux.errors import InvalidConfig, InvalidGateOption, VersionRefusedByGate
from tests.fixtures.gateway import gateway_client
from tests.fixtures.processes import flux_server, run_flux
from tests.fixtures.projects import GET_NOTE, GET_NOTE_CHANGED
from tests.fixtures.projects import NOTES_TOML as FLUX_TOML
from tests.fixtures.projects import edit_function as _edit
from tests.fixtures.projects import write_notes_project as _project

Conn = psycopg.Connection[Any]
# The same behaviour, written otherwise: the gate lets it through.
ADD_NOTE_REFACTORED = """export default async (request, context) => {
  const inserted = await context.db.query({
    insert: "notes", values: {body: request.body.text}, returning: ["id", "body"],
  });
  const [row] = inserted.rows;
  return {status: 201, body: row};
}"""


@pytest.fixture
def project(notes_project: Path) -> Path:
    """The notes project, deployed as version 1, with three notes added and each read once."""
    return notes_project


def flux(dsn: str, *args: str, catch: bool = False) -> Any:
    """`flux ARGS` on the database; an exception other than a `typer.Exit` fails the test, unless `catch`."""
    return CliRunner().invoke(app, list(args), env={"DATABASE_URL": dsn}, catch_exceptions=catch)


def _active(conn: Conn) -> int:
    row = conn.execute("SELECT id FROM flux.deployments WHERE active").fetchone()
    assert row is not None
    return int(row[0])


def _gate(conn: Conn, version: int) -> Any:
    row = conn.execute("SELECT active, gate FROM flux.deployments WHERE id = %s", (version,)).fetchone()
    assert row is not None
    return row


def test_a_changed_answer_is_refused_with_the_divergence_and_nothing_activated(
    dsn: str, conn: Conn, project: Path
) -> None:
    _edit(project, "get_note", GET_NOTE_CHANGED)
    done = flux(dsn, "deploy", str(project), "--gate")
    assert done.exit_code == 1, done.output
    lines = done.output.splitlines()
    assert (
        "gate: 3 recent requests of changed functions (get_note) replayed on the new code, recorded db"
        in (lines[0])
    )
    assert lines[1] == "gate: 0 same · 3 diverged · 0 drift · 0 could not run"
    assert "  GET /notes/1  diverged" in lines[2]
    assert lines[3] == "  first: output: the response differs at response.body.id"
    assert lines[4] == '    response.body.id: 1 → "1"'
    assert "error FX515: the deploy gate: 3 of 3 recent requests behave otherwise" in done.output
    assert "deployed version" not in done.output
    assert _active(conn) == 1  # nothing activated
    active, verdict = _gate(conn, 2)  # the candidate is kept, refused, with the verdict
    assert not active and verdict["verdict"] == "refused" and verdict["functions"] == ["get_note"]
    assert verdict["summary"] == {"same": 0, "diverged": 3, "drift": 0, "error": 0}
    assert verdict["last"] == 200 and verdict["db"] == "recorded"
    replays = conn.execute(
        "SELECT count(*) FROM flux.requests WHERE kind = 'replay' AND function = 'get_note'"
    ).fetchone()
    assert replays == (3,)  # the gate's replays are recorded
    with pytest.raises(VersionRefusedByGate):  # its migrations were never applied: it cannot be activated
        rollback(dsn, 2)
    listed = flux(dsn, "deployments", "ls", "--project", str(project)).output.splitlines()
    assert listed[0].startswith("     2  ") and listed[0].endswith("  gate refused")
    assert listed[1].startswith("*    1  ") and "gate" not in listed[1]


def test_a_refactor_activates_and_the_row_keeps_the_verdict(dsn: str, conn: Conn, project: Path) -> None:
    _edit(project, "add_note", ADD_NOTE_REFACTORED)
    done = flux(dsn, "deploy", str(project), "--gate", "--last", "2", "--db", "as-of")
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert (
        "gate: 2 recent requests of changed functions (add_note) replayed on the new code, as-of db"
        in lines[0]
    )
    assert lines[1] == "gate: 2 same · 0 diverged · 0 drift · 0 could not run"
    assert lines[-1] == "deployed version 2"
    assert _active(conn) == 2
    _, verdict = _gate(conn, 2)
    assert verdict["verdict"] == "passed" and verdict["replayed"] == 2 and verdict["last"] == 2
    assert verdict["db"] == "as-of"
    notes = conn.execute("SELECT count(*) FROM notes").fetchone()
    assert notes == (3,)  # the as-of replays of the inserts were rolled back


def test_accept_divergence_activates_and_records_the_verdict(dsn: str, conn: Conn, project: Path) -> None:
    _edit(project, "get_note", GET_NOTE_CHANGED)
    done = flux(dsn, "deploy", str(project), "--accept-divergence", "--since", "1h")
    assert done.exit_code == 0, done.output
    assert '    response.body.id: 1 → "1"' in done.output  # shown all the same
    assert done.output.splitlines()[-1] == "deployed version 2 (divergence accepted)"
    assert _active(conn) == 2
    _, verdict = _gate(conn, 2)
    assert verdict["verdict"] == "accepted" and verdict["summary"]["diverged"] == 3
    assert verdict["since_s"] == 3600 and verdict["divergences"][0]["request"]["path"] == "/notes/1"


def test_flux_toml_makes_the_gate_the_default(dsn: str, conn: Conn, project: Path) -> None:
    (project / "flux.toml").write_text(FLUX_TOML + "\n[deploy]\ngate = {last = 1}\n")
    _edit(project, "get_note", GET_NOTE_CHANGED)
    refused = flux(dsn, "deploy", str(project))
    assert refused.exit_code == 1 and "gate: 0 same · 1 diverged" in refused.output, refused.output
    assert _active(conn) == 1
    bad = flux(dsn, "deploy", str(project), "--no-gate", "--last", "5", catch=True)
    assert isinstance(bad.exception, InvalidGateOption) and "--last is an option of the gate" in str(
        bad.exception
    )
    skipped = flux(dsn, "deploy", str(project), "--no-gate")
    assert skipped.exit_code == 0 and "gate:" not in skipped.output, skipped.output
    assert _gate(conn, _active(conn))[1] is None  # deployed without the gate: no verdict
    (project / "flux.toml").write_text(FLUX_TOML + "\n[deploy]\ngate = {last = 0}\n")
    with pytest.raises(InvalidConfig, match="gate's last is 1 to 10000"):
        load_settings(project, env={})


def test_a_deploy_that_changes_no_function_replays_nothing(dsn: str, conn: Conn, project: Path) -> None:
    (project / "flux.toml").write_text(FLUX_TOML.replace('path = "/notes"', 'path = "/memos"'))
    done = flux(dsn, "deploy", str(project), "--gate")
    assert done.exit_code == 0, done.output
    assert "gate: 0 recent requests of changed functions (none)" in done.output
    assert _gate(conn, _active(conn))[1]["verdict"] == "passed"


def test_a_route_handed_to_another_function_replays_its_requests_on_that_function(
    dsn: str, conn: Conn, project: Path
) -> None:
    (project / "functions" / "get_note_v2").mkdir()
    (project / "functions" / "get_note_v2" / "index.ts").write_text(GET_NOTE_CHANGED)
    toml = FLUX_TOML.replace('function = "get_note"', 'function = "get_note_v2"')
    (project / "flux.toml").write_text(toml)
    refused = flux(dsn, "deploy", str(project), "--gate")
    assert refused.exit_code == 1, refused.output
    assert (
        "changed functions (none) and routes handed to another function (GET /notes/{id})" in refused.output
    )
    assert '    response.body.id: 1 → "1"' in refused.output
    (project / "functions" / "get_note_v2" / "index.ts").write_text(GET_NOTE)  # the same code, another name
    passed = flux(dsn, "deploy", str(project), "--gate")
    assert passed.exit_code == 0 and "gate: 3 same · 0 diverged" in passed.output, passed.output


def test_through_flux_url_the_server_runs_the_gate(
    dsn: str, conn: Conn, project_dir: Path, flux_env: dict[str, str]
) -> None:
    _project(project_dir)
    env = {**flux_env, "DATABASE_URL": dsn}
    with flux_server(project_dir, env) as (url, _):
        for text in ("a", "b"):
            request = urllib.request.Request(f"{url}/notes", data=json.dumps({"text": text}).encode(),
                                             headers={"content-type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request) as answered:
                assert answered.status == 201
        urllib.request.urlopen(f"{url}/notes/1").close()
        remote = {k: v for k, v in env.items() if k != "DATABASE_URL"}
        remote |= {"FLUX_URL": url, "FLUX_ADMIN_KEY": create_admin_key(conn, "cli").key}
        _edit(project_dir, "get_note", GET_NOTE_CHANGED)
        refused = run_flux(["deploy", "--gate"], remote, project_dir)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert (
            "gate: 0 same · 1 diverged" in refused.stdout
            and '    response.body.id: 1 → "1"' in refused.stdout
        )
        assert "error FX515: the deploy gate: 1 of 1 recent requests" in refused.stderr
        assert _active(conn) == 1
        bad = run_flux(["deploy", "--gate", "--db", "live"], remote, project_dir)
        assert bad.returncode == 1 and "error FX516: --db 'live'" in bad.stderr, bad.stderr
        accepted = run_flux(["deploy", "--accept-divergence", "--db", "as-of"], remote, project_dir)
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.stdout.splitlines()[-1] == "deployed version 3 (divergence accepted)"
    assert _active(conn) == 3 and _gate(conn, 3)[1]["verdict"] == "accepted"
    assert _gate(conn, 3)[1]["db"] == "as-of" and _gate(conn, 3)[1]["summary"]["diverged"] == 1
    assert _gate(conn, 2)[1]["verdict"] == "refused"


def test_the_settings_of_flux_toml(tmp_path: Path) -> None:
    def settings(text: str) -> Any:
        (tmp_path / "flux.toml").write_text(text)
        return load_settings(tmp_path, env={})

    assert settings("").deploy_gate is None and settings("").dev_replay_last == 20
    assert settings("[deploy]\ngate = true\n").deploy_gate == {"last": 200, "db": "recorded"}
    assert settings('[deploy]\ngate = {since = "2h", db = "as-of"}\n').deploy_gate == {
        "since": "2h",
        "db": "as-of",
    }
    assert settings("[deploy]\ngate = false\n[dev]\nreplay_last = 0\n").dev_replay_last == 0
    for text, words in (
        ("[deploy]\ngate = {last = 5, since = '1h'}\n", "last or since, not both"),
        ("[deploy]\ngate = {db = 'live'}\n", "db is recorded or as-of"),
        ("[deploy]\ngate = 'yes'\n", "gate is true, false or a table"),
        ("[deploy]\ngates = true\n", "unknown [deploy] setting 'gates'"),
        ("[dev]\nreplay_last = -1\n", "replay_last is 0 to 1000"),
    ):
        with pytest.raises(InvalidConfig, match=re.escape(words)):
            settings(text)


def test_the_api_refuses_bad_gate_options_with_fx516(dsn: str, conn: Conn, project: Path) -> None:
    with gateway_client(load_settings(project, env={}), dsn) as client:
        admin = {"authorization": f"Bearer {create_admin_key(conn, 'tests').key}"}
        for gate, words in (
            ({"last": 0}, "--last 0 is outside 1-10000"),
            ({"db": "live"}, "--db 'live'"),
            ({"since_s": -5}, "since_s -5 is outside"),
            ({"accept": "yes"}, "accept true or false"),
            ({"later": 1}, "unknown field 'later'"),
        ):
            answer = client.simulate_post(
                "/flux/api/deployments", json={"functions": [], "gate": gate}, headers=admin
            )
            assert answer.status_code == 400 and answer.json["code"] == "FX516", (gate, answer.json)
            assert words in answer.json["message"], answer.json
    assert _active(conn) == 1
