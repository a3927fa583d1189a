"""Attacks on `flux bug bisect` and the deploy gate (issue 24), each a behaviour a user would see: hostile
`--expect` predicates answer FX512 with a column (never a traceback, never slowly), the build cache does not
mistake one source tree for another, and the gate cannot be slipped past by a version activated while it ran.
Real Postgres, real Deno, real git."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cli._code import BuildCache, commits_between, functions_from_git
from cli.main import app
from flux import db
from flux.api.admin import create_admin_key
from flux.api.deploy import Gate, build_project, bundle_project, deploy, deploy_bundle
from flux.config import load_settings
from flux.data import load_catalog
from flux.devloop import SaveReplays
from flux.errors import (
    ActiveVersionChanged,
    GitRevisionUnusable,
    InvalidExpectation,
    InvalidFunctionCode,
)
from flux.gateway.handler import WithBuiltins
from flux.replay import Replay, built_code
from flux.replay.predicate import parse
from flux.runtime import Runtime, project_cache
from flux.runtime.build import Stamp, sources_sha256
from tests.fixtures.gateway import gateway_client
from tests.fixtures.git import git, git_state
from tests.fixtures.processes import flux_server, run_flux
from tests.fixtures.projects import ADD_NOTE, GET_NOTE, GET_NOTE_CHANGED, flux_dev, wait_for_line
from tests.fixtures.projects import NOTES_TOML as GATE_TOML
from tests.fixtures.projects import edit_function as gate_edit
from tests.fixtures.projects import write_notes_project as gate_project
from tests.test_bisect import PRICE_C as PRICE_C_OF_BISECT

Conn = psycopg.Connection[Any]
REFACTORED = GET_NOTE.replace("return found", "const rows = found; return rows")  # the same behaviour

RESPONSE = {"status": 200, "headers": {"Content-Type": "application/json"}, "body": {"items": [1, 2]}}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("(" * 5000 + "status" + ")" * 5000, "column 101: nests deeper than 100 levels"),
        ("!" * 5000 + "status", "column 101: nests deeper than 100 levels"),
        ("status == " + "1" * 5000, "column 11: the number has 5000 characters: too long"),
        ("body[" + "9" * 5000 + "] == 1", "column 6: the number has 5000 characters: too long"),
        ("status\x00 == 200", "column 7: '\\x00' is not part of the language"),
        ('body.ünï == "é"', "column 6: 'ü' is not part of the language"),
    ],
)
def test_a_hostile_expect_is_fx512_with_its_column(text: str, words: str) -> None:
    with pytest.raises(InvalidExpectation) as raised:
        parse(text)
    assert words in raised.value.message
    assert len(raised.value.message) < 400  # a long --expect is not repeated whole in its error


def test_a_long_chain_and_deep_but_allowed_nesting_are_judged() -> None:
    assert parse(" && ".join(["status == 200"] * 5000)).holds(RESPONSE)
    assert not parse(" || ".join(["status == 500"] * 5000)).holds(RESPONSE)
    assert parse("(" * 100 + "body.items.length == 2" + ")" * 100).holds(RESPONSE)
    assert parse("!" * 100 + "status").holds(RESPONSE)  # an even number of nots
    assert parse(" && ".join(["status == 200"] * 100)).paths()[0].text == "status"


def test_a_megabyte_long_expect_is_read_in_linear_time() -> None:
    text = " && ".join(["status"] * 160_000)  # 1.6 MB: the tokenizer was quadratic (31 s)
    clock = time.perf_counter()
    assert parse(text).holds(RESPONSE)
    assert time.perf_counter() - clock < 10


def test_numbers_past_floats_and_comparisons_across_types() -> None:
    assert parse("body.items.length < 1e999").holds(RESPONSE)  # 1e999 is infinity
    assert not parse('status < "300"').holds(RESPONSE)  # a number and a string do not compare
    assert not parse('status == "200"').holds(RESPONSE)
    assert not parse("body.items > 1").holds(RESPONSE)


def test_the_cli_answers_a_hostile_expect_with_fx512_and_exit_2(tmp_path: Path) -> None:
    args = ["bug", "bisect", "--request", "ffffffff", "--good", "HEAD~1", "--bad", "HEAD", "--expect"]
    hostile = "(" * 3000 + "status"
    done = CliRunner().invoke(app, [*args, hostile, "--project", str(tmp_path)], catch_exceptions=False)
    assert done.exit_code == 2, done.output
    assert done.output.startswith("error FX512: --expect (3006 characters)"), done.output


def test_two_different_function_folders_never_share_a_sources_hash(tmp_path: Path) -> None:
    """The hash decides that a build is reused (by `flux deploy` and across bisect's commits): a file holding
    NUL bytes must not read as several files."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "table.bin").write_bytes(b"1\0table.bin2\0" + b"2")
    (two / "table.bin").write_bytes(b"1")
    (two / "table.bin2").write_bytes(b"2")
    assert sources_sha256(one) != sources_sha256(two)


@pytest.fixture
def project(notes_project: Path) -> Path:
    """test_deploy_gate's project, deployed as version 1, with three notes added and each read once."""
    return notes_project


def _active(conn: Conn) -> int:
    row = conn.execute("SELECT id FROM flux.deployments WHERE active").fetchone()
    assert row is not None
    return int(row[0])


def test_a_version_that_only_changes_a_functions_limits_is_gated(dsn: str, conn: Conn, project: Path) -> None:
    """A timeout of 1 ms makes every request of get_note fail: the same code, another behaviour."""
    (project / "flux.toml").write_text(GATE_TOML + "\n[functions.get_note]\ntimeout_ms = 1\n")
    done = CliRunner().invoke(app, ["deploy", str(project), "--gate"], env={"DATABASE_URL": dsn})
    assert done.exit_code == 1, done.output
    assert "gate: 3 recent requests of changed functions (get_note)" in done.output
    assert _active(conn) == 1


class _Interloper:
    """The gate's executor, which has another version deployed (as a second `flux deploy` would) while the
    gate replays its first request."""

    def __init__(self, inner: Any, interrupt: Any) -> None:
        self.inner, self.interrupt, self.done = inner, interrupt, False

    def execute(self, function: Any, given: Any, host: Any) -> Any:
        if not self.done:
            self.done = True
            self.interrupt()
        return self.inner.execute(function, given, host)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_version_activated_while_the_gate_ran_is_not_replaced_unjudged(
    dsn: str, conn: Conn, project: Path, tmp_path: Path
) -> None:
    """The gate judged the candidate against version 1; version 2 (a hotfix of add_note) was activated
    meanwhile. Activating the candidate would undo the hotfix without its traffic ever being replayed."""
    hotfix = gate_project(tmp_path / "hotfix")
    gate_edit(hotfix, "add_note", ADD_NOTE.replace("note.rows[0]", "{...note.rows[0], fixed: true}"))
    candidate = load_settings(project, env={})
    gate_edit(project, "get_note", REFACTORED)
    bundle = bundle_project(candidate)
    runtime = Runtime(project_cache(project), deno_workers=1)
    with db.connect(dsn, autocommit=True) as owner, contextlib.closing(runtime):
        executor = _Interloper(WithBuiltins(runtime), lambda: deploy(dsn, load_settings(hotfix, env={})))
        how = Replay(executor, built_code({}), load_catalog(owner), mode="recorded")
        with pytest.raises(ActiveVersionChanged, match="version 2 was activated while the gate ran"):
            deploy_bundle(owner, bundle, gate=Gate(how))
    assert executor.done and _active(conn) == 2
    assert conn.execute("SELECT count(*) FROM flux.deployments").fetchone() == (2,)


CLONES = 10_000  # the most a gate replays (--last's bound); `--since 1h` alone asks for as many
_CLONE_REQUESTS = """
INSERT INTO flux.requests (id, tenant_id, kind, method, path, route_id, function, deployment_id, code_sha,
                           status, ok, started_at, duration_us, input, output, error, trace_id)
SELECT gen_random_uuid(), tenant_id, kind, method, path, route_id, function, deployment_id, code_sha,
       status, ok, started_at - make_interval(secs => n), duration_us, input, output, error, trace_id
  FROM flux.requests, generate_series(1, %s) n WHERE id = %s
RETURNING id, started_at
"""
_CLONE_SPANS = """
INSERT INTO flux.spans (request_id, seq, span_id, parent_seq, tenant_id, module, name, started_at,
                        duration_us, ok, attributes, input, output, error)
SELECT c.id, s.seq, s.span_id, s.parent_seq, s.tenant_id, s.module, s.name, c.started_at, s.duration_us,
       s.ok, s.attributes, s.input, s.output, s.error
  FROM flux.spans s, unnest(%s::uuid[], %s::timestamptz[]) AS c(id, started_at) WHERE s.request_id = %s
"""


def test_a_gate_over_many_requests_through_the_server_answers_in_time(
    dsn: str, conn: Conn, project_dir: Path, flux_env: dict[str, str]
) -> None:
    """10,000 recorded requests of a changed function, the gate run by the server: the worker must answer
    (a verdict, or a 4xx that says to ask for fewer) before gunicorn's 30 s worker timeout kills it
    mid-request and the CLI is left with a dropped connection."""
    gate_project(project_dir)
    env = {**flux_env, "DATABASE_URL": dsn}
    with flux_server(project_dir, env) as (url, _):
        request = urllib.request.Request(f"{url}/notes", data=json.dumps({"text": "a"}).encode(),
                                         headers={"content-type": "application/json"})  # fmt: skip
        urllib.request.urlopen(request).close()
        urllib.request.urlopen(f"{url}/notes/1").close()
        read = None
        for _ in range(100):  # the record commits just after the answer
            read = conn.execute("SELECT id FROM flux.requests WHERE path = '/notes/1'").fetchone()
            if read is not None:
                break
            time.sleep(0.05)
        assert read is not None
        clones = conn.execute(_CLONE_REQUESTS, (CLONES - 1, read[0])).fetchall()
        conn.execute(_CLONE_SPANS, ([c[0] for c in clones], [c[1] for c in clones], read[0]))
        remote = {k: v for k, v in env.items() if k != "DATABASE_URL"}
        remote |= {"FLUX_URL": url, "FLUX_ADMIN_KEY": create_admin_key(conn, "cli").key}
        gate_edit(project_dir, "get_note", REFACTORED)
        done = run_flux(["deploy", "--gate", "--since", "1d"], remote, project_dir, timeout=300)
    assert done.returncode == 1, (done.stdout, done.stderr)  # not FX608: the server answered 500
    said = re.search(
        r"error FX516: the deploy gate replayed (\d+) of 10000 recent requests before the server", done.stderr
    )
    assert said is not None and 0 < int(said[1]) < CLONES, done.stderr
    assert _active(conn) == 1
    assert conn.execute("SELECT count(*) FROM flux.deployments").fetchone() == (1,)


def test_hostile_gate_bodies_are_4xx_with_a_code(dsn: str, conn: Conn, project: Path) -> None:
    with gateway_client(load_settings(project, env={}), dsn) as client:
        admin = {
            "authorization": f"Bearer {create_admin_key(conn, 'tests').key}",
            "content-type": "application/json",
        }
        bodies = [
            '{"functions": [], "gate": []}',
            '{"functions": [], "gate": "yes"}',
            '{"functions": [], "gate": {"last": 1e400}}',
            '{"functions": [], "gate": {"last": 1000000000000000000000000000000}}',
            '{"functions": [], "gate": {"last": -1}}',
            '{"functions": [], "gate": {"since_s": 1000000000000000000000000000000}}',
            '{"functions": [], "gate": {"since_s": 0}}',
            '{"functions": [], "gate": {"since_s": 1.5}}',
            '{"functions": [], "gate": {"last": true}}',
            '{"functions": [], "gate": {"db": null}}',
            '{"functions": [], "gate": {"db": "as-of\\u0000"}}',
            '{"functions": [], "gate": {"accept": null}}',
            '{"functions": [], "gate": {"last": ' + "[" * 100_000 + "]" * 100_000 + "}}",
            '{"functions": [], "gate": {"last": NaN}}',
            '{"functions": [], "gate": {"\\ud800": 1}}',
        ]
        for body in bodies:
            answer = client.simulate_post("/flux/api/deployments", body=body, headers=admin)
            assert answer.status_code in (400, 413, 422), (body[:80], answer.status_code, answer.text[:300])
            assert re.fullmatch(r"FX\d{3}", answer.json["code"]), answer.json
    assert _active(conn) == 1


def _repository(top: Path) -> Path:
    top.mkdir()
    git(top, "init", "-q", "-b", "main")
    (top / "flux.toml").write_text("")
    (top / "functions" / "f").mkdir(parents=True)
    (top / "functions" / "f" / "index.ts").write_text('export default async () => ({from: "the commit"});\n')
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "one")
    git(top, "commit", "-q", "--allow-empty", "-m", "two")
    return top


