"""The functions of a project folder (`functions/<name>/`), built on first use and again when a source file
changes (looked for at most once a second per function); what the gateway runs until deployments (which store
built code in Postgres) take over."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from flux.errors import InvalidFunctionCode
from flux.runtime.build import build_function
from flux.runtime.invoke import Function

RECHECK_S = 1.0


class ProjectFunctions:
    def __init__(self, project_dir: Path) -> None:
        self.root = project_dir / "functions"
        self.build_dir = project_dir / ".flux" / "build"
        self._built: dict[str, tuple[float, Function]] = {}
        self._checked: dict[str, float] = {}  # when each function's sources were last looked at
        self._lock = threading.Lock()

    def get(self, name: str) -> Function:
        built = self._built.get(name)
        if built is not None and time.monotonic() - self._checked.get(name, 0.0) < RECHECK_S:
            return built[1]
        folder = self.root / name
        if not name.replace("_", "").replace("-", "").isalnum() or not folder.is_dir():
            raise InvalidFunctionCode(f"no function {name!r} in {self.root}", hint="add functions/<name>/")
        stamp = max((path.stat().st_mtime for path in folder.rglob("*") if _is_source(path)), default=0.0)
        self._checked[name] = time.monotonic()
        if built is not None and built[0] == stamp:
            return built[1]
        with self._lock:
            built = self._built.get(name)
            if built is None or built[0] != stamp:
                built = self._built[name] = (stamp, build_function(folder, self.build_dir))
            return built[1]


def _is_source(path: Path) -> bool:
    return path.is_file() and "node_modules" not in path.parts and "__pycache__" not in path.parts
