"""Components (Python through componentize-py): limits and bad results fail clearly, the next call is fine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flux.runtime import Function
from flux.runtime.build import build_function
from flux.runtime.limits import FunctionLimits

# One function, several misbehaviours, chosen by the request (one build and compile serve every case).
MISBEHAVING = """
import json
import wit_world
from wit_world.imports import host


class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        do = json.loads(request)["do"]
        if do == "loop":
            while True:
                pass
        if do == "hoard":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if do == "not_json":
            return "{not json"
        if do == "unknown_op":
            return host.call("no.such.op", "{}")
        return json.dumps({"fine": True})
"""


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory: pytest.TempPathFactory) -> Function:
    folder = tmp_path_factory.mktemp("project") / "functions" / "misbehaving"
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(MISBEHAVING)
    return build_function(folder, folder.parent.parent / ".flux" / "build")


def _with(fn: Function, **limits: int) -> Function:
    return Function(fn.name, fn.runtime, fn.code, fn.sha256, FunctionLimits(**limits))


def test_component_limits_and_bad_results(call: Any, misbehaving: Function) -> None:
    cases = [
        ("loop", _with(misbehaving, fuel=200_000_000), "FX301"),
        ("loop", _with(misbehaving, timeout_ms=500), "FX301"),
        ("hoard", _with(misbehaving, memory_mb=64), "FX302"),  # CPython's MemoryError, not caught
        ("not_json", misbehaving, "FX303"),
    ]
    for do, fn, code in cases:
        outcome = call(fn, {"do": do})
        assert outcome.error is not None and outcome.error.code == code, (do, outcome.error)
        assert call(misbehaving, {"do": "nothing"}).response.body == {"fine": True}
    unknown = call(misbehaving, {"do": "unknown_op"})
    assert unknown.response.body["ok"] is False and unknown.response.body["error"]["code"] == "FX304"


def test_a_component_that_is_not_one_is_fx307(call: Any, tmp_path: Path) -> None:
    bad = Function("bad", "component", b"\x00asm\x0d\x00\x01\x00", "0" * 64)
    outcome = call(bad)
    assert outcome.error is not None and outcome.error.code == "FX307"