def test_revisions_that_look_like_options_or_ranges_name_no_commit(tmp_path: Path) -> None:
    """--good and --bad reach git only as a commit rev-parse resolved: nothing git could read as an option, a
    range or a command, and nothing runs."""
    top = _repository(tmp_path / "repo")
    marker = tmp_path / "ran"
    for good, bad in (
        (f"--output={marker}", "HEAD"),
        (f"-c core.sshCommand=touch {marker}", "HEAD"),
        ("HEAD~1", "--all"),
        ("HEAD~1 --all", "HEAD"),
        ("HEAD~1\nHEAD", "HEAD"),
        ("HEAD~1..HEAD", "HEAD"),
        (f"$(touch {marker})", "HEAD"),
        ("HEAD~1", "HEAD^{tree}"),
        ("HEAD~1", "HEAD:flux.toml"),
    ):
        with pytest.raises(GitRevisionUnusable, match="names no commit"):
            commits_between(top, good, bad)
    assert not marker.exists()
    state = git_state(top)
    assert [c.subject for c in commits_between(top, "HEAD~1", "main")[1]] == ["two"]
    assert git_state(top) == state


def test_a_revision_whose_function_links_out_of_it_is_not_built_from_outside(
    tmp_path: Path, temporary: Path
) -> None:
    """A commit whose function (or its source) is a symbolic link to an absolute path, say the user's own
    checkout: building it would build today's files there, not the commit's, and judge the wrong code."""
    top = _repository(tmp_path / "repo")
    outside = tmp_path / "checkout" / "g"
    outside.mkdir(parents=True)
    (outside / "index.ts").write_text('export default async () => ({from: "outside"});\n')
    for link, target in (("functions/f/index.ts", outside / "index.ts"), ("functions/h", outside)):
        (top / link).unlink(missing_ok=True)
        (top / link).symlink_to(target)
        git(top, "add", "-A")
        git(top, "commit", "-q", "-m", f"link {link}")
        state = git_state(top)
        with pytest.raises(InvalidFunctionCode, match=f"HEAD:{link}: a symbolic link out of the revision"):
            functions_from_git(top, "HEAD")
        assert git_state(top) == state and list(temporary.iterdir()) == []
        git(top, "reset", "-q", "--hard", "HEAD~1")
    assert functions_from_git(top, "HEAD")["f"].code.endswith(b'({from: "the commit"});\n')


