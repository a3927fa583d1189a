"""The gateway in the real server: `flux server` under gunicorn with two workers, a project with routes and
functions, each auth mode, a rate limit shared by the workers, the record read back, and a worker killed
mid-request."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest

from flux import cpus
from flux.gateway.auth import new_api_key
from tests.fixtures.processes import call_json, flux_server, wait_for_http

SECRET = "e2e-secret-" + "x" * 30
FLUX_TOML = f"""
[server]
workers = 2

[auth]
secret = "{SECRET}"

[[routes]]
method = "GET"
path = "/hello/{{name}}"
function = "hello"
auth = "none"

[[routes]]
method = "POST"
path = "/notes"
function = "add_note"

[[routes]]
method = "GET"
path = "/limited"
function = "hello"
auth = "none"
rate_per_s = 0.01
burst = 3

[[routes]]
method = "POST"
path = "/stuck"
function = "stuck"

[[routes]]
method = "POST"
path = "/relay"
function = "relay"
auth = "none"

[[routes]]
method = "POST"
path = "/dangling"
function = "dangling"
auth = "none"

[[routes]]
method = "GET"
path = "/escape"
function = "escape"
auth = "none"
"""
FUNCTIONS = {
    "hello": "export default async (req) => ({hello: req.params.name ?? 'you'})",
    "relay": "export default async (req, ctx) => JSON.parse((await ctx.fetch(req.body.url)).body)",
    "add_note": "export default async (req, ctx) => ({status: 201, body: (await ctx.db.query("
    "{insert: 'notes', values: {body: req.body.text}, returning: ['id']})).rows[0]})",
    "stuck": "export default async (req, ctx) => {"
    " await ctx.db.query({insert: 'notes', values: {body: 'lost'}});"
    " for (;;) {} }",
    # A forgotten `await` on an anonymous route: the chain must run in its own request, as anon, never later.
    "dangling": "export default async (req, ctx) => {"
    " ctx.log('first').then(() => ctx.db.query({insert: 'notes', values: {body: 'dangling'}}))"
    " .catch(() => {});"
    " return {left: 'pending'}; }",
    "escape": "export default async (req, ctx) => {"
    " try { return {deno: typeof ctx.constructor.constructor('return globalThis')().Deno}; }"
    " catch (e) { return {refused: String(e)}; } }",
}


@pytest.fixture
def server(
    dsn: str, project_dir: Path, flux_env: dict[str, str], local_server: str
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    (project_dir / "flux.toml").write_text(FLUX_TOML)
    (project_dir / "migrations").mkdir()
    (project_dir / "migrations" / "0001_notes.sql").write_text(
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n"
        "GRANT SELECT, INSERT ON notes TO flux_user;\nGRANT USAGE ON SEQUENCE notes_id_seq TO flux_user;\n"
    )
    for name, source in FUNCTIONS.items():
        (project_dir / "functions" / name).mkdir(parents=True)
        (project_dir / "functions" / name / "index.ts").write_text(source)
    env = {**flux_env, "DATABASE_URL": dsn, "FLUX_FETCH_ALLOW": "127.0.0.1"}
    with flux_server(project_dir, env) as served:
        yield served


def test_each_auth_mode_end_to_end_with_its_record(server: tuple[str, Any], dsn: str) -> None:
    base, _ = server
    made = new_api_key()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO flux.api_keys (prefix, key_hash, role) VALUES (%s, %s, 'user')",
                     (made.prefix, made.key_hash))  # fmt: skip
    token = jwt.encode({"sub": "ada", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    anonymous = call_json(f"{base}/hello/ada")
    with_key = call_json(f"{base}/notes", "POST", {"text": "by key"}, {"authorization": f"Bearer {made.key}"})
    with_jwt = call_json(f"{base}/notes", "POST", {"text": "by jwt"}, {"authorization": f"Bearer {token}"})
    without = call_json(f"{base}/notes", "POST", {"text": "nobody"})
    assert [r[0] for r in (anonymous, with_key, with_jwt, without)] == [200, 201, 201, 401]
    with psycopg.connect(dsn) as conn:
        request_id = with_jwt[1]["x-request-id"]
        row = conn.execute("SELECT status, ok, input->'user'->>'sub' FROM flux.requests WHERE id = %s",
                           (request_id,)).fetchone()  # fmt: skip
        assert row == (201, True, "ada")
        spans = [s[0] for s in conn.execute(
            "SELECT module FROM flux.spans WHERE request_id = %s ORDER BY seq", (request_id,)
        ).fetchall()]  # fmt: skip
        assert spans[:2] == ["gateway", "runtime"] and "data" in spans
        mutations = conn.execute("SELECT new->>'body' FROM flux.mutations WHERE request_id = %s",
                                 (request_id,)).fetchall()  # fmt: skip
        assert mutations == [("by jwt",)]
        refused = _written(conn, "SELECT status, error->>'code' FROM flux.requests WHERE id = %s",
                           without[1]["x-request-id"])  # fmt: skip
        assert refused == (401, "FX011")  # its record is written off the request path, soon after the answer


def test_a_forgotten_await_runs_in_its_own_request_and_the_worker_realm_is_out_of_reach(
    server: tuple[str, Any], dsn: str
) -> None:
    """Issue 22's reproductions against the real server: anonymous runs that leave a write pending, each
    followed by a user's request that the same Deno processes serve; and the realm escape."""
    base, _ = server
    token = jwt.encode({"sub": "ada", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    dangling, written = [], []
    for round_ in range(6):
        dangling.append(call_json(f"{base}/dangling", "POST", {}))
        written.append(call_json(f"{base}/notes", "POST", {"text": f"note {round_}"},
                             {"authorization": f"Bearer {token}"}))  # fmt: skip
    # Each anonymous request fails of its own pending write (anon may not insert): the write was its own.
    assert [(d[0], d[2]["code"]) for d in dangling] == [(403, "FX204")] * 6, dangling
    assert [w[0] for w in written] == [201] * 6
    assert call_json(f"{base}/escape")[2] == {"deno": "undefined"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT body FROM notes WHERE body = 'dangling'").fetchall() == []
        for answer in dangling:  # the insert was made in the anonymous request itself, and refused there
            spans = [row[0] for row in conn.execute(
                "SELECT name || ':' || coalesce(error->>'code', 'ok') FROM flux.spans WHERE request_id = %s"
                " ORDER BY seq", (answer[1]["x-request-id"],)
            )]  # fmt: skip
            assert spans[-2:] == ["log:info:ok", "db:insert(notes):FX204"], spans
        for answer in written:  # and never in the user's requests that came after
            names = [row[0] for row in conn.execute(
                "SELECT name FROM flux.spans WHERE request_id = %s ORDER BY seq", (answer[1]["x-request-id"],)
            )]  # fmt: skip
            assert names.count("db:insert(notes)") == 1 and "log:info" not in names, names


def test_the_rate_limit_holds_across_both_workers(server: tuple[str, Any]) -> None:
    base, _ = server
    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(lambda _: call_json(f"{base}/limited")[0], range(10)))
    assert statuses == [200] * 3 + [429] * 7


def test_a_worker_killed_mid_request_leaves_no_writes_and_no_success(
    server: tuple[str, Any], dsn: str
) -> None:
    base, process = server
    made = new_api_key()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO flux.api_keys (prefix, key_hash, role) VALUES (%s, %s, 'user')",
                     (made.prefix, made.key_hash))  # fmt: skip
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(_try(f"{base}/stuck", made.key)))
    caller.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while not conn.execute(  # the function has inserted (uncommitted) and is spinning
            "SELECT 1 FROM pg_stat_activity"
            " WHERE query LIKE '%INSERT INTO \"public\".\"notes\"%' AND state <> 'active'"
        ).fetchone():
            assert time.monotonic() < deadline, "the stuck function never wrote"
            time.sleep(0.1)
        for worker in _children(process.pid):
            os.kill(worker, signal.SIGKILL)
        caller.join(timeout=30)
        time.sleep(1)
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM flux.requests WHERE path = '/stuck' AND ok").fetchone() == (
            0,
        )
    wait_for_http(f"{base}/ready", timeout=30)  # the master started new workers
    assert call_json(f"{base}/hello/again")[0] == 200


