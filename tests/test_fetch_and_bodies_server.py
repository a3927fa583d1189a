"""Issue 25 against the real server (`flux server` under gunicorn): a chunked request body reaches the
function (finding 11) within the route's size limit, and a fetch of a target that drips its body ends at the
call's `timeout_ms` with FX311 and the request's record (finding 3), not with gunicorn killing the worker."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.processes import call_json, flux_server

FLUX_TOML = """
[[routes]]
method = "POST"
path = "/echo"
function = "echo"
auth = "none"
max_body_bytes = 200

[[routes]]
method = "POST"
path = "/relay"
function = "relay"
auth = "none"
"""
FUNCTIONS = {
    "echo": "export default async (req) => ({got: req.body})",
    "relay": "export default async (req, ctx) => (await ctx.fetch(req.body.url, {timeout_ms: 1000})).body",
}


@pytest.fixture
def server(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    (project_dir / "flux.toml").write_text(FLUX_TOML)
    for name, source in FUNCTIONS.items():
        (project_dir / "functions" / name).mkdir(parents=True)
        (project_dir / "functions" / name / "index.ts").write_text(source)
    env = {**flux_env, "DATABASE_URL": dsn, "FLUX_FETCH_ALLOW": "127.0.0.1"}
    with flux_server(project_dir, env) as served:
        yield served


def send_chunked(base: str, path: str, chunks: list[bytes]) -> tuple[int, dict[str, str], Any]:
    """POST `chunks` as a `transfer-encoding: chunked` body over a raw socket: its status, headers, JSON."""
    url = urllib.parse.urlsplit(base)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {url.netloc}\r\ncontent-type: application/json\r\n"
        "transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    ).encode()
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head)
        for piece in (body[i : i + 7] for i in range(0, len(body), 7)):  # in pieces, as a client streams it
            sock.sendall(piece)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    status_and_headers, _, payload = answer.partition(b"\r\n\r\n")
    lines = status_and_headers.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(payload)


def _written(dsn: str, request_id: str) -> tuple[Any, ...]:
    """The request's row, once its record is written (a read's record is written off the request path)."""
    with psycopg.connect(dsn) as conn:
        for _ in range(100):
            row = conn.execute(
                "SELECT status, ok, error->>'code', input->'body' FROM flux.requests WHERE id = %s",
                [request_id],
            ).fetchone()
            if row is not None:
                return tuple(row)
            time.sleep(0.1)
    raise AssertionError(f"request {request_id} was never recorded")


def test_a_chunked_body_reaches_the_function_within_the_size_limit(server: tuple[str, Any], dsn: str) -> None:
    base, _ = server
    sent = {"text": "in three chunks", "n": [1, 2, 3]}
    text = json.dumps(sent).encode()
    status, headers, answer = send_chunked(base, "/echo", [text[:5], text[5:20], text[20:]])
    assert (status, answer) == (200, {"got": sent})
    assert _written(dsn, headers["x-request-id"]) == (200, True, None, sent)

    too_big = json.dumps({"text": "x" * 300}).encode()
    status, headers, answer = send_chunked(base, "/echo", [too_big[:150], too_big[150:]])
    assert (status, answer["code"]) == (413, "FX003"), answer
    assert _written(dsn, headers["x-request-id"])[:3] == (413, False, "FX003")

    status, _, answer = send_chunked(base, "/echo", [])  # no chunks: no body, as before
    assert (status, answer) == (200, {"got": None})


def test_a_dripping_fetch_target_ends_the_request_at_the_calls_timeout(
    server: tuple[str, Any], dsn: str, dripping_server: str
) -> None:
    base, _ = server
    started = time.monotonic()
    status, headers, answer = call_json(f"{base}/relay", "POST", {"url": f"{dripping_server}/body"})
    took = time.monotonic() - started
    assert (status, answer["code"]) == (502, "FX311"), answer  # JSON with its FX code, not gunicorn's HTML
    assert took < 3, f"the request took {took:.1f} s for a fetch timeout of 1 s"
    assert _written(dsn, headers["x-request-id"])[:3] == (502, False, "FX311")
