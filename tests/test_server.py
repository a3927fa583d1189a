"""`flux dev` / `flux server` as a user runs them: a real process, real Postgres, real signals."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from flux.config import Settings
from flux.server import FluxApplication
from tests.fixtures.processes import (
    FLUX,
    copy_project,
    free_port,
    processes_left,
    run_flux,
    wait_for_http,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*FLUX, *args], env=env, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a command typed in a terminal
    )  # fmt: skip


def _stop(process: subprocess.Popen[str], sig: signal.Signals, *, group: bool) -> str:
    if group:
        os.killpg(process.pid, sig)  # what Ctrl-C does: every process in the foreground group gets it
    else:
        process.send_signal(sig)
    output, _ = process.communicate(timeout=30)
    return output


def _read_lines(process: subprocess.Popen[str]) -> tuple[list[tuple[float, str]], threading.Thread]:
    """Each line `process` prints with when it came (time.monotonic), collected by a thread."""
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: lines.extend((time.monotonic(), line) for line in process.stdout or []), daemon=True
    )
    reader.start()
    return lines, reader


def _finish(process: subprocess.Popen[str], reader: threading.Thread) -> None:
    process.wait(timeout=30)
    reader.join(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def _came(lines: list[tuple[float, str]], text: str) -> float | None:
    return next((at for at, line in list(lines) if text in line), None)


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_dev_serves_health_quickly_and_leaves_no_postgres_behind(
    project_dir: Path, flux_env: dict[str, str], sig: signal.Signals, group: bool
) -> None:
    """A cold `flux dev` (a new embedded cluster) serves /health within 5 s of saying it serves (by then
    Postgres is up, migrated and the project deployed: what is left is gunicorn and its workers starting), and
    within 60 s of its start: the new cluster's initdb and first start, bound by the disk, are most of a cold
    start, which took over 15 s on a loaded machine. Stopped, it exits cleanly and no Postgres is left."""
    port = free_port()
    started = time.monotonic()
    process = _start(["dev", "--port", str(port)], flux_env, project_dir)
    lines, reader = _read_lines(process)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60, process=process)
        answered = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            assert json.load(response) == {"status": "ready"}
    finally:
        if group:
            os.killpg(process.pid, sig)  # what Ctrl-C does: every process in the foreground group gets it
        else:
            process.send_signal(sig)
        _finish(process, reader)
    output = "".join(line for _, line in lines)
    serving = _came(lines, "flux: serving on")
    assert serving is not None and answered - serving < 5, output
    assert answered - started < 60
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert processes_left(str(project_dir / ".flux" / "pg")) == []


def test_ctrl_c_right_after_the_start_stops_every_process_without_a_traceback(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    """Ctrl-C reaches every process of the terminal's group, the queue process the master started too, which
    may still be importing: it must not end in a KeyboardInterrupt traceback (the master stops it itself)."""
    process = _start(["dev", "--port", str(free_port())], {**flux_env, "DATABASE_URL": dsn}, project_dir)
    lines, reader = _read_lines(process)
    deadline = time.monotonic() + 60
    while _came(lines, "Booting worker") is None:  # gunicorn runs; the queue process has just been started
        assert process.poll() is None and time.monotonic() < deadline, "".join(line for _, line in lines)
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _finish(process, reader)
    output = "".join(line for _, line in lines)
    assert process.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


def test_a_second_start_reuses_the_data_directory(project_dir: Path, flux_env: dict[str, str]) -> None:
    outputs = []
    for _ in range(2):
        port = free_port()
        process = _start(["server", "--port", str(port)], flux_env, project_dir)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/ready", timeout=30, process=process)
        finally:
            outputs.append(_stop(process, signal.SIGTERM, group=False))
        assert process.returncode == 0, outputs[-1]
    assert "flux: applied 0001_core.sql" in outputs[0]
    assert "flux: starting the embedded Postgres" in outputs[1]
    assert "applied" not in outputs[1]  # the second start found the cluster initialised and migrated


def test_a_taken_port_is_one_clear_line_and_starts_no_postgres(
    project_dir: Path, flux_env: dict[str, str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_flux(["dev", "--port", str(port)], flux_env, project_dir)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error FX803: port {port} on 127.0.0.1 is already in use")
    assert "Traceback" not in result.stderr
    assert not (project_dir / ".flux").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://flux:secret@127.0.0.1:1/flux",
            "error FX801: cannot connect to Postgres at 127.0.0.1:1/flux",
        ),
        ("not a url at all", "error FX801: DATABASE_URL is not a valid connection string"),
        (
            "postgresql://u:pa%zzsecret@127.0.0.1/db",
            "error FX801: DATABASE_URL is not a valid connection string",
        ),
    ],
)
def test_a_bad_database_url_is_one_clear_line(
    project_dir: Path, flux_env: dict[str, str], url: str, message: str
) -> None:
    result = run_flux(["server", "--port", str(free_port())], {**flux_env, "DATABASE_URL": url}, project_dir)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_project_migration_stops_the_start_and_the_embedded_postgres(
    project_dir: Path, flux_env: dict[str, str]
) -> None:
    (project_dir / "migrations").mkdir()
    (project_dir / "migrations" / "0001_broken.sql").write_text(
        "CREATE TABLE t (id int);\nSELECT * FROM nope;\n"
    )
    result = run_flux(["dev", "--port", str(free_port())], flux_env, project_dir)
    assert result.returncode == 1
    assert "error FX810: migrations/0001_broken.sql failed at line 2" in result.stderr
    assert "Traceback" not in result.stderr
    assert processes_left(str(project_dir / ".flux" / "pg")) == []


def test_server_uses_database_url_and_reports_ready(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    port = free_port()
    process = _start(["server", "--port", str(port)], {**flux_env, "DATABASE_URL": dsn}, project_dir)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", timeout=20, process=process)
    finally:
        _stop(process, signal.SIGTERM, group=False)
    assert not (project_dir / ".flux").exists()


def test_the_status_command_lists_every_migration(
    dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    result = run_flux(["db", "status"], {**flux_env, "DATABASE_URL": dsn}, project_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["applied", "flux", "0001_core"]
    assert all(line.startswith("applied") for line in lines)


def test_migrate_twice_reports_the_second_as_a_no_op(
    empty_dsn: str, project_dir: Path, flux_env: dict[str, str]
) -> None:
    env = {**flux_env, "DATABASE_URL": empty_dsn}
    first = run_flux(["db", "migrate"], env, project_dir)
    second = run_flux(["db", "migrate"], env, project_dir)
    assert "applied  flux     0001_core.sql" in first.stdout
    assert second.stdout.strip() == "database is up to date"
    started = time.monotonic()
    assert run_flux(["--help"], env, project_dir).returncode == 0
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("nosuch.invalid", "error FX800: cannot bind to host 'nosuch.invalid'"),
        ("192.0.2.1", "error FX800: cannot listen"),
    ],
)
def test_a_host_this_machine_cannot_bind_is_one_clear_line(
    project_dir: Path, flux_env: dict[str, str], host: str, message: str
) -> None:
    result = run_flux(["server", "--host", host, "--port", str(free_port())], flux_env, project_dir)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert not (project_dir / ".flux").exists()


def test_serving_on_ipv6_loopback(project_dir: Path, flux_env: dict[str, str], dsn: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    process = _start(["server", "--bind", f"[::1]:{port}"], {**flux_env, "DATABASE_URL": dsn}, project_dir)
    try:
        wait_for_http(f"http://[::1]:{port}/health", timeout=20, process=process)
    finally:
        _stop(process, signal.SIGTERM, group=False)
    assert process.returncode == 0


def test_a_worker_freezes_what_it_loaded_to_serve(
    monkeypatch: pytest.MonkeyPatch, dsn: str, tmp_path: Path
) -> None:
    import flux.app

    loaded = object()
    monkeypatch.setattr(flux.app, "create_wsgi", lambda settings, dsn, inflight=None: loaded)
    gc.unfreeze()
    try:
        app = FluxApplication(Settings(project_dir=tmp_path), dsn, reload=False).load()
        assert app is loaded
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the embedded Postgres as another user")
def test_a_project_in_a_folder_only_root_may_enter_serves_migrates_and_is_cleaned(
    project_dir: Path, flux_env: dict[str, str]
) -> None:
    """A clone under /root: the postgres user cannot reach its `.flux`, so the cluster lives under
    /var/lib/flux (the default pg_fallback_dir), `.flux/pg` links to it, and `make clean` removes it."""
    private = project_dir / "root"
    project = copy_project(REPO / "examples" / "quickstart", private / "quickstart")
    private.chmod(0o700)
    env = {k: v for k, v in flux_env.items() if k != "FLUX_PG_FALLBACK_DIR"}
    home = Path("/var/lib/flux") / f"quickstart-{hashlib.sha256(str(project).encode()).hexdigest()[:12]}"
    port = free_port()
    process = _start(["server", "--port", str(port), str(project)], env, project_dir)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", timeout=30, process=process)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/notes", data=b'{"text": "hello"}',
            headers={"content-type": "application/json"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            status = response.status
        # The README's psql line still works: the socket is reached through the link.
        socket_dir = project / ".flux" / "pg"
        with psycopg.connect(f"host={socket_dir} user=postgres dbname=flux") as conn:
            notes = conn.execute("SELECT body FROM notes").fetchall()
    finally:
        output = _stop(process, signal.SIGTERM, group=False)
    assert status == 201 and notes == [("hello",)], output
    assert process.returncode == 0, output
    assert (project / ".flux" / "pg").readlink() == home / "pg"
    assert f"the postgres user cannot reach {project}/.flux, so the cluster is in {home}/pg" in output
    assert "flux: applied migrations/0001_notes.sql" in output
    assert processes_left(str(home)) == []

    migrated = run_flux(["db", "migrate", "--project", str(project)], env, project_dir)
    assert migrated.stdout == "database is up to date\n", migrated  # the same cluster, reused

    cleaned = subprocess.run(
        ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "clean", f"PROJECT={project}"],
        cwd=project_dir, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cleaned.returncode == 0, cleaned
    assert not home.exists() and not (project / ".flux").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the embedded Postgres as another user")
def test_with_the_fallback_off_a_closed_folder_is_named_with_the_chmod_that_opens_it(
    project_dir: Path, flux_env: dict[str, str]
) -> None:
    private = project_dir / "root"
    (private / "app").mkdir(parents=True)
    private.chmod(0o700)
    env = {**flux_env, "FLUX_PG_FALLBACK_DIR": "off"}
    result = run_flux(["server", "--port", str(free_port()), str(private / "app")], env, project_dir)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == [
        f"error FX804: the postgres user cannot reach {private}/app/.flux/pg: {private} (mode 700, owner"
        " root) is closed to others",
        f"  hint: run `chmod o+x {private}`, or set DATABASE_URL",
    ], result.stderr
