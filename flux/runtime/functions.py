"""The functions a worker runs: those of the active deployment, read from Postgres (each sha256's code once
per process) and read again when `flux_deployments` is notified (a deploy or a rollback is live within a
second, in every worker)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flux import db
from flux.errors import InvalidFunctionCode
from flux.listen import NotifiedCache
from flux.runtime.invoke import Executor, Function
from flux.runtime.limits import FunctionLimits

NOTIFY_CHANNEL = "flux_deployments"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    runtime: str
    sha256: str
    limits: FunctionLimits


@dataclass(frozen=True)
class ActiveDeployment:
    id: int | None  # None before the first deploy
    functions: Mapping[str, _Entry]


def load_active(conn: Any) -> ActiveDeployment:
    rows = db.execute_rows(
        conn,
        "SELECT d.id, f.name, f.runtime, f.sha256, f.limits FROM flux.deployments d"
        " JOIN flux.deployment_functions f ON f.deployment_id = d.id WHERE d.active",
        [],
    )
    if not rows:
        row = db.execute_raw(conn, "SELECT id FROM flux.deployments WHERE active", [])
        return ActiveDeployment(row[0] if row else None, {})
    entries = {name: _Entry(runtime, sha, FunctionLimits(**limits)) for _, name, runtime, sha, limits in rows}
    return ActiveDeployment(rows[0][0], entries)


class DeployedFunctions:
    """`get(conn, name)`: the active deployment's function `name`, ready to run."""

    def __init__(self) -> None:
        self.active: NotifiedCache[ActiveDeployment] = NotifiedCache(NOTIFY_CHANNEL, load_active)
        self._code: dict[str, bytes] = {}  # sha256 -> code, kept across deployments (a rollback is instant)
        self._functions: dict[tuple[int | None, str], Function] = {}
        self._lock = threading.Lock()

    def get(self, conn: Any, name: str) -> Function:
        active = self.active.get(conn)
        function = self._functions.get((active.id, name))
        if function is not None:
            return function
        entry = active.functions.get(name)
        if entry is None:
            where = f"deployment {active.id}" if active.id is not None else "any deployment (none is active)"
            raise InvalidFunctionCode(
                f"there is no function {name!r} in {where}", hint="deploy it: flux deploy"
            )
        code = self._code.get(entry.sha256)
        if code is None:
            row = db.execute_raw(conn, "SELECT code FROM flux.artifacts WHERE sha256 = $1", [entry.sha256])
            assert row is not None, entry.sha256  # deployment_functions references it
            code = self._code[entry.sha256] = bytes(row[0])
        function = Function(name, entry.runtime, code, entry.sha256, entry.limits, active.id)  # type: ignore[arg-type]
        with self._lock:
            self._functions = {k: v for k, v in self._functions.items() if k[0] == active.id}
            self._functions[(active.id, name)] = function
        return function

    def prepare_active(self, pool: Any, executor: Executor) -> None:
        """Have `executor` get every function of the active deployment ready, on a thread of its own: at a
        worker's start and after each deploy (call it on `flux_deployments`), not on a request's path."""

        def prepare() -> None:
            try:
                with pool.connection() as conn:
                    for name in self.active.get(conn).functions:
                        executor.prepare(self.get(conn, name))
            except Exception:  # the first request loads what this could not
                log.exception("preparing the active deployment's functions failed")

        threading.Thread(target=prepare, name="flux-prepare", daemon=True).start()
