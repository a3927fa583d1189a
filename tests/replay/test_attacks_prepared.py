"""Prepared statements a request makes on its connection: Flux prepares its own statements there (flux_1,
flux_2, ... in flux.pipeline) and runs them by name for the requests and replays that come next. Raw SQL
refuses PREPARE, EXECUTE and DEALLOCATE, but a function the request makes may run them (plpgsql's EXECUTE),
and a prepared statement outlives a rolled-back transaction. A request that put its own SQL under the name of
one of Flux's would have it run in Flux's place. On real Postgres and real Deno."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from flux import db
from flux.data import Catalog
from flux.runtime import Caller, Runtime, invoke
from tests.fixtures.replays import WRITER, replayed
from tests.fixtures.replays import served as on
from tests.fixtures.runtime import planted, ts

pytestmark = pytest.mark.usefixtures("run_text")  # CREATE FUNCTION goes through a project's function

# Puts `SELECT 1` under the name of every statement of Flux's that writes a request's record.
HIDER = ts(
    "hider",
    planted(
        """
export default async function (req, ctx) {
  await ctx.db.sql(`CREATE FUNCTION pg_temp.hide() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  s record;
  n integer := 0;
BEGIN
  FOR s IN SELECT p.name, p.parameter_types FROM pg_catalog.pg_prepared_statements p
            WHERE p.statement LIKE '%flux.requests%' OR p.statement LIKE '%flux.spans%' LOOP
    EXECUTE pg_catalog.format('DEALLOCATE %I', s.name);
    EXECUTE pg_catalog.format('PREPARE %I %s AS SELECT 1', s.name,
      CASE WHEN pg_catalog.cardinality(s.parameter_types) > 0
           THEN '(' || pg_catalog.array_to_string(s.parameter_types::text[], ',') || ')' ELSE '' END);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$`, []);
  const { rows: [hidden] } = await ctx.db.sql("SELECT pg_temp.hide() AS n", []);
  await ctx.db.query({ insert: "notes", values: { body: "unrecorded" } });
  return hidden;
}
"""
    ),
)


def test_a_request_cannot_put_its_own_sql_under_the_name_of_a_statement_flux_prepared(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    on(runs_on, runtime, notes, WRITER)  # Flux prepares the statements that record a request
    hidden = on(runs_on, runtime, notes, HIDER)
    later = on(runs_on, runtime, notes, WRITER)
    recorded = conn.execute(
        "SELECT count(*) FROM flux.requests WHERE id = ANY(%s::uuid[])",
        [[hidden.request_id, later.request_id]],
    ).fetchone()
    assert recorded == (2,), hidden


def test_a_replayed_function_leaves_no_statement_of_its_own_under_a_name_flux_prepared(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    """A replay runs on one of the gateway's connections (through the API): the statements the run put under
    the names of Flux's are dropped with its transaction, so the next request there is recorded."""
    with db.request_connection(conn) as elsewhere:
        hidden = on(elsewhere, runtime, notes, HIDER)
    on(runs_on, runtime, notes, WRITER)  # Flux prepares the statements that record a request
    replayed(conn, runs_on, runtime, notes, HIDER, hidden.request_id)
    later = on(runs_on, runtime, notes, WRITER)
    assert later.error is None, later.error
    assert conn.execute(
        "SELECT count(*) FROM flux.requests WHERE id = %s", [later.request_id]
    ).fetchone() == (1,)


# Writes, then puts an empty answer under the name of the statement that reads a replay's writes back.
FORGER = ts(
    "forger",
    planted(
        """
export default async function (req, ctx) {
  await ctx.db.query({ insert: "notes", values: { body: "kept" } });
  await ctx.db.sql(`CREATE FUNCTION pg_temp.forge() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  s record;
  n integer := 0;
BEGIN
  FOR s IN SELECT p.name FROM pg_catalog.pg_prepared_statements p
            WHERE p.statement LIKE '%replay_captured%' LOOP
    EXECUTE pg_catalog.format('DEALLOCATE %I', s.name);
    EXECUTE pg_catalog.format('PREPARE %I AS SELECT 1 WHERE false', s.name);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$`, []);
  await ctx.db.sql("SELECT pg_temp.forge() AS n", []);
  return { ok: true };
}
"""
    ),
)


def test_a_replayed_function_cannot_answer_for_the_statement_that_reads_its_writes_back(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    with db.request_connection(conn) as elsewhere:
        outcome = on(elsewhere, runtime, notes, FORGER)
    first = replayed(conn, runs_on, runtime, notes, FORGER, outcome.request_id)
    second = replayed(conn, runs_on, runtime, notes, FORGER, outcome.request_id)  # on the same connection
    assert (first.verdict, second.verdict) == ("same", "same"), (second.error, second.divergences[:2])


# Puts its own SQL under the name of the statement that sets each request's role: every later request on the
# connection runs as flux_service, whoever called it.
PROMOTER = ts(
    "promoter",
    planted(
        """
export default async function (req, ctx) {
  await ctx.db.sql(`CREATE FUNCTION pg_temp.promote() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  s record;
  n integer := 0;
BEGIN
  FOR s IN SELECT p.name, p.statement, p.parameter_types FROM pg_catalog.pg_prepared_statements p
            WHERE p.statement LIKE '%set_config(''role''%' LOOP
    EXECUTE pg_catalog.format('DEALLOCATE %I', s.name);
    EXECUTE pg_catalog.format('PREPARE %I (%s) AS %s', s.name,
      pg_catalog.array_to_string(s.parameter_types::text[], ','),
      pg_catalog.regexp_replace(s.statement, 'set_config\\\\(''role'', \\\\$[0-9]+',
                                'set_config(''role'', ''flux_service''', 'g'));
    n := n + 1;
  END LOOP;
  RETURN n;
END $$`, []);
  const { rows: [promoted] } = await ctx.db.sql("SELECT pg_temp.promote() AS n", []);
  return promoted;
}
"""
    ),
)
READER = ts(
    "reader", "export default async (req, ctx) => ctx.db.query({ select: 'notes', columns: ['body'] });"
)


def test_a_request_cannot_set_the_role_of_the_requests_after_it_on_its_connection(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    conn.execute("INSERT INTO notes (body) VALUES ('for the service role only')")
    anon = Caller(role="anon")
    request = {"method": "POST", "path": "/"}
    refused = invoke(runs_on, runtime, READER, request, catalog=notes, caller=anon)  # prepares the settings
    assert refused.error is not None and "permission denied" in refused.error.message
    promoted = on(runs_on, runtime, notes, PROMOTER)
    assert promoted.error is None, promoted.error
    later = invoke(runs_on, runtime, READER, request, catalog=notes, caller=anon)
    assert later.error is not None, later.response
