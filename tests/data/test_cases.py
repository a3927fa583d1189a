"""Golden cases (`tests/cases/*.yaml`): each query's SQL and parameters, and its result on the real shop data.

`FLUX_WRITE_CASES=1 pytest tests/data/test_cases.py` records the SQL, parameters and results of new or changed
cases; review the diff before committing it.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from flux.data import Catalog, prepare, run_query
from flux.data.sql import compile_plan
from flux.db import JsonParam
from flux.errors import FluxError, InvalidQuery

CASES = Path(__file__).resolve().parents[1] / "cases"
WRITE = bool(os.environ.get("FLUX_WRITE_CASES"))


def _cases() -> list[Any]:
    found = []
    for path in sorted(CASES.glob("*.yaml")):
        for index, case in enumerate(yaml.safe_load(path.read_text())):
            found.append(pytest.param(path, index, case, id=f"{path.stem}: {case['name']}"))
    return found


def _record(path: Path, index: int, **fields: Any) -> None:
    cases = yaml.safe_load(path.read_text())
    cases[index].update(fields)
    path.write_text(yaml.safe_dump(cases, sort_keys=False, allow_unicode=True, width=110))


@pytest.mark.parametrize(("path", "index", "case"), _cases())
def test_case(path: Path, index: int, case: dict[str, Any], shop: Catalog, as_role: Any) -> None:
    role = case.get("role", "user")
    if "problems" in case:
        with pytest.raises(InvalidQuery) as caught:
            prepare(case["query"], shop, role)
        problems = caught.value.problems
        assert [p["code"] for p in problems] == case["problems"], problems
        if "hint" in case:
            assert problems[0]["hint"] == case["hint"]
        return

    planned = prepare(case["query"], shop, role)
    sql = compile_plan(planned.plan)
    params = [p.value if isinstance(p, JsonParam) else p for p in planned.params]
    with as_role(role) as conn:
        if "error" in case:
            with pytest.raises(FluxError) as failed:
                run_query(conn, case["query"], shop, role)
            assert failed.value.code == case["error"]
            return
        result = _plain(run_query(conn, case["query"], shop, role))
    if WRITE and (case.get("sql"), case.get("params"), case.get("result")) != (sql, params, result):
        _record(path, index, sql=sql, params=params, result=result)
        return
    assert sql == case["sql"]
    assert params == case["params"]
    assert result == case["result"]


def _plain(value: Any) -> Any:
    """Results as YAML keeps them: tuples are lists, and exact numbers are written as YAML floats (their
    precision is tested in test_numbers.py)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
