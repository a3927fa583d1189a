"""A request connection goes back to the pool in a known state whatever the request's raw SQL did (issue 25,
items 5 and 6): what would outlive the request on its session is refused, what a project's own function may
still leave there is reset before the next request, and a COPY is an FX error, never a hang. Each test runs
requests one after another on one request connection (flux_authenticator, as the gateway's), on real
Postgres and real Deno."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.api.deploy import deploy
from flux.config import Settings
from flux.data import Catalog, Limits
from flux.gateway.auth import new_api_key
from flux.runtime import Caller, Outcome, Runtime, invoke
from flux.runtime.invoke import Function
from tests.fixtures.gateway import GatewayClient, gateway_client
from tests.fixtures.runtime import NOTES_SQL, ts

pytestmark = pytest.mark.usefixtures("run_text")

WRITER = ts(
    "writer",
    "export default async (req, ctx) => ctx.db.query({ insert: 'notes', values: { body: 'kept' } });",
)


def sql_function(name: str, sql: str) -> Function:
    """A function that runs one raw statement and answers its error code (or null)."""
    source = f"""
export default async function (req, ctx) {{
  try {{ await ctx.db.sql({sql!r}, []); return {{ code: null }}; }} catch (e) {{ return {{ code: e.code }}; }}
}}
"""
    return ts(name, source)


def run(runs_on: psycopg.Connection[Any], runtime: Runtime, catalog: Catalog, fn: Function,
        role: str = "service", tenant: str | None = None) -> Outcome:  # fmt: skip
    return invoke(runs_on, runtime, fn, {"method": "POST", "path": "/"}, catalog=catalog,
                  caller=Caller(role=role, tenant_id=tenant))  # fmt: skip


def recorded(conn: psycopg.Connection[Any], outcome: Outcome) -> bool:
    row = conn.execute("SELECT count(*) FROM flux.requests WHERE id = %s", [outcome.request_id]).fetchone()
    return row == (1,)


def next_request_writes(conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime,
                        notes: Catalog) -> None:  # fmt: skip
    """A later request of another caller, on the same connection, writes and is recorded."""
    tenant = conn.execute("INSERT INTO flux.tenants (name) VALUES ('other') RETURNING id::text").fetchone()
    assert tenant is not None
    later = run(runs_on, runtime, notes, WRITER, role="user", tenant=tenant[0])
    assert later.error is None, later.error
    assert recorded(conn, later)
    settings = runs_on.execute(
        "SELECT current_setting('default_transaction_read_only'), current_setting('search_path'),"
        " current_setting('work_mem'), current_setting('statement_timeout')"
    ).fetchone()
    assert settings == ("off", '"$user", public', "4MB", "0"), settings


# --- item 5: set_config(..., false) in every form, and session-wide SET -------------------------------------

SESSION_SETTINGS = [
    "SELECT set_config('default_transaction_read_only', 'on', false)",
    "SELECT pg_catalog.set_config('default_transaction_read_only', 'on', 'off')",
    "SELECT set_config('search_path', 'pg_catalog', false)",
    "SELECT set_config('default_transaction_' || 'read_only', 'on', false)",  # a computed name
    "SELECT set_config('work_mem', '64MB', 1 = 0)",  # a computed is_local
    "SELECT set_config(setting_name => 'work_mem', new_value => '64MB', is_local => false)",
    "SELECT * FROM notes WHERE set_config('default_transaction_read_only', 'on', false) IS NULL",
    "SET default_transaction_read_only = on",
    "SET SESSION search_path = pg_catalog",
    "SET work_mem = '64MB'",
    # a function the request makes, which would run it (directly, or through plpgsql's EXECUTE)
    "CREATE FUNCTION pg_temp.ro() RETURNS text LANGUAGE sql"
    " AS $$ SELECT set_config('default_transaction_read_only', 'on', false) $$",
    "CREATE FUNCTION pg_temp.ro() RETURNS void LANGUAGE plpgsql"
    " AS $$ BEGIN EXECUTE 'SET default_transaction_read_only = on'; END $$",
]


@pytest.mark.parametrize("sql", SESSION_SETTINGS)
def test_raw_sql_that_would_change_the_session_is_refused_and_the_next_request_runs(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    sql: str,
) -> None:
    outcome = run(runs_on, runtime, notes, sql_function("setter", sql))
    assert outcome.response.body == {"code": "FX120"}, outcome.response.body
    assert recorded(conn, outcome)
    next_request_writes(conn, runs_on, runtime, notes)


# --- raw SQL may not lift or change a limit on the request's time, not even for its own transaction -------

CHANGES_A_TIME_LIMIT = [
    "SET LOCAL statement_timeout = 0",
    "SET LOCAL statement_timeout TO DEFAULT",
    "SET LOCAL \"Statement_Timeout\" = '1h'",
    "RESET statement_timeout",
    "RESET ALL",
    "SELECT set_config('statement_timeout', '0', true)",
    "SELECT pg_catalog.set_config('statement_timeout', '0', 'on')",
    "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'",
    "WITH s AS (UPDATE pg_catalog.pg_settings SET setting = '0' WHERE name = 'statement_timeout'"
    " RETURNING name) SELECT * FROM s",
    "SET LOCAL lock_timeout = 0",
    "SELECT set_config('lock_timeout', '0', true)",
    "SET LOCAL idle_in_transaction_session_timeout = 0",
    "RESET idle_in_transaction_session_timeout",
    "SET LOCAL transaction_timeout = 0",
]
LIFT_THEN_SLEEP = """
export default async function (req, ctx) {
  try { await ctx.db.sql(req.body.sql, []); } catch (e) { ctx.log(e.code); }
  await ctx.db.sql('SELECT pg_sleep(3)', []);
  return { slept: true };
}
"""


@pytest.mark.parametrize("sql", CHANGES_A_TIME_LIMIT)
def test_raw_sql_cannot_lift_the_requests_time_limits(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    sql: str,
) -> None:
    """Each form is refused (FX120) before it reaches Postgres, and the request's statement_timeout (here
    0.3 s for the service role) still ends a long statement after it: the request answers FX112 at once."""
    refused = run(runs_on, runtime, notes, sql_function("setter", sql))
    assert refused.response.body == {"code": "FX120"}, refused.response.body
    started = time.monotonic()
    request = {"method": "POST", "path": "/", "body": {"sql": sql}}
    limits = Limits(statement_timeouts_ms=(("service", 300),))
    outcome = invoke(runs_on, runtime, ts("lifter", LIFT_THEN_SLEEP), request, catalog=notes,
                     caller=Caller(role="service"), limits=limits)  # fmt: skip
    assert outcome.response.body["code"] == "FX112", outcome.response.body
    assert time.monotonic() - started < 2.5
    assert recorded(conn, outcome)


def test_raw_sql_may_still_read_the_time_limits_and_set_others_locally(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    for sql in (
        "SHOW statement_timeout",
        "SELECT current_setting('lock_timeout')",
        "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'",
        "SET LOCAL work_mem = '8MB'",
    ):
        outcome = run(runs_on, runtime, notes, sql_function("reader", sql))
        assert outcome.response.body == {"code": None}, (sql, outcome.response.body)


# What a project's own function may still do (run text, or set the session itself): reset after the request.
THROUGH_THE_PROJECT = [
    "SELECT public.run_text('SET default_transaction_read_only = on')",
    "SELECT public.run_text('SELECT set_config(''default_transaction_read_only'', ''on'', false)')",
    "SELECT public.run_text('SET search_path = pg_catalog')",
    "SELECT public.run_text('SET work_mem = ''64MB''')",
    "SELECT public.run_text('SET statement_timeout = 100000')",
    "SELECT public.set_session()",
]
SET_SESSION = """
CREATE FUNCTION public.set_session() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false);
  PERFORM pg_catalog.set_config('search_path', 'pg_catalog', false);
