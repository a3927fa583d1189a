"""The README's first command and its "Five minutes": `make dev` serves the quickstart and records writes; a
request (the README sends it with curl; here urllib, so the suite needs no curl) is traced with `flux trace`,
replayed (`same`), then replayed on the edited function (`diverged`, at the insert); Ctrl-C cleans up. The
README runs `make test` after `make dev`, so the example folder may hold what `make dev` left there; the test
must not depend on it."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.processes import (
    copy_project,
    free_port,
    interrupt,
    processes_left,
    wait_for_http,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_make_dev_serves_the_quickstart_and_ctrl_c_stops_everything(
    project_dir: Path, flux_env: dict[str, str]
) -> None:
    if subprocess.run(["make", "-q", "install"], cwd=REPO).returncode != 0:
        pytest.skip("the venv is not installed by `make install`; `make test` installs it first")
    quickstart = copy_project(_quickstart_as_make_dev_left_it(project_dir), project_dir / "quickstart")
    port = free_port()
    env = {**flux_env, "FLUX_PORT": str(port)}
    make = subprocess.Popen(
        ["make", "--no-print-directory", "dev", f"PROJECT={quickstart}"],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        took = wait_for_http(f"http://127.0.0.1:{port}/health", timeout=15, process=make)
        wait_for_http(f"http://127.0.0.1:{port}/ready", timeout=5, process=make)
        socket_dir = quickstart / ".flux" / "pg"
        with psycopg.connect(f"host={socket_dir} user=postgres dbname=flux", autocommit=True) as conn:
            conn.execute("INSERT INTO notes (body) VALUES ('hello')")
            row = conn.execute("SELECT op, table_name, new ->> 'body' FROM flux.mutation_log").fetchone()
        # "Five minutes" in the README: the request it sends with curl, then its trace.
        note = urllib.request.Request(
            f"http://localhost:{port}/notes", data=b'{"text": "hello"}', method="POST",
            headers={"content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(note, timeout=30) as added:
            status, request_id = added.status, added.headers["x-request-id"]
        assert status == 201 and request_id, (status, request_id)

        def flux(*args: str) -> subprocess.CompletedProcess[str]:
            command = [str(REPO / ".venv" / "bin" / "flux"), *args, "--project", str(quickstart)]
            return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

        traced = flux("trace", request_id)
        # It ends with a replay of that request, then one on the edited function (`make dev` deploys it).
        replayed = flux("incident", "replay", request_id)
        function = quickstart / "functions" / "add_note" / "index.ts"
        function.write_text(function.read_text().replace("req.body.text }", "req.body.text.toUpperCase() }"))
        deployed = _deployed(socket_dir, version=2)
        edited = flux("incident", "replay", request_id, "--db", "as-of")
    finally:
        output = interrupt(make)  # Ctrl-C in the terminal that typed `make dev`
    assert took < 15, output
    assert row == ("INSERT", "notes", "hello")
    lines = traced.stdout.splitlines()
    assert traced.returncode == 0 and lines[0].startswith(f"request {request_id}  POST /notes  201 "), traced
    assert any(line.startswith("  db:insert(notes) ") for line in lines), traced.stdout
    assert '      INSERT notes {"id": 2}  body: ∅ → "hello", created_at: ∅ → ' in traced.stdout
    assert replayed.returncode == 0, replayed
    assert f"{request_id[:8]}  POST /notes  same  (replay " in replayed.stdout, replayed
    assert deployed, output
    assert edited.returncode == 1, edited
    assert edited.stdout.splitlines()[:5] == [
        f"{request_id[:8]}  POST /notes  diverged",
        "  first: call db.query#0 db:insert(notes): was called with other arguments (args.values.body)",
        '    args.values.body: "hello" → "HELLO"',
        "  then: mutation db.query#0 INSERT public.notes id=2: differs at row.new.body",
        "        output: the response differs at response.body.body",
    ], edited.stdout
    assert "flux: applied migrations/0001_notes.sql" in output
    assert "Traceback" not in output
    assert processes_left(str(quickstart / ".flux" / "pg")) == []


def _deployed(socket_dir: Path, version: int, timeout: float = 30) -> bool:
    """Whether `flux dev` deployed `version` within `timeout` seconds (it deploys again on each save)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(f"host={socket_dir} user=postgres dbname=flux", autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM flux.deployments WHERE id = %s AND active", [version]).fetchone():
                return True
            time.sleep(0.2)
    return False


def _quickstart_as_make_dev_left_it(folder: Path) -> Path:
    """examples/quickstart after `make dev` ran in it: a cluster in `.flux/pg` (here one that cannot start; a
    copy of a real one cannot either, its files belong to whoever copied them) and a lock file."""
    example = copy_project(REPO / "examples" / "quickstart", folder / "examples" / "quickstart")
    left = example / ".flux" / "pg"
    left.mkdir(parents=True, mode=0o700)
    (left / "PG_VERSION").write_text("16\n")
    (example / ".flux" / "pg.lock").touch()
    return example
