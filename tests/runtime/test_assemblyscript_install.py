"""An AssemblyScript function's compiler is installed with `npm ci` from its `package-lock.json` (the exact
version and hashes committed), and installed again when `node_modules` holds another version. npm is stood in
for by a script that records how it was called and installs the version the lock names; the real npm runs in
tests/runtime/test_examples.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flux.runtime.build import assemblyscript_compiler

FAKE_NPM = """#!/usr/bin/env python3
import json, os, pathlib, sys
here = pathlib.Path.cwd()
with open(os.environ["NPM_CALLS"], "a") as calls:
    calls.write(sys.argv[1] + "\\n")
lock = here / "package-lock.json"
locked = json.loads(lock.read_text())["packages"] if lock.exists() else {}
version = locked.get("node_modules/assemblyscript", {}).get("version", "9.9.9")
package = here / "node_modules" / "assemblyscript"
package.mkdir(parents=True, exist_ok=True)
(package / "package.json").write_text(json.dumps({"name": "assemblyscript", "version": version}))
(here / "node_modules" / ".bin").mkdir(exist_ok=True)
(here / "node_modules" / ".bin" / "asc").write_text("")
"""


def _lock(version: str) -> str:
    return json.dumps({"lockfileVersion": 3, "packages": {
        "": {"devDependencies": {"assemblyscript": version}},
        "node_modules/assemblyscript": {"version": version, "integrity": "sha512-x"},
    }})  # fmt: skip


@pytest.fixture
def npm_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(FAKE_NPM)
    (bin_dir / "npm").chmod(0o755)
    calls = tmp_path / "npm_calls"
    calls.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NPM_CALLS", str(calls))
    return calls


def _function(tmp_path: Path, lock: str | None) -> Path:
    folder = tmp_path / "functions" / "as_fn"
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps({"devDependencies": {"assemblyscript": "0.28.20"}}))
    if lock is not None:
        (folder / "package-lock.json").write_text(lock)
    return folder


def test_the_compiler_is_installed_from_the_lock_with_npm_ci(tmp_path: Path, npm_calls: Path) -> None:
    folder = _function(tmp_path, _lock("0.28.20"))
    asc = assemblyscript_compiler(folder)
    assert asc == folder / "node_modules" / ".bin" / "asc" and asc.exists()
    assert npm_calls.read_text().split() == ["ci"]
    assemblyscript_compiler(folder)  # installed as locked: nothing to do
    assert npm_calls.read_text().split() == ["ci"]


def test_another_installed_version_is_replaced_by_the_locked_one(tmp_path: Path, npm_calls: Path) -> None:
    folder = _function(tmp_path, _lock("0.28.19"))
    assemblyscript_compiler(folder)
    (folder / "package-lock.json").write_text(_lock("0.28.20"))  # the lock moved on (a git pull)
    assemblyscript_compiler(folder)
    installed = json.loads((folder / "node_modules" / "assemblyscript" / "package.json").read_text())
    assert npm_calls.read_text().split() == ["ci", "ci"] and installed["version"] == "0.28.20"


def test_a_folder_without_a_lock_is_installed_with_npm_install(tmp_path: Path, npm_calls: Path) -> None:
    folder = _function(tmp_path, None)
    assemblyscript_compiler(folder)
    assemblyscript_compiler(folder)
    assert npm_calls.read_text().split() == ["install"]