PRICE_C = PRICE_C_OF_BISECT.replace(
    "#include <stdlib.h>\n", '#include <stdlib.h>\n#include "../../shared/price.h"\n'
)
PRICE_C = PRICE_C.replace("int price = 42;", "int price = PRICE;")


def test_a_commit_that_changes_only_a_header_the_function_includes_is_built_again(
    tmp_path: Path, temporary: Path
) -> None:
    top = tmp_path / "repo"
    (top / "functions" / "price").mkdir(parents=True)
    (top / "shared").mkdir()
    git(top, "init", "-q", "-b", "main")
    (top / "flux.toml").write_text("")
    (top / "functions" / "price" / "index.c").write_text(PRICE_C)
    (top / "shared" / "price.h").write_text("#define PRICE 42\n")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "price 42")
    (top / "shared" / "price.h").write_text("#define PRICE 41\n")
    git(top, "commit", "-q", "-am", "price 41: the culprit, in a header")
    assert (
        functions_from_git(top, "HEAD~1")["price"].sha256 != functions_from_git(top, "HEAD")["price"].sha256
    )
    cache = BuildCache()
    before = functions_from_git(top, "HEAD~1", cache=cache)["price"]
    after = functions_from_git(top, "HEAD", cache=cache)["price"]
    assert before.sha256 != after.sha256, "the commit that changed the price was built from the cache as 42"


