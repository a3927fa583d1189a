"""The red team's top attacks on the Deno runtime, against the real server: `flux server` under gunicorn with
one worker, so that a request and the next share one warm Deno process, as they do in production."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.processes import call_json, flux_server
from tests.runtime.test_deno_attacks import OVERFLOW, UNSHOWABLE

FLUX_TOML = """
[server]
workers = 1
""" + "".join(
    f'\n[[routes]]\nmethod = "POST"\npath = "/{name}"\nfunction = "{name}"\nauth = "none"\n'
    for name in ("overflow", "victim", "unshowable")
)
FUNCTIONS = {
    "overflow": OVERFLOW,
    "victim": "export default async (req: any, ctx: any) => ({secret: 'mine', log: await ctx.log('victim')})",
    "unshowable": UNSHOWABLE,
}


@pytest.fixture
def server(dsn: str, project_dir: Path, flux_env: dict[str, str]) -> Iterator[str]:
    (project_dir / "flux.toml").write_text(FLUX_TOML)
    for name, source in FUNCTIONS.items():
        (project_dir / "functions" / name).mkdir(parents=True)
        (project_dir / "functions" / name / "index.ts").write_text(source)
    with flux_server(project_dir, {**flux_env, "DATABASE_URL": dsn}) as (url, _):
        yield url


def _post(url: str) -> tuple[int, Any]:
    status, _, answer = call_json(url, "POST", {})
    return status, answer


def test_attacks_on_the_deno_worker_never_reach_the_next_request(server: str) -> None:
    names = ["victim", "overflow", "victim", "unshowable", "victim"]  # the first victim warms the process
    answers = [_post(f"{server}/{name}") for name in names]
    secret = (200, {"secret": "mine", "log": None})
    # before: the overflow hooked the worker and read and rewrote the next victim's answer ({"secret":
    # "stolen"}), and the unshowable module's late host call failed the next victim with FX306
    assert [answers[0], answers[1], answers[2], answers[3][0], answers[4]] == [
        secret, (200, "no object of the worker"), secret, 500, secret,
    ]  # fmt: skip
