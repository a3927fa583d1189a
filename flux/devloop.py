"""`flux dev`'s loop: a thread of the gunicorn master watches the project (its functions, migrations and
flux.toml) and deploys it again within a second of a save; and each request is printed as one line.

A deploy that fails (a compile error, a broken migration) is printed and changes nothing: the last good
version keeps serving until the next save.

After a save that changed a function, another thread of the master replays the latest requests of the
changed functions on the new version (`recorded` mode, the replays not recorded) and prints one line, e.g.
`replayed 20: 18 same, 2 diverged (POST /notes: body.id 3 → "3"; …)`. It never delays the redeploy nor a
request: the deploy is done (and serving) before it starts, and it has its own connection and Deno worker.
Those live in the master, from which gunicorn forks a worker again whenever one dies: a forked worker lets go
of them at once (`let_go_in_fork`, gunicorn's post_fork), so it holds no pipe to that Deno and no socket of
that connection.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from flux import db
from flux.api.deploy import deploy
from flux.config import DEFAULT_DEV_REPLAY_LAST, load_settings
from flux.errors import FluxError
from flux.replay import Replay, deployed_code
from flux.replay.recent import Window, changed_functions, functions_of, recent_requests, replay_recent
from flux.runtime.build import NOT_SOURCES

log = logging.getLogger("flux.dev")
POLL_S = 0.2
ACCESS_FORMAT = "%(m)s %(U)s %(s)s %(M)sms fn=%(fn)s  req=%(rid)s"
_IGNORED = NOT_SOURCES | {".flux"}  # what a build writes must not look like a save
_RUNNING: weakref.WeakSet[SaveReplays] = weakref.WeakSet()  # this process's, for `let_go_in_fork`


class ProjectWatcher:
    """Deploys `project_dir` again whenever one of its files changes."""

    def __init__(
        self, dsn: str, project_dir: Path, poll_s: float = POLL_S, replay_last: int = DEFAULT_DEV_REPLAY_LAST
    ) -> None:
        self.dsn = dsn
        self.project_dir = project_dir
        self.poll_s = poll_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flux-dev-watch", daemon=True)
        self.replays = SaveReplays(dsn, project_dir, replay_last) if replay_last else None

    def start(self) -> None:
        self._thread.start()
        if self.replays is not None:
            self.replays.start()

    def stop(self) -> None:
        self._stopped.set()
        if self.replays is not None:
            self.replays.stop()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        seen = files_signature(self.project_dir)
        while not self._stopped.wait(self.poll_s):
            now = files_signature(self.project_dir)
            if now != seen:
                seen = now
                self._deploy()

    def _deploy(self) -> None:
        try:
            deployment = deploy(self.dsn, load_settings(self.project_dir))
        except FluxError as exc:
            log.error("not deployed, the last version keeps serving: %s", exc)
            return
        except Exception:  # a bug must not end the loop: the next save tries again
            log.exception("not deployed")
            return
        for migration in deployment.migrations:
            log.info("applied %s", migration.label)
        if deployment.created:
            log.info("deployed version %d", deployment.id)
            if self.replays is not None:
                self.replays.after_deploy(deployment.id)


_BEFORE = """
SELECT id FROM flux.deployments WHERE id < %s AND activated_at IS NOT NULL ORDER BY activated_at DESC LIMIT 1
"""


class SaveReplays:
    """After each redeploy, the latest `last` requests of the functions it changed, replayed on it in
    `recorded` mode (not recorded: a dev loop's replays would crowd `flux trace ls`) and summed up in one log
    line. One thread of the master, with its own connection and Deno worker, started by the first save and
    kept warm; a save made while it replays is taken up next (only the newest one)."""

    def __init__(self, dsn: str, project_dir: Path, last: int) -> None:
        self.dsn = dsn
        self.project_dir = project_dir
        self.last = last
        self._wanted: int | None = None  # the newest version to replay on
        self._woken = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flux-dev-replay", daemon=True)
        self._conn: Any = None
        self._runtime: Any = None

    def start(self) -> None:
        _RUNNING.add(self)
        self._thread.start()

    def descriptors(self) -> list[int]:
        """The file descriptors of the replays' connection and Deno worker (none before the first save)."""
        found = self._runtime.descriptors() if self._runtime is not None else []
        conn = self._conn
        if conn is not None:
            try:
                found.append(conn.fileno())
            except Exception:  # closed
                pass
        return found

    def after_deploy(self, version: int) -> None:
        with self._woken:
            self._wanted = version
            self._woken.notify()

    def stop(self) -> None:
        self._stopped.set()
        with self._woken:
            self._woken.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from flux.runtime import Runtime, project_cache

        try:
            while True:
                with self._woken:
                    while self._wanted is None and not self._stopped.is_set():
                        self._woken.wait()
                    if self._stopped.is_set():
                        return
                    version, self._wanted = self._wanted, None
                assert version is not None
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = db.connect(self.dsn, autocommit=True)
                    if self._runtime is None:  # Deno dies with the thread that started it: this one
                        self._runtime = Runtime(project_cache(self.project_dir), deno_workers=1)
                    line = self._replay(self._conn, self._runtime, version)
                except Exception as exc:  # a replay that cannot run must not end the loop
                    line = None if self._stopped.is_set() else f"could not replay recent requests: {exc}"
                if line is not None and not self._stopped.is_set():
                    log.info("%s", line)
        finally:
            runtime, conn, self._runtime, self._conn = self._runtime, self._conn, None, None
            if runtime is not None:
                runtime.close()
            if conn is not None:
                conn.close()

    def _replay(self, conn: Any, runtime: Any, version: int) -> str | None:
        """The line for `version`: its changed functions' latest requests replayed; None when nothing
        changed, or no request of a changed function was recorded."""
        from flux.data import load_catalog
        from flux.gateway.handler import WithBuiltins
        from flux.runtime.fetch import FetchPolicy
        from flux.runtime.secrets import SealedSecrets, load_key

        before = conn.execute(_BEFORE, (version,)).fetchone()
        if before is None:
            return None
        functions = changed_functions(conn, functions_of(conn, version), against=before[0])
        rows = recent_requests(conn, functions, Window(self.last))
        if not rows:
            return None
        settings = load_settings(self.project_dir)
        how = Replay(
            WithBuiltins(runtime), deployed_code(conn, version), load_catalog(conn), record=False,
            secrets=SealedSecrets(conn, lambda: load_key(self.project_dir)),
            fetch_policy=FetchPolicy(allow=settings.fetch_allow),
        )  # fmt: skip
        summary = replay_recent(conn, functions, rows, how, stop=self._stopped)
        return None if self._stopped.is_set() else summary.line()


def let_go_in_fork(*_: Any) -> None:
    """In a process just forked from the master (gunicorn's post_fork): every file descriptor of the dev
    replays (the pipes to their Deno worker, their connection's socket) is made to point at /dev/null. Not
    closed: the objects holding them are still in this copy of the master's memory, and a number freed here
    would be reused, then closed (or written to, by libpq saying goodbye) when they are finalized. The
    descriptors are close-on-exec already, so no program this worker runs gets them either."""
    descriptors = {fd for replays in list(_RUNNING) for fd in replays.descriptors()}
    if not descriptors:
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in descriptors:
            try:
                os.dup2(null, fd, inheritable=False)
            except OSError:
                pass
    finally:
        os.close(null)


def files_signature(project_dir: Path) -> frozenset[tuple[str, int, int]]:
    """Each watched file's path, size and modification time."""
    found = set()
    for root in (project_dir / "functions", project_dir / "migrations"):
        if root.is_dir():
            for path in root.rglob("*"):
                if path.is_file() and not _IGNORED & set(path.relative_to(project_dir).parts):
                    stat = path.stat()
                    found.add((str(path), stat.st_size, stat.st_mtime_ns))
    toml = project_dir / "flux.toml"
    if toml.exists():
        stat = toml.stat()
        found.add((str(toml), stat.st_size, stat.st_mtime_ns))
    return frozenset(found)


class DevAccessLog(Logger):  # type: ignore[misc]
    """Gunicorn's logger, with each request as `POST /orders 201 12ms fn=create_order  req=<id>`; Flux's own
    pages and API (`/flux/...`: an open dashboard asks for new requests every second) are not the project's
    requests, and are not printed."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not str(environ.get("PATH_INFO", "")).startswith("/flux/"):
            super().access(resp, req, environ, request_time)

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        atoms["fn"] = environ.get("flux.function", "-")
        atoms["rid"] = environ.get("flux.request_id", "-")
        return atoms