def test_each_worker_has_a_cpu_of_its_own_and_deno_has_every_cpu(server: tuple[str, Any]) -> None:
    base, process = server
    everything = os.sched_getaffinity(process.pid)
    if not cpus.should_pin("auto", "sync", 2, len(everything)):
        pytest.skip(f"two workers on {len(everything)} CPUs are not pinned by default")
    workers = _pinned_workers(process.pid, count=2)
    placed = [os.sched_getaffinity(worker) for worker in workers]
    assert len(set.union(*placed)) == 2  # one CPU each
    assert call_json(f"{base}/hello/pinned")[0] == 200  # a TypeScript function: its worker starts Deno
    denos = [child for worker in workers for child in _children(worker) if "deno" in _command(child)]
    assert denos and all(os.sched_getaffinity(deno) == everything for deno in denos)
    os.kill(workers[0], signal.SIGKILL)
    (new,) = _pinned_workers(process.pid, count=1, besides=tuple(workers))
    assert os.sched_getaffinity(new) == placed[0]  # it takes the CPU the dead one had


def _pinned_workers(master: int, count: int, besides: tuple[int, ...] = ()) -> list[int]:
    """`count` gunicorn workers of `master` (not `besides`, not the queue worker, not one that has ended),
    once each is pinned to one CPU (a worker pins itself just after its fork)."""
    deadline = time.monotonic() + 30
    while True:
        workers = [
            child
            for child in _children(master)
            if child not in besides and (command := _command(child)) and "-m cli worker" not in command
        ]
        if len(workers) == count and all(len(_affinity(worker)) == 1 for worker in workers):
            return workers
        assert time.monotonic() < deadline, f"not {count} workers pinned: {workers}"
        time.sleep(0.1)


