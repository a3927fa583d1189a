"""`flux server --otlp-endpoint URL`: every finished trace reaches an OTLP/HTTP collector (here a small HTTP
server that keeps what it is sent), as protobuf; a collector that refuses costs a batch, not the server."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flux.config import load_settings
from flux.errors import InvalidConfig
from tests.fixtures.processes import FLUX, free_port, wait_for_http

FLUX_TOML = """
[[routes]]
method = "GET"
path = "/hello/{name}"
function = "hello"
auth = "none"
"""


class Collector(http.server.ThreadingHTTPServer):
    """Answers POST /v1/traces with `status`, keeping each body it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[tuple[str, str, bytes]] = []  # path, content type, body
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.bodies.append((self.path, self.headers["content-type"], body))
                self.send_response(collector.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def request_ids(self) -> set[str]:
        """The request ids of every root span received."""
        ids = set()
        for _, _, body in self.bodies:
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        ids |= {a.value.string_value for a in span.attributes if a.key == "flux.request_id"}
        return ids


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.shutdown()
    server.server_close()


def _serve(dsn: str, project: Path, env: dict[str, str], endpoint: str) -> tuple[str, subprocess.Popen[str]]:
    (project / "flux.toml").write_text(FLUX_TOML)
    (project / "functions" / "hello").mkdir(parents=True)
    (project / "functions" / "hello" / "index.ts").write_text(
        "export default async (req) => ({hi: req.params.name})"
    )
    port = free_port()
    process = subprocess.Popen(
        [*FLUX, "server", "--port", str(port), "--workers", "1", "--otlp-endpoint", endpoint], cwd=project,
        env={**env, "DATABASE_URL": dsn}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    wait_for_http(f"http://127.0.0.1:{port}/ready", timeout=30, process=process)
    return f"http://127.0.0.1:{port}", process


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0]


def _hello(base: str, name: str) -> str:
    with urllib.request.urlopen(f"{base}/hello/{name}", timeout=30) as response:
        return str(response.headers["x-request-id"])


def _until(condition: Any, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(condition())


def test_every_finished_trace_reaches_the_collector(
    dsn: str, project_dir: Path, flux_env: dict[str, str], collector: Collector
) -> None:
    base, process = _serve(dsn, project_dir, flux_env, collector.url)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:  # the forwarder follows new requests from here
            following = "SELECT count(*) FROM flux.request_followers WHERE expires_at > now()"
            assert _until(lambda: conn.execute(following).fetchone() == (1,))
        ids = {_hello(base, name) for name in ("ada", "grace")}
        assert _until(lambda: ids <= collector.request_ids()), (ids, collector.request_ids())
        collector.status = 503  # a collector that refuses: the server goes on
        refused = _hello(base, "linus")
        assert _until(lambda: len(collector.bodies) >= 2 and refused in collector.request_ids())
        collector.status = 200
        assert _hello(base, "ken")
    finally:
        output = _stop(process)
    assert {path for path, _, _ in collector.bodies} == {"/v1/traces"}
    assert {kind for _, kind, _ in collector.bodies} == {"application/x-protobuf"}
    assert "refused 1 traces: HTTP 503" in output and "Traceback" not in output, output


def test_an_endpoint_that_is_not_a_url_is_refused(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={"FLUX_OTLP_ENDPOINT": "http://collector:4318/"}).otlp_endpoint == (
        "http://collector:4318/v1/traces"
    )
    with pytest.raises(InvalidConfig, match="otlp_endpoint"):
        load_settings(tmp_path, env={"FLUX_OTLP_ENDPOINT": "collector:4318"})
