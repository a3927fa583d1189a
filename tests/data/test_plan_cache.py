"""The plan cache: queries of one shape share a plan and bind their own values; other shapes never do."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from flux.data import Catalog, prepare, run_query
from flux.data._plans import PlanCache
from flux.data.shape import shape_key
from flux.db import JsonParam


def _fresh(catalog: Catalog) -> Catalog:
    return replace(catalog, plans=PlanCache())


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


def _nested_list(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_key_grows_linearly_with_nesting() -> None:
    """The red team's attack: a key that doubled per level of nested lists (67 MB at 24 levels)."""
    sizes = []
    for depth in (24, 48, 96):
        key = shape_key({"select": "customers", "where": {"profile": {"contains": _nested_list(depth)}}})
        assert key is not None
        sizes.append(len(key))
    assert sizes[0] < 500
    assert sizes[2] - sizes[1] == 2 * (sizes[1] - sizes[0])  # each level adds the same few bytes


def test_keys_still_tell_container_shapes_apart() -> None:
    def key(value: Any) -> str | None:
        return shape_key({"select": "t", "where": {"p": {"contains": value}}})

    shapes = [[1], ["a"], [[1]], [True], [None], [1, "a"], {"a": 1}, {"b": 1}, {"a": "x"}, {'a":1,"b': 1}]
    assert len({key(value) for value in shapes}) == len(shapes)
    assert key([1, "a"]) == key(["b", 2, 3])  # values and their order are not the shape
    assert key({"a": [1]}) == key({"a": [2, 3]})


@pytest.mark.parametrize("depth", [24, 150, 1000])
def test_deep_queries_cost_little_time_and_memory(shop: Catalog, depth: int) -> None:
    """Depth 24 is planned (and cached) quickly; 150 and 1000 are refused as FX110 before any other work."""
    import time
    import tracemalloc

    from flux.errors import InvalidQuery

    query = {"select": "customers", "where": {"profile": {"contains": _nested_list(depth)}}}
    catalog = _fresh(shop)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        if depth < 100:
            prepare(query, catalog, "user")
            assert len(catalog.plans) == 1 and catalog.plans.bytes < 10_000
        else:
            with pytest.raises(InvalidQuery) as refused:
                prepare(query, catalog, "user")
            assert [p["code"] for p in refused.value.problems] == ["FX110"]
            assert "deeper than 128 levels" in refused.value.message
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 2_000_000


def test_the_plan_cache_is_bounded_in_bytes(shop: Catalog) -> None:
    catalog = replace(shop, plans=PlanCache(max_bytes=60_000))
    for i in range(300):  # 300 shapes of about 1 kB each: 300 kB unbounded
        where = {"profile": {"contains": {f"key_{i}_{'x' * 400}": 1}}}
        prepare({"select": "customers", "where": where}, catalog, "user")
        assert catalog.plans.bytes <= 60_000
    assert 20 < len(catalog.plans) < 300
    # the most recent shape stays (a hit adds nothing), the oldest went first (planned again, it is added)
    kept, size = len(catalog.plans), catalog.plans.bytes
    prepare({"select": "customers", "where": {"profile": {"contains": {f"key_299_{'x' * 400}": 2}}}},
            catalog, "user")  # fmt: skip
    assert (len(catalog.plans), catalog.plans.bytes) == (kept, size)
    prepare({"select": "customers", "where": {"profile": {"contains": {f"key_0_{'x' * 400}": 2}}}},
            catalog, "user")  # fmt: skip
    assert catalog.plans.bytes != size


def test_a_plan_too_big_for_the_cache_is_not_kept() -> None:
    cache = PlanCache(max_entries=3, max_bytes=1000)
    cache.put("big", object(), 1001)
    assert len(cache) == 0 and cache.bytes == 0
    for name in ("a", "b", "c", "d"):
        cache.put(name, name, 10)
    assert len(cache) == 3 and cache.get("a") is None and cache.get("d") == "d"
    cache.get("b")  # used: now the most recent
    cache.put("e", "e", 10)
    assert cache.get("b") == "b" and cache.get("c") is None and cache.bytes == 30
