"""Mutation tracking: flux.track installs a trigger that records every write, from Flux or from psql."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from flux import db
from flux.errors import TableNotTrackable

Conn = psycopg.Connection[Any]


@pytest.fixture
def accounts(conn: Conn) -> Conn:
    conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL, balance numeric NOT NULL)")
    conn.execute("SELECT flux.track('accounts')")
    return conn


def _mutations(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT op, row_pk, old, new, changed, actor, request_id FROM flux.mutations ORDER BY id"
    ).fetchall()


def test_an_update_typed_in_psql_is_recorded_with_old_new_changed_and_actor(accounts: Conn) -> None:
    accounts.execute("INSERT INTO accounts VALUES (1, 'a@example.com', 10)")
    accounts.execute("UPDATE accounts SET balance = 25 WHERE id = 1")

    op, row_pk, old, new, changed, actor, request_id = _mutations(accounts)[-1]
    assert (op, row_pk) == ("UPDATE", {"id": 1})
    assert old == {"id": 1, "email": "a@example.com", "balance": 10}
    assert new == {"id": 1, "email": "a@example.com", "balance": 25}
    assert changed == ["balance"]
    assert actor == accounts.execute("SELECT session_user").fetchone()[0]  # type: ignore[index]
    assert request_id is None


def test_insert_and_delete_carry_the_whole_row(accounts: Conn) -> None:
    accounts.execute("INSERT INTO accounts VALUES (2, 'b@example.com', 5)")
    accounts.execute("DELETE FROM accounts WHERE id = 2")

    (ins_op, _, ins_old, ins_new, ins_changed, *_), (del_op, del_pk, del_old, del_new, *_) = _mutations(
        accounts
    )
    assert (ins_op, ins_old, ins_new["email"]) == ("INSERT", None, "b@example.com")
    assert ins_changed == ["balance", "email", "id"]
    assert (del_op, del_pk, del_old["balance"], del_new) == ("DELETE", {"id": 2}, 5, None)


def test_a_write_inside_a_request_records_its_request_id_and_tenant(accounts: Conn) -> None:
    request_id, tenant_id = str(uuid.uuid4()), str(uuid.uuid4())
    with accounts.transaction():
        db.set_request_context(accounts, request_id=request_id, claims_json="{}", tenant_id=tenant_id)
        accounts.execute("INSERT INTO accounts VALUES (3, 'c@example.com', 1)")
    accounts.execute("UPDATE accounts SET email = 'c2@example.com' WHERE id = 3")  # after the request: no id

    rows = accounts.execute(
        "SELECT request_id::text, tenant_id::text FROM flux.mutations ORDER BY id"
    ).fetchall()
    assert rows == [(request_id, tenant_id), (None, None)]


def test_a_request_role_can_write_without_rights_on_flux_mutations(accounts: Conn) -> None:
    accounts.execute("GRANT SELECT, INSERT ON accounts TO flux_user")
    with accounts.transaction():
        accounts.execute("SET LOCAL ROLE flux_user")
        accounts.execute("INSERT INTO accounts VALUES (4, 'd@example.com', 0)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with accounts.transaction():
                accounts.execute("SELECT * FROM flux.mutations")
    assert _mutations(accounts)[-1][0] == "INSERT"


def test_composite_keys_and_truncate_are_recorded(conn: Conn) -> None:
    conn.execute("CREATE TABLE memberships (org int, member int, role text, PRIMARY KEY (org, member))")
    conn.execute("SELECT flux.track('memberships')")
    conn.execute("INSERT INTO memberships VALUES (1, 7, 'admin'), (1, 8, 'viewer')")
    conn.execute("TRUNCATE memberships")

    deletes = conn.execute(
        "SELECT row_pk, old ->> 'role' FROM flux.mutations WHERE op = 'DELETE' ORDER BY row_pk ->> 'member'"
    ).fetchall()
    assert deletes == [({"org": 1, "member": 7}, "admin"), ({"org": 1, "member": 8}, "viewer")]


def test_a_rolled_back_write_leaves_no_mutation(accounts: Conn) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation), accounts.transaction():
        accounts.execute("INSERT INTO accounts VALUES (5, 'e@example.com', 0)")
        accounts.execute("INSERT INTO accounts VALUES (5, 'e@example.com', 0)")
    assert _mutations(accounts) == []


def test_track_and_untrack_are_idempotent(accounts: Conn) -> None:
    accounts.execute("SELECT flux.track('accounts')")
    assert accounts.execute("SELECT table_name FROM flux.tracked_tables").fetchall() == [("accounts",)]
    accounts.execute("INSERT INTO accounts VALUES (6, 'f@example.com', 0)")
    assert len(_mutations(accounts)) == 1  # one trigger, not two

    accounts.execute("SELECT flux.untrack('accounts')")
    accounts.execute("SELECT flux.untrack('accounts')")
    accounts.execute("UPDATE accounts SET balance = 1")
    assert len(_mutations(accounts)) == 1
    assert accounts.execute("SELECT count(*) FROM flux.tracked_tables").fetchone() == (0,)


@pytest.mark.parametrize(
    ("setup", "target", "message"),
    [
        ("CREATE TABLE logs (line text)", "logs", "has no primary key"),
        ("CREATE VIEW v AS SELECT 1 AS x", "v", "is not a table"),
        ("", "flux.requests", "belongs to Flux itself"),
    ],
)
def test_what_cannot_be_tracked_is_refused_with_fx501(
    conn: Conn, setup: str, target: str, message: str
) -> None:
    if setup:
        conn.execute(setup.encode())
    with pytest.raises(TableNotTrackable, match=message) as caught, db.translate_errors():
        conn.execute("SELECT flux.track(%s)", (target,))
    assert caught.value.code == "FX501"
    assert caught.value.hint


def test_a_partitioned_table_is_recorded_under_its_own_name_and_its_partitions_are_refused(
    conn: Conn,
) -> None:
    conn.execute("CREATE TABLE events (id int, year int, PRIMARY KEY (id, year)) PARTITION BY LIST (year)")
    conn.execute("CREATE TABLE events_2026 PARTITION OF events FOR VALUES IN (2026)")
    conn.execute("SELECT flux.track('events')")
    conn.execute("INSERT INTO events VALUES (1, 2026)")

    assert conn.execute("SELECT table_name, row_pk FROM flux.mutations").fetchall() == [
        ("events", {"id": 1, "year": 2026})
    ]
    assert conn.execute("SELECT table_name FROM flux.tracked_tables").fetchall() == [("events",)]
    with pytest.raises(TableNotTrackable, match="is a partition"), db.translate_errors():
        conn.execute("SELECT flux.track('events_2026')")


def test_a_table_owner_cannot_gain_rights_through_the_recording_trigger(conn: Conn) -> None:
    """to_jsonb(NEW) runs user-defined casts: as flux_recorder, never as the superuser who migrated."""
    mallory = f"mallory_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {mallory} NOLOGIN".encode())
    try:
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {mallory}".encode())
        conn.execute(f"SET ROLE {mallory}".encode())
        conn.execute("CREATE TYPE mood AS ENUM ('happy')")
        conn.execute(
            f"""CREATE FUNCTION mood_json(mood) RETURNS json LANGUAGE plpgsql AS $$
                BEGIN EXECUTE 'ALTER ROLE {mallory} SUPERUSER'; RETURN '"x"'::json; END $$""".encode()
        )
        conn.execute("CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood)")
        conn.execute("CREATE TABLE diary (id int PRIMARY KEY, feeling mood)")
        conn.execute("RESET ROLE")
        conn.execute("SELECT flux.track('diary')")
        conn.execute(f"SET ROLE {mallory}".encode())
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO diary VALUES (1, 'happy')")
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (mallory,)).fetchone() == (
            False,
        )
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP TABLE IF EXISTS diary")
        conn.execute("DROP CAST IF EXISTS (mood AS json)")
        conn.execute(f"DROP OWNED BY {mallory}".encode())
        conn.execute(f"DROP ROLE {mallory}".encode())


def test_truncating_one_partition_of_a_tracked_table_is_recorded(conn: Conn) -> None:
    conn.execute("CREATE TABLE readings (id int, year int, PRIMARY KEY (id, year)) PARTITION BY LIST (year)")
    conn.execute("CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES IN (2025)")
    conn.execute(
        "ALTER TABLE readings ENABLE ROW LEVEL SECURITY"
    )  # no policy: hides every row but the owner's
    conn.execute("SELECT flux.track('readings')")
    conn.execute("INSERT INTO readings VALUES (1, 2025), (2, 2025)")
    conn.execute("TRUNCATE readings_2025")

    deletes = conn.execute(
        "SELECT table_name, row_pk ->> 'id' FROM flux.mutations WHERE op = 'DELETE' ORDER BY 2"
    )
    assert deletes.fetchall() == [("readings", "1"), ("readings", "2")]  # under the tracked table's name

    conn.execute("INSERT INTO readings VALUES (3, 2025)")
    conn.execute("TRUNCATE readings")  # the whole partitioned table: each row recorded once
    deletes = conn.execute("SELECT row_pk ->> 'id' FROM flux.mutations WHERE op = 'DELETE' ORDER BY 1")
    assert deletes.fetchall() == [("1",), ("2",), ("3",)]
    with pytest.raises(TableNotTrackable, match="is a partition"), db.translate_errors():
        conn.execute("SELECT flux.untrack('readings_2025')")


def test_truncate_is_recorded_for_a_table_outside_public(conn: Conn) -> None:
    conn.execute("CREATE SCHEMA billing")
    conn.execute("CREATE TABLE billing.invoices (id int PRIMARY KEY)")
    conn.execute("SELECT flux.track('billing.invoices')")
    conn.execute("INSERT INTO billing.invoices VALUES (1)")
    conn.execute("TRUNCATE billing.invoices")
    rows = conn.execute("SELECT table_schema, table_name, op FROM flux.mutations ORDER BY id").fetchall()
    assert rows == [("billing", "invoices", "INSERT"), ("billing", "invoices", "DELETE")]


def test_track_all_covers_partitions_added_later(conn: Conn) -> None:
    conn.execute("CREATE TABLE events (id int, year int, PRIMARY KEY (id, year)) PARTITION BY LIST (year)")
    conn.execute("CREATE TABLE events_2026 PARTITION OF events FOR VALUES IN (2026)")
    assert conn.execute("SELECT flux.track_all()").fetchall() == [("events",)]
    conn.execute("CREATE TABLE events_2027 PARTITION OF events FOR VALUES IN (2027)")
    assert conn.execute("SELECT flux.track_all()").fetchall() == []  # nothing new; the partition is covered
    conn.execute("INSERT INTO events VALUES (1, 2027)")
    conn.execute("TRUNCATE events_2027")
    assert conn.execute("SELECT op, table_name FROM flux.mutations ORDER BY id").fetchall() == [
        ("INSERT", "events"),
        ("DELETE", "events"),
    ]


def test_a_write_records_the_tenant_of_its_claims_and_refuses_one_that_is_not_a_uuid(accounts: Conn) -> None:
    tenant_id = str(uuid.uuid4())
    with accounts.transaction():
        claims = f'{{"tenant_id": "{tenant_id}"}}'
        db.set_request_context(accounts, request_id=str(uuid.uuid4()), claims_json=claims)
        accounts.execute("INSERT INTO accounts VALUES (4, 'd@example.com', 1)")
    assert accounts.execute("SELECT tenant_id::text FROM flux.mutations").fetchall() == [(tenant_id,)]
    with pytest.raises(psycopg.Error) as refused, accounts.transaction():
        db.set_request_context(accounts, request_id=str(uuid.uuid4()), claims_json='{"tenant_id": "acme"}')
        accounts.execute("INSERT INTO accounts VALUES (5, 'e@example.com', 1)")
    assert refused.value.sqlstate == "FX010"
    assert "'acme'" in str(refused.value)


def test_a_tracked_write_calls_no_sql_function_for_its_tenant(accounts: Conn) -> None:
    # flux.tenant_id() through flux.claim() was planned anew at every statement: half the trigger's cost.
    with accounts.transaction():
        accounts.execute("SET LOCAL track_functions = 'all'")
        db.set_request_context(accounts, request_id=str(uuid.uuid4()), claims_json="{}",
                               tenant_id=str(uuid.uuid4()))  # fmt: skip
        accounts.execute("INSERT INTO accounts VALUES (6, 'f@example.com', 1)")
        calls = accounts.execute(
            "SELECT f, coalesce(pg_stat_get_xact_function_calls(f::regprocedure), 0)"
            "  FROM unnest(ARRAY['flux.tg_mutations__record()', 'flux.tenant_id()', 'flux.claim(text)',"
            "                    'flux.claims()']) AS f"
        ).fetchall()
    assert dict(calls) == {"flux.tg_mutations__record()": 1, "flux.tenant_id()": 0, "flux.claim(text)": 0,
                           "flux.claims()": 0}  # fmt: skip
