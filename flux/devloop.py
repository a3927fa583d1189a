"""`flux dev`'s loop: a thread of the gunicorn master watches the project (its functions, migrations and
flux.toml) and deploys it again within a second of a save; and each request is printed as one line.

A deploy that fails (a compile error, a broken migration) is printed and changes nothing: the last good
version keeps serving until the next save.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from flux.api.deploy import deploy
from flux.config import load_settings
from flux.errors import FluxError
from flux.runtime.build import NOT_SOURCES

log = logging.getLogger("flux.dev")
POLL_S = 0.2
ACCESS_FORMAT = "%(m)s %(U)s %(s)s %(M)sms fn=%(fn)s  req=%(rid)s"
_IGNORED = NOT_SOURCES | {".flux"}  # what a build writes must not look like a save


class ProjectWatcher:
    """Deploys `project_dir` again whenever one of its files changes."""

    def __init__(self, dsn: str, project_dir: Path, poll_s: float = POLL_S) -> None:
        self.dsn = dsn
        self.project_dir = project_dir
        self.poll_s = poll_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flux-dev-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
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
    """Gunicorn's logger, with each request as `POST /orders 201 12ms fn=create_order  req=<id>`."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        atoms["fn"] = environ.get("flux.function", "-")
        atoms["rid"] = environ.get("flux.request_id", "-")
        return atoms
