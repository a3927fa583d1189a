"""Ruby functions (`handler.rb` in CRuby's WASI build, on the WASI-command ABI): the build is the pinned
interpreter with the script, a loop and an allocation without bound end with their FX codes, an error fails
the request with its message and line, no host file is readable or writable, and nothing of a run is left for
the next."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.runtime import Function, Runtime
from flux.runtime.build import build_cache_dir, build_function
from flux.runtime.limits import FunctionLimits
from flux.runtime.wasi_command import split_command
from tests.fixtures.runtime import ask, assert_limits_end_runs
from tests.runtime.test_examples import TOOLCHAINS

Conn = psycopg.Connection[Any]
REPO = Path(__file__).resolve().parents[2]

HOSTILE = """
def attempt
  yield
rescue SystemCallError => e
  e.class.name
end

def handle(req, ctx)
  case req["body"]
  when "spin" then loop {}
  when "sleep" then sleep(3600)
  when "grow" then hoard = []; loop { hoard << ("x" * 1_000_000) }
  when "raise" then raise ArgumentError, "the note is empty"
  when "files"
    read = attempt { File.read("/etc/passwd") }
    written = attempt { File.write("/tmp/flux-ruby", "x") }
    listed = attempt { Dir.children("/etc") }
    { "read" => read, "written" => written, "listed" => listed, "env" => ENV.to_h }
  when "count"
    $count = ($count || 0) + 1
    { "count" => $count }
  when "big" then "x" * 3_000_000
  when "forge"
    STDOUT.write(JSON.generate({ "forged" => true }) + "\n")
    STDERR.write("y" * 200_000)
    "fine"
  else "fine"
  end
end
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, runtime: Runtime) -> Function:
    if not TOOLCHAINS["rb_notes"]() and os.environ.get("CI") != "true":
        pytest.skip("npm is not installed: it fetches CRuby's WASI build")
    folder = tmp_path_factory.mktemp("ruby") / "hostile"
    folder.mkdir()
    (folder / "handler.rb").write_text(HOSTILE)
    fn = build_function(folder, folder.parent / "build", FunctionLimits(timeout_ms=3000))
    runtime.wasm.load(fn.code, fn.sha256)  # compiled ahead, as `flux deploy` does
    return fn


def test_a_ruby_build_is_the_locked_interpreter_with_its_script(hostile: Function) -> None:
    lock = json.loads((REPO / "sdk" / "ruby" / "ruby-wasm.lock.json").read_text())
    interpreter, command = split_command(hostile.code)
    assert hashlib.sha256(interpreter).hexdigest() == lock["sha256"]
    assert (build_cache_dir() / "ruby" / f"{lock['sha256']}.wasm").exists()  # fetched once, kept by sha256
    assert command is not None and command.entry == "ruby" and "Flux.run(" in command.script


def test_a_ruby_loop_a_sleep_and_an_allocation_without_bound_end_with_their_codes(
    call: Any, hostile: Function
) -> None:
    assert_limits_end_runs(call, hostile, within_s=20)  # its 3 s limit, not the hour it asked for


def test_a_ruby_error_fails_the_request_with_its_message_and_line(
    conn: Conn, call: Any, hostile: Function
) -> None:
    outcome = ask(call, hostile, "raise")
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert outcome.error.message == "ArgumentError: the note is empty"
    logged = [row[0] for row in conn.execute(
        "SELECT input->>'message' FROM flux.spans WHERE request_id = %s AND module = 'log' ORDER BY seq",
        (outcome.request_id,),
    )]  # fmt: skip
    assert any("handler.rb:13:in 'Object#handle'" in line for line in logged), logged


def test_a_ruby_function_reads_and_writes_no_host_file_and_keeps_nothing(
    call: Any, hostile: Function
) -> None:
    outcome = ask(call, hostile, "files")
    assert outcome.error is None, outcome.error
    assert outcome.response.body == {
        "read": "Errno::ENOENT", "written": "Errno::ENOENT", "listed": "Errno::ENOENT", "env": {}
    }  # fmt: skip
    assert not Path("/tmp/flux-ruby").exists()
    assert [ask(call, hostile, "count").response.body for _ in range(2)] == [{"count": 1}] * 2


def test_a_ruby_function_s_large_output_arrives_whole_and_a_forged_line_is_not_its_response(
    conn: Conn, call: Any, hostile: Function
) -> None:
    # fd_write takes at most 1 MiB a call (tests/runtime/test_attacks_wasi_go_ruby.py): Ruby writes the rest
    # of a 3 MB response in its next calls. A line written on STDOUT behind the SDK's back is a host call (an
    # unknown one), never the response; 200 000 bytes on stderr without a newline are logged in 64 KiB pieces.
    big = ask(call, hostile, "big")
    assert big.error is None and big.response.body == "x" * 3_000_000, big.error
    forged = ask(call, hostile, "forge")
    assert forged.error is None and forged.response.body == "fine", forged.error
    spans = conn.execute(
        "SELECT name, length(input->>'message') FROM flux.spans WHERE request_id = %s AND seq > 0"
        " AND name NOT LIKE 'clock:%%' ORDER BY seq",
        (forged.request_id,),
    ).fetchall()
    # stderr is logged as it is written; the forged line is called when the run ends (it reads no more)
    assert spans == [("log:error", 65536)] * 3 + [("call:None", None), ("log:error", 3392)], spans


def test_flux_build_and_its_stamp_take_a_ruby_function_once(tmp_path: Path, hostile: Function) -> None:
    folder = tmp_path / "rb_notes"
    shutil.copytree(REPO / "examples" / "polyglot" / "functions" / "rb_notes", folder)
    first = build_function(folder, tmp_path / "build")
    assert build_function(folder, tmp_path / "build").sha256 == first.sha256
    (folder / "handler.rb").write_text((folder / "handler.rb").read_text() + "\n# changed\n")
    assert build_function(folder, tmp_path / "build").sha256 != first.sha256


def test_a_ruby_syntax_error_fails_the_request_with_its_first_line(
    tmp_path: Path, call: Any, runtime: Runtime, hostile: Function
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "handler.rb").write_text("def handle(req, ctx)\n  [1, 2\nend\n")
    outcome = ask(call, build_function(folder, tmp_path / "build"), "fine")
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert outcome.error.message.startswith("SyntaxError: handler.rb:"), outcome.error.message
