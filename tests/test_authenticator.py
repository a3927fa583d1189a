"""Request connections log in as flux_authenticator: a request runs as its Flux role, and a function that
leaves that role lands on a role that can write a request's record and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from flux import db
from flux.data import load_catalog
from flux.errors import RawSqlForbidden
from flux.runtime import Caller, Runtime, invoke
from tests.fixtures.runtime import NOTES_SQL, function

Conn = psycopg.Connection[Any]


@pytest.fixture
def request_conn(conn: Conn, dsn: str) -> Iterator[Conn]:
    conn.execute(NOTES_SQL.encode())
    conn.execute(
        b"CREATE TABLE payroll (id int PRIMARY KEY, salary int); INSERT INTO payroll VALUES (1, 100)"
    )
    # A function the project defined that leaves the request's role, as a user's PL/pgSQL might.
    conn.execute(
        b"CREATE FUNCTION public.escape() RETURNS text LANGUAGE plpgsql AS $$"
        b" BEGIN PERFORM set_config('role', 'none', true); RETURN current_user; END $$;"
        b" GRANT EXECUTE ON FUNCTION public.escape() TO flux_service"
    )
    conn.commit()
    with psycopg.connect(db.request_dsn(dsn)) as request_conn:
        yield request_conn


def test_a_request_on_the_authenticator_connection_runs_and_is_recorded(
    request_conn: Conn, runtime: Runtime
) -> None:
    insert = "{insert: 'notes', values: {body: 'hi'}, returning: ['id']}"
    fn = function(
        "writer", "typescript", f"export default async (req, ctx) => (await ctx.db.query({insert})).rows"
    )
    outcome = invoke(request_conn, runtime, fn, {"path": "/"}, catalog=load_catalog(request_conn),
                     caller=Caller(role="user"))  # fmt: skip
    assert outcome.error is None and outcome.response.body == [{"id": 1}]
    assert request_conn.execute("SELECT current_user").fetchone() == ("flux_authenticator",)


def test_leaving_the_request_role_lands_on_a_role_that_can_do_nothing_else(request_conn: Conn) -> None:
    from flux.data import run_sql

    with db.request_transaction(
        request_conn, role="service", request_id="00000000-0000-4000-8000-000000000001"
    ):
        with pytest.raises(RawSqlForbidden):  # the engine notices the role changed under it
            run_sql(request_conn, "SELECT public.escape()", [], "service")
    request_conn.rollback()
    request_conn.execute("SET ROLE NONE")  # where any escape ends
    assert request_conn.execute("SELECT current_user").fetchone() == ("flux_authenticator",)
    for statement in (
        "SELECT * FROM payroll",
        "DELETE FROM notes",
        "CREATE TABLE public.mine (id int)",
        "DROP TABLE payroll",
        "SELECT * FROM flux.mutations",
        "ALTER ROLE flux_authenticator SUPERUSER",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            request_conn.execute(statement.encode())
        request_conn.rollback()
