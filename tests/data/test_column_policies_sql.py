"""flux.apply_column_policies() turns column policies into column GRANTs, so raw SQL cannot bypass them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

Conn = psycopg.Connection[Any]
PRIVILEGES = ("SELECT", "INSERT", "UPDATE")


@pytest.fixture
def people(conn: Conn) -> Conn:
    conn.execute("CREATE TABLE people (id int PRIMARY KEY, name text, secret text, salary int)")
    conn.execute("INSERT INTO people VALUES (1, 'ada', 's3cret', 100)")
    conn.execute("GRANT SELECT, INSERT, UPDATE ON people TO flux_user")
    return conn


def _policy(conn: Conn, column: str, role: str = "user", **rule: object) -> None:
    names = ["table_name", "column_name", "role", *rule]
    conn.execute(
        sql.SQL("INSERT INTO flux.column_policies ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(sql.Placeholder() * len(names))
        ),
        ["people", column, role, *rule.values()],
    )


def _apply(conn: Conn) -> list[str]:
    return [row[0] for row in conn.execute("SELECT flux.apply_column_policies()")]


def _run_as(conn: Conn, role: str, statement: str) -> list[tuple[Any, ...]]:
    """Run one statement as a Flux request role, the way the gateway does; the writes roll back."""
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        cursor = conn.execute(statement.encode())
        return cursor.fetchall() if cursor.description else []


def _refused(conn: Conn, role: str, statement: str) -> bool:
    try:
        _run_as(conn, role, statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def _privileges(conn: Conn, role: str, table: str = "people") -> dict[tuple[str, str], bool]:
    """What the role may do on each column, as Postgres decides it (table and column grants together)."""
    rows = conn.execute(
        """SELECT a.attname, p.privilege, has_column_privilege(%s, a.attrelid, a.attname, p.privilege)
             FROM pg_attribute a, unnest(%s::text[]) AS p(privilege)
            WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
        (role, list(PRIVILEGES), table),
    )
    return {(column, privilege): allowed for column, privilege, allowed in rows}


@pytest.fixture
def notices(conn: Conn) -> Iterator[list[str]]:
    received: list[str] = []
    conn.add_notice_handler(lambda diag: received.append(f"{diag.severity}: {diag.message_primary}"))
    yield received


def test_an_unreadable_column_is_refused_to_raw_sql_and_the_others_still_work(people: Conn) -> None:
    _policy(people, "secret", readable=False)
    _apply(people)

    assert _refused(people, "flux_user", "SELECT secret FROM people")
    assert _refused(people, "flux_user", "SELECT * FROM people")
    assert _refused(people, "flux_user", "SELECT id FROM people WHERE secret = 'x'")
    assert _run_as(people, "flux_user", "SELECT id, name FROM people") == [(1, "ada")]
    # Reading was the only thing taken away.
    assert _run_as(people, "flux_user", "UPDATE people SET secret = 'new' WHERE id = 1 RETURNING id") == [
        (1,)
    ]


def test_a_column_that_is_not_writable_refuses_update_and_insert(people: Conn) -> None:
    _policy(people, "salary", writable=False)
    _apply(people)

    assert _refused(people, "flux_user", "UPDATE people SET salary = 1")
    assert _refused(people, "flux_user", "INSERT INTO people (id, salary) VALUES (2, 1)")
    assert _run_as(people, "flux_user", "UPDATE people SET name = 'bo' WHERE id = 1 RETURNING salary") == [
        (100,)
    ]
    assert _run_as(people, "flux_user", "INSERT INTO people (id, name) VALUES (2, 'cy') RETURNING id") == [
        (2,)
    ]


def test_a_masked_column_is_unreadable_by_raw_sql(people: Conn) -> None:
    _policy(people, "secret", mask="***")  # readable defaults to true: the mask alone hides the value
    _apply(people)

    assert _refused(people, "flux_user", "SELECT secret FROM people")
    assert _privileges(people, "flux_user")[("secret", "SELECT")] is False
    assert _privileges(people, "flux_user")[("secret", "UPDATE")] is True


def test_the_statements_are_returned_and_a_second_apply_changes_nothing(people: Conn) -> None:
    _policy(people, "secret", readable=False)
    _policy(people, "salary", writable=False)
    first = _apply(people)
    after_first = {role: _privileges(people, role) for role in ("flux_anon", "flux_user", "flux_service")}

    assert "REVOKE SELECT ON public.people FROM flux_user" in first
    assert "GRANT SELECT (id, name, salary) ON public.people TO flux_user" in first
    assert _apply(people) == []
    assert {role: _privileges(people, role) for role in after_first} == after_first


def test_deleting_a_policy_and_applying_again_restores_the_column(people: Conn) -> None:
    before = _privileges(people, "flux_user")
    _policy(people, "secret", readable=False)
    _policy(people, "salary", readable=False, writable=False)
    _apply(people)

    people.execute("DELETE FROM flux.column_policies WHERE column_name = 'secret'")
    _apply(people)
    assert _run_as(people, "flux_user", "SELECT secret FROM people") == [("s3cret",)]
    assert _refused(people, "flux_user", "SELECT salary FROM people")

    people.execute("DELETE FROM flux.column_policies")
    _apply(people)
    assert _privileges(people, "flux_user") == before
    # With no rule left the table-level grant is back, so later columns are covered as they were before.
    assert people.execute(
        "SELECT has_table_privilege('flux_user', 'people', 'SELECT'), "
        "has_table_privilege('flux_user', 'people', 'UPDATE')"
    ).fetchone() == (True, True)
    assert people.execute("SELECT count(*) FROM flux.column_policy_grants").fetchone() == (0,)


