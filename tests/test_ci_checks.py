"""`.ci/checks`, the end of `.ci/run`: every check runs even when one fails; the run fails naming which."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CHECKS = Path(__file__).resolve().parents[1] / ".ci" / "checks"


def _run_with_make_failing(
    tmp_path: Path, failing: set[str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """.ci/checks with a `make` of its own that records each target and fails those in `failing`."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "make").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$1" >> {calls}\n'
        f'case "$1" in {"|".join(failing) or "none-fails"}) exit 2;; esac\n'
    )
    (fake / "make").chmod(0o755)
    done = subprocess.run(
        [str(CHECKS)], capture_output=True, text=True, timeout=30,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
    )  # fmt: skip
    return done, calls.read_text().split() if calls.exists() else []


@pytest.mark.parametrize("failing", [{"test"}, {"test", "typecheck"}, {"lint"}])
def test_a_failing_check_hides_none_of_the_others(tmp_path: Path, failing: set[str]) -> None:
    done, ran = _run_with_make_failing(tmp_path, failing)
    assert ran == ["test", "lint", "typecheck"]
    assert done.returncode == 1
    named = [target for target in ("test", "lint", "typecheck") if target in failing]
    assert f"CI failed: make {' '.join(named)}" in done.stderr


def test_all_checks_passing_pass(tmp_path: Path) -> None:
    done, ran = _run_with_make_failing(tmp_path, set())
    assert ran == ["test", "lint", "typecheck"] and done.returncode == 0, done
