"""Python functions: an uncaught exception reaches the caller and `flux why` with its type, message and
file:line; a deploy compiles the component so no request waits for it (and none waits past its timeout_ms);
the same sources build to the same code sha and leave nothing in the project."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cli.why import render_why
from flux.api.deploy import deploy
from flux.config import load_settings
from flux.data import Catalog
from flux.errors import InvalidFunctionCode
from flux.runtime import Caller, Function, FunctionLimits, Outcome, Runtime, build, invoke, project_cache
from flux.runtime.build import build_function
from flux.trace.tree import load_trace
from flux.trace.why import explain_request
from tests.fixtures.gateway import gateway_client

Conn = psycopg.Connection[Any]
APP = """import json

import wit_world


def check(value):
    if value == "bad":
        raise ValueError("boom")
    if value == "many":
        return set()
    return value


class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        body = json.loads(request).get("body") or {}
        if body.get("value") == "not_a_string":
            return 42
        return json.dumps({"value": check(body.get("value"))})
"""
RAISE_LINE, CALL_LINE = 8, 19  # the lines of `raise ValueError` and of `check(...)` in APP
FLUX_TOML = """name = "pyproject"

[[routes]]
method = "POST"
path = "/check"
function = "checker"
auth = "none"

[functions.checker]
timeout_ms = 3000
"""


def _project(root: Path) -> Path:
    (root / "functions" / "checker").mkdir(parents=True)
    (root / "functions" / "checker" / "app.py").write_text(APP)
    (root / "flux.toml").write_text(FLUX_TOML)
    return root


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory, runtime: Runtime) -> Function:
    """The function, built and compiled once for the module (the session runtime keeps it)."""
    project = _project(tmp_path_factory.mktemp("pyproject"))
    fn = build_function(project / "functions" / "checker", project / ".flux" / "build")
    runtime.components.load(fn.code, fn.sha256)
    return fn


def test_an_uncaught_exception_names_its_type_message_and_line(
    conn: Conn, call: Any, checker: Function
) -> None:
    assert call(checker, {"body": {"value": "fine"}}).response.body == {"value": "fine"}
    outcome = call(checker, {"method": "POST", "path": "/check", "body": {"value": "bad"}})
    assert outcome.response.status == 500
    assert outcome.response.body["code"] == "FX300"
    assert outcome.response.body["message"] == "ValueError: boom"
    span = conn.execute(
        "SELECT error FROM flux.spans WHERE request_id = %s AND module = 'runtime'", (outcome.request_id,)
    ).fetchone()
    assert span is not None
    details = span[0]["details"]
    assert span[0]["code"] == "FX300" and span[0]["message"] == "ValueError: boom"
    assert (details["name"], details["file"], details["line"]) == ("ValueError", "app.py", RAISE_LINE)
    assert details["stack"].splitlines() == [
        "ValueError: boom",
        f'app.py:{CALL_LINE} in handle: return json.dumps({{"value": check(body.get("value"))}})',
        f'app.py:{RAISE_LINE} in check: raise ValueError("boom")',
    ]
    shown = "\n".join(render_why(explain_request(conn, load_trace(conn, outcome.request_id))))
    assert "error: FX300: ValueError: boom" in shown and f"app.py:{RAISE_LINE} in check" in shown, shown
    assert "unreachable" not in shown


def test_errors_past_the_function_keep_their_cause(call: Any, checker: Function) -> None:
    """An answer that is not a string, and a value json cannot encode, are the function's mistakes too."""
    not_a_string = call(checker, {"body": {"value": "not_a_string"}})
    assert not_a_string.error is not None and not_a_string.error.code == "FX303"
    assert "handle returned int, not a str of JSON" in not_a_string.error.message
    unencodable = call(checker, {"body": {"value": "many"}})
    assert unencodable.error is not None and unencodable.error.code == "FX300"
    assert unencodable.error.message.startswith("TypeError: Object of type set is not JSON serializable")


@pytest.mark.slow
def test_a_request_waits_for_a_compile_no_longer_than_its_timeout(
    tmp_path: Path, conn: Conn, notes: Catalog, checker: Function
) -> None:
    fresh = Runtime(tmp_path / "cache", deno_workers=1)  # nothing compiled: the compile starts on a request
    hurried = Function(
        checker.name, "component", checker.code, checker.sha256, FunctionLimits(timeout_ms=300)
    )

    def call() -> Outcome:
        return invoke(conn, fresh, hurried, {"body": {"value": "fine"}}, catalog=notes, caller=Caller("user"))

    try:
        started = time.monotonic()
        outcome = call()
        waited = time.monotonic() - started
        assert outcome.error is not None and outcome.error.code == "FX301", outcome.error
        assert "still compiling after 300 ms" in outcome.error.message
        assert waited < 2, waited
        fresh.components.load(checker.code, checker.sha256)  # the compile went on without the request
        assert (tmp_path / "cache" / "wasm" / f"{checker.sha256}.component.cwasm").exists()
        assert call().response.body == {"value": "fine"}
    finally:
        fresh.close()


@pytest.mark.slow
def test_deploy_compiles_so_the_first_request_is_served_at_once(dsn: str, tmp_path: Path) -> None:
    project = _project(tmp_path)
    settings = load_settings(project, env={})
    deployed = deploy(dsn, settings)
    with psycopg.connect(dsn) as conn:
        (sha,) = conn.execute("SELECT sha256 FROM flux.deployment_functions WHERE deployment_id = %s",
                              (deployed.id,)).fetchone() or (None,)  # fmt: skip
    assert (project_cache(project) / "wasm" / f"{sha}.component.cwasm").exists()
    with gateway_client(settings, dsn) as client:
        components = client.gateway.executor.components  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while not components.ready(sha):  # loaded when the worker started, before any request
            assert time.monotonic() < deadline, "the worker did not load the deployed component"
            time.sleep(0.05)
        started = time.monotonic()
        first = client.simulate_post("/check", json={"value": "first"})
        took = time.monotonic() - started
    assert first.status_code == 200 and first.json == {"value": "first"}, first.text
    assert took < 3, took  # timeout_ms = 3000: a compile on the request's path takes 15-30 s


@pytest.mark.slow
def test_the_same_sources_build_to_the_same_sha_and_leave_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUX_BUILD_CACHE", str(tmp_path / "build-cache"))  # a build from nothing, once
    shas = []
    for name in ("one", "two"):
        folder = _project(tmp_path / name) / "functions" / "checker"
        shas.append(build_function(folder, tmp_path / name / ".flux" / "build").sha256)
        assert sorted(p.name for p in folder.rglob("*")) == ["app.py"]
    assert shas[0] == shas[1]
    assert len(list((tmp_path / "build-cache").glob("*.wasm"))) == 1
    (folder / "app.py").write_text(APP.replace("return value\n", "return (value\n"))  # a failed build, too
    with pytest.raises(InvalidFunctionCode) as failed:
        build_function(folder, tmp_path / "two" / ".flux" / "build")
    assert "building checker failed: app.py:11: SyntaxError: '(' was never closed" in failed.value.message
    assert sorted(p.name for p in folder.rglob("*")) == ["app.py"]


def test_the_build_cache_keeps_the_builds_used_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "BUILD_CACHE_KEEP", 2)
    for age, name in enumerate(["new", "middle", "old"]):
        (tmp_path / f"{name}.wasm").write_bytes(b"")
        os.utime(tmp_path / f"{name}.wasm", (1_000_000 - age, 1_000_000 - age))
    build._prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle.wasm", "new.wasm"]
