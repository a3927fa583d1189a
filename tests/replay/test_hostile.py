"""Replay against hostile code and hostile records, on real Postgres and real Deno: a function that leaves its
role lands on a login that can do nothing, as in the gateway, and cannot use the owner's part of a replay; a
function that detects its replay shows where it did; a record edited to poison its replay ends it as an
`error` with its FX code (never a crash), and so does a replayed run whose JSON no record can hold."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from flux import db, jsontext
from flux.data import Catalog, Limits
from flux.gateway.handler import WithBuiltins
from flux.replay import Replay, ReplayResult, built_code, replay_request
from flux.runtime import Caller, Runtime, invoke
from flux.runtime.fetch import FetchPolicy
from flux.runtime.invoke import Function
from tests.fixtures.runtime import planted, ts

pytestmark = pytest.mark.usefixtures("run_text")  # CREATE FUNCTION goes through a project's function

LOCAL = FetchPolicy(allow=("127.0.0.1",))
MODES = ["recorded", "live", "as-of"]


def replayed(conn: psycopg.Connection[Any], runtime: Runtime, catalog: Catalog, request_id: str,
             fn: Function, mode: str = "recorded", **options: Any) -> ReplayResult:  # fmt: skip
    how = Replay(WithBuiltins(runtime), built_code({fn.name: fn}), catalog, mode=mode,  # type: ignore[arg-type]
                 fetch_policy=LOCAL, **options)  # fmt: skip
    with db.request_connection(conn) as runs_on:
        result = replay_request(conn, request_id, how, runs_on).result
    jsontext.dumps(result.to_json())  # the report can be written (the CLI's --json, the API's answer)
    return result


def why(result: ReplayResult) -> Any:
    return result.error, [(d.kind, d.at, d.message) for d in result.divergences][:3]


# --- a function that leaves its role -----------------------------------------------------------------------

ESCAPE = ts(
    "escape",
    planted(
        """
export default async function (req, ctx) {
  await ctx.db.sql(`CREATE FUNCTION pg_temp.esc() RETURNS text LANGUAGE sql
                    AS $$ SELECT set_config('role', 'none', true) $$`, []);
  let caught = null;
  try { await ctx.db.sql("SELECT pg_temp.esc()", []); } catch (e) { caught = e.code; }
  // As whoever the connection logged in as, if the escape had held:
  try { await ctx.db.sql("INSERT INTO notes (body) VALUES ('after the escape')", []); } catch (e) {}
  return { caught };
}
"""
    ),
)


def test_a_statement_that_leaves_the_role_ends_the_run_however_the_function_handles_it(
    conn: psycopg.Connection[Any], call: Any
) -> None:
    """The connection here logs in as a superuser, as a replay's does: a function that left its role and
    caught the engine's error went on as that superuser, and its writes committed."""
    outcome = call(ESCAPE, role="service")
    assert outcome.error is not None and outcome.error.code in ("FX203", "FX309"), outcome.error
    assert "FX203" in outcome.error.message or "changed the role" in outcome.error.message
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    recorded = conn.execute("SELECT ok FROM flux.requests WHERE id = %s", [outcome.request_id]).fetchone()
    assert recorded == (False,)