END $$;
"""


@pytest.mark.parametrize("sql", THROUGH_THE_PROJECT)
def test_a_session_setting_a_projects_function_made_does_not_reach_the_next_request(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    sql: str,
) -> None:
    conn.execute(SET_SESSION)
    outcome = run(runs_on, runtime, notes, sql_function("setter", sql))
    assert outcome.response.body == {"code": None}, outcome.response.body
    assert recorded(conn, outcome)
    next_request_writes(conn, runs_on, runtime, notes)


# --- what else a session keeps: temporary objects, cursors, LISTEN, session locks, prepared statements ------

LEAVER = ts(
    "leaver",
    """
export default async function (req, ctx) {
  await ctx.db.sql("CREATE TEMP TABLE kept (secret text)", []);
  await ctx.db.sql("INSERT INTO kept VALUES ('of the first tenant')", []);
  await ctx.db.sql("SELECT public.run_text('DECLARE held CURSOR WITH HOLD FOR SELECT 1')", []);
  await ctx.db.sql("SELECT public.run_text('LISTEN flux_requests')", []);
  await ctx.db.sql("SELECT public.run_text('SELECT pg_advisory_lock(4242)')", []);
  await ctx.db.sql("SELECT public.run_text('PREPARE mine AS SELECT 1')", []);
  return { left: true };
}
""",
)
FINDER = ts(
    "finder",
    """
