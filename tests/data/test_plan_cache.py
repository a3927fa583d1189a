"""The plan cache: queries of one shape share a plan and bind their own values; other shapes never do."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from flux.data import Catalog, prepare, run_query
from flux.data.shape import shape_key
from flux.db import JsonParam


def _fresh(catalog: Catalog) -> Catalog:
    return replace(catalog, plans={})


def _same_as_uncached(query: Any, catalog: Catalog) -> None:
    cached = prepare(query, catalog, "user")
    planned = prepare(query, _fresh(catalog), "user")
    assert cached.plan == planned.plan
    assert cached.params == planned.params


VARIANTS = [
    [
        {"select": "orders", "where": {"status": {"eq": "paid"}}},
        {"select": "orders", "where": {"status": {"eq": "open"}}},
    ],
    [
        {"select": "orders", "where": {"id": {"in": [1, 2]}}},
        {"select": "orders", "where": {"id": {"in": [3]}}},
    ],
    [{"select": "orders", "where": {"referrer_id": None}}, {"select": "orders", "where": {"referrer_id": 2}}],
    [
        {"select": "orders", "where": {"referrer_id": {"is": None}}},
        {"select": "orders", "where": {"referrer_id": {"is": "not_null"}}},
    ],
    [{"select": "orders", "offset": 0}, {"select": "orders", "offset": 2}, {"select": "orders", "offset": 3}],
    [{"select": "orders", "limit": 1}, {"select": "orders", "limit": 2}],
    [
        {"select": "customers", "where": {"profile": {"contains": {"plan": "pro"}}}},
        {"select": "customers", "where": {"profile": {"contains": {"plan": "free"}}}},
        {"select": "customers", "where": {"profile": {"contains": {"seats": 5}}}},
    ],
    [
        {
            "select": "customers",
            "columns": ["id", {"orders_by_customer_id": {"columns": ["id"], "where": {"total": {"gt": 1}}}}],
        },
        {
            "select": "customers",
            "columns": ["id", {"orders_by_customer_id": {"columns": ["id"], "where": {"total": {"gt": 5}}}}],
        },
    ],
    [
        {"select": "customers", "where": {"orders_by_customer_id": {"status": {"eq": "open"}}}},
        {"select": "customers", "where": {"orders_by_customer_id": {"status": {"eq": "paid"}}}},
    ],
    [
        {"insert": "products", "values": {"sku": "a", "title": "A", "price": 1}},
        {"insert": "products", "values": {"sku": "b", "title": "B", "price": 2.5}},
        {"insert": "products", "values": [{"sku": "c", "title": "C", "price": 3}]},
    ],
    [
        {"update": "orders", "set": {"status": "x"}, "where": {"id": {"eq": 1}}},
        {"update": "orders", "set": {"status": "y"}, "where": {"id": {"eq": 2}}},
    ],
    [
        {"select": "orders", "where": {"or": [{"id": {"eq": 1}}, {"total": {"lt": 2}}]}},
        {"select": "orders", "where": {"or": [{"id": {"eq": 3}}, {"total": {"lt": 9}}]}},
    ],
]


@pytest.mark.parametrize("queries", VARIANTS)
def test_each_query_binds_exactly_what_planning_it_alone_would(shop: Catalog, queries: list[Any]) -> None:
    for query in queries + list(reversed(queries)):
        _same_as_uncached(query, shop)


def test_queries_of_one_shape_share_an_entry(shop: Catalog) -> None:
    one = prepare({"select": "orders", "where": {"status": {"eq": "paid"}}}, shop, "user")
    two = prepare({"select": "orders", "where": {"status": {"eq": "open"}}}, shop, "user")
    assert one.plan is two.plan
    assert (one.params[0], two.params[0]) == ("paid", "open")


def test_structural_values_make_different_shapes() -> None:
    keys = {
        shape_key({"select": "t", "where": {"a": None}}),
        shape_key({"select": "t", "where": {"a": 1}}),
        shape_key({"select": "t", "where": {"a": {"is": None}}}),
        shape_key({"select": "t", "where": {"a": {"is": "not_null"}}}),
        shape_key({"select": "t", "where": {"a": {"in": [1]}}}),
        shape_key({"select": "t", "where": {"a": {"in": "x"}}}),
        shape_key({"select": "t", "offset": 0}),
        shape_key({"select": "t", "offset": 1}),
        shape_key({"select": "t", "limit": 1}),
        shape_key({"select": "t", "limit": 2}),
    }
    assert len(keys) == 10
    assert shape_key({"select": "t", "after": "x"}) is None
    assert shape_key({"insert": "t", "values": {"a": {"b": 1}}}) is None


def test_a_cached_plan_runs_with_the_new_values(shop: Catalog, as_role: Any) -> None:
    with as_role("user") as conn:
        assert run_query(
            conn, {"select": "orders", "columns": ["id"], "where": {"status": "paid"}}, shop, "user"
        )["rows"] == [
            {"id": 1},
            {"id": 3},
        ]
        assert run_query(
            conn, {"select": "orders", "columns": ["id"], "where": {"status": "open"}}, shop, "user"
        )["rows"] == [{"id": 2}]
        query = {
            "select": "customers",
            "columns": ["id"],
            "where": {"profile": {"contains": {"plan": "free"}}},
        }
        planned = prepare(query, shop, "user")
        assert planned.params[0] == JsonParam({"plan": "free"})
        assert run_query(conn, query, shop, "user")["rows"] == [{"id": 2}]