def _affinity(pid: int) -> set[int]:
    try:
        return os.sched_getaffinity(pid)
    except ProcessLookupError:
        return set()


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""  # it has just ended


def _written(conn: Any, query: str, request_id: str, timeout_s: float = 5.0) -> Any:
    """The row `query` finds for `request_id`, once the record is written (within `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while (row := conn.execute(query, (request_id,)).fetchone()) is None:
        assert time.monotonic() < deadline, f"request {request_id} was not recorded"
        time.sleep(0.02)
    return row


def test_sigterm_lets_an_in_flight_request_finish(
    server: tuple[str, Any], local_server: str, dsn: str
) -> None:
    base, process = server
    answers: list[Any] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            call_json(f"{base}/relay", "POST", {"url": f"{local_server}/sleep/1.5"})
        )
    )
    caller.start()
    time.sleep(0.5)  # the request is in its function, waiting on its fetch
    process.send_signal(signal.SIGTERM)
    caller.join(timeout=30)
    assert answers and answers[0][0] == 200 and answers[0][2]["pong"] == "/sleep/1.5"
    assert process.wait(timeout=30) == 0
    with psycopg.connect(dsn) as conn:  # the worker wrote the request's queued record before it exited
        row = conn.execute(
            "SELECT status, ok FROM flux.requests WHERE id = %s", (answers[0][1]["x-request-id"],)
        )
        assert row.fetchone() == (200, True)


def _try(url: str, key: str) -> Any:
    try:
        return call_json(url, "POST", {}, {"authorization": f"Bearer {key}"})
    except (urllib.error.URLError, ConnectionError) as exc:
        return exc


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
