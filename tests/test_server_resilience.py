"""The real server against what took it down in issue 25: slow clients holding its workers (slowloris), and a
worker killed in the middle of a request (it must leave a record saying the request was lost)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.api.admin import create_admin_key
from flux.httpworker import BUFFERED_BODY_BYTES, request_complete
from tests.fixtures.processes import FLUX, call_json, flux_server, free_port, run_flux

pytestmark = pytest.mark.slow
FLUX_TOML = """
[server]
workers = 2

[[routes]]
method = "GET"
path = "/hello"
function = "hello"
auth = "none"

[[routes]]
method = "POST"
path = "/spin"
function = "spin"
auth = "none"

[[routes]]
method = "POST"
path = "/read-then-wait"
function = "read_then_wait"
auth = "none"
"""
FUNCTIONS = {
    "hello": "export default async () => ({hello: 'you'})",
    "spin": "export default async (req, ctx) => { ctx.log('spinning'); for (;;) {} }",
    "read_then_wait": "export default async (req, ctx) => {"
    " await ctx.db.query({select: 'notes'}); await ctx.fetch(req.body.url); return {done: true}; }",
}
SLOW_CLIENTS = 10


@pytest.fixture
def server(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    (project_dir / "flux.toml").write_text(FLUX_TOML)
    (project_dir / "migrations").mkdir()
    (project_dir / "migrations" / "0001_notes.sql").write_text(
        "CREATE TABLE notes (id serial PRIMARY KEY, body text);\nGRANT SELECT ON notes TO flux_anon;\n"
    )
    for name, source in FUNCTIONS.items():
        (project_dir / "functions" / name).mkdir(parents=True)
        (project_dir / "functions" / name / "index.ts").write_text(source)
    with flux_server(
        project_dir, {**flux_env, "DATABASE_URL": dsn, "FLUX_FETCH_ALLOW": "127.0.0.1"}
    ) as served:
        yield served


def _timed_get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        response.read()
    return time.perf_counter() - started


def _p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99) - 1]


def test_slow_clients_do_not_stall_the_server(server: tuple[str, Any]) -> None:
    """Ten slow connections, five dribbling their headers (a line every half second) and five their bodies (a
    byte every half second), while /health and a function are measured: both still answer within 100 ms p99
    (gunicorn's sync worker had answered /health in 31 s)."""
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    for _ in range(10):  # both workers' Deno processes warm
        _timed_get(f"{base}/hello")
    stop = threading.Event()
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(SLOW_CLIENTS)]

    heads, bodies = slow[: SLOW_CLIENTS // 2], slow[SLOW_CLIENTS // 2 :]
    sent = 0

    def dribble() -> None:
        nonlocal sent
        for conn in heads:
            conn.sendall(b"GET /health HTTP/1.1\r\nhost: localhost\r\n")
        for conn in bodies:
            conn.sendall(b"POST /hello HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n")
        while not stop.wait(0.5):
            sent += 1
            for conn in heads:
                conn.sendall(f"x-slow-{sent}: {'a' * 10}\r\n".encode())
            for conn in bodies:
                conn.sendall(b"a")

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    try:
        time.sleep(1)  # every slow connection accepted and holding whatever it can hold
        health = [_timed_get(f"{base}/health") for _ in range(100)]
        function = [_timed_get(f"{base}/hello") for _ in range(100)]
    finally:
        stop.set()
        dribbler.join()
    try:
        assert _p99(health) < 0.1, sorted(health)[-5:]
        assert _p99(function) < 0.1, sorted(function)[-5:]
        # the slow connections were parked, not dropped: each still gets its answer once its request ends
        for conn in heads:
            conn.sendall(b"\r\n")
        for conn in bodies:
            conn.sendall(b"a" * (100 - sent))
        for conn in heads:
            conn.settimeout(5)
            assert conn.recv(64).startswith(b"HTTP/1.1 200"), "a slow client was not served"
        for conn in bodies:  # served: a POST of a GET route is refused
            conn.settimeout(5)
            assert conn.recv(64).startswith(b"HTTP/1.1 405"), "a slow body was not served"
    finally:
        for conn in slow:
            conn.close()


def test_slow_heads_and_bodies_get_408_at_the_configured_deadlines(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    """`[server] header_timeout_s` and `body_timeout_s`: a connection whose head is still arriving (however
    steadily it dribbles) is answered 408 once the header deadline has passed since it was accepted, one
    whose body is still arriving once the body deadline has passed since its head; the server serves on."""
    (project_dir / "flux.toml").write_text("[server]\nheader_timeout_s = 0.5\nbody_timeout_s = 1\n")
    with flux_server(project_dir, {**flux_env, "DATABASE_URL": dsn}) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        idle, dribbling, slow_body = (socket.create_connection(("127.0.0.1", port)) for _ in range(3))
        started = time.monotonic()
        idle.sendall(b"GET /health HTTP/1.1\r\nhost: localhost\r\n")
        dribbling.sendall(b"GET /health HTTP/1.1\r\n")
        slow_body.sendall(b"POST /health HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\nabc")
        answered: dict[str, float] = {}
        try:
            for conn in (idle, dribbling, slow_body):
                conn.setblocking(False)
            while len(answered) < 3 and time.monotonic() - started < 10:
                for name, conn in (("idle", idle), ("dribbling", dribbling), ("body", slow_body)):
                    if name in answered:
                        continue
                    try:
                        answer = conn.recv(64)
                    except BlockingIOError:
                        if name == "dribbling":
                            conn.sendall(b"x-more: a\r\n")
                        continue
                    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), (name, answer)
                    answered[name] = time.monotonic() - started
                _timed_get(f"{base}/health")  # the server serves on meanwhile
                time.sleep(0.1)
        finally:
            for conn in (idle, dribbling, slow_body):
                conn.close()
    assert set(answered) == {"idle", "dribbling", "body"}, answered
    assert 0.45 < answered["idle"] < 2.5 and 0.45 < answered["dribbling"] < 2.5, answered
    assert 0.95 < answered["body"] < 3.5, answered


def test_a_bad_read_deadline_stops_the_start_with_one_clear_line(
    project_dir: Path, flux_env: dict[str, str]
) -> None:
    result = run_flux(["server", "--port", str(free_port())], {**flux_env, "FLUX_BODY_TIMEOUT_S": "0"},
                      project_dir)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error FX800: body_timeout_s '0' is not a number of seconds from 0.1 to 3600"
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert not (project_dir / ".flux").exists()  # refused before any Postgres started


def test_what_counts_as_a_request_that_has_arrived() -> None:
    head = b"GET / HTTP/1.1\r\nhost: x\r\n"
    assert not request_complete(head)
    assert request_complete(head + b"\r\n")
    post = b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"
    assert not request_complete(post + b"abc")
    assert request_complete(post + b"abcde")
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert not request_complete(chunked + b"3\r\nabc\r\n")
    assert request_complete(chunked + b"3\r\nabc\r\n0\r\n\r\n")
    # a body longer than the loop buffers is read by the request itself, as soon as the head is in
    big = f"POST / HTTP/1.1\r\ncontent-length: {BUFFERED_BODY_BYTES + 1}\r\n\r\n".encode()
    assert request_complete(big)
    assert request_complete(b"GET /" + b"a" * 70_000)  # no end of head in sight: the parser refuses it


@pytest.mark.parametrize(
    ("sig", "path"),
    [
        (signal.SIGKILL, "/spin"),
        (signal.SIGABRT, "/spin"),
        (signal.SIGKILL, "/flux/api/functions/spin/invoke"),
    ],
)
def test_a_worker_killed_mid_request_leaves_a_lost_record(
    server: tuple[str, subprocess.Popen[str]],
    dsn: str,
    project_dir: Path,
    flux_env: dict[str, str],
    sig: signal.Signals,
    path: str,
) -> None:
    """kill -9 of the worker while its function runs (or SIGABRT, which is how gunicorn ends a worker past its
    timeout), called through its route or the management API's invoke: the client gets no answer (or
    gunicorn's 500), and the master records the request as lost (FX815), which `flux trace ls` shows."""
    base, process = server
    answers: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        admin = {"authorization": f"Bearer {create_admin_key(conn, 'tests').key}"}

    def call() -> None:
        try:
            answers.append(call_json(f"{base}{path}", "POST", {"data": {"n": 1}}, headers=admin))
        except Exception as exc:  # the connection died with the worker, or gunicorn answered in HTML
            answers.append(exc)

    for _ in range(4):
        call_json(f"{base}/hello")  # Deno up in both workers
    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.5)  # the request is in its function, spinning
    with psycopg.connect(dsn, autocommit=True) as conn:
        for worker in _gunicorn_workers(process.pid):
            os.kill(worker, sig)
        caller.join(timeout=30)
        assert answers and isinstance(answers[0], Exception), answers
        deadline = time.monotonic() + 10
        while (row := conn.execute(
            "SELECT id, kind, status, ok, function, error->>'code', method FROM flux.requests"
            " WHERE path = %s",
            (path,),
        ).fetchone()) is None:  # fmt: skip
            assert time.monotonic() < deadline, "the lost request was not recorded"
            time.sleep(0.1)
    request_id, kind, status, ok, function, code, method = row
    assert (kind, status, ok, function, code, method) == ("http", 500, False, "spin", "FX815", "POST")
    listed = subprocess.run(
        [*FLUX, "trace", "ls", "--errors"], cwd=project_dir, env={**flux_env, "DATABASE_URL": dsn},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if str(request_id)[:8] in line]
    assert f"POST {path}"[:30] in line and "500" in line and "FX815" in line, listed.stdout
    assert call_json(f"{base}/hello")[0] == 200  # the master started a new worker


