"""A command that only reads never creates a database: outside a project with neither DATABASE_URL nor
FLUX_URL, or in a project whose embedded Postgres does not exist yet, it is FX807 and leaves no `.flux`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.fixtures.processes import run_flux

UNSET = ("DATABASE_URL", "FLUX_DATABASE_URL", "FLUX_URL", "FLUX_ADMIN_KEY")
READ_ONLY = [
    ["why", "abc"],
    ["trace", "abc"],
    ["trace", "ls"],
    ["trace", "diff", "abc", "def"],
    ["trace", "export", "abc"],
    ["tail"],
    ["state", "history", "notes", "1"],
    ["state", "blame", "notes"],
    ["deployments", "ls"],
    ["secrets", "ls"],
    ["tenants", "ls"],
    ["keys", "ls"],
    ["queue", "ls"],
    ["queue", "dead"],
    ["queue", "show", "1"],
    ["queue", "stats"],
    ["queue", "cron"],
    ["db", "status"],
    ["explain", "query.json"],
]


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder as the working directory, with no database named anywhere."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "query.json").write_text('{"select": "notes"}')
    return tmp_path


def test_the_readme_commands_outside_a_project_say_so_and_create_nothing(
    nowhere: Path, flux_env: dict[str, str]
) -> None:
    env = {k: v for k, v in flux_env.items() if k not in UNSET}
    for args in (["why", "abc"], ["trace", "ls"]):
        result = run_flux(args, env, nowhere)
        assert result.returncode != 0 and result.stdout == "", result
        first, hint = result.stderr.splitlines()
        assert first.startswith(f"error FX807: no database to read: {nowhere} is not a Flux project"), first
        assert "neither DATABASE_URL nor FLUX_URL is set" in first
        assert "--project" in hint and "DATABASE_URL" in hint and "FLUX_URL" in hint, hint
    assert sorted(path.name for path in nowhere.iterdir()) == ["query.json"]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_no_read_only_command_creates_a_database_outside_a_project(nowhere: Path, args: list[str]) -> None:
    result = CliRunner().invoke(app, args, catch_exceptions=True)
    assert result.exit_code != 0
    assert getattr(result.exception, "code", None) == "FX807", (result.output, result.exception)
    assert not (nowhere / ".flux").exists()


@pytest.mark.parametrize("args", [["trace", "ls"], ["queue", "stats"], ["db", "status"]], ids=" ".join)
def test_a_project_before_its_first_start_is_not_given_a_database_by_a_read(
    nowhere: Path, args: list[str]
) -> None:
    (nowhere / "flux.toml").write_text('name = "shop"\n')
    result = CliRunner().invoke(app, args, catch_exceptions=True)
    assert getattr(result.exception, "code", None) == "FX807", (result.output, result.exception)
    assert "has no embedded Postgres yet" in str(result.exception)
    assert not (nowhere / ".flux").exists()


def test_with_database_url_set_a_read_outside_a_project_reads_it(nowhere: Path, dsn: str) -> None:
    result = CliRunner().invoke(app, ["trace", "ls"], env={"DATABASE_URL": dsn}, catch_exceptions=True)
    assert result.exit_code == 0 and result.output == "", (result.output, result.exception)
    assert not (nowhere / ".flux").exists()


def test_incident_replay_outside_a_project_creates_no_database(nowhere: Path) -> None:
    """`flux incident replay` prints its errors itself: exit status 2, as for a replay that could not run."""
    result = CliRunner().invoke(app, ["incident", "replay", "abc"], catch_exceptions=True)
    assert result.exit_code == 2 and "error FX807: no database to read" in result.output, result.output
    assert not (nowhere / ".flux").exists()
