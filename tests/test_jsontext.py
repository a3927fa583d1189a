"""`jsontext.display`: JSON for people, as `json.dumps` writes it, with every number as it was recorded."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

from flux import jsontext


def test_display_writes_numbers_digit_for_digit_and_everything_else_as_json_dumps() -> None:
    recorded = jsontext.loads('{"price": 12.50, "was": 11.00, "tiny": 1e-7, "big": 1E+3, "n": 3}')
    assert recorded["price"] == Decimal("12.50")
    shown = '{"price": 12.50, "was": 11.00, "tiny": 0.0000001, "big": 1000, "n": 3}'  # as Postgres prints
    assert jsontext.display(recorded) == shown
    plain = {"b": [1, {"é": None}, True, "x"], "a": {}, "c": []}
    assert jsontext.display(plain) == json.dumps(plain, ensure_ascii=False)
    assert jsontext.display(plain, indent=2) == json.dumps(plain, ensure_ascii=False, indent=2)
    assert jsontext.display(plain, sort_keys=True) == json.dumps(plain, ensure_ascii=False, sort_keys=True)
    assert jsontext.display({"at": datetime(2026, 1, 2, 3, 4, 5)}) == '{"at": "2026-01-02 03:04:05"}'
    assert jsontext.display(Decimal("12.50")) != jsontext.display("12.50")  # a number is not its text
