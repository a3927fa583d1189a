"""The real server under generated and hostile input (issue 25, done-when): schemathesis over `/db/*` and
`/flux/api/*` (each operation, then its stateful links) finds no 5xx, and deeply nested or oversized JSON on
every endpoint, with and without credentials, finds no 5xx, kills no worker and leaves it under 256 MB."""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import pytest
import schemathesis
from schemathesis.core.errors import NoLinksFound

from flux.api.admin import create_admin_key
from flux.gateway.auth import new_api_key
from tests.fixtures.processes import call_json, flux_server
from tests.test_bounds_server import MAX_WORKER_BYTES, MB, _memory, _worker

pytestmark = pytest.mark.slow

FLUX_TOML = """
[server]
workers = 1
queue_workers = 0
max_deploy_bytes = 8388608

[[routes]]
method = "POST"
path = "/echo"
function = "echo"
auth = "none"
"""
SCHEMA = """
CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL, payload jsonb NOT NULL DEFAULT '{}');
INSERT INTO notes (body) SELECT 'note ' || n FROM generate_series(1, 50) n;
GRANT SELECT, INSERT ON notes TO flux_anon, flux_user;
GRANT USAGE ON SEQUENCE notes_id_seq TO flux_anon, flux_user;
"""


@pytest.fixture
def served(dsn: str, project_dir: Path, flux_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    (project_dir / "flux.toml").write_text(FLUX_TOML)
    (project_dir / "migrations").mkdir()
    (project_dir / "migrations" / "0001_notes.sql").write_text(SCHEMA)
    (project_dir / "functions" / "echo").mkdir(parents=True)
    (project_dir / "functions" / "echo" / "index.ts").write_text("export default async (req) => req.body")
    made = new_api_key()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO flux.api_keys (prefix, key_hash, role) VALUES (%s, %s, 'user')",
                     (made.prefix, made.key_hash))  # fmt: skip
        admin = create_admin_key(conn, "fuzz").key
    with flux_server(project_dir, {**flux_env, "DATABASE_URL": dsn}) as (base, process):
        yield {"base": base, "worker": _worker(process), "key": made.key, "admin": admin}


def _raw(base: str, method: str, path: str, headers: dict[str, str], body: bytes, declared: int) -> int:
    """One request declaring `declared` body bytes and sending `body` (all of it or its start): the status."""
    url = urllib.parse.urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        head = f"{method} {path} HTTP/1.1\r\nhost: {url.netloc}\r\ncontent-type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"content-length: {declared}\r\nconnection: close\r\n\r\n"
        try:
            sock.sendall(head.encode() + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (and closed) before the whole body went: the status is still there to read
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def _bodies() -> dict[str, tuple[bytes, int]]:
    """Hostile bodies: name -> (bytes sent, bytes declared)."""
    deep = {depth: b"[" * depth + b"]" * depth for depth in (129, 1000, 100_000)}
    objects = b'{"a":' * 5000 + b"1" + b"}" * 5000
    within = b'{"select": "notes", "where": {"payload": {"contains": ' + b"[" * 120 + b"]" * 120 + b"}}}"
    wide = b'{"functions": [' + b"1," * (3 * MB) + b"1]}"
    return {
        **{f"[ {depth} deep": (body, len(body)) for depth, body in deep.items()},
        "{ 5000 deep": (objects, len(objects)),
        "a query 120 deep": (within, len(within)),
        "6 MB of JSON items": (wide, len(wide)),
        "declared 64 MB, 64 kB sent": (b"[" * 65536, 64 * MB),
        "not JSON": (b"\xff\xfe{{{", 5),
    }


def test_hostile_bodies_on_every_endpoint(served: dict[str, Any]) -> None:
    base, worker = served["base"], served["worker"]
    paths = [("POST", "/db/query"), ("POST", "/db/explain"), ("POST", "/echo")]
    for path, operations in call_json(f"{base}/flux/api/openapi.json")[2]["paths"].items():
        filled = path.replace("{version}", "1").replace("{job_id}", "1").replace("{follower}", "1")
        filled = filled.replace("{", "").replace("}", "")
        paths += [(method.upper(), filled) for method in operations if method in ("post", "put", "patch")]
    credentials = [{}, {"authorization": f"Bearer {served['key']}"},
                   {"authorization": f"Bearer {served['admin']}"}]  # fmt: skip
    failures = []
    for method, path in paths:
        for headers in credentials:
            for name, (body, declared) in _bodies().items():
                status = _raw(base, method, path, headers, body, declared)
                if not 200 <= status < 500:
                    failures.append(f"{method} {path} {name} {list(headers)}: {status}")
    assert not failures, failures[:10]
    assert _worker_alive(worker)
    assert _memory(worker)["VmRSS"] < MAX_WORKER_BYTES, _memory(worker)
    assert _memory(worker)["VmHWM"] < 2 * MAX_WORKER_BYTES, _memory(worker)


def _worker_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_schemathesis_finds_no_server_error(served: dict[str, Any]) -> None:
    base, worker = served["base"], served["worker"]
    failures: list[str] = []
    for document, headers in (
        ("/db/openapi.json", {"Authorization": f"Bearer {served['key']}"}),
        ("/flux/api/openapi.json", {"Authorization": f"Bearer {served['admin']}"}),
    ):
        schema = schemathesis.openapi.from_url(base + document)
        for operation in schema.get_all_operations():
            failures += _stateless(operation.ok(), headers)
        failures += _stateful(schema, headers, documented_links=document.startswith("/flux/api"))
    assert not failures, "\n".join(failures[:5])
    assert _worker_alive(worker) and _memory(worker)["VmRSS"] < MAX_WORKER_BYTES


def _stateless(operation: Any, headers: dict[str, str]) -> list[str]:
    """Generated calls of one operation: any 5xx, described."""
    found: list[str] = []

    @hypothesis.settings(max_examples=8, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
    @hypothesis.given(case=operation.as_strategy())
    def check(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        if response.status_code >= 500:
            found.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

    check()
    return found


def _stateful(schema: Any, headers: dict[str, str], documented_links: bool) -> list[str]:
    """schemathesis's state machine over the links it infers (a tenant made, then read; a key made, then
    revoked ...), checking only that nothing answers 5xx."""
    found: list[str] = []
    machine = schema.as_state_machine()

    class Machine(machine):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers, "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            steps.append(f"{case.method} {case.path}")
            if response.status_code >= 500:
                found.append(f"stateful {case.method} {case.formatted_path}: {response.status_code}")

    settings = hypothesis.settings(
        max_examples=30, stateful_step_count=6, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )  # fmt: skip
    steps: list[str] = []
    try:
        Machine.run(settings=settings)
    except NoLinksFound:  # /db/* has none: a query leads to no other call
        assert not documented_links, "the management API's links were not followed"
    else:
        linked = {
            "DELETE /flux/api/keys/{key}",
            "DELETE /flux/api/secrets/{name}",
            "GET /flux/api/jobs/{job_id}",
        }
        assert linked & set(steps), sorted(set(steps))  # it followed links, not only first calls
    return found
