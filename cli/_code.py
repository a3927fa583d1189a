"""The code a replay runs on, when it must be built for it: `--code DIR` (a project folder, built as
`flux deploy` builds it, nothing stored nor activated) and `--code git:REV` (that revision of the project's
repository, built in a temporary git worktree that is always removed; the user's checkout, index, stash and
branches are never touched). `recorded` and `active` are in the database: the replay engine takes those."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flux.errors import (
    CodeFolderNotFound,
    FluxError,
    GitRevisionUnusable,
    InvalidBisect,
    InvalidFunctionCode,
)

if TYPE_CHECKING:
    from flux.replay.bisect import Commit
    from flux.runtime.build import Stamp
    from flux.runtime.invoke import Function

GIT_TIMEOUT_S = 300  # a checkout of a large repository takes a while; a hung git (a prompt) must not hang us
_CODE_HINT = "give --code recorded, active, a project folder (holding flux.toml) or git:REV"
# What points git at another repository, index or work tree than the one in its folder (git's own list of
# repository-local variables, set for example while a hook runs): never let it reach the user's.
_GIT_LOCAL_ENV = {
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_GRAFT_FILE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_INTERNAL_SUPER_PREFIX",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_SHALLOW_FILE",
}


def code_source(spec: str, project: Path) -> dict[str, Function] | None:
    """The functions `--code spec` names, built; None for `recorded` and `active` (the replay engine takes
    those from the database). `git:REV` is REV of the git repository holding `project`; anything else is a
    project folder (relative to the current folder; write `./recorded` for a folder of that name)."""
    if spec in ("recorded", "active"):
        return None
    if spec.startswith("git:"):
        rev = spec.removeprefix("git:")
        if not rev.strip():
            raise GitRevisionUnusable("--code git: names no revision", hint="e.g. --code git:HEAD~1")
        return functions_from_git(project, rev)
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise CodeFolderNotFound(f"--code {spec}: there is no such folder", hint=_CODE_HINT)
    return functions_from_folder(folder)


def functions_from_folder(folder: Path) -> dict[str, Function]:
    """Every function of the project in `folder`, built as `flux deploy` builds it (a function whose
    sources did not change since is not built again); nothing is stored nor activated. A folder that is no
    Flux project is FX510; a build that fails keeps its own error (FX307 with the compiler's message, FX601,
    FX800)."""
    if not folder.is_dir():
        raise CodeFolderNotFound(f"{folder} does not exist or is not a folder", hint=_CODE_HINT)
    if not (folder / "flux.toml").is_file():
        raise CodeFolderNotFound(f"{folder} is not a Flux project: it has no flux.toml", hint=_CODE_HINT)
    return _build(folder)


@dataclass
class BuildCache:
    """Functions built from git revisions, by name and the hash of their sources (`sources_sha256`), each with
    its build's stamp (which also holds the files outside the folder its build read, a C header say): a
    revision that changed none of those reuses the build, without building or checking it again. `builds`
    counts the functions built, `hits` those reused."""

    built: dict[tuple[str, str], list[tuple[Stamp, Function]]] = field(default_factory=dict)
    builds: int = 0
    hits: int = 0


def functions_from_git(
    repo: Path, rev: str, project_subdir: Path | None = None, cache: BuildCache | None = None
) -> dict[str, Function]:
    """Every function of the project as it was at `rev`, built in a temporary `git worktree` of the repository
    holding `repo`. The project is `repo` itself, or `repo / project_subdir`; it is built at the same place
    relative to the repository's top. The worktree is removed afterwards, also when the build fails; the
    user's checkout, index, stash and branches are never touched. No repository, an unknown revision, or no
    project at that revision is FX511; a failed build keeps its own error, its paths written `REV:path`."""
    project = (repo / project_subdir if project_subdir is not None else repo).resolve()
    if not repo.is_dir():
        raise GitRevisionUnusable(f"{repo} does not exist or is not a folder", hint="give the project folder")
    top = _repository_top(repo.resolve())
    try:
        relative = project.relative_to(top)
    except ValueError:
        raise GitRevisionUnusable(
            f"{project} is not inside the git repository {top}",
            hint="give a project folder of that repository",
        ) from None
    commit = _commit(top, rev)
    with tempfile.TemporaryDirectory(prefix="flux-code-") as temporary:
        checkout = Path(temporary).resolve() / "checkout"
        try:
            add = ("worktree", "add", "--detach", "--quiet", str(checkout), commit)
            _git(
                top, *add, failure=f"git could not check out {rev} ({commit[:12]}) into a temporary worktree"
            )
            built = checkout / relative
            if not (built / "flux.toml").is_file():
                where = "the repository's top" if relative == Path(".") else f"{relative.as_posix()}/"
                raise GitRevisionUnusable(
                    f"at {rev} ({commit[:12]}) {where} has no flux.toml: the project was not there yet",
                    hint="pick a later revision (git log -- flux.toml)",
                )
            try:
                _refuse_links_out(checkout, built, rev)
                # A commit may hold a `.flux/build` (added by force): its stamps would make the build take the
                # committed bytes for the sources'. Only the sources are the revision's code.
                shutil.rmtree(built / ".flux", ignore_errors=True)
                return _build(built, cache)
            except FluxError as exc:
                _at_revision(exc, checkout, rev)
                raise
        finally:
            _remove_worktree(top, checkout)


def _refuse_links_out(checkout: Path, project: Path, rev: str) -> None:
    """FX307 when flux.toml, `functions/` or anything in it is a symbolic link to outside the revision (to the
    user's checkout, say): what was built would not be the revision's code (and a build may write there)."""
    functions = project / "functions"
    inside = [*functions.rglob("*")] if functions.is_dir() and not functions.is_symlink() else []
    for path in (project / "flux.toml", functions, *inside):
        if path.is_symlink() and not path.resolve().is_relative_to(checkout):
            raise InvalidFunctionCode(
                f"{path}: a symbolic link out of the revision (to {os.readlink(path)}), so it cannot be built"
                f" as it was at {rev}",
                hint="only what the commit holds is built; make the link relative, inside the repository",
            )


def _build(folder: Path, cache: BuildCache | None = None) -> dict[str, Function]:
    from flux.api.deploy import build_project
    from flux.config import load_settings
    from flux.runtime.build import Stamp

    # Only flux.toml decides what is built: no FLUX_* variable of this shell goes into the functions.
    settings = load_settings(folder, env={})
    reused = _reuse_builds(settings.project_dir, cache) if cache is not None else {}
    built = {name: function for name, (function, _language) in build_project(settings).items()}
    if cache is not None:
        out_dir = settings.project_dir / ".flux" / "build"
        for name, function in built.items():
            if name in reused:
                cache.hits += 1
                continue
            cache.builds += 1
            stamp = Stamp.read(out_dir, name)
            if stamp is not None:
                cache.built.setdefault((name, stamp.sources), []).append((stamp, function))
    return built


def _reuse_builds(project: Path, cache: BuildCache) -> set[str]:
    """The functions `cache` holds a build of, from the same sources and the same files outside their folder
    (a C header, a Rust module): handed to the build as built already (`reuse_build`), so `build_project`
    takes them as they are."""
    from flux.runtime.build import reuse_build, sources_sha256

    reused: set[str] = set()
    root = project / "functions"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        sources = sources_sha256(folder)
        for stamp, known in cache.built.get((folder.name, sources), []):
            if stamp.holds_for(folder.resolve(), sources):
                code = None if known.runtime in ("typescript", "javascript") else known.code
                reuse_build(project / ".flux" / "build", folder.name, stamp, code)
                reused.add(folder.name)
                break
    return reused


def commits_between(
    repo: Path, good: str, bad: str, *, first_parent: bool = False
) -> tuple[Commit, list[Commit]]:
    """The commit `good` names, and the commits after it up to `bad` (that one last), oldest first: those
    that descend from `good` and lead to `bad` (`--ancestry-path`), or with `first_parent`, `bad`'s
    first-parent line back to `good` (a merge stands for the branch it brought in). FX511 for a revision
    that names no commit; FX514 when `good` is not older than `bad` on their history."""
    try:
        top = _repository_top(repo.resolve())
    except GitRevisionUnusable:
        raise GitRevisionUnusable(
            f"{repo} is not in a git repository, so there is no history to bisect",
            hint="run it in the project's repository, or give --repo DIR (the project's folder in one)",
        ) from None
    good_sha, bad_sha = _named(top, "--good", good), _named(top, "--bad", bad)
    if good_sha == bad_sha:
        raise InvalidBisect(
            f"--good {good} and --bad {bad} are the same commit ({good_sha[:12]})",
            hint="give as --good a commit where the request still behaved well",
        )
    if _run_git(top, "merge-base", "--is-ancestor", good_sha, bad_sha).returncode != 0:
        raise InvalidBisect(
            f"--good {good} ({good_sha[:12]}) is not an ancestor of --bad {bad} ({bad_sha[:12]})",
            hint="give as --good an older commit of --bad's history (git log --oneline BAD)",
        )
    path = ["--first-parent"] if first_parent else []
    listed = _git(top, "log", "--reverse", "--topo-order", "--ancestry-path", *path,
                  "--format=%H%x00%s%x00%an <%ae>%x00%aI", f"{good_sha}..{bad_sha}",
                  failure="git could not list the commits between --good and --bad")  # fmt: skip
    candidates = [_commit_of(line) for line in listed.splitlines() if line]
    if not candidates or candidates[-1].sha != bad_sha:
        raise InvalidBisect(
            f"--bad {bad} ({bad_sha[:12]}) is not on the first-parent line from --good {good}",
            hint="give --good on --bad's first-parent history, or leave --first-parent out",
        )
    shown = _git(top, "log", "-1", "--format=%H%x00%s%x00%an <%ae>%x00%aI", good_sha,
                 failure=f"git could not read {good}")  # fmt: skip
    return _commit_of(shown.strip()), candidates


def _named(top: Path, option: str, rev: str) -> str:
    try:
        return _commit(top, rev)
    except GitRevisionUnusable:
        raise GitRevisionUnusable(
            f"{option} {rev} names no commit in {top}",
            hint="give a commit, tag or branch that `git log` shows",
        ) from None


def _commit_of(line: str) -> Commit:
    from flux.replay.bisect import Commit

    sha, subject, author, date = line.split("\0", 3)
    return Commit(sha, subject, author, date)


def _repository_top(folder: Path) -> Path:
    done = _run_git(folder, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise GitRevisionUnusable(
            f"{folder} is not in a git repository, so --code git:REV has no history",
            hint="run it in the project's repository, or give --code DIR",
        )
    return Path(done.stdout.strip()).resolve()


def _commit(top: Path, rev: str) -> str:
    """The commit `rev` names in the repository at `top`."""
    if rev.startswith("-"):  # never let a revision be read as an option
        raise GitRevisionUnusable(f"{rev!r} is not a git revision", hint="e.g. git:HEAD~1, git:v1.2")
    done = _run_git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if done.returncode != 0 or not done.stdout.strip():
        raise GitRevisionUnusable(
            f"git:{rev} names no commit in {top}", hint="give a commit, tag or branch that `git log` shows"
        )
    return done.stdout.strip()


def _remove_worktree(top: Path, checkout: Path) -> None:
    """Remove the temporary worktree and git's record of it. `git worktree prune` runs only when that record
    outlived `remove`, since it also forgets the user's own worktrees whose folders are missing. Runs while
    another error may be on its way, so it raises none of its own."""
    try:
        _run_git(top, "worktree", "remove", "--force", str(checkout))
        shutil.rmtree(checkout, ignore_errors=True)
        listed = _run_git(top, "worktree", "list", "--porcelain")
        if f"worktree {checkout}\n" in listed.stdout + "\n":
            _run_git(top, "worktree", "prune")
    except GitRevisionUnusable:
        pass


def _at_revision(exc: FluxError, checkout: Path, rev: str) -> None:
    """`exc` with the temporary checkout's paths written as git names them, `REV:path`, so that they still
    mean something once the worktree is gone (`git show REV:path` shows the file)."""
    prefix = f"{checkout}/"
    exc.message = exc.message.replace(prefix, f"{rev}:")
    exc.args = (exc.message,)
    if exc.hint is not None:
        exc.hint = exc.hint.replace(prefix, f"{rev}:")


def _git(top: Path, *args: str, failure: str) -> str:
    done = _run_git(top, *args)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise GitRevisionUnusable(
            f"{failure}: {said[-1] if said else f'git exited {done.returncode}'}",
            hint="check the revision with git log; your checkout was not changed",
        )
    return done.stdout


def _run_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run git in `cwd` on that folder's repository only, with no hook (the user's post-checkout hook must not
    run for a checkout of ours), never waiting for a prompt."""
    env = {name: value for name, value in os.environ.items() if name not in _GIT_LOCAL_ENV}
    env["GIT_TERMINAL_PROMPT"] = "0"
    command = ["git", "-c", f"core.hooksPath={os.devnull}", *args]
    try:
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except FileNotFoundError:
        raise GitRevisionUnusable(
            "git is not installed, so --code git:REV cannot check out a revision",
            hint="install git, or give --code DIR",
        ) from None
    except subprocess.TimeoutExpired:
        raise GitRevisionUnusable(
            f"git {args[0]} took over {GIT_TIMEOUT_S} s", hint="check the repository with git status"
        ) from None
