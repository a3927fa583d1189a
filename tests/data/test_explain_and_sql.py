"""`flux explain` and raw SQL for the service role, against the shop data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from flux.data import Catalog, run_sql
from flux.data.explain import explain
from flux.errors import InvalidRawSql, RawSqlForbidden
from tests.fixtures.processes import run_flux


def test_explain_shows_sql_params_role_policies_and_plan(
    conn: psycopg.Connection[Any], shop: Catalog
) -> None:
    conn.execute("ALTER TABLE customers ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY own_row ON customers FOR SELECT TO flux_user USING (owner = flux.user_id())")
    query = {"select": "customers", "columns": ["email"], "where": {"id": {"eq": 2}}}
    explanation = explain(conn, query, shop, "user", {"sub": "bob"})
    assert explanation.sql.startswith('SELECT JSON_BUILD_OBJECT(\'email\', "t1"."email")')
    assert explanation.params == ["2"]  # a lookup by primary key needs no order, page or cursor
    assert [p["policy"] for p in explanation.row_level] == ["own_row"]
    assert any("customers" in line for line in explanation.plan)
    assert conn.execute("SELECT current_user").fetchone() != ("flux_user",)  # nothing leaked out


def test_the_explain_command_prints_it(
    dsn: str, shop: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import app

    query = tmp_path / "query.json"
    query.write_text(json.dumps({"select": "products", "where": {"price": {"gt": 2}}}))
    monkeypatch.setenv("DATABASE_URL", dsn)
    result = CliRunner().invoke(app, ["explain", str(query), "--role", "anon"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "role     flux_anon"
    assert lines[2] == 'params   ["2", 1001]'
    assert "Seq Scan on products" in result.output


def test_the_explain_command_names_the_first_problems_code_and_lists_every_problem(
    dsn: str, shop: Catalog, tmp_path: Path, flux_env: dict[str, str]
) -> None:
    query = {"select": "products", "columns": ["sku", "prise"], "where": {"sku": {"eqq": 1}}}
    (tmp_path / "query.json").write_text(json.dumps(query))
    env = {**flux_env, "DATABASE_URL": dsn}
    result = run_flux(["explain", "query.json"], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error FX102: products has no column 'prise' at /columns/1 (and 1 more)",
        "  hint: did you mean 'price'?",
        "  problems:",
        "    FX102 /columns/1: products has no column 'prise' (did you mean 'price'?)",
        "    FX104 /where/sku/eqq: unknown operator 'eqq' (did you mean 'eq'?)",
    ]
    as_json = run_flux(["explain", "query.json", "--json"], env, tmp_path)
    assert as_json.returncode == 1
    answer = json.loads(as_json.stdout)
    assert answer["code"] == "FX102" and [p["code"] for p in answer["problems"]] == ["FX102", "FX104"]
    assert answer["problems"][1] == {
        "code": "FX104", "pointer": "/where/sku/eqq", "message": "unknown operator 'eqq'",
        "hint": "did you mean 'eq'?",
    }  # fmt: skip


def test_raw_sql_runs_for_the_service_role(shop: Catalog, as_role: Any) -> None:
    with as_role("service") as session:
        result = run_sql(
            session, "UPDATE orders SET status = $1 WHERE id = $2 RETURNING id, total", ["x", 1], "service"
        )
    assert result == {"rows": [{"id": 1, "total": 10.5}], "count": 1, "kind": "write"}


def test_raw_sql_is_refused_for_other_roles_and_for_two_statements(shop: Catalog, as_role: Any) -> None:
    with pytest.raises(RawSqlForbidden), as_role("user") as session:
        run_sql(session, "SELECT 1", [], "user")
    with pytest.raises(InvalidRawSql), as_role("service") as session:
        run_sql(session, "SELECT 1; DROP TABLE customers", [], "service")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('ro' || 'le', 'none', true)",
        "DO $$ BEGIN PERFORM set_config('role', 'none', true); END $$",
    ],
)
def test_raw_sql_cannot_leave_the_service_role(shop: Catalog, as_role: Any, sql: str) -> None:
    with pytest.raises(InvalidRawSql), as_role("service") as session:
        run_sql(session, sql, [], "service")


def test_a_function_that_switches_role_is_caught_after_the_statement(
    conn: psycopg.Connection[Any], shop: Catalog, as_role: Any
) -> None:
    conn.execute(
        "CREATE FUNCTION sneaky() RETURNS int LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM set_config('role', 'none', true); RETURN 1; END $$"
    )
    with pytest.raises(RawSqlForbidden), as_role("service") as session:
        run_sql(session, "SELECT sneaky()", [], "service")