def _descendants_named(name: str) -> list[int]:
    """This process's descendants whose command is `name`."""
    found, pending = [], [os.getpid()]
    while pending:
        pid = pending.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                pending.append(child)
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == name:
                        found.append(child)
                except OSError:
                    pass
    return found


def test_many_saves_replayed_by_flux_dev_leak_no_connection_nor_deno(
    dsn: str, conn: Conn, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flux.dev")
    replays = SaveReplays(dsn, project, 20)
    replays.start()
    backends = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    counts = []
    try:
        for save in range(8):
            gate_edit(project, "get_note", GET_NOTE_CHANGED if save % 2 else REFACTORED)
            version = deploy(dsn, load_settings(project, env={})).id
            replays.after_deploy(version)
            deadline = time.monotonic() + 30
            while sum("replayed" in r.getMessage() for r in caplog.records) <= save:
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                time.sleep(0.05)
            counts.append((conn.execute(backends).fetchone(), len(_descendants_named("deno"))))
    finally:
        replays.stop()
    assert len(set(counts[1:])) == 1 and counts[-1][1] >= 1, counts  # the same after the 2nd save as the 8th
    lines = [r.getMessage() for r in caplog.records if "replayed" in r.getMessage()]
    assert lines[0].startswith("replayed 3: 3 same") and lines[1].startswith("replayed 3: 3 diverged"), lines
    assert not [r for r in caplog.records if "could not replay" in r.getMessage()]


GET_NOTE_TOO_DEEP = """export default async (req, ctx) => {
  let nested = null;
  for (let level = 0; level < 300; level++) nested = [nested];
  return {status: 200, body: nested};
}"""


def test_a_candidate_whose_answer_nests_too_deeply_to_record_is_refused(
    dsn: str, conn: Conn, project: Path
) -> None:
    """Its replays cannot be recorded (JSON past 254 levels), which made them `error`, which does not block:
    a version that answers every request otherwise went through."""
    gate_edit(project, "get_note", GET_NOTE_TOO_DEEP)
    done = CliRunner().invoke(app, ["deploy", str(project), "--gate"], env={"DATABASE_URL": dsn})
    assert done.exit_code == 1, done.output
    assert "gate: 0 same · 3 diverged · 0 drift · 0 could not run" in done.output, done.output
    assert "then: output: the response differs at response.body" in done.output, done.output
    assert "error FX515: the deploy gate: 3 of 3 recent requests" in done.output, done.output
    verdict = conn.execute("SELECT gate->>'verdict' FROM flux.deployments WHERE id = 2").fetchone()
    assert verdict == ("refused",)  # kept, with its divergences
    assert _active(conn) == 1


# clang expands 2^23 terms: it compiles for long enough to be interrupted
MACROS = [f"#define A{n}(x) A{n - 1}(x) + A{n - 1}(x)" for n in range(1, 23)]
SLOW_C = "\n".join(["#define A0(x) x + x", *MACROS, "int f(int x) { return A22(x); }", ""])


def test_ctrl_c_during_a_build_stops_and_removes_the_temporary_worktree(tmp_path: Path) -> None:
    top = tmp_path / "repo"
    (top / "functions" / "slow").mkdir(parents=True)
    git(top, "init", "-q", "-b", "main")
    (top / "flux.toml").write_text("")
    (top / "functions" / "slow" / "index.c").write_text(SLOW_C)
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "slow")
    state, temporary = git_state(top), tmp_path / "temporary"
    temporary.mkdir()
    script = "from pathlib import Path\nfrom cli._code import functions_from_git\n" + (
        f"functions_from_git(Path({str(top)!r}), 'HEAD')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(temporary)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(path.name.startswith("index-") for path in temporary.iterdir()):  # clang is compiling
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group, clang too
    output, _ = process.communicate(timeout=60)
    assert output.rstrip().endswith("KeyboardInterrupt"), output  # not a skipped commit (FX307)
    assert not [path for path in temporary.iterdir() if path.name.startswith("flux-code-")]
    assert git_state(top) == state


def test_a_large_file_in_a_function_folder_is_hashed_without_reading_it_whole(tmp_path: Path) -> None:
    """Every deploy and every commit bisect builds hashes the function's folder: a data file of some GB must
    not be read into memory at once."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "index.ts").write_text("export default async () => 1;\n")
    with (folder / "table.bin").open("wb") as data:
        data.truncate(256 * 1024 * 1024)  # sparse: no disk used
    tracemalloc.start()
    try:
        sources_sha256(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, peak


def test_after_an_accepted_divergence_a_refactor_of_the_new_behaviour_passes(
    dsn: str, conn: Conn, project: Path
) -> None:
    gate_edit(project, "get_note", GET_NOTE_CHANGED)
    accepted = CliRunner().invoke(
        app, ["deploy", str(project), "--accept-divergence"], env={"DATABASE_URL": dsn}
    )
    assert accepted.exit_code == 0 and _active(conn) == 2, accepted.output
    refactored = GET_NOTE_CHANGED.replace("const note = found.rows[0];", "const [note] = found.rows;")
    assert refactored != GET_NOTE_CHANGED
    gate_edit(project, "get_note", refactored)
    done = CliRunner().invoke(app, ["deploy", str(project), "--gate"], env={"DATABASE_URL": dsn})
    assert done.exit_code == 0, done.output  # refused: 3 diverged, each recorded on version 1
    assert "gate: 3 of them served by older code than the active version's" in done.output, done.output


def test_after_an_accepted_divergence_going_back_to_the_old_behaviour_is_refused(
    dsn: str, conn: Conn, project: Path
) -> None:
    """The requests recorded on version 1 match the old code's replay, but the active version answers them
    otherwise: judged against the active version, returning to the old behaviour is a divergence."""
    gate_edit(project, "get_note", GET_NOTE_CHANGED)
    accepted = CliRunner().invoke(
        app, ["deploy", str(project), "--accept-divergence"], env={"DATABASE_URL": dsn}
    )
    assert accepted.exit_code == 0 and _active(conn) == 2, accepted.output
    gate_edit(project, "get_note", REFACTORED)  # version 1's behaviour, another sha
    done = CliRunner().invoke(app, ["deploy", str(project), "--gate"], env={"DATABASE_URL": dsn})
    assert done.exit_code == 1, done.output
    assert "gate: 0 same · 3 diverged" in done.output, done.output
    assert _active(conn) == 2


def test_a_revision_that_commits_build_output_is_built_from_its_sources(tmp_path: Path) -> None:
    """A commit holding `.flux/build/f.wasm` with a stamp that matches its sources: the build took those
    bytes (which no review of the source shows) as the revision's code."""
    top = tmp_path / "repo"
    (top / "functions" / "f").mkdir(parents=True)
    (top / ".flux" / "build").mkdir(parents=True)
    git(top, "init", "-q", "-b", "main")
    (top / "flux.toml").write_text("")
    (top / "functions" / "f" / "index.wat").write_text('(module (func (export "a")))\n')
    (top / ".flux" / "build" / "f.sources").write_text(sources_sha256(top / "functions" / "f"))
    (top / ".flux" / "build" / "f.wasm").write_bytes(b"\0asm not what the source says")
    git(top, "add", "-f", "-A")
    git(top, "commit", "-q", "-m", "sources, and build output beside them")
    code = functions_from_git(top, "HEAD")["f"].code
    assert code.startswith(b"\0asm\x01\0\0\0"), code


def test_a_fresh_clone_that_carries_build_output_deploys_its_sources(tmp_path: Path) -> None:
    project = tmp_path / "clone"
    (project / "functions" / "f").mkdir(parents=True)
    (project / ".flux" / "build").mkdir(parents=True)
    (project / "flux.toml").write_text("")
    (project / "functions" / "f" / "index.wat").write_text('(module (func (export "a")))\n')
    (project / ".flux" / "build" / "f.sources").write_text(sources_sha256(project / "functions" / "f"))
    (project / ".flux" / "build" / "f.wasm").write_bytes(b"\0asm not what the source says")
    function, _ = build_project(load_settings(project, env={}))["f"]
    assert function.code.startswith(b"\0asm\x01\0\0\0"), function.code


def _pipes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("pipe:"):
                found.add(target)
    return found


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def test_a_worker_forked_after_a_dev_replay_holds_nothing_of_the_replays(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    gate_project(project_dir)
    with flux_dev(project_dir, {**flux_env, "DATABASE_URL": dsn}) as (base, process, lines):
        urllib.request.urlopen(f"{base}/notes/1", timeout=10).close()
        gate_edit(project_dir, "get_note", GET_NOTE_CHANGED)
        deadline = time.monotonic() + 30
        wait_for_line(lines, "replayed", within_s=30)
        before = _children(process.pid)
        replays = set().union(*(_pipes(pid) for pid in before if _comm(pid) == "deno"))
        serving = next(pid for pid in before if _comm(pid) != "deno" and _children(pid))  # it runs a Deno
        os.kill(serving, signal.SIGKILL)  # a crash: the master forks another
        while not (forked := [pid for pid in _children(process.pid) if pid not in before]):
            assert time.monotonic() < deadline + 30
            time.sleep(0.1)
        time.sleep(1)
        assert replays and not _pipes(forked[0]) & replays


def test_a_stamp_signed_on_another_machine_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stamp in the new form, signed with another machine's key, for bytes that are not the sources' build:
    a clone carrying it builds its sources. This machine's key is made once, readable by its user only."""
    project = tmp_path / "clone"
    (project / "functions" / "f").mkdir(parents=True)
    (project / "flux.toml").write_text("")
    (project / "functions" / "f" / "index.wat").write_text('(module (func (export "a")))\n')
    out_dir, forged = project / ".flux" / "build", b"\0asm\x01\0\0\0 not what the source says"
    monkeypatch.setenv("FLUX_BUILD_CACHE", str(tmp_path / "elsewhere"))
    build_project(load_settings(project, env={}))
    (out_dir / "f.wasm").write_bytes(forged)
    Stamp(sources_sha256(project / "functions" / "f"), hashlib.sha256(forged).hexdigest()).write(out_dir, "f")
    monkeypatch.setenv("FLUX_BUILD_CACHE", str(tmp_path / "here"))
    function, _ = build_project(load_settings(project, env={}))["f"]
    assert function.code != forged and function.code.startswith(b"\0asm\x01\0\0\0")
    assert (tmp_path / "here" / "stamps.key").stat().st_mode & 0o777 == 0o600
    again, _ = build_project(load_settings(project, env={}))["f"]  # signed here now: not built again
    assert again.code == function.code and Stamp.read(out_dir, "f") is not None


RUST_PRICE = (
    '#[path = "../../shared/price.rs"]\nmod price;\n#[no_mangle]\npub extern "C" fn a() -> i32 { price::P }\n'
)
C_PRICE = '#include "../../shared/price.h"\n__attribute__((export_name("a"))) int a(void) { return PRICE; }\n'


@pytest.mark.parametrize(
    ("source", "body", "shared", "first", "second"),
    [
        ("lib.rs", RUST_PRICE, "price.rs", "pub const P: i32 = 42;\n", "pub const P: i32 = 41;\n"),
        ("index.c", C_PRICE, "price.h",
         "#define PRICE 42\n", "#define PRICE 41\n"),
    ],
)  # fmt: skip
def test_flux_deploy_builds_again_when_a_file_outside_the_folder_the_build_read_changed(
    tmp_path: Path, source: str, body: str, shared: str, first: str, second: str
) -> None:
    project = tmp_path / "project"
    (project / "functions" / "price").mkdir(parents=True)
    (project / "shared").mkdir()
    (project / "flux.toml").write_text("")
    (project / "functions" / "price" / source).write_text(body)
    (project / "shared" / shared).write_text(first)
    built, _ = build_project(load_settings(project, env={}))["price"]
    stamp = Stamp.read(project / ".flux" / "build", "price")
    assert stamp is not None and f"../../shared/{shared}" in stamp.dependencies, stamp
    (project / "shared" / shared).write_text(second)
    rebuilt, _ = build_project(load_settings(project, env={}))["price"]
    assert rebuilt.sha256 != built.sha256


def test_a_build_cache_that_cannot_be_written_builds_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key can be made (the build cache is under a file): no stamp is written nor trusted, and the deploy
    still builds."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FLUX_BUILD_CACHE", str(tmp_path / "a-file" / "cache"))
    project = tmp_path / "project"
    (project / "functions" / "f").mkdir(parents=True)
    (project / "flux.toml").write_text("")
    (project / "functions" / "f" / "index.wat").write_text('(module (func (export "a")))\n')
    for _ in range(2):
        function, _ = build_project(load_settings(project, env={}))["f"]
        assert function.code.startswith(b"\0asm\x01\0\0\0")
    assert not (project / ".flux" / "build" / "f.stamp").exists()
