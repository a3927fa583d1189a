"""The RLS helpers read what the gateway sets per transaction, and a plain RLS policy can use them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from flux import db
from flux.errors import InvalidTenantClaim

Conn = psycopg.Connection[Any]


def test_outside_a_request_there_are_no_claims_and_no_flux_role(conn: Conn) -> None:
    row = conn.execute("SELECT flux.claims(), flux.user_id(), flux.tenant_id(), flux.role()").fetchone()
    assert row == ({}, None, None, None)


def test_helpers_read_the_request_claims_and_role(conn: Conn) -> None:
    tenant = str(uuid.uuid4())
    claims = {"sub": "user-42", "tenant_id": tenant, "plan": "pro"}
    with conn.transaction():
        db.set_request_context(conn, request_id=str(uuid.uuid4()), claims_json=json.dumps(claims))
        conn.execute("SET LOCAL ROLE flux_user")
        row = conn.execute(
            "SELECT flux.claims(), flux.claim('plan'), flux.user_id(), flux.tenant_id()::text, flux.role()"
        ).fetchone()
    assert row == (claims, "pro", "user-42", tenant, "user")
    assert conn.execute("SELECT flux.claims()").fetchone() == ({},)  # transaction-local


def test_an_rls_policy_written_with_the_helpers_filters_rows(conn: Conn) -> None:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text)")
    conn.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY own_notes ON notes USING (owner = flux.user_id())")
    conn.execute("GRANT SELECT ON notes TO flux_user, flux_service")
    conn.execute("INSERT INTO notes VALUES (1, 'alice', 'a'), (2, 'bob', 'b')")

    def visible(role: str, sub: str) -> list[int]:
        with conn.transaction():
            db.set_request_context(conn, request_id=str(uuid.uuid4()), claims_json=json.dumps({"sub": sub}))
            conn.execute(f"SET LOCAL ROLE {role}".encode())
            return [row[0] for row in conn.execute("SELECT id FROM notes ORDER BY id")]

    assert visible("flux_user", "alice") == [1]
    assert visible("flux_user", "carol") == []
    assert visible("flux_service", "carol") == [1, 2]  # the service role bypasses RLS


def test_a_tenant_claim_that_is_not_a_uuid_is_an_fx010(conn: Conn) -> None:
    with pytest.raises(InvalidTenantClaim) as caught, db.translate_errors(), conn.transaction():
        db.set_request_context(conn, request_id=str(uuid.uuid4()), claims_json='{"tenant_id": "acme"}')
        conn.execute("SELECT flux.tenant_id()")
    assert caught.value.code == "FX010"


def test_an_rls_policy_on_the_tenant_works_in_a_parallel_query(conn: Conn) -> None:
    tenant = str(uuid.uuid4())
    conn.execute("CREATE TABLE invoices (id int PRIMARY KEY, tenant uuid NOT NULL)")
    conn.execute("INSERT INTO invoices SELECT i, %s FROM generate_series(1, 1000) AS i", (tenant,))
    conn.execute("ANALYZE invoices")
    setting = "debug_parallel_query" if conn.info.server_version >= 160000 else "force_parallel_mode"
    with conn.transaction():
        conn.execute(f"SET LOCAL {setting} = on".encode())
        db.set_request_context(conn, request_id=str(uuid.uuid4()), claims_json="{}", tenant_id=tenant)
        plan = "\n".join(
            row[0]
            for row in conn.execute("EXPLAIN SELECT count(*) FROM invoices WHERE tenant = flux.tenant_id()")
        )
        count = conn.execute("SELECT count(*) FROM invoices WHERE tenant = flux.tenant_id()").fetchone()
    assert "Gather" in plan
    assert count == (1000,)
