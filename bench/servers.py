"""The HTTP scenarios' processes: Flux (`flux server`) and the floor (`bench/floor_server.py`, the same
gunicorn application class) on free ports with the same FLUX_* settings, an OTLP sink standing in for a
collector, and wrk as the load generator (installed from Debian when missing and root)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
# What both servers run with (the defaults of `flux server` on a 2-CPU machine: 2 sync workers, pinned).
SERVER_ENV = {
    "FLUX_WORKERS": "2",
    "FLUX_WORKER_CLASS": "sync",
    "FLUX_THREADS": "1",
    "FLUX_PIN_WORKERS": "auto",
    "FLUX_QUEUE_WORKERS": "0",  # no queue worker processes beside either server
}


class WrkMissing(RuntimeError):
    pass


def ensure_wrk() -> str:
    """wrk's path; installed with apt-get when missing and this is root, else WrkMissing says how."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk (apt-get install -y wrk)", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        installed = subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True)
        if installed.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True)
        found = shutil.which("wrk")
        if found:
            return found
    raise WrkMissing(
        "wrk is not installed: run `apt-get install wrk` as root (Debian), then `make bench` again"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def _env(dsn: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **SERVER_ENV, "DATABASE_URL": dsn, "PYTHONPATH": str(ROOT), **(extra or {})}


@contextmanager
def _process(
    command: list[str], env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def flux_server(dsn: str, project: Path) -> Iterator[str]:
    """`flux server` for `project` (deployed at start); its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "cli", "server", str(project), "--port", str(port)]
    command += ["--dashboard-port", "0"]  # the app's path alone, as the floor's
    with _process(command, _env(dsn), project, project / "flux-server.log") as process:
        wait_ready(f"http://127.0.0.1:{port}/ready", process)
        yield f"http://127.0.0.1:{port}"


@contextmanager
def floor_server(
    dsn: str, project: Path, extra_env: dict[str, str] | None = None, name: str = "floor"
) -> Iterator[str]:
    """The floor app under Flux's gunicorn application class, in `project` (its flux.toml's settings too)."""
    port = free_port()
    command = [sys.executable, "-m", "bench.floor_server", str(port)]
    with _process(command, _env(dsn, extra_env), project, project / f"{name}-server.log") as process:
        wait_ready(f"http://127.0.0.1:{port}/noop", process)
        yield f"http://127.0.0.1:{port}"


@contextmanager
def otlp_sink(folder: Path) -> Iterator[str]:
    """A stand-in OTLP/HTTP collector that reads each export and answers 200; its traces URL."""
    port = free_port()
    command = [sys.executable, "-m", "bench.servers", "sink", str(port)]
    with _process(command, _env(""), folder, folder / "otlp-sink.log") as process:
        wait_ready(f"http://127.0.0.1:{port}/", process)
        yield f"http://127.0.0.1:{port}/v1/traces"


def sink_received(traces_url: str) -> dict[str, int]:
    """How many exports (and bytes) the sink has received."""
    with urllib.request.urlopen(traces_url.removesuffix("v1/traces"), timeout=5) as response:
        return dict(json.loads(response.read()))


class _Sink(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[int]] = [0, 0]  # exports, bytes

    def do_GET(self) -> None:
        answer = json.dumps({"exports": self.received[0], "bytes": self.received[1]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.received[0] += 1
        self.received[1] += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def wrk(
    url: str, script: Path | None = None, duration_s: float = 3, connections: int = 4
) -> tuple[float, float]:
    """p50 latency (ms) and requests per second; every answer must be a 2xx."""
    command = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        url,
    ]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if not (p50 and rate) or non_2xx:
        raise RuntimeError(f"wrk against {url} failed:\n{output}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50[2]]
    return float(p50[1]) * scale, float(rate[1])


def post_script(folder: Path, name: str, body: str, key: str | None) -> Path:
    """A wrk script that POSTs `body` as JSON (with the API key, if any)."""
    lines = ['wrk.method = "POST"', 'wrk.headers["content-type"] = "application/json"']
    if key:
        lines.append(f'wrk.headers["authorization"] = "Bearer {key}"')
    lines.append(f"wrk.body = [[{body}]]")
    path = folder / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__" and sys.argv[1:2] == ["sink"]:
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), _Sink).serve_forever()
