"""Fuzz-found regressions: mistyped or hostile values are 4xx FluxErrors, never 500s or wrong rows."""

from __future__ import annotations

from typing import Any

import pytest

from flux.data import Catalog, prepare, run_query
from flux.errors import FluxError, InvalidQuery


def _run(as_role: Any, shop: Catalog, query: Any) -> Any:
    with as_role("user") as conn:
        return run_query(conn, query, shop, "user")


@pytest.mark.parametrize(
    "where",
    [
        {"id": {"eq": {"a": 1}}},
        {"id": {"eq": [1]}},
        {"created_at": {"eq": True}},
        {"created_at": {"gt": 0}},
        {"id": {"eq": 1.5}},  # never rounded to 2
        {"email": "\u0000"},
        {"email": "\ud800"},
        {"tags": {"match": "vip"}},
    ],
)
def test_a_value_that_does_not_fit_its_column_is_a_4xx(shop: Catalog, as_role: Any, where: Any) -> None:
    with pytest.raises(FluxError) as refused:
        _run(as_role, shop, {"select": "customers", "where": where})
    assert 400 <= refused.value.http_status < 500, refused.value


def test_mixed_numbers_and_jsonb_values_in_lists_work(shop: Catalog, as_role: Any) -> None:
    rows = _run(
        as_role, shop, {"select": "orders", "columns": ["id"], "where": {"total": {"in": [10.5, 3]}}}
    )["rows"]
    assert rows == [{"id": 1}, {"id": 3}]
    query = {"select": "customers", "columns": ["id"], "where": {"profile": {"in": [{"plan": "free"}]}}}
    assert _run(as_role, shop, query)["rows"] == [{"id": 2}]


@pytest.mark.parametrize("aggregate", [{"min": "profile"}, {"sum": "email"}, {"avg": "created_at"}])
def test_an_aggregate_that_does_not_fit_its_column_is_refused(shop: Catalog, aggregate: Any) -> None:
    with pytest.raises(InvalidQuery):
        prepare({"select": "customers", "aggregate": aggregate}, shop, "user")


def test_on_conflict_without_a_unique_index_is_a_4xx(shop: Catalog, as_role: Any) -> None:
    query = {
        "insert": "customers",
        "values": {"email": "q@x"},
        "on_conflict": {"columns": ["name"], "do": "nothing"},
    }
    with pytest.raises(FluxError) as refused:
        _run(as_role, shop, query)
    assert refused.value.code == "FX105"


def test_a_forged_cursor_is_a_4xx(shop: Catalog, as_role: Any) -> None:
    with pytest.raises(InvalidQuery):
        _run(as_role, shop, {"select": "customers", "after": "W3siYSI6MX1d"})  # [{"a": 1}]


@pytest.mark.parametrize("nulls", [None, "first", "last"])
@pytest.mark.parametrize("desc", [False, True])
def test_pages_ordered_by_a_nullable_column_skip_and_repeat_nothing(
    shop: Catalog, as_role: Any, nulls: str | None, desc: bool
) -> None:
    order = {"col": "name", "desc": desc} | ({"nulls": nulls} if nulls else {})
    seen: list[int] = []
    after = None
    with as_role("user") as conn:
        for _ in range(5):
            query = {"select": "customers", "columns": ["id"], "order": [order], "limit": 1}
            page = run_query(conn, query | ({"after": after} if after else {}), shop, "user")
            seen += [row["id"] for row in page["rows"]]
            after = page["after"]
            if after is None:
                break
        everything = run_query(
            conn, {"select": "customers", "columns": ["id"], "order": [order]}, shop, "user"
        )
    assert seen == [row["id"] for row in everything["rows"]]
    assert sorted(seen) == [1, 2, 3]


def test_limit_zero_returns_no_rows(shop: Catalog, as_role: Any) -> None:
    assert _run(as_role, shop, {"select": "customers", "limit": 0})["rows"] == []


def test_absurd_nesting_is_refused_not_a_crash(shop: Catalog) -> None:
    where: Any = {"id": {"eq": 1}}
    for _ in range(1000):
        where = {"not": where}
    columns: Any = ["id"]
    for _ in range(300):
        columns = [{"orders_by_customer_id": columns}]
    for query in ({"select": "customers", "where": where}, {"select": "customers", "columns": columns}):
        with pytest.raises(InvalidQuery) as refused:
            prepare(query, shop, "user")
        assert "FX110" in [p["code"] for p in refused.value.details["problems"]]


def test_pointers_escape_slashes_and_tildes(shop: Catalog) -> None:
    with pytest.raises(InvalidQuery) as refused:
        prepare({"update": "customers", "set": {"a/b": 1}, "where": {"c~d": 1}}, shop, "user")
    pointers = [p["pointer"] for p in refused.value.details["problems"]]
    assert pointers == ["/set/a~1b", "/where/c~0d"]
    with pytest.raises(InvalidQuery) as refused:
        prepare({"select": "customers", "order": 5}, shop, "user")
    assert refused.value.details["problems"][0]["pointer"] == "/order"
