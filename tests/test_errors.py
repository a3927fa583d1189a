"""Error codes: docs/errors.md and flux/errors.py list the same codes, and SQL errors map back to them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flux import errors

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
_ROW = re.compile(r"^\| (FX\d{3}) \| (\w+) \|", re.MULTILINE)


def test_every_code_is_documented_and_every_documented_code_exists() -> None:
    current, retired = DOC.read_text().split("## Retired codes")
    live = {code: cls.__name__ for code, cls in errors.ERRORS.items()}
    assert dict(_ROW.findall(current)) == live
    assert dict(_ROW.findall(retired)) == {code: why.split(":")[0] for code, why in errors.RETIRED.items()}


def test_codes_are_well_formed_unique_and_never_reuse_a_retired_one() -> None:
    codes = [cls.code for cls in errors.ERRORS.values()]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"FX\d{3}", code) for code in codes)
    assert not set(codes) & set(errors.RETIRED)


def test_an_fx_sqlstate_maps_to_its_class_and_an_unknown_one_to_fx900() -> None:
    error = errors.error_for_code("FX501", "table logs has no primary key", hint="add one")
    assert isinstance(error, errors.TableNotTrackable)
    assert error.to_dict("r-1") == {
        "code": "FX501",
        "message": "table logs has no primary key",
        "details": None,
        "hint": "add one",
        "request_id": "r-1",
    }
    assert errors.error_for_code("FX999", "?").code == "FX900"


@pytest.mark.parametrize("cls", list(errors.ERRORS.values()))
def test_every_error_has_a_title_and_an_http_status(cls: type[errors.FluxError]) -> None:
    assert cls.title and 400 <= cls.http_status < 600
