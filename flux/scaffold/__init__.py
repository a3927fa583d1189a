"""`flux init`: a small working project to start from (the files beside this module, copied as they are)."""

from __future__ import annotations

import shutil
from pathlib import Path

from flux.errors import InvalidProject

TEMPLATE = Path(__file__).resolve().parent / "project"
LANGUAGES = Path(__file__).resolve().parent / "languages"  # add_note in another language than TypeScript
LANGUAGE_NAMES = ("typescript", "go", "ruby")


def init_project(folder: Path, language: str = "typescript") -> list[Path]:
    """Write the template project into `folder` (made if missing), its `add_note` in `language`; the files
    written. A folder that is a Flux project already, or holds any of the template's files, is left alone."""
    if language not in LANGUAGE_NAMES:
        raise InvalidProject(
            f"flux init has no template in {language!r}", hint=f"use {', '.join(LANGUAGE_NAMES)}"
        )
    sources = {path.relative_to(TEMPLATE): path for path in TEMPLATE.rglob("*") if path.is_file()}
    if language != "typescript":
        del sources[Path("functions/add_note/index.ts")]
        root = LANGUAGES / language
        sources |= {"functions" / path.relative_to(root): path for path in root.rglob("*") if path.is_file()}
    files = sorted(sources)
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
        shutil.copyfile(sources[name], target)
        written.append(target)
    toml = folder / "flux.toml"
    toml.write_text(toml.read_text().replace("{name}", folder.resolve().name))
    return written


def _target(name: Path) -> Path:
    """Where a template file goes: `gitignore` becomes `.gitignore` (a dotfile might not ship in the
    wheel)."""
    return name.with_name(".gitignore") if name.name == "gitignore" else name