# A function the project made (in a migration, as its owner) that leaves the request's role, then does what
# only the connection's login may: draws from a sequence no request role may use (not rolled back).
LEAVER = """
CREATE SEQUENCE public.owner_only;
CREATE FUNCTION public.leave_and_draw() RETURNS bigint LANGUAGE sql AS $$
    SELECT pg_catalog.set_config('role', 'none', true); SELECT pg_catalog.nextval('public.owner_only') $$;
"""
DRAWER = ts(
    "drawer",
    """
export default async function (req, ctx) {
  let caught = null;
  try { await ctx.db.sql("SELECT public.leave_and_draw() AS n", []); } catch (e) { caught = e.code; }
  return { caught };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_a_replayed_function_that_leaves_its_role_lands_on_a_login_that_can_do_nothing(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
) -> None:
    """Live and as-of run the function's SQL on a request connection, as the gateway does: one that leaves its
    role becomes flux_authenticator, never the replaying owner (here a superuser), so the statement that did
    fails as it failed when recorded, and the owner-only sequence never moves."""
    conn.execute(LEAVER.encode())
    request = {"method": "POST", "path": "/"}
    outcome = invoke(runs_on, runtime, DRAWER, request, catalog=notes, caller=Caller(role="service"))
    assert outcome.error is not None and "permission denied for sequence" in outcome.error.message
    result = replayed(conn, runtime, notes, outcome.request_id, DRAWER, mode)
    assert result.verdict == "same", why(result)
    assert conn.execute("SELECT is_called FROM public.owner_only").fetchone() == (False,)
    assert conn.execute("SELECT count(*) FROM flux.replay_grants").fetchone() == (0,)  # taken back


PREPARE = "SELECT flux.replay_prepare(%s, %s, '[]', true, '{notes}', '', '{}', '{}', now(), now())"
GRANT = "INSERT INTO flux.replay_grants (secret_sha256, replay_id) VALUES (sha256(%s), %s)"


def test_the_owners_part_of_a_replay_works_only_with_the_grant_it_wrote_in_one_transaction_once(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], call: Any
) -> None:
    """flux.replay_prepare and flux.replay_captured run as the owner, for request connections: without the
    secret of a grant the owner wrote (less than a minute ago) they refuse (prepare) or see nothing
    (captured); with it they set up once, in the transaction that took it up (before the replayed function
    runs, so it cannot rewind again), and request roles may not call them at all."""
    outcome = call(ts("writer", "export default async (req, ctx) => ctx.db.query({ insert: 'notes', "
                                "values: { body: 'kept' } });"), role="service")  # fmt: skip
    assert outcome.error is None, outcome.error
    secret, stale = b"s" * 32, b"t" * 32
    conn.execute(GRANT, [stale, outcome.request_id])
    conn.execute("UPDATE flux.replay_grants SET granted_at = now() - interval '61 seconds'")
    conn.execute(GRANT, [secret, outcome.request_id])
    for wrong in (b"x" * 32, stale):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only a replay sets its database up"):
            runs_on.execute(PREPARE, [wrong, outcome.request_id])
    assert runs_on.execute("SELECT count(*) FROM flux.replay_captured()").fetchone() == (0,)
    with runs_on.transaction():
        assert runs_on.execute(PREPARE, [secret, outcome.request_id]).fetchone()[0]["undone"] == 1
        runs_on.execute("SET LOCAL ROLE flux_service")
        assert runs_on.execute("SELECT count(*) FROM notes").fetchone() == (0,)  # rewound
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
            with runs_on.transaction():
                runs_on.execute(PREPARE, [secret, outcome.request_id])
        runs_on.execute("SET LOCAL ROLE NONE")  # as a function that left its role would
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="once"):
            with runs_on.transaction():
                runs_on.execute(PREPARE, [secret, outcome.request_id])
        # the mutations of the granted replay id (here the request's own, so 1) in this transaction alone
        assert runs_on.execute("SELECT count(*) FROM flux.replay_captured()").fetchone() == (1,)
        with db.request_connection(conn) as other:
            assert other.execute("SELECT count(*) FROM flux.replay_captured()").fetchone() == (0,)
        raise psycopg.Rollback()
    assert conn.execute("SELECT body FROM notes").fetchall() == [("kept",)]


# --- a function that detects its replay --------------------------------------------------------------------

DETECTOR = ts(
    "detector",
    """
export default async function (req, ctx) {
  const { rows: [seen] } = await ctx.db.sql(
    "SELECT current_setting('flux.replay_call', true) AS call, current_setting('flux.request_id') AS id", []);
  if (seen.call) await ctx.db.query({ insert: "notes", values: { body: "only when replayed" } });
  return { ok: true };
}
""",
)


@pytest.mark.parametrize("mode", MODES)
def test_a_function_that_detects_its_replay_shows_at_the_call_that_did(
    conn: psycopg.Connection[Any], runtime: Runtime, notes: Catalog, call: Any, mode: str
) -> None:
    """In recorded mode the read is answered from the recording, so a replay cannot be told from the
    original. In live and as-of the read runs, and what differs (the replay's settings) shows at that call:
    a function can tell, but not hide that it did."""
    outcome = call(DETECTOR, role="service")
    assert outcome.error is None
    result = replayed(conn, runtime, notes, outcome.request_id, DETECTOR, mode)
    if mode == "recorded":
        assert result.verdict == "same", why(result)
        return
    assert result.verdict == "diverged", why(result)  # the code looked at the replay: not drift in the data
    first = result.divergences[0]
    assert first.at.startswith("db.sql#0"), why(result)
    assert {change.path for change in first.changes} == {"result.rows[0].call", "result.rows[0].id"}
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


# --- a record edited to poison its replay -------------------------------------------------------------------

POISONED = ts(
    "poisoned",
    """
export default async function (req, ctx) {
  const made = await ctx.db.query({ insert: "notes", values: { body: "x" }, returning: ["id"] });
  const read = await ctx.db.query({ select: "notes", columns: ["id", "body"] });
  return { made: made.rows, read: read.rows, at: Date.now() };
}
""",
)
DEEP = "[" * 300 + "]" * 300
POISONS = {
    "request input nested too deep": f"UPDATE flux.requests SET input = '{DEEP}' WHERE id = %(id)s",
    "request input deeper than Python reads": (
        "UPDATE flux.requests SET input = (repeat('[', 3000) || repeat(']', 3000))::jsonb WHERE id = %(id)s"
    ),
    "recorded result nested too deep": (
        f"UPDATE flux.spans SET output = '{DEEP}' WHERE request_id = %(id)s AND name = 'db:select(notes)'"
    ),
    "request error not an object": "UPDATE flux.requests SET error = '\"boom\"' WHERE id = %(id)s",
    "span attributes not an object": "UPDATE flux.spans SET attributes = '[1]' WHERE request_id = %(id)s",
    "mutation key not an object": "UPDATE flux.mutations SET row_pk = '[1]' WHERE request_id = %(id)s",
    "mutation row not an object": "UPDATE flux.mutations SET new = '\"x\"' WHERE request_id = %(id)s",
    "role not a request's": (
        "UPDATE flux.spans SET attributes = jsonb_set(attributes, '{role}', '\"recorder\"')"
        " WHERE request_id = %(id)s AND module = 'runtime'"
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("poison", POISONS)
def test_a_poisoned_record_is_an_error_that_says_so(
    conn: psycopg.Connection[Any], runtime: Runtime, notes: Catalog, call: Any, poison: str, mode: str
) -> None:
    outcome = call(POISONED, role="service")
    assert outcome.error is None
    conn.execute(POISONS[poison].encode(), {"id": outcome.request_id})
    result = replayed(conn, runtime, notes, outcome.request_id, POISONED, mode)
    assert result.verdict == "error" and result.error is not None, why(result)
    assert result.error["code"] == "FX507" and "not written by Flux" in result.error["message"]
    assert conn.execute("SELECT count(*) FROM flux.requests WHERE kind = 'replay'").fetchone() == (0,)


@pytest.mark.parametrize(
    "poison",
    [
        "UPDATE flux.spans SET attributes = jsonb_set(attributes, '{clock_ms}', '\"soon\"')"
        " WHERE request_id = %(id)s AND module = 'data'",
        "UPDATE flux.spans SET output = '\"not rows\"' WHERE request_id = %(id)s AND module = 'data'",
        "UPDATE flux.requests SET input = '\"not a request\"' WHERE id = %(id)s",
        "UPDATE flux.mutations SET row_pk = '{\"nope\": 1}' WHERE request_id = %(id)s",
    ],
    ids=["clock not a number", "result not an object", "input not an object", "key of no column"],
)
@pytest.mark.parametrize("mode", MODES)
def test_a_record_edited_within_its_shape_replays_to_a_verdict(
    conn: psycopg.Connection[Any], runtime: Runtime, notes: Catalog, call: Any, poison: str, mode: str
) -> None:
    outcome = call(POISONED, role="service")
    conn.execute(poison.encode(), {"id": outcome.request_id})
    result = replayed(conn, runtime, notes, outcome.request_id, POISONED, mode)
    assert result.verdict in ("diverged", "drift", "error", "same"), why(result)
    if result.verdict == "error":
        assert result.error is not None and result.error["code"].startswith("FX5"), why(result)
    assert conn.execute("SELECT body FROM notes").fetchall() == [("x",)]


DEEP_ANSWER = ts(
    "deep",
    "export default async (req, ctx) => { let v = 1; for (let i = 0; i < 253; i++) v = [v]; return v; };",
)


def test_a_replayed_run_that_answers_json_too_deep_to_record_diverges_and_says_why(
    conn: psycopg.Connection[Any], runtime: Runtime, notes: Catalog, call: Any
) -> None:
    """Not `error` (not judged), which the deploy gate lets through: the recording nested less deeply, so the
    replay answered otherwise (tests/test_attacks_bisect_gate.py)."""
    plain = ts("deep", "export default async (req, ctx) => ({ ok: true });")
    outcome = call(plain)
    result = replayed(conn, runtime, notes, outcome.request_id, DEEP_ANSWER)
    assert result.verdict == "diverged" and result.error is not None and result.error["code"] == "FX303"
    assert result.divergences and result.divergences[0].kind == "output"
    assert "deeper than" in str(result.to_json()["divergence"]["replayed"])


# --- a replay that would hold rows for long ---------------------------------------------------------------

READER = ts("reader", "export default async (req, ctx) => (await ctx.db.query({ select: 'notes' })).rows;")


def test_an_as_of_rewind_longer_than_the_roles_statement_timeout_is_given_up(
    conn: psycopg.Connection[Any], runtime: Runtime, notes: Catalog, call: Any
) -> None:
    """The rewind holds every row it takes back until the replay ends (writers of those rows wait): one with
    a long history since the request is not left to run for longer than the role may run a statement."""
    outcome = call(READER)
    conn.execute(b"INSERT INTO notes (body) SELECT 'n' || g FROM generate_series(1, 3000) AS g")
    conn.execute(b"UPDATE notes SET body = body || '!'")
    quick = Limits(statement_timeouts_ms=(("user", 1),))
    result = replayed(conn, runtime, notes, outcome.request_id, READER, "as-of", limits=quick)
    assert result.verdict == "error" and result.error is not None, why(result)
    assert result.error["code"] == "FX520" and "statement timeout of 1 ms" in result.error["message"]
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (3000,)
    assert replayed(conn, runtime, notes, outcome.request_id, READER, "as-of").verdict == "same"


# --- a function that moves the search path under the replay's own statements ------------------------------

# What a service-role function can make where it may create (schema public on Postgres 14, where every role
# may): functions and an operator that take the names the replay's own SQL uses unqualified, and note when
# they run as a superuser (a sequence is not rolled back).
HIJACK = """
CREATE SEQUENCE public.seen;
GRANT ALL ON SEQUENCE public.seen TO flux_service;
GRANT CREATE ON SCHEMA public TO flux_service;
SET ROLE flux_service;
CREATE FUNCTION public.as_superuser() RETURNS boolean LANGUAGE sql AS $$
    SELECT count(*) >= 0 FROM (SELECT pg_catalog.nextval('public.seen') FROM pg_catalog.pg_roles
                                WHERE rolname = current_user AND rolsuper) AS s $$;
CREATE FUNCTION public.set_config(text, text, boolean) RETURNS text LANGUAGE sql
    AS $$ SELECT pg_catalog.set_config($1, $2, $3) || public.as_superuser()::text $$;
CREATE FUNCTION public.sneaky_eq(uuid, uuid) RETURNS boolean LANGUAGE sql
    AS $$ SELECT pg_catalog.uuid_eq($1, $2) AND public.as_superuser() $$;
CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = public.sneaky_eq);
CREATE FUNCTION public.jsonb_array_elements(jsonb) RETURNS SETOF jsonb LANGUAGE sql
    AS $$ SELECT pg_catalog.jsonb_array_elements($1) WHERE public.as_superuser() $$;
RESET ROLE;
"""
PATH_MOVER = ts(
    "path_mover",
    """
export default async function (req, ctx) {
  await ctx.db.sql("SET LOCAL search_path = public, pg_catalog", []);
  await ctx.db.query({ insert: "notes", values: { body: "moved" } });
  return { ok: true };
}
""",
)


@pytest.mark.parametrize("mode", ["live", "as-of"])
def test_a_search_path_the_function_moved_runs_nothing_of_its_own_as_the_replays_owner(
    conn: psycopg.Connection[Any], runtime: Runtime, notes: Catalog, call: Any, mode: str
) -> None:
    conn.execute(HIJACK.encode())
    outcome = call(PATH_MOVER, role="service")
    assert outcome.error is None, outcome.error
    result = replayed(conn, runtime, notes, outcome.request_id, PATH_MOVER, mode)
    assert result.verdict == "same", why(result)
    assert conn.execute("SELECT is_called FROM public.seen").fetchone() == (False,)


def test_a_search_path_the_function_moved_runs_nothing_of_its_own_as_the_connection_that_records_it(
    conn: psycopg.Connection[Any], call: Any
) -> None:
    """The record of a request is written as the connecting role (here a superuser, as a replay's and the
    CLI's connections are), after the function ran in the same transaction."""
    conn.execute(HIJACK.encode())
    outcome = call(PATH_MOVER, role="service")
    assert outcome.error is None, outcome.error
    assert conn.execute("SELECT is_called FROM public.seen").fetchone() == (False,)
    spans = conn.execute("SELECT count(*) FROM flux.spans WHERE request_id = %s", [outcome.request_id])
    assert spans.fetchone()[0] >= 3


PINNER = ts(
    "pinner",
    """
export default async (req, ctx) => ctx.db.sql(
  `INSERT INTO flux.replay_pins (replay_id, call, position, table_schema, table_name, op, row_pk, new)
   VALUES (gen_random_uuid(), 'db.query#0', 0, 'public', 'notes', 'INSERT', '{}', '{"id": 1}')`, []);
""",
)


def test_a_function_cannot_pin_values_for_a_replay(conn: psycopg.Connection[Any], call: Any) -> None:
    """Pins exist only inside a replay's own transaction, written by flux.replay_prepare as the owner: no
    request role may write one (nor rewind: tests/replay/test_database_modes.py)."""
    outcome = call(PINNER, role="service")
    assert outcome.error is not None and outcome.error.code == "FX204", outcome.error
    assert conn.execute("SELECT count(*) FROM flux.replay_pins").fetchone() == (0,)