def test_a_column_added_after_the_conversion_is_granted_like_the_table_was(people: Conn) -> None:
    _policy(people, "secret", readable=False)
    _apply(people)
    people.execute("ALTER TABLE people ADD COLUMN email text")
    _apply(people)

    assert _run_as(people, "flux_user", "SELECT email FROM people") == [(None,)]
    assert _refused(people, "flux_user", "SELECT secret FROM people")


def test_a_role_without_a_table_grant_gets_nothing_new(people: Conn) -> None:
    people.execute("GRANT SELECT (id, secret) ON people TO flux_anon")
    people.execute("REVOKE ALL ON people FROM flux_service")  # which holds them on public's tables by default
    _policy(people, "secret", role="anon", readable=False)
    _policy(people, "name", role="service", writable=False)
    _apply(people)

    anon = _privileges(people, "flux_anon")
    assert {key for key, allowed in anon.items() if allowed} == {
        ("id", "SELECT")
    }  # secret taken, nothing given
    assert not any(_privileges(people, "flux_service").values())
    assert _refused(people, "flux_anon", "SELECT name FROM people")


def test_the_service_role_bypasses_rls_but_not_column_grants(people: Conn) -> None:
    people.execute("GRANT SELECT ON people TO flux_service")
    _policy(people, "secret", role="service", readable=False)
    _apply(people)

    assert _refused(people, "flux_service", "SELECT secret FROM people")
    assert _run_as(people, "flux_service", "SELECT name FROM people") == [("ada",)]
    # A rule for one role leaves the others alone.
    assert _run_as(people, "flux_user", "SELECT secret FROM people") == [("s3cret",)]


def test_a_table_level_revoke_after_apply_is_not_undone(people: Conn) -> None:
    _policy(people, "secret", readable=False)
    _apply(people)
    people.execute("REVOKE SELECT ON people FROM flux_user")
    people.execute("DELETE FROM flux.column_policies")
    _apply(people)

    assert not any(
        allowed
        for (_, privilege), allowed in _privileges(people, "flux_user").items()
        if privilege == "SELECT"
    )
    assert _privileges(people, "flux_user")[("secret", "UPDATE")] is True


def test_a_table_level_grant_after_apply_is_converted_by_the_next_apply(people: Conn) -> None:
    _policy(people, "secret", readable=False)
    _apply(people)
    people.execute("GRANT ALL ON people TO flux_user")
    assert _run_as(people, "flux_user", "SELECT secret FROM people") == [("s3cret",)]  # open until applied

    _apply(people)
    assert _refused(people, "flux_user", "SELECT secret FROM people")
    assert _run_as(people, "flux_user", "SELECT name FROM people") == [("ada",)]


def test_a_grant_to_public_that_defeats_a_policy_is_warned_about(people: Conn, notices: list[str]) -> None:
    people.execute("GRANT SELECT ON people TO PUBLIC")
    _policy(people, "secret", readable=False)
    _apply(people)

    assert notices == [
        "WARNING: flux_user still has SELECT on public.people.secret despite its column policy"
    ]


def test_a_policy_on_a_missing_column_is_an_fx102_and_changes_nothing(people: Conn) -> None:
    _policy(people, "secret", readable=False)
    _policy(people, "secert", readable=False)

    with pytest.raises(psycopg.Error) as caught:
        _apply(people)
    assert caught.value.sqlstate == "FX102"
    assert "secert" in str(caught.value)
    assert caught.value.diag.message_hint is not None and "secret" in caught.value.diag.message_hint
    assert _run_as(people, "flux_user", "SELECT secret FROM people") == [("s3cret",)]


def test_a_policy_on_a_missing_table_is_an_fx101(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO flux.column_policies (table_name, column_name, role, readable) "
        "VALUES ('nobody', 'x', 'user', false)"
    )
    with pytest.raises(psycopg.Error) as caught:
        _apply(conn)
    assert caught.value.sqlstate == "FX101"
    assert caught.value.diag.message_hint


def test_a_request_role_cannot_run_apply(people: Conn) -> None:
    assert _refused(people, "flux_user", "SELECT flux.apply_column_policies()")


def test_denying_every_column_leaves_nothing_and_is_not_given_back_after_a_revoke(
    people: Conn, notices: list[str]
) -> None:
    for column in ("id", "name", "secret", "salary"):
        _policy(people, column, readable=False)
    _apply(people)
    assert _refused(people, "flux_user", "SELECT count(*) FROM people")
    assert notices and "deleting the policies will not give it back" in notices[0]

    people.execute("REVOKE ALL ON people FROM flux_user")  # leaves no trace the apply could see
    people.execute("DELETE FROM flux.column_policies WHERE column_name = 'name'")
    _apply(people)
    assert _refused(people, "flux_user", "SELECT name FROM people")