export default async function (req, ctx) {
  try { return await ctx.db.sql("SELECT secret FROM pg_temp.kept", []); } catch (e) { return e.code; }
}
""",
)


def test_what_a_request_left_in_its_session_is_gone_for_the_next_one(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    left = run(runs_on, runtime, notes, LEAVER)
    assert left.error is None, left.error
    found = run(runs_on, runtime, notes, FINDER)
    assert found.response.body != {"rows": [{"secret": "of the first tenant"}], "count": 1, "kind": "read"}
    pid = runs_on.info.backend_pid
    session = runs_on.execute(
        "SELECT (SELECT count(*) FROM pg_cursors WHERE name = 'held'),"
        " (SELECT count(*) FROM pg_listening_channels()),"
        " (SELECT count(*) FROM pg_prepared_statements WHERE from_sql),"
        " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s)",
        [pid],
    ).fetchone()
    assert session == (0, 0, 0, 0)


def test_a_connection_keeps_flux_prepared_statements_when_no_raw_sql_ran(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    """The reset is for requests that ran raw SQL only: the hot path keeps its prepared statements."""
    run(runs_on, runtime, notes, WRITER)
    before = runs_on.execute("SELECT array_agg(name ORDER BY name) FROM pg_prepared_statements").fetchone()
    run(runs_on, runtime, notes, WRITER)
    after = runs_on.execute("SELECT array_agg(name ORDER BY name) FROM pg_prepared_statements").fetchone()
    assert before == after and before is not None and before[0]


def test_flux_keeps_its_prepared_statements_after_raw_sql_that_left_them_intact(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    """After raw SQL the session is reset, but Flux's statements stay prepared (planning them anew on every
    later request would cost the hot path) unless the SQL touched them."""
    names = "SELECT array_agg(name ORDER BY name) FROM pg_prepared_statements"
    run(runs_on, runtime, notes, WRITER)
    before = runs_on.execute(names).fetchone()
    outcome = run(runs_on, runtime, notes, sql_function("reader", "SELECT count(*) FROM notes"))
    assert outcome.response.body == {"code": None}
    assert runs_on.execute(names).fetchone() == before


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT public.run_text('DEALLOCATE ALL')",  # Flux's statements gone: the next request would fail
        "SELECT public.run_text('DEALLOCATE ' || (SELECT min(name) FROM pg_prepared_statements))",
        "SELECT public.run_text('PREPARE mine AS SELECT 1')",
    ],
)
def test_prepared_statements_raw_sql_dropped_or_added_leave_the_next_request_unharmed(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    sql: str,
) -> None:
    run(runs_on, runtime, notes, WRITER)  # Flux prepares its statements
    outcome = run(runs_on, runtime, notes, sql_function("dropper", sql))
    assert outcome.response.body == {"code": None}, outcome.response.body
    for _ in range(2):
        later = run(runs_on, runtime, notes, WRITER)
        assert later.error is None, later.error
        assert recorded(conn, later)
    from_sql = runs_on.execute("SELECT count(*) FROM pg_prepared_statements WHERE from_sql").fetchone()
    assert from_sql == (0,)


# --- a function the request makes runs as the connection's login inside one statement (found here) ----------

ESCAPE = ts(
    "escape",
    """
export default async function (req, ctx) {
  await ctx.db.sql(`CREATE FUNCTION pg_temp.esc() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
  SET LOCAL ROLE NONE;
  SELECT count(*) INTO n FROM flux.api_keys;
  PERFORM pg_catalog.set_config('role', 'flux_service', true);
  RETURN n;
END $$`, []);
  return await ctx.db.sql("SELECT pg_temp.esc() AS keys", []);
}
""",
)


def test_a_request_cannot_make_a_function_that_reads_what_only_the_connections_login_may(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    """A function the request made could leave the request's role for the connection's login
    (flux_authenticator, which reads flux.api_keys and flux.secrets) and come back before the statement
    ended, where Flux's check after each statement cannot see it: raw SQL makes no functions."""
    outcome = run(runs_on, runtime, notes, ESCAPE)
    assert outcome.error is not None and outcome.error.code in ("FX120", "FX300"), outcome.error
    assert "CREATE FUNCTION" in outcome.error.message
    assert recorded(conn, outcome)


