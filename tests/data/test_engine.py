"""The data engine on a real database: plan caching, policies (RLS and column rules), guards, the catalog."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from flux.data import Catalog, CatalogCache, Limits, load_catalog, prepare, run_query
from flux.errors import (
    FluxError,
    InvalidQuery,
    PermissionDenied,
    QueryTimedOut,
    TooManyRows,
)

Conn = psycopg.Connection[Any]


def _codes(error: InvalidQuery) -> list[str]:
    return [p["code"] for p in error.problems]


def test_same_shape_with_filters_in_another_order_binds_each_value_to_its_column(
    shop: Catalog, as_role: Any
) -> None:
    first = {
        "select": "orders",
        "columns": ["id"],
        "where": {"status": {"eq": "paid"}, "customer_id": {"eq": 2}},
    }
    second = {
        "select": "orders",
        "columns": ["id"],
        "where": {"customer_id": {"eq": 1}, "status": {"eq": "open"}},
    }
    shop.plans.clear()
    with as_role("user") as conn:
        assert run_query(conn, first, shop, "user")["rows"] == [{"id": 3}]
        assert run_query(conn, second, shop, "user")["rows"] == [{"id": 2}]
        third = {**first, "where": {"status": {"eq": "open"}, "customer_id": {"eq": 1}}}
        assert run_query(conn, third, shop, "user")["rows"] == [{"id": 2}]
    assert len(shop.plans) == 2  # `third` reused the plan of `first`


def test_a_cached_plan_is_shared_by_equal_shapes_only(shop: Catalog) -> None:
    one = prepare({"select": "customers", "where": {"id": {"eq": 1}}}, shop, "user")
    two = prepare({"select": "customers", "where": {"id": {"eq": 2}}}, shop, "user")
    other = prepare({"select": "customers", "where": {"id": {"gt": 2}}}, shop, "user")
    assert one.plan == two.plan and one.params != two.params
    assert one.plan != other.plan


def test_rls_filters_the_json_language_and_explain_policies_says_why(
    conn: Conn, shop: Catalog, as_role: Any
) -> None:
    conn.execute("ALTER TABLE customers ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY own_row ON customers FOR ALL TO flux_user USING (owner = flux.user_id())")
    with as_role("user", sub="bob") as session:
        result = run_query(
            session, {"select": "customers", "columns": ["email"], "explain_policies": True}, shop, "user"
        )
    assert result["rows"] == [{"email": "bob@example.com"}]
    assert [p["policy"] for p in result["policies"]["row_level"]] == ["own_row"]

    with as_role("user", sub="nobody") as session:
        empty = run_query(session, {"select": "customers", "explain_policies": True}, shop, "user")
    assert empty["rows"] == []
    assert empty["policies"]["row_level"][0]["using"] == "(owner = flux.user_id())"


def test_rls_refuses_a_write_the_policy_does_not_allow(conn: Conn, shop: Catalog, as_role: Any) -> None:
    conn.execute("ALTER TABLE customers ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY own_row ON customers FOR ALL TO flux_user USING (owner = flux.user_id())")
    with pytest.raises(PermissionDenied) as refused, as_role("user", sub="bob") as session:
        run_query(
            session,
            {"insert": "customers", "values": {"email": "x@example.com", "owner": "ada"}},
            shop,
            "user",
        )
    assert refused.value.code == "FX204"
    with as_role("user", sub="bob") as session:
        updated = run_query(session, {"update": "customers", "set": {"name": "B"}, "all": True}, shop, "user")
    assert updated == {"count": 1}  # only bob's own row


def _policies(conn: Conn, *rows: tuple[str, str, str, bool, bool, str | None]) -> Catalog:
    for table, column, role, readable, writable, mask in rows:
        conn.execute(
            "INSERT INTO flux.column_policies (table_name, column_name, role, readable, writable, mask)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (table, column, role, readable, writable, mask),
        )
    conn.execute("SELECT flux.apply_column_policies()").fetchall()
    return load_catalog(conn)


def test_column_policies_hide_mask_and_protect_columns(conn: Conn, shop: Catalog, as_role: Any) -> None:
    catalog = _policies(
        conn,
        ("customers", "secret", "user", False, False, None),
        ("customers", "email", "user", True, True, "***"),
        ("customers", "name", "user", True, False, None),
    )
    with as_role("user") as session:
        rows = run_query(session, {"select": "customers", "where": {"id": {"eq": 1}}}, catalog, "user")[
            "rows"
        ]
    assert rows[0]["email"] == "***" and "secret" not in rows[0] and rows[0]["name"] == "Ada"
    with as_role("user") as session:  # named explicitly, a masked column gives its mask too
        named = run_query(session, {"select": "customers", "columns": ["email"], "limit": 1}, catalog, "user")
    assert named["rows"] == [{"email": "***"}]

    cases = [
        ({"select": "customers", "columns": ["secret"]}, "FX201"),
        ({"select": "customers", "where": {"secret": {"eq": "s1"}}}, "FX201"),  # filtering would leak it
        ({"update": "customers", "set": {"name": "x"}, "all": True}, "FX202"),
        ({"insert": "customers", "values": {"email": "a@b", "secret": "x"}}, "FX202"),
    ]
    for query, code in cases:
        with pytest.raises(InvalidQuery) as refused:
            prepare(query, catalog, "user")
        assert code in _codes(refused.value), query
    # The service role has no such rules: it reads everything.
    with as_role("service") as session:
        assert run_query(
            session, {"select": "customers", "columns": ["secret"], "limit": 1}, catalog, "service"
        )["rows"]


def test_column_policies_hold_against_raw_sql_too(conn: Conn, shop: Catalog, as_role: Any) -> None:
    _policies(conn, ("customers", "secret", "user", False, False, None))
    with pytest.raises(PermissionDenied), as_role("user") as session:
        session.execute("SELECT secret FROM customers")
    with pytest.raises(PermissionDenied), as_role("user") as session:
        session.execute("UPDATE customers SET secret = 'x'")
    with as_role("user") as session:
        assert session.execute("SELECT count(email) FROM customers").fetchone() == (3,)


def test_a_role_without_grants_is_refused_by_postgres_as_fx204(shop: Catalog, as_role: Any) -> None:
    with pytest.raises(PermissionDenied), as_role("anon") as session:
        run_query(session, {"select": "customers"}, shop, "anon")
    with as_role("anon") as session:
        assert run_query(session, {"select": "products", "columns": ["sku"], "limit": 1}, shop, "anon")[
            "rows"
        ]


def test_more_rows_than_the_limit_is_an_error_not_a_silent_cut(shop: Catalog, as_role: Any) -> None:
    limits = Limits(max_rows=2)
    with pytest.raises(TooManyRows) as refused, as_role("user") as session:
        run_query(session, {"select": "orders"}, shop, "user", limits)
    assert refused.value.code == "FX111"
    with as_role("user") as session:
        page = run_query(session, {"select": "orders", "limit": 2}, shop, "user", limits)
    assert len(page["rows"]) == 2 and page["after"]


def test_nesting_deeper_than_the_limit_is_refused(shop: Catalog) -> None:
    query = {"select": "customers", "columns": [{"orders_by_customer_id": [{"items": ["sku"]}]}]}
    prepare(query, shop, "user", Limits(max_depth=3))
    with pytest.raises(InvalidQuery) as refused:
        prepare(query, shop, "user", Limits(max_depth=2))
    assert _codes(refused.value) == ["FX110"]


def test_a_statement_past_the_role_timeout_is_fx112(conn: Conn, shop: Catalog) -> None:
    from flux import db

    conn.execute("CREATE VIEW slow_orders AS SELECT o.id, pg_sleep(0.5)::text AS nap FROM orders o")
    conn.execute("GRANT SELECT ON slow_orders TO flux_user")
    catalog = load_catalog(conn)
    with (
        pytest.raises(QueryTimedOut),
        db.request_transaction(
            conn, role="user", request_id="00000000-0000-4000-8000-000000000000", statement_timeout_ms=100
        ),
    ):
        run_query(conn, {"select": "slow_orders", "columns": ["id"]}, catalog, "user")


def test_planned_count_is_an_estimate_from_the_planner(shop: Catalog, as_role: Any, conn: Conn) -> None:
    conn.execute("ANALYZE orders")
    with as_role("user") as session:
        result = run_query(session, {"select": "orders", "columns": ["id"], "count": "planned"}, shop, "user")
    assert result["count"] == 4


def test_the_catalog_reloads_when_ddl_runs(conn: Conn, dsn: str, shop: Catalog) -> None:
    from flux.listen import Listener

    cache, listener = CatalogCache(), Listener()
    assert "nickname" not in cache.get(conn).tables["customers"].columns
    listener.follow(cache)
    listener.start(dsn)
    time.sleep(0.3)  # the listener connects
    conn.execute("ALTER TABLE customers ADD COLUMN nickname text")
    deadline = time.monotonic() + 5
    try:
        while "nickname" not in cache.get(conn).tables["customers"].columns:
            assert time.monotonic() < deadline, "the catalog was not reloaded after ALTER TABLE"
            time.sleep(0.05)
    finally:
        listener.close()


def test_queries_run_concurrently_on_one_catalog(dsn: str, shop: Catalog) -> None:
    from flux import db

    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with (
                psycopg.connect(dsn) as own,
                db.request_transaction(
                    own, role="user", request_id=f"00000000-0000-4000-8000-00000000000{n}"
                ),
            ):
                for _ in range(20):
                    run_query(
                        own, {"select": "orders", "where": {"customer_id": {"eq": n % 2 + 1}}}, shop, "user"
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_every_refusal_is_a_flux_error_with_a_4xx_status(shop: Catalog, as_role: Any) -> None:
    for query in (
        {"select": "orders", "where": {"id": {"eq": "seven"}}},
        {"insert": "customers", "values": {"email": "ada@example.com"}},
    ):
        with pytest.raises(FluxError) as failed, as_role("user") as session:
            run_query(session, query, shop, "user")
        assert 400 <= failed.value.http_status < 500


def test_a_write_through_the_engine_records_its_request_id(conn: Conn, shop: Catalog) -> None:
    from flux import db

    conn.execute("SELECT flux.track('orders')")
    request_id = "6f1c2a4e-8d1b-4f7a-9c3e-2b5d7e9f0a11"
    with db.request_transaction(conn, role="user", request_id=request_id, claims={"sub": "ada"}):
        query = {"update": "orders", "set": {"status": "paid"}, "where": {"id": {"eq": 2}}}
        run_query(conn, query, shop, "user")
    row = conn.execute("SELECT request_id::text, op, row_pk, changed, actor FROM flux.mutations").fetchone()
    assert row is not None
    assert row[:4] == (request_id, "UPDATE", {"id": 2}, ["status"])


def test_each_role_has_its_own_statement_timeout(conn: Conn, shop: Catalog) -> None:
    from flux import db

    limits = Limits(statement_timeouts_ms=(("anon", 100), ("user", 250)))
    for role, expected in (("anon", "100ms"), ("user", "250ms")):
        with db.request_transaction(
            conn, role=role, request_id="00000000-0000-4000-8000-000000000001",
            statement_timeout_ms=limits.timeout_for(role),
        ):  # fmt: skip
            assert conn.execute("SHOW statement_timeout").fetchone() == (expected,)
    assert Limits().timeout_for("service") == 60_000


# -- the query language's additions: group keys, not as a list, text search forms --------------------------


def test_each_group_answers_its_key_also_from_a_cached_plan(shop: Catalog, as_role: Any) -> None:
    shop.plans.clear()
    query = {"select": "orders", "aggregate": {"count": "*"}, "group_by": ["customer_id"],
             "where": {"status": {"neq": "cancelled"}}, "order": ["customer_id"]}  # fmt: skip
    again = {**query, "where": {"status": {"neq": "paid"}}}
    with as_role("user") as session:
        assert run_query(session, query, shop, "user")["rows"] == [
            {"customer_id": 1, "count": 2},
            {"customer_id": 2, "count": 1},
        ]
        assert run_query(session, again, shop, "user")["rows"] == [
            {"customer_id": 1, "count": 1},
            {"customer_id": 2, "count": 1},
        ]
    assert len(shop.plans) == 1


def test_a_group_key_and_an_aggregate_cannot_answer_under_one_key(conn: Conn, as_role: Any) -> None:
    conn.execute("CREATE TABLE tallies (id int PRIMARY KEY, count int, sum_total int, total int)")
    conn.execute("GRANT SELECT ON tallies TO flux_user")
    catalog = load_catalog(conn)
    for aggregate, group_by, pointer, hint in [
        ({"count": "*"}, ["count"], "/aggregate/count",
         'name it in a list, {"count": ["*"]}, to answer it as "count_*"'),
        ({"sum": ["total"]}, ["sum_total"], "/aggregate/sum/0", "group a view that renames the column"),
    ]:  # fmt: skip
        query = {"select": "tallies", "aggregate": aggregate, "group_by": group_by}
        with pytest.raises(InvalidQuery) as refused:
            prepare(query, catalog, "user")
        assert refused.value.code == "FX105"
        assert [(p["pointer"], p["hint"]) for p in refused.value.problems] == [(pointer, hint)]
    with as_role("user") as session:  # the hint's way out works
        query = {"select": "tallies", "aggregate": {"count": ["*"]}, "group_by": ["count"]}
        assert run_query(session, query, catalog, "user")["rows"] == []


def test_not_with_a_list_is_one_plan_for_every_value(shop: Catalog, as_role: Any) -> None:
    shop.plans.clear()

    def query(status: str, customer: int) -> dict[str, Any]:
        where = {"not": [{"status": {"eq": status}}, {"customer_id": {"eq": customer}}]}
        return {"select": "orders", "columns": ["id"], "where": where}

    with as_role("user") as session:
        assert run_query(session, query("paid", 1), shop, "user")["rows"] == [{"id": 2}, {"id": 3}, {"id": 4}]
        assert run_query(session, query("paid", 2), shop, "user")["rows"] == [{"id": 1}, {"id": 2}, {"id": 4}]
    assert len(shop.plans) == 1  # the values are parameters, the list is the shape


def test_a_text_search_configuration_is_bound_and_part_of_the_plans_shape(
    shop: Catalog, as_role: Any
) -> None:
    shop.plans.clear()

    def query(config: str) -> dict[str, Any]:
        return {
            "select": "customers",
            "columns": ["id"],
            "where": {"bio": {"plfts": {"query": "the", "config": config}}},
        }

    with as_role("user") as session:
        assert run_query(session, query("simple"), shop, "user")["rows"] == [{"id": 1}]
        assert run_query(session, query("english"), shop, "user")["rows"] == []  # "the" is a stop word there
    planned = prepare(query("english"), shop, "user")
    assert planned.params[:2] == ["english", "the"] and "english" not in planned.sql
    assert len(shop.plans) == 2


def test_text_search_on_a_tsvector_column_and_with_a_configuration_that_needs_quotes(
    conn: Conn, as_role: Any
) -> None:
    conn.execute('CREATE TEXT SEARCH CONFIGURATION public."Plain" (COPY = pg_catalog.simple)')
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, doc tsvector)")
    conn.execute(
        "INSERT INTO docs VALUES (1, 'The quick brown fox', to_tsvector('english', 'The quick brown fox'))"
    )
    conn.execute("GRANT SELECT ON docs TO flux_user")
    catalog = load_catalog(conn)
    assert catalog.text_search_configs["Plain"] == '"Plain"'
    assert catalog.text_search_configs["public.Plain"] == 'public."Plain"'
    cases = [
        ({"doc": {"fts": "quick & fox"}}, [{"id": 1}]),
        ({"doc": {"phfts": {"query": "brown foxes", "config": "english"}}}, [{"id": 1}]),
        ({"doc": {"phfts": {"query": "fox brown", "config": "english"}}}, []),
        ({"body": {"plfts": {"query": "the", "config": "Plain"}}}, [{"id": 1}]),
        ({"body": {"wfts": {"query": "the", "config": "public.Plain"}}}, [{"id": 1}]),
    ]
    with as_role("user") as session:
        for where, rows in cases:
            query = {"select": "docs", "columns": ["id"], "where": where}
            assert run_query(session, query, catalog, "user")["rows"] == rows, where
    planned = prepare({"select": "docs", "where": {"doc": {"fts": "fox"}}}, catalog, "user")
    assert "TO_TSVECTOR" not in planned.sql  # a tsvector column is searched as it is


def test_a_configuration_is_never_sql(shop: Catalog) -> None:
    hostile = "english'::regconfig, 'x') OR true --"
    with pytest.raises(InvalidQuery) as refused:
        prepare(
            {"select": "customers", "where": {"bio": {"fts": {"query": "x", "config": hostile}}}},
            shop,
            "user",
        )
    assert refused.value.code == "FX104" and refused.value.problems[0]["pointer"] == "/where/bio/fts/config"


def test_a_select_wider_than_postgres_allows_is_refused_at_every_level(shop: Catalog) -> None:
    embedded = {"select": "customers", "columns": ["id", {"orders_by_customer_id": ["id"] * 1700}]}
    with pytest.raises(InvalidQuery) as refused:
        prepare(embedded, shop, "user")
    assert refused.value.code == "FX113"
    assert refused.value.problems[0]["pointer"] == "/columns/1/orders_by_customer_id"
    ordered = {"orders_by_customer_id": {"columns": ["status"] * 1664, "order": ["id"]}}  # plus its sort key
    with pytest.raises(InvalidQuery) as refused:
        prepare({"select": "customers", "columns": [ordered]}, shop, "user")
    assert refused.value.code == "FX113"
    prepare({"select": "customers", "columns": [{"orders_by_customer_id": ["id"] * 1664}]}, shop, "user")
