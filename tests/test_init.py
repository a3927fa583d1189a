"""`flux init`: a new project that deploys and answers on both its routes (TypeScript and Python), and a
folder that is a project already is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from flux.api.deploy import deploy
from flux.config import load_settings
from flux.errors import InvalidProject
from tests.fixtures.gateway import gateway_client


def test_a_new_project_deploys_and_answers(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX_SECRET_KEY", raising=False)
    folder = tmp_path / "shop"
    made = CliRunner().invoke(app, ["init", str(folder)])
    assert made.exit_code == 0, made.output
    assert (folder / ".gitignore").read_text().strip().endswith(".flux/")
    assert "\n__pycache__/\n" in (folder / ".gitignore").read_text()
    assert 'name = "shop"' in (folder / "flux.toml").read_text()
    settings = load_settings(folder, env={})
    assert deploy(dsn, settings).created
    with gateway_client(settings, dsn) as client:
        added = client.simulate_post("/notes", json={"text": "first"})
        assert added.status_code == 201 and added.json == {"id": 1, "body": "first"}
        assert client.simulate_post("/notes", json={}).status_code == 400
        assert client.simulate_get("/notes/count").json == {"count": 1}
    assert not list(folder.glob("functions/*/__pycache__"))  # the build of count_notes left nothing there
    again = CliRunner().invoke(app, ["init", str(folder)])
    assert isinstance(again.exception, InvalidProject) and "already has" in again.exception.message