def test_a_request_whose_connection_was_terminated_is_recorded(
    server: tuple[str, Any], dsn: str, local_server: str
) -> None:
    """Postgres ends the request's connection while its function waits (an operator's pg_terminate_backend, a
    restart): the client gets its error, and the request is recorded all the same, on another connection."""
    base, _ = server
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(
        call_json(f"{base}/read-then-wait", "POST", {"url": f"{local_server}/sleep/2"})
    ))  # fmt: skip
    caller.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        terminated = 0
        while not terminated:  # the function has read, and waits on its fetch in the open transaction
            assert time.monotonic() < deadline, "the function never read"
            terminated = len(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usename = 'flux_authenticator' AND state = 'idle in transaction'"
                " AND query LIKE '%notes%'"
            ).fetchall())  # fmt: skip
            time.sleep(0.05)
        caller.join(timeout=30)
        status, headers, body = answers[0]
        assert status >= 500 and body["request_id"] == headers["x-request-id"], answers
        deadline = time.monotonic() + 15
        while (row := conn.execute(
            "SELECT ok, status, error->>'code' FROM flux.requests WHERE id = %s", (headers["x-request-id"],)
        ).fetchone()) is None:  # fmt: skip
            assert time.monotonic() < deadline, f"the request was not recorded: {answers}"
            time.sleep(0.1)
    assert row == (False, status, body["code"])


def _gunicorn_workers(master: int) -> list[int]:
    return [child for child in _children(master) if "-m cli worker" not in _command(child)]


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""
