"""`flux init`: a small working project to start from (the files beside this module, copied as they are)."""

from __future__ import annotations

import shutil
from pathlib import Path

from flux.errors import InvalidProject

TEMPLATE = Path(__file__).resolve().parent / "project"


def init_project(folder: Path) -> list[Path]:
    """Write the template project into `folder` (made if missing); the files written. A folder that is a
    Flux project already, or holds any of the template's files, is left alone."""
    files = sorted(path.relative_to(TEMPLATE) for path in TEMPLATE.rglob("*") if path.is_file())
    clashes = [str(name) for name in files if (folder / _target(name)).exists()]
    if (folder / "flux.toml").exists() or clashes:
        raise InvalidProject(
            f"{folder} already has {clashes[0] if clashes else 'flux.toml'}",
            hint="run flux init in a new or empty folder",
        )
    written = []
    for name in files:
        target = folder / _target(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TEMPLATE / name, target)
        written.append(target)
    toml = folder / "flux.toml"
    toml.write_text(toml.read_text().replace("{name}", folder.resolve().name))
    return written


def _target(name: Path) -> Path:
    """Where a template file goes: `gitignore` becomes `.gitignore` (a dotfile might not ship in the
    wheel)."""
    return name.with_name(".gitignore") if name.name == "gitignore" else name
