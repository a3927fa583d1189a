"""The code a replay runs on, built: `--code DIR` builds a project folder as `flux deploy` does, and
`--code git:REV` builds that revision in a temporary git worktree, leaving the user's checkout, index, stash,
branches and worktree list exactly as they were, also when the build fails."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli._code import code_source, functions_from_folder, functions_from_git
from flux.errors import CodeFolderNotFound, GitRevisionUnusable, InvalidFunctionCode
from tests.fixtures.git import git as _git
from tests.fixtures.git import git_state

FLUX_TOML = 'name = "greeter"\n\n[functions.greet]\ntimeout_ms = 3000\n'
WAT = '(module (memory (export "memory") 1))\n'


def _greet(version: str) -> str:
    return f"export default async (req, ctx) => ({{version: '{version}'}})\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _project(folder: Path, version: str = "v1") -> Path:
    (folder / "functions" / "greet").mkdir(parents=True)
    (folder / "functions" / "greet" / "index.ts").write_text(_greet(version))
    (folder / "functions" / "raw").mkdir()
    (folder / "functions" / "raw" / "index.wat").write_text(WAT)
    (folder / "flux.toml").write_text(FLUX_TOML)
    (folder / ".gitignore").write_text(".flux/\n")
    return folder


@dataclass(frozen=True)
class Repo:
    top: Path
    project: Path  # top / "app": the project is not at the repository's top
    before: str  # a commit from before the project existed
    first: str  # the project with greet v1
    second: str  # HEAD: greet v2
    hook_ran: Path  # what the user's post-checkout hook would create


@pytest.fixture
def repo(tmp_path: Path, temporary: Path) -> Repo:
    """A repository with three commits, then a user mid-work: a stash, a staged file, an edited function and
    an untracked file, another branch, and a post-checkout hook that must not run for a replay's checkout."""
    top = tmp_path / "repo"
    top.mkdir()
    _git(top, "init", "-q", "-b", "main")
    (top / "README.md").write_text("notes\n")
    _git(top, "add", ".")
    _git(top, "commit", "-q", "-m", "readme")
    before = _git(top, "rev-parse", "HEAD")
    project = _project(top / "app", "v1")
    _git(top, "add", ".")
    _git(top, "commit", "-q", "-m", "greet v1")
    first = _git(top, "rev-parse", "HEAD")
    (project / "functions" / "greet" / "index.ts").write_text(_greet("v2"))
    _git(top, "commit", "-q", "-am", "greet v2")
    second = _git(top, "rev-parse", "HEAD")
    _git(top, "branch", "feature", first)

    (top / "README.md").write_text("stashed edit\n")
    _git(top, "stash", "push", "-q", "-m", "work in progress")
    (top / "staged.txt").write_text("staged\n")
    _git(top, "add", "staged.txt")
    (project / "functions" / "greet" / "index.ts").write_text(_greet("v3, not committed"))
    (top / "untracked.txt").write_text("untracked\n")

    hook_ran = tmp_path / "hook-ran"
    hook = top / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch '{hook_ran}'\n")
    hook.chmod(0o755)
    return Repo(top, project, before, first, second, hook_ran)


def _state(top: Path) -> dict[str, str | bytes]:
    """Everything of the user's that a checkout could change."""
    return {**git_state(top), "greet": (top / "app" / "functions" / "greet" / "index.ts").read_bytes()}


def _unchanged(repo: Repo, temporary: Path, before: dict[str, str | bytes]) -> None:
    assert _state(repo.top) == before
    assert len(_git(repo.top, "worktree", "list").splitlines()) == 1
    records = repo.top / ".git" / "worktrees"
    assert not records.exists() or not any(records.iterdir())
    assert list(temporary.iterdir()) == []
    assert not repo.hook_ran.exists()


def test_a_folder_builds_every_function_as_deploy_does(tmp_path: Path) -> None:
    functions = functions_from_folder(_project(tmp_path / "greeter", "v1"))
    assert sorted(functions) == ["greet", "raw"]
    greet, raw = functions["greet"], functions["raw"]
    assert (greet.runtime, greet.code) == ("typescript", _greet("v1").encode())
    assert greet.sha256 == _sha(_greet("v1"))
    assert greet.limits.timeout_ms == 3000  # flux.toml's [functions.greet]
    assert raw.runtime == "wasm" and raw.code.startswith(b"\0asm")
    assert raw.sha256 == hashlib.sha256(raw.code).hexdigest()
    assert code_source(str(tmp_path / "greeter"), tmp_path) == functions


def test_a_folder_that_is_no_project_or_does_not_build_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CodeFolderNotFound, match=r"has no flux\.toml") as no_project:
        functions_from_folder(tmp_path)
    assert no_project.value.code == "FX510"
    with pytest.raises(CodeFolderNotFound, match="does not exist"):
        functions_from_folder(tmp_path / "missing")
    broken = _project(tmp_path / "broken")
    (broken / "functions" / "greet" / "index.ts").write_text("export default async (req, ctx) => {{\n")
    with pytest.raises(InvalidFunctionCode, match=r"greet/index\.ts:") as failed:
        functions_from_folder(broken)
    assert failed.value.code == "FX307"


