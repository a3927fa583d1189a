"""Raw SQL: one statement only, classified read/write/ddl/other, named for its span, escapes refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.data.raw import RawStatement, inspect_raw_sql, require_service_role
from flux.errors import InvalidRawSql, RawSqlForbidden

CLASSIFIED = [
    # read
    ("SELECT 1", "read", "sql:select", ()),
    ("select id from orders where id = $1", "read", "sql:select(orders)", ("orders",)),
    (
        "SELECT * FROM Public.Orders o JOIN customers c ON c.id = o.customer_id",
        "read",
        "sql:select(public.orders)",
        ("public.orders", "customers"),
    ),
    (
        'select * from "Orders", shop.public.items',
        "read",
        'sql:select("Orders")',
        ('"Orders"', "shop.public.items"),
    ),
    (
        "with recent as (select * from orders) select * from recent join items on true",
        "read",
        "sql:select(orders)",
        ("orders", "items"),
    ),
    ("select * from (select * from a) x where exists (select 1 from b)", "read", "sql:select(a)", ("a", "b")),
    ("select 1 union all select id from orders", "read", "sql:select(orders)", ("orders",)),
    ("VALUES (1, 'a'), (2, 'b')", "read", "sql:select", ()),
    ("TABLE orders", "read", "sql:select(orders)", ("orders",)),
    ("SHOW work_mem", "read", "sql:show", ()),
    ("EXPLAIN SELECT * FROM orders", "read", "sql:explain(orders)", ("orders",)),
    ("EXPLAIN DELETE FROM orders", "read", "sql:explain(orders)", ("orders",)),
    ("EXPLAIN ANALYZE SELECT * FROM orders", "read", "sql:explain(orders)", ("orders",)),
    ("EXPLAIN (ANALYZE off, VERBOSE) UPDATE orders SET n = 1", "read", "sql:explain(orders)", ("orders",)),
    ("EXPLAIN (ANALYZE false) UPDATE orders SET n = 1", "read", "sql:explain(orders)", ("orders",)),
    ("EXPLAIN (ANALYZE 0) UPDATE orders SET n = 1", "read", "sql:explain(orders)", ("orders",)),
    # write
    ("INSERT INTO orders (id) VALUES (1)", "write", "sql:insert(orders)", ("orders",)),
    (
        "insert into public.orders select * from staging",
        "write",
        "sql:insert(public.orders)",
        ("public.orders", "staging"),
    ),
    (
        "UPDATE public.orders SET total = 0 WHERE id = 1",
        "write",
        "sql:update(public.orders)",
        ("public.orders",),
    ),
    (
        "update orders set n = i.n from items i where i.order_id = orders.id",
        "write",
        "sql:update(orders)",
        ("orders", "items"),
    ),
    (
        "DELETE FROM orders USING customers c WHERE c.id = orders.customer_id",
        "write",
        "sql:delete(orders)",
        ("orders", "customers"),
    ),
    (
        "with src as (select * from staging) insert into orders select * from src",
        "write",
        "sql:insert(orders)",
        ("orders", "staging"),
    ),
    (
        "MERGE INTO orders o USING staging s ON o.id = s.id WHEN MATCHED THEN DELETE",
        "write",
        "sql:merge(orders)",
        ("orders", "staging"),
    ),
    (
        "WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone",
        "write",
        "sql:select(orders)",
        ("orders",),
    ),
    (
        "with x as (update items set n = 0 returning *) select * from orders",
        "write",
        "sql:select(items)",
        ("items", "orders"),
    ),
    ("SELECT * FROM orders WHERE id = 1 FOR UPDATE", "write", "sql:select(orders)", ("orders",)),
    ("select * from orders for share skip locked", "write", "sql:select(orders)", ("orders",)),
    ("select * from (select * from orders for update) x", "write", "sql:select(orders)", ("orders",)),
    ("EXPLAIN ANALYZE DELETE FROM orders", "write", "sql:explain(orders)", ("orders",)),
    ("EXPLAIN (ANALYZE, BUFFERS) INSERT INTO orders VALUES (1)", "write", "sql:explain(orders)", ("orders",)),
    ("EXPLAIN (ANALYZE on) UPDATE orders SET n = 1", "write", "sql:explain(orders)", ("orders",)),
    ("TRUNCATE orders, items", "write", "sql:truncate(orders)", ("orders", "items")),
    ("REFRESH MATERIALIZED VIEW totals", "write", "sql:refresh_materialized_view(totals)", ("totals",)),
    # ddl
    (
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers)",
        "ddl",
        "sql:create_table(orders)",
        ("orders", "customers"),
    ),
    (
        "create index orders_total_idx on public.orders (total)",
        "ddl",
        "sql:create_index(public.orders)",
        ("public.orders",),
    ),
    ("ALTER TABLE orders ADD COLUMN note text", "ddl", "sql:alter_table(orders)", ("orders",)),
    ("alter table orders rename column note to notes", "ddl", "sql:rename(orders)", ("orders",)),
    ("DROP TABLE orders, archive.orders", "ddl", "sql:drop_table(orders)", ("orders", "archive.orders")),
    ("DROP INDEX orders_total_idx", "ddl", "sql:drop_index(orders_total_idx)", ("orders_total_idx",)),
    ("DROP FUNCTION total(int)", "ddl", "sql:drop_function", ()),
    (
        "CREATE VIEW open_orders AS SELECT * FROM orders",
        "ddl",
        "sql:create_view(open_orders)",
        ("open_orders", "orders"),
    ),
    (
        "CREATE MATERIALIZED VIEW totals AS SELECT sum(total) FROM orders",
        "ddl",
        "sql:create_materialized_view(totals)",
        ("totals", "orders"),
    ),
    ("CREATE TABLE copy AS SELECT * FROM orders", "ddl", "sql:create_table(copy)", ("copy", "orders")),
    ("SELECT * INTO copy FROM orders", "ddl", "sql:create_table(copy)", ("copy", "orders")),
    ("GRANT SELECT ON orders TO flux_user", "ddl", "sql:grant(orders)", ("orders",)),
    ("REVOKE SELECT ON orders FROM flux_user", "ddl", "sql:revoke(orders)", ("orders",)),
    ("COMMENT ON TABLE orders IS 'paid and unpaid'", "ddl", "sql:comment(orders)", ("orders",)),
    (
        "COMMENT ON COLUMN public.orders.total IS NULL",
        "ddl",
        "sql:comment(public.orders)",
        ("public.orders",),
    ),
    ("CREATE SCHEMA shop", "ddl", "sql:create_schema", ()),
    ("CREATE SEQUENCE order_numbers", "ddl", "sql:create_sequence(order_numbers)", ("order_numbers",)),
    # other
    ("SET LOCAL search_path = shop, public", "other", "sql:set", ()),
    ("SELECT set_config('search_path', 'shop', true)", "read", "sql:select", ()),
    ("SET LOCAL work_mem = '8MB'", "other", "sql:set", ()),
    ("RESET search_path", "other", "sql:reset", ()),
    ("CALL settle(1)", "other", "sql:call", ()),
    ("NOTIFY orders, 'paid'", "other", "sql:notify", ()),
    ("LOCK TABLE orders IN SHARE MODE", "other", "sql:lock(orders)", ("orders",)),
    ("VACUUM orders", "other", "sql:vacuum(orders)", ("orders",)),
    ("ANALYZE orders", "other", "sql:analyze(orders)", ("orders",)),
]


@pytest.mark.parametrize(("sql", "kind", "span_name", "tables"), CLASSIFIED)
def test_a_statement_is_classified_named_and_its_tables_listed(
    sql: str, kind: str, span_name: str, tables: tuple[str, ...]
) -> None:
    statement = inspect_raw_sql(sql)
    assert isinstance(statement, RawStatement)
    assert (statement.sql, statement.kind, statement.span_name, statement.tables) == (
        sql,
        kind,
        span_name,
        tables,
    )


def test_a_trailing_semicolon_comments_and_case_do_not_change_the_answer() -> None:
    answers = {
        (statement.kind, statement.span_name, statement.tables)
        for statement in map(
            inspect_raw_sql,
            [
                "update orders set n = 1",
                "UPDATE Orders SET n = 1;",
                "-- settle\nupdate /* all */ ORDERS set n = 1 ;;",
            ],
        )
    }
    assert answers == {("write", "sql:update(orders)", ("orders",))}


def test_names_are_quoted_only_where_sql_needs_it() -> None:
    statement = inspect_raw_sql('select * from "Shop"."order items", "user", "émoji"')
    assert statement.tables == ('"Shop"."order items"', '"user"', '"émoji"')
    assert statement.span_name == 'sql:select("Shop"."order items")'


def test_a_cte_name_is_not_a_table_but_a_qualified_name_that_looks_like_one_is() -> None:
    statement = inspect_raw_sql("with orders as (select 1) select * from orders, public.orders")
    assert statement.tables == ("public.orders",)


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN",
        "START TRANSACTION READ WRITE",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT before_settle",
        "RELEASE SAVEPOINT before_settle",
        "ROLLBACK TO SAVEPOINT before_settle",
        "PREPARE TRANSACTION 'settle'",
        "COMMIT PREPARED 'settle'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET transaction_read_only = off",
    ],
)
def test_transaction_control_is_refused_because_the_request_owns_the_transaction(sql: str) -> None:
    with pytest.raises(InvalidRawSql, match="transaction"):
        inspect_raw_sql(sql)


@pytest.mark.parametrize(
    "sql", ["PREPARE one AS SELECT 1", "EXECUTE one", "DEALLOCATE ALL", "DEALLOCATE flux_1", "DISCARD ALL",
            "DISCARD PLANS"],
)  # fmt: skip
def test_session_prepared_statements_are_refused_because_flux_prepares_its_own(sql: str) -> None:
    # DEALLOCATE ALL would fail the next request on the connection; PREPARE could take a name Flux uses.
    with pytest.raises(InvalidRawSql, match="session is Flux's"):
        inspect_raw_sql(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SET ROLE postgres",
        "set local role postgres",
        'SET "ROLE" = postgres',
        "RESET ROLE",
        "SET SESSION AUTHORIZATION postgres",
        "RESET SESSION AUTHORIZATION",
        "RESET ALL",
        "SELECT set_config('role', 'postgres', true)",
        "select pg_catalog.set_config('Session_Authorization', 'postgres', false) from orders",
        "ALTER ROLE flux_service SET role = postgres",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = postgres AS $$ SELECT 1 $$",
    ],
)
def test_changing_the_role_is_refused(sql: str) -> None:
    with pytest.raises(InvalidRawSql, match="may not change the role") as caught:
        inspect_raw_sql(sql)
    assert caught.value.details["setting"] in {"role", "session_authorization"}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('flux.claims', '{\"sub\": \"someone-else\"}', true)",
        "SET LOCAL flux.request_id = '00000000-0000-0000-0000-000000000000'",
        "SET flux.tenant_id TO DEFAULT",
        "RESET flux.span_seq",
    ],
)
def test_changing_fluxs_request_settings_is_refused(sql: str) -> None:
    """Row-level security reads flux.claims, and the mutation log flux.request_id: a function must not forge
    either."""
    with pytest.raises(InvalidRawSql, match=r"may not change flux\.") as caught:
        inspect_raw_sql(sql)
    assert caught.value.details["setting"].startswith("flux.")


@pytest.mark.parametrize(
    "sql",
    [
        "COPY orders FROM '/etc/passwd'",
        "COPY orders TO '/tmp/orders.csv'",
        "COPY orders FROM PROGRAM 'curl example.com'",
        "COPY (SELECT 1) TO PROGRAM 'sh'",
    ],
)
def test_copy_to_or_from_a_server_file_or_program_is_refused(sql: str) -> None:
    with pytest.raises(InvalidRawSql, match="COPY"):
        inspect_raw_sql(sql)


@pytest.mark.parametrize("sql", ["", "   ", ";", " ; ;", "-- nothing here", "/* nor here */"])
def test_no_statement_is_refused(sql: str) -> None:
    with pytest.raises(InvalidRawSql, match="no statement"):
        inspect_raw_sql(sql)


def test_more_than_one_statement_is_refused_and_the_second_is_located() -> None:
    with pytest.raises(InvalidRawSql, match="one statement, not 3") as caught:
        inspect_raw_sql("select 'é';\n  delete from orders; drop table orders")
    assert caught.value.code == "FX120"
    assert caught.value.details == {"statements": 3, "line": 2, "column": 3}


def test_a_syntax_error_says_where() -> None:
    with pytest.raises(InvalidRawSql, match="line 2, column 13") as caught:
        inspect_raw_sql("select 'é'\nfrom o wher id = 1")
    assert caught.value.details == {"line": 2, "column": 13, "error": 'syntax error at or near "id"'}


def test_a_syntax_error_at_the_end_points_past_the_last_character() -> None:
    with pytest.raises(InvalidRawSql) as caught:
        inspect_raw_sql("select * from")
    assert caught.value.details == {"line": 1, "column": 14, "error": "syntax error at end of input"}


def test_a_nul_character_is_refused_because_the_parser_would_stop_there() -> None:
    with pytest.raises(InvalidRawSql, match="NUL") as caught:
        inspect_raw_sql("select 1 -- \x00; drop table orders")
    assert caught.value.details == {"line": 1, "column": 13}


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(InvalidRawSql, match="Unicode"):
        inspect_raw_sql("select '\ud800'")


@pytest.mark.parametrize(
    "sql",
    [
        " union ".join(["select 1"] * 30_000),
        "select " + "+".join(["1"] * 100_000),
        "select " + "(" * 20_000 + "1" + ")" * 20_000,
    ],
    ids=["union", "plus", "parentheses"],
)
def test_statements_nested_too_deeply_are_refused_without_crashing(sql: str) -> None:
    # parse_sql() builds pglast's Python tree recursively in C, and on these it kills the process.
    with pytest.raises(InvalidRawSql, match="nested too deeply"):
        inspect_raw_sql(sql)


def test_only_the_service_role_may_send_raw_sql() -> None:
    require_service_role("service")
    for role in ("user", "anon", "Service", ""):
        with pytest.raises(RawSqlForbidden) as caught:
            require_service_role(role)
        assert caught.value.code == "FX203"
        assert caught.value.http_status == 403
        assert caught.value.hint


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_random_text_raises_nothing_but_invalid_raw_sql(sql: str) -> None:
    try:
        statement = inspect_raw_sql(sql)
    except InvalidRawSql as error:
        assert error.message
    else:
        assert statement.span_name.startswith("sql:")


SQL_WORDS = [
    "select",
    "insert",
    "into",
    "update",
    "delete",
    "from",
    "where",
    "with",
    "as",
    "set",
    "values",
    "table",
    "create",
    "drop",
    "alter",
    "grant",
    "on",
    "to",
    "role",
    "copy",
    "stdin",
    "program",
    "explain",
    "analyze",
    "for",
    "share",
    "returning",
    "merge",
    "using",
    "when",
    "matched",
    "then",
    "do",
    "nothing",
    "union",
    "join",
    "begin",
    "commit",
    "show",
    "reset",
    "all",
    "lock",
    "orders",
    "public.orders",
    '"Orders"',
    "x",
    "1",
    "'s'",
    "*",
    ",",
    "(",
    ")",
    ";",
    "=",
    ".",
    "$1",
    "set_config('role', 'x', true)",
    "--",
    "/*",
    "*/",
    "$$",
    "\n",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(SQL_WORDS), max_size=25).map(" ".join))
def test_random_sql_words_raise_nothing_but_invalid_raw_sql(sql: str) -> None:
    try:
        statement = inspect_raw_sql(sql)
    except InvalidRawSql as error:
        assert error.message
    else:
        assert statement.kind in {"read", "write", "ddl", "other"}
        assert statement.span_name.startswith("sql:")
        assert all(statement.tables)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([sql for sql, *_ in CLASSIFIED]),
    st.sampled_from(["", ";", " ;  ", "\n-- done", " /* c */ ;"]),
)
def test_trailing_noise_keeps_one_statement_and_its_answer(sql: str, tail: str) -> None:
    first, second = inspect_raw_sql(sql), inspect_raw_sql(sql + tail)
    assert (first.kind, first.span_name, first.tables) == (second.kind, second.span_name, second.tables)


@pytest.mark.parametrize(
    ("sql", "function"),
    [
        ("SELECT query_to_xml('SELECT set_config(''flux.request_id'', ''x'', true)', true, false, '')",
         "query_to_xml"),
        ("SELECT pg_catalog.query_to_xmlschema('SELECT 1', true, false, '')", "query_to_xmlschema"),
        ("SELECT * FROM orders WHERE query_to_xml_and_xmlschema('SELECT 1', true, false, '') IS NULL",
         "query_to_xml_and_xmlschema"),
        ("SELECT * FROM ts_stat('SELECT set_config(''role'', ''none'', true)::tsvector')", "ts_stat"),
        ("SELECT ts_rewrite('a & b'::tsquery, 'SELECT t, s FROM aliases')", "ts_rewrite"),
        ("SELECT pg_advisory_lock(42)", "pg_advisory_lock"),
        ("SELECT pg_try_advisory_lock_shared(1, 2) FROM orders", "pg_try_advisory_lock_shared"),
    ],
)  # fmt: skip
def test_functions_that_run_sql_text_or_hold_session_locks_are_refused(sql: str, function: str) -> None:
    """What SQL text runs is checked by nothing here (it could change the role or flux.request_id), and a
    session lock outlives the request on a connection the next request (or a replay) uses."""
    with pytest.raises(InvalidRawSql, match=f"may not call {function}") as caught:
        inspect_raw_sql(sql)
    assert caught.value.details == {"function": function}


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE AGGREGATE pg_temp.sc(text, boolean)"
        " (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'flux.request_id')",
        "CREATE AGGREGATE sc(text, boolean) (SFUNC = set_config, STYPE = text, INITCOND = 'role')",
        "CREATE AGGREGATE q(boolean, boolean, text) (SFUNC = query_to_xml, STYPE = text)",
    ],
)
def test_an_aggregate_may_not_call_set_config_under_its_own_name(sql: str) -> None:
    """`SELECT sc('none', true)` would be set_config('role', 'none', true), which no check could see."""
    with pytest.raises(InvalidRawSql, match="callable under another name"):
        inspect_raw_sql(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE AGGREGATE total(numeric) (SFUNC = numeric_add, STYPE = numeric)",
        "SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)",
        "SELECT pg_advisory_xact_lock(42)",
        "SELECT pg_try_advisory_xact_lock_shared(42)",
    ],
)
def test_their_harmless_relatives_are_not(sql: str) -> None:
    assert inspect_raw_sql(sql).kind in ("read", "ddl")


# --- what would outlive the request on its pooled connection, or run code no check here sees ----------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('default_transaction_read_only', 'on', false)",
        "SELECT set_config('search_path', 'pg_catalog', false)",
        "SELECT pg_catalog.set_config('client_min_messages', 'debug', 'off')",
        "SELECT set_config('work_mem', '1GB', 'f')",
        "SELECT set_config('search_path', 'x', 1 = 1)",  # computed: may be false
        "SELECT set_config('search_path', 'x', $1)",
        "SELECT set_config('search_path', 'x', NOT false)",
        "SELECT set_config('search_path', 'x', true::boolean)",
        "SELECT set_config('search_path', 'x')",
        "SELECT * FROM orders WHERE set_config('datestyle', 'SQL', false) IS NOT NULL",
        "CREATE VIEW v AS SELECT set_config('search_path', 'x', false)",
        "CREATE DOMAIN pg_temp.uuid AS uuid CHECK (set_config('search_path', 'x', false) IS NOT NULL)",
    ],
)
def test_set_config_for_the_session_is_refused(sql: str) -> None:
    with pytest.raises(InvalidRawSql, match="only for the request's transaction") as caught:
        inspect_raw_sql(sql)
    assert caught.value.details["function"] == "set_config"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config(setting_name => 'search_path', new_value => 'x', is_local => false)",
        "SELECT set_config('search' || '_path', 'x', true)",
        "SELECT set_config(current_setting('x.name'), 'x', true)",
    ],
)
def test_set_config_with_a_computed_or_named_setting_is_refused(sql: str) -> None:
    with pytest.raises(InvalidRawSql, match="literal setting name"):
        inspect_raw_sql(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('search_path', 'x', true)",
        "SELECT pg_catalog.set_config('work_mem', '64MB', 'on')",
        "SELECT set_config('datestyle', 'SQL', 'true')",
    ],
)
def test_set_config_for_the_transaction_is_allowed(sql: str) -> None:
    assert inspect_raw_sql(sql).kind == "read"


@pytest.mark.parametrize(
    ("sql", "setting"),
    [
        ("SET LOCAL statement_timeout = 0", "statement_timeout"),
        ("SET LOCAL statement_timeout = '10min'", "statement_timeout"),
        ("SET statement_timeout TO DEFAULT", "statement_timeout"),
        ("RESET statement_timeout", "statement_timeout"),
        ("SELECT set_config('statement_timeout', '0', true)", "statement_timeout"),
        ("SELECT pg_catalog.set_config('STATEMENT_TIMEOUT', '0', 'on')", "statement_timeout"),
        ("SET LOCAL lock_timeout = 0", "lock_timeout"),
        ("SET LOCAL idle_in_transaction_session_timeout TO DEFAULT", "idle_in_transaction_session_timeout"),
        ("SET LOCAL transaction_timeout = 0", "transaction_timeout"),
        ("RESET idle_session_timeout", "idle_session_timeout"),
        ("ALTER ROLE flux_service SET statement_timeout = 0", "statement_timeout"),
    ],
)
def test_a_limit_on_the_requests_time_is_never_changed(sql: str, setting: str) -> None:
    with pytest.raises(
        InvalidRawSql, match=f"may not change {setting}: it bounds the request's time"
    ) as caught:
        inspect_raw_sql(sql)
    assert caught.value.details == {"setting": setting}


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'",
        "WITH s AS (UPDATE pg_catalog.pg_settings SET setting = 'on'"
        " WHERE name = 'default_transaction_read_only' RETURNING name) SELECT * FROM s",
        "CREATE VIEW settings AS SELECT * FROM pg_settings",
        "SELECT * FROM pg_settings FOR UPDATE",
    ],
)
def test_pg_settings_is_only_read(sql: str) -> None:
    with pytest.raises(InvalidRawSql, match="may only read pg_settings") as caught:
        inspect_raw_sql(sql)
    assert caught.value.details == {"table": "pg_settings"}
    assert inspect_raw_sql("SELECT setting FROM pg_settings WHERE name = 'work_mem'").kind == "read"


@pytest.mark.parametrize(
    ("sql", "setting"),
    [
        ("SET search_path = pg_catalog", "search_path"),
        ("SET SESSION search_path TO public", "search_path"),
        ("SET default_transaction_read_only = on", "default_transaction_read_only"),
        ("SET TIME ZONE 'UTC'", "timezone"),
        ("SET lc_monetary TO DEFAULT", "lc_monetary"),
        ("SET work_mem FROM CURRENT", "work_mem"),
    ],
)
def test_a_session_wide_set_is_refused(sql: str, setting: str) -> None:
    with pytest.raises(InvalidRawSql, match="use SET LOCAL") as caught:
        inspect_raw_sql(sql)
    assert caught.value.details == {"setting": setting}


@pytest.mark.parametrize(
    ("sql", "statement"),
    [
        ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", "CREATE FUNCTION"),
        (
            "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS"
            " $$ BEGIN EXECUTE 'PREPARE flux_1 AS SELECT 1'; END $$",
            "CREATE FUNCTION",
        ),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", "CREATE FUNCTION"),
        ("CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$", "CREATE PROCEDURE"),
        ("CREATE EXTENSION pgcrypto", "CREATE EXTENSION"),
        ("CREATE LANGUAGE plsample HANDLER plsample_call_handler", "CREATE LANGUAGE"),
        ("COPY orders TO STDOUT", "COPY TO STDOUT"),
        ("COPY (SELECT 1) TO STDOUT", "COPY TO STDOUT"),
        ("COPY orders FROM STDIN", "COPY FROM STDIN"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE WITH HOLD"),
        ("LISTEN orders", "LISTEN"),
        ("UNLISTEN *", "UNLISTEN"),
        ("LOAD 'auto_explain'", "LOAD"),
    ],
)
def test_statements_that_make_code_or_outlive_the_request_are_refused(sql: str, statement: str) -> None:
    with pytest.raises(InvalidRawSql) as caught:
        inspect_raw_sql(sql)
    assert caught.value.code == "FX120"
    assert caught.value.details == {"statement": statement}


def test_setseed_is_refused_and_a_cursor_without_hold_is_not() -> None:
    with pytest.raises(InvalidRawSql, match="random seed"):
        inspect_raw_sql("SELECT setseed(0.5)")
    assert inspect_raw_sql("DECLARE c CURSOR FOR SELECT 1").kind == "other"
