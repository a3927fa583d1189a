"""Numbers cross the data engine exactly: a numeric keeps every digit in rows, values, cursors and raw SQL."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from flux import jsontext
from flux.data import Catalog, load_catalog, run_query, run_sql

Conn = psycopg.Connection[Any]

WIDE = "12345678901234567890.0123456789"  # 30 significant digits: a float keeps 17


@pytest.fixture
def ledger(conn: Conn) -> Catalog:
    conn.execute(
        b"CREATE TABLE ledger (id int PRIMARY KEY, amount numeric(30,10) NOT NULL, rate float8, doc jsonb);"
        b" GRANT SELECT, INSERT ON ledger TO flux_user, flux_service;"
    )
    return load_catalog(conn)


def test_a_wide_numeric_is_inserted_and_read_back_digit_for_digit(ledger: Catalog, as_role: Any) -> None:
    row = f'{{"id": 1, "amount": {WIDE}, "rate": 0.1, "doc": {{"x": {WIDE}}}}}'
    query = jsontext.loads(
        f'{{"insert": "ledger", "values": [{row}], "returning": ["amount", "rate", "doc"]}}'
    )
    by_amount = {"select": "ledger", "where": {"amount": {"eq": query["values"][0]["amount"]}}}
    with as_role("user") as conn:
        inserted = run_query(conn, query, ledger, "user")["rows"][0]
        selected = run_query(conn, by_amount, ledger, "user")["rows"]
    assert inserted["amount"] == Decimal(WIDE)
    assert selected == [
        {"id": 1, "amount": Decimal(WIDE), "rate": Decimal("0.1"), "doc": {"x": Decimal(WIDE)}}
    ]
    assert jsontext.dumps(selected[0]["amount"]) == WIDE.encode()
    assert f'"x":{WIDE}'.encode() in jsontext.dumps(selected[0]["doc"])


def test_raw_sql_and_keyset_cursors_keep_numeric_digits(ledger: Catalog, as_role: Any) -> None:
    amounts = [f"1234567890.000000000{i}" for i in range(1, 4)]  # equal as floats
    with as_role("service") as conn:
        for i, amount in enumerate(amounts):
            run_sql(conn, "INSERT INTO ledger (id, amount) VALUES ($1, $2::numeric)", [i, amount], "service")
        raw = run_sql(conn, "SELECT amount FROM ledger ORDER BY amount", [], "service")["rows"]
        query = {"select": "ledger", "columns": ["amount"], "order": ["amount"], "limit": 1}
        first = run_query(conn, query, ledger, "service")
        second = run_query(conn, {**query, "after": first["after"]}, ledger, "service")
    assert raw == [{"amount": Decimal(a)} for a in amounts]
    assert first["rows"] == [{"amount": Decimal(amounts[0])}]
    assert second["rows"] == [{"amount": Decimal(amounts[1])}]  # a float cursor would skip or repeat rows


def test_jsontext_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError):
        jsontext.dumps(Decimal("NaN"))
    assert jsontext.loads("[1, 2.50, 1e3]") == [1, Decimal("2.50"), Decimal("1e3")]
    assert jsontext.dumps([Decimal("2.50"), Decimal("1E+3")]) == b"[2.50,1E+3]"


def test_jsontext_writes_what_json_allows_and_orjson_refuses() -> None:
    assert jsontext.dumps([2**70, -(2**64)]) == b"[1180591620717411303424,-18446744073709551616]"
    assert jsontext.dumps("a\ud800b") == b'"a\\ud800b"'  # a lone surrogate, escaped as JSON allows


@pytest.mark.parametrize(
    "text",
    [
        '{"id": 42, "name": "User 42", "tags": ["a", null, true]}',  # orjson reads these
        "[18446744073709551615, -9223372036854775808, 1234567890123456789012]",  # past 64 bits: exact
        "[-9223372036854775809, 0.1, -2.5e-3, 1E400]",  # fractions and exponents: Decimal
        '["\\ud800", "caf\\u00e9", NaN, -Infinity]',  # a lone surrogate, constants orjson refuses
        '{"a": 1, "a": 2}',
    ],
)
def test_jsontext_reads_every_text_as_the_exact_decoder_does(text: str) -> None:
    exact = json.JSONDecoder(parse_float=Decimal)
    expected = exact.decode(text)
    for given in (text, text.encode()):
        read = jsontext.loads(given)
        assert repr(read) == repr(expected)  # repr: NaN is not equal to itself; types must match too
