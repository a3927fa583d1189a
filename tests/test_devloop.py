"""`flux dev`: a saved function is deployed again within a second, a broken save leaves the last good version
serving, and each request is printed as one line."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from pathlib import Path

from tests.fixtures.projects import ADD_NOTE_ROUTE, NOTES_SQL, flux_dev, wait_for_line

FLUX_TOML = """
[[routes]]
method = "GET"
path = "/greet"
function = "greet"
auth = "none"
"""


def _greet(version: str) -> str:
    return f"export default async () => ({{version: '{version}'}})"


def _get(url: str) -> tuple[dict[str, str], object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(response.headers.items()), json.loads(response.read())


def _served(url: str, version: str, within_s: float) -> str:
    """Poll until `url` answers `version`; the request id of that answer."""
    started = time.monotonic()
    while True:
        headers, body = _get(url)
        if body == {"version": version}:
            return headers["x-request-id"]
        assert time.monotonic() - started < within_s, f"still {body} after {within_s} s"
        time.sleep(0.05)


def test_a_save_is_live_within_a_second_and_each_request_is_one_line(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    (project_dir / "flux.toml").write_text(FLUX_TOML)
    source = project_dir / "functions" / "greet" / "index.ts"
    source.parent.mkdir(parents=True)
    source.write_text(_greet("v1"))
    env = {**flux_env, "DATABASE_URL": dsn}
    with flux_dev(project_dir, env, stop=signal.SIGTERM) as (base, _, lines):
        url = f"{base}/greet"
        first = _served(url, "v1", within_s=1)
        with urllib.request.urlopen(f"{base}/flux/signin", timeout=10) as page:  # the dashboard's sign-in
            assert page.status == 200
        source.write_text(_greet("v2"))
        _served(url, "v2", within_s=1.0)  # the watcher polls every 0.2 s; here it is live in about 0.25 s
        (project_dir / "flux.toml").write_text(FLUX_TOML.replace('function = "greet"', 'function = "gone"'))
        time.sleep(1)
        assert _get(url)[1] == {"version": "v2"}  # the broken save changed nothing
    output = "".join(lines)
    assert re.search(rf"GET /greet 200 \d+ms fn=greet  req={first}", output), output
    assert "GET /flux/" not in output  # Flux's own pages are not the project's requests
    assert "deployed version 2" in output
    assert "not deployed, the last version keeps serving: FX601: flux.toml route 1 (GET /greet)" in output


ADD_NOTE = """export default async (req, ctx) => {
  const note = await ctx.db.query({insert: "notes", values: {body: req.body.text}, returning: ["id"]});
  return {status: 201, body: {id: note.rows[0].id}};
}"""
NOTES_TOML = ADD_NOTE_ROUTE + FLUX_TOML + "\n[dev]\nreplay_last = 3\n"


def _post(url: str, body: object) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_a_save_that_changes_behaviour_prints_what_the_last_requests_would_answer(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    """After a save, the last `replay_last` requests of the changed function are replayed on the new code, off
    the serving path, and one line says how they would answer; Ctrl-C stops it all cleanly."""
    (project_dir / "flux.toml").write_text(NOTES_TOML)
    for name, code in (("add_note", ADD_NOTE), ("greet", _greet("v1"))):
        (project_dir / "functions" / name).mkdir(parents=True)
        (project_dir / "functions" / name / "index.ts").write_text(code)
    (project_dir / "migrations").mkdir()
    (project_dir / "migrations" / "0001_notes.sql").write_text(NOTES_SQL)
    with flux_dev(project_dir, {**flux_env, "DATABASE_URL": dsn}) as (base, process, lines):  # then Ctrl-C
        for text in ("a", "b", "c", "d"):
            assert _post(f"{base}/notes", {"text": text}) == 201
        _served(f"{base}/greet", "v1", within_s=1)
        source = project_dir / "functions" / "add_note" / "index.ts"
        source.write_text(ADD_NOTE.replace("{id: note.rows[0].id}", "{id: String(note.rows[0].id)}"))
        wait_for_line(lines, "replayed", within_s=30)  # printed after the deploy, off its path
        assert _post(f"{base}/notes", {"text": "e"}) == 201  # the new version serves meanwhile
    output = "".join(lines)
    line = wait_for_line(lines, "replayed", within_s=0).rstrip()
    # the last 3 requests of add_note (b, c, d: ids 2 to 4), oldest first; greet did not change
    assert line.startswith(
        'flux: replayed 3: 3 diverged (POST /notes: body.id 2 → "2"; flux incident replay '
    ), line
    assert "could not replay" not in output and "Traceback" not in output, output
    assert process.returncode == 0, output