# --- item 6: COPY through db.sql ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql", ["COPY notes TO STDOUT", "COPY (SELECT * FROM notes) TO STDOUT", "COPY notes FROM STDIN"]
)
def test_copy_through_raw_sql_is_an_fx_error_recorded_and_never_a_hang(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    sql: str,
) -> None:
    conn.execute("INSERT INTO notes (body) SELECT 'n' || g FROM generate_series(1, 100) AS g")
    outcomes: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: outcomes.append(run(runs_on, runtime, notes, sql_function("copier", sql))), daemon=True
    )
    thread.start()
    thread.join(30)
    assert outcomes, f"{sql} hung the request"
    assert outcomes[0].response.body == {"code": "FX120"}, outcomes[0].response.body
    assert recorded(conn, outcomes[0])
    next_request_writes(conn, runs_on, runtime, notes)


# --- the same through the gateway: its thread keeps one pooled connection for request after request ---------

GATEWAY_FUNCTIONS = {
    "poison": """export default async (req, ctx) => {
  const sql = req.body.sql;
  try { await ctx.db.sql(sql, []); return { code: null }; } catch (e) { return { code: e.code }; }
}""",
}
GATEWAY_ROUTES = ({"method": "POST", "path": "/poison", "function": "poison", "auth": "key"},)
OTHER_TENANT = "7d3c8a4e-0000-4000-8000-000000000002"


@pytest.fixture
def gateway(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> Iterator[GatewayClient]:
    conn.execute(NOTES_SQL.encode())
    conn.execute("INSERT INTO flux.tenants (id, name) VALUES (%s, 'other')", (OTHER_TENANT,))
    for name, source in GATEWAY_FUNCTIONS.items():
        (tmp_path / "functions" / name).mkdir(parents=True)
        (tmp_path / "functions" / name / "index.ts").write_text(source)
    settings = Settings(project_dir=tmp_path, routes=GATEWAY_ROUTES)
    deploy(dsn, settings)
    with gateway_client(settings, dsn) as client:
        yield client


def _key(conn: psycopg.Connection[Any], role: str, tenant: str | None = None) -> str:
    made = new_api_key()
    conn.execute("INSERT INTO flux.api_keys (prefix, key_hash, role, tenant_id) VALUES (%s, %s, %s, %s)",
                 (made.prefix, made.key_hash, role, tenant))  # fmt: skip
    return made.key


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELECT set_config('default_transaction_read_only', 'on', false)", "FX120"),
        ("SET search_path = pg_catalog", "FX120"),
        ("COPY notes TO STDOUT", "FX120"),
        ("COPY notes FROM STDIN", "FX120"),
        ("SELECT public.run_text('SET default_transaction_read_only = on')", None),
        ("SELECT public.run_text('SET search_path = pg_catalog')", None),
        ("SELECT public.run_text('CREATE TEMP TABLE notes (id int, body text)')", None),
    ],
)
def test_a_request_of_another_tenant_after_raw_sql_on_the_gateways_connection_writes_and_is_recorded(
    conn: psycopg.Connection[Any], gateway: GatewayClient, sql: str, code: str | None
) -> None:
    service, user = _key(conn, "service"), _key(conn, "user", OTHER_TENANT)
    started = time.monotonic()
    first = gateway.simulate_post("/poison", json={"sql": sql}, headers={"x-api-key": service})
    assert time.monotonic() - started < 20  # never a hang
    assert (first.status_code, first.json) == (200, {"code": code}), first.json
    for _ in range(2):  # the next requests, on the thread's same pooled connection
        later = gateway.simulate_post(
            "/db/query", json={"insert": "notes", "values": {"body": "kept"}, "returning": ["id"]},
            headers={"x-api-key": user},
        )  # fmt: skip
        assert later.status_code == 200, later.json
        request_id = later.headers["x-request-id"]
        row = conn.execute("SELECT ok, tenant_id::text FROM flux.requests WHERE id = %s", [request_id])
        assert row.fetchone() == (True, OTHER_TENANT)
    assert conn.execute("SELECT count(*) FROM public.notes").fetchone() == (2,)
