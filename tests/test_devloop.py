"""`flux dev`: a saved function is deployed again within a second, a broken save leaves the last good version
serving, and each request is printed as one line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.fixtures.processes import FLUX, free_port, wait_for_http

FLUX_TOML = """
[[routes]]
method = "GET"
path = "/greet"
function = "greet"
auth = "none"
"""


def _greet(version: str) -> str:
    return f"export default async () => ({{version: '{version}'}})"


def _get(url: str) -> tuple[dict[str, str], object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(response.headers.items()), json.loads(response.read())


def _served(url: str, version: str, within_s: float) -> str:
    """Poll until `url` answers `version`; the request id of that answer."""
    started = time.monotonic()
    while True:
        headers, body = _get(url)
        if body == {"version": version}:
            return headers["x-request-id"]
        assert time.monotonic() - started < within_s, f"still {body} after {within_s} s"
        time.sleep(0.05)


def test_a_save_is_live_within_a_second_and_each_request_is_one_line(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    (project_dir / "flux.toml").write_text(FLUX_TOML)
    source = project_dir / "functions" / "greet" / "index.ts"
    source.parent.mkdir(parents=True)
    source.write_text(_greet("v1"))
    port = free_port()
    process = subprocess.Popen(
        [*FLUX, "dev", "--port", str(port)], cwd=project_dir, env={**flux_env, "DATABASE_URL": dsn},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/greet"
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", timeout=30, process=process)
        first = _served(url, "v1", within_s=1)
        source.write_text(_greet("v2"))
        _served(url, "v2", within_s=1.0)  # the watcher polls every 0.2 s; here it is live in about 0.25 s
        (project_dir / "flux.toml").write_text(FLUX_TOML.replace('function = "greet"', 'function = "gone"'))
        time.sleep(1)
        assert _get(url)[1] == {"version": "v2"}  # the broken save changed nothing
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert re.search(rf"GET /greet 200 \d+ms fn=greet  req={first}", output), output
    assert "deployed version 2" in output
    assert "not deployed, the last version keeps serving: FX601: flux.toml route 1 (GET /greet)" in output
