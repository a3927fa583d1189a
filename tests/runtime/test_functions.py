"""A project's functions: built on first use, rebuilt within a second of a change, refused when missing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flux.errors import InvalidFunctionCode
from flux.runtime.functions import RECHECK_S, ProjectFunctions


def test_a_changed_function_is_rebuilt_within_a_second(tmp_path: Path) -> None:
    source = tmp_path / "functions" / "greet" / "index.ts"
    source.parent.mkdir(parents=True)
    source.write_text("export default async () => 1")
    functions = ProjectFunctions(tmp_path)
    first = functions.get("greet")
    assert functions.get("greet") is first  # unchanged: the same build
    source.write_text("export default async () => 2")
    time.sleep(RECHECK_S + 0.1)
    assert functions.get("greet").code == b"export default async () => 2"
    with pytest.raises(InvalidFunctionCode):
        functions.get("missing")
    with pytest.raises(InvalidFunctionCode):
        functions.get("../etc")