def test_code_source_parses_every_kind_of_code(repo: Repo, temporary: Path, tmp_path: Path) -> None:
    assert code_source("recorded", repo.project) is None
    assert code_source("active", repo.project) is None
    assert code_source("git:HEAD", repo.project)["greet"].sha256 == _sha(_greet("v2"))
    assert code_source(str(repo.project), repo.project)["greet"].sha256 == _sha(_greet("v3, not committed"))
    with pytest.raises(CodeFolderNotFound, match="no such folder") as missing:
        code_source(str(tmp_path / "nowhere"), repo.project)
    assert missing.value.code == "FX510" and missing.value.hint and "git:REV" in missing.value.hint
    with pytest.raises(GitRevisionUnusable, match="names no revision"):
        code_source("git:", repo.project)


def test_git_builds_each_revision_and_leaves_the_users_checkout_alone(repo: Repo, temporary: Path) -> None:
    _git(repo.top, "status", "--porcelain")  # let git refresh the index's stat data once, before comparing
    before = _state(repo.top)
    first = functions_from_git(repo.project, repo.first)
    assert first["greet"].code == _greet("v1").encode() and first["greet"].sha256 == _sha(_greet("v1"))
    assert first["greet"].limits.timeout_ms == 3000
    head = functions_from_git(repo.top, "HEAD", Path("app"))  # the repository and the project's folder in it
    assert head["greet"].sha256 == _sha(_greet("v2"))  # the commit, not the edit in the working tree
    assert head["raw"].sha256 == first["raw"].sha256
    assert functions_from_git(repo.project, "feature")["greet"].sha256 == _sha(_greet("v1"))
    assert functions_from_git(repo.project, "HEAD~1")["greet"].sha256 == _sha(_greet("v1"))
    _unchanged(repo, temporary, before)


def test_git_ignores_variables_that_point_git_at_the_users_index(
    repo: Repo, temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set while a git hook runs, for example: they would make the checkout write the user's index."""
    _git(repo.top, "status", "--porcelain")
    before = _state(repo.top)
    monkeypatch.setenv("GIT_INDEX_FILE", str(repo.top / ".git" / "index"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo.top))
    assert functions_from_git(repo.project, repo.first)["greet"].sha256 == _sha(_greet("v1"))
    monkeypatch.delenv("GIT_INDEX_FILE")
    monkeypatch.delenv("GIT_WORK_TREE")
    _unchanged(repo, temporary, before)


def test_a_revision_that_does_not_build_fails_and_its_worktree_goes(repo: Repo, temporary: Path) -> None:
    _git(repo.top, "stash", "push", "-q", "--include-untracked", "-m", "second")
    broken = repo.project / "functions" / "greet" / "index.ts"
    broken.write_text("export default async (req, ctx) => {{\n")
    _git(repo.top, "commit", "-q", "-m", "greet broken", "--", str(broken))
    bad = _git(repo.top, "rev-parse", "HEAD")
    _git(repo.top, "reset", "-q", "--hard", repo.second)
    _git(repo.top, "stash", "pop", "-q")
    _git(repo.top, "status", "--porcelain")
    before = _state(repo.top)
    with pytest.raises(InvalidFunctionCode) as failed:
        functions_from_git(repo.project, bad)
    assert failed.value.code == "FX307"
    # named as git names it, not by the temporary folder that no longer exists
    assert failed.value.message.startswith(f"{bad}:app/functions/greet/index.ts:1:"), failed.value.message
    assert str(temporary) not in str(failed.value)
    _unchanged(repo, temporary, before)


def test_no_repository_no_commit_or_no_project_there_is_fx511(
    repo: Repo, temporary: Path, tmp_path: Path
) -> None:
    _git(repo.top, "status", "--porcelain")
    before = _state(repo.top)
    with pytest.raises(GitRevisionUnusable, match="names no commit") as unknown:
        functions_from_git(repo.project, "no-such-branch")
    assert unknown.value.code == "FX511" and unknown.value.hint
    with pytest.raises(GitRevisionUnusable, match="is not a git revision"):
        functions_from_git(repo.project, "--output=/tmp/x")
    with pytest.raises(GitRevisionUnusable, match=r"app/ has no flux\.toml: the project was not there yet"):
        functions_from_git(repo.project, repo.before)
    _unchanged(repo, temporary, before)
    outside = _project(tmp_path / "outside")
    with pytest.raises(GitRevisionUnusable, match="is not in a git repository") as no_repository:
        functions_from_git(outside, "HEAD")
    assert no_repository.value.code == "FX511"
    with pytest.raises(GitRevisionUnusable, match="does not exist"):
        functions_from_git(tmp_path / "missing", "HEAD")


def test_the_users_own_missing_worktree_is_not_pruned(repo: Repo, temporary: Path, tmp_path: Path) -> None:
    """`git worktree prune` would forget it (one on a drive that is not mounted, say): only ours goes."""
    elsewhere = tmp_path / "on-a-usb-drive"
    _git(repo.top, "worktree", "add", "-q", "--detach", str(elsewhere), repo.first)
    (repo.top / ".git" / "hooks" / "post-checkout").unlink()  # it ran for the user's own checkout, rightly
    shutil.rmtree(elsewhere)
    listed = _git(repo.top, "worktree", "list", "--porcelain")
    assert f"worktree {elsewhere}\n" in listed and "prunable" in listed
    assert functions_from_git(repo.project, repo.first)["greet"].sha256 == _sha(_greet("v1"))
    assert _git(repo.top, "worktree", "list", "--porcelain") == listed
    assert list(temporary.iterdir()) == []
