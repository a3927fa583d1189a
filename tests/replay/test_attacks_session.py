"""What an earlier request leaves on a request connection, against the code that later runs there with more
rights than the request had: a type of its own in pg_temp, named like a built-in one (`text`), is found before
pg_catalog's by a function whose search path is empty, so a domain check of the request's own ran as the owner
of the function (a definer's) or as whoever called it: the replaying owner in a live or as-of rewind on a
pooled connection, the owner when a follower makes the record announce itself, flux_recorder in the mutation
trigger. On real Postgres and real Deno."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from flux.data import Catalog
from flux.runtime import Runtime
from tests.fixtures.replays import MOVER, RAW_WRITER, WRITER, replayed
from tests.fixtures.replays import served as on
from tests.fixtures.runtime import planted, ts

pytestmark = pytest.mark.usefixtures("run_text")  # CREATE FUNCTION goes through a project's function

# Sequences only the owner (owner_only) or flux_recorder (flux.jobs_id_seq) may draw from; a draw is never
# rolled back, so it shows even from inside a replay's transaction.
OWNER_ONLY = "CREATE SEQUENCE public.owner_only;"

# A service-role function (raw SQL) that leaves a function and a domain named `text` in its session's pg_temp:
# the domain's check calls the function, which draws from both sequences when it runs as anyone but a
# request's role or the connection's login, and lets everything else through.
PLANT = ts(
    "plant",
    planted(
        """
export default async function (req, ctx) {
  await ctx.db.sql(`CREATE FUNCTION pg_temp.evil() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF current_user NOT IN ('flux_anon', 'flux_user', 'flux_service', 'flux_authenticator') THEN
    BEGIN PERFORM pg_catalog.nextval('public.owner_only');
    EXCEPTION WHEN insufficient_privilege THEN NULL; END;
    BEGIN PERFORM pg_catalog.nextval('flux.jobs_id_seq');
    EXCEPTION WHEN insufficient_privilege THEN NULL; END;
  END IF;
  RETURN true;
END $$`, []);
  await ctx.db.sql("CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.evil())", []);
  return { planted: true };
}
"""
    ),
)


def drawn(conn: psycopg.Connection[Any]) -> dict[str, bool]:
    """Which of the two sequences someone drew from."""
    row = conn.execute(
        "SELECT (SELECT is_called FROM public.owner_only), (SELECT is_called FROM flux.jobs_id_seq)"
    ).fetchone()
    assert row is not None
    return {"owner_only": row[0], "flux.jobs_id_seq": row[1]}


NOTHING = {"owner_only": False, "flux.jobs_id_seq": False}


@pytest.mark.parametrize("mode", ["live", "as-of"])
def test_a_type_an_earlier_request_left_in_pg_temp_runs_nothing_as_the_owner_of_a_replay_on_its_connection(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
) -> None:
    """The API replays on a connection of the gateway's pool, where earlier requests ran: the rewind runs as
    the replaying owner (flux.replay_prepare is a definer's), and flux.undo_mutations's variables were of the
    request's `text`, whose check then ran as that owner (a superuser here: a shell, with COPY TO PROGRAM)."""
    conn.execute(OWNER_ONLY)
    written = on(runs_on, runtime, notes, WRITER)
    on(runs_on, runtime, notes, PLANT)
    result = replayed(conn, runs_on, runtime, notes, WRITER, written.request_id, mode)
    assert drawn(conn) == NOTHING
    assert result.verdict == "same", (result.error, result.divergences[:3])
    assert result.state is not None and result.state.undone >= 1


def test_a_type_a_request_left_in_pg_temp_runs_nothing_as_the_owner_when_a_follower_is_announced_to(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    """While someone follows new requests (`flux tail`, the dashboard), each record calls
    flux.announce_requests, a definer's owned by the migrating role, which cast the ids to the request's
    `text`."""
    conn.execute(OWNER_ONLY)
    conn.execute("INSERT INTO flux.request_followers (expires_at) VALUES (now() + interval '1 hour')")
    on(runs_on, runtime, notes, PLANT)
    on(runs_on, runtime, notes, WRITER)  # any later request on that connection
    assert drawn(conn) == NOTHING


def test_a_type_a_request_left_in_pg_temp_runs_nothing_as_the_recorder(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    """The mutation trigger (flux_recorder's, which may write the audit trail and the queue) declared its
    variables of the request's `text`."""
    conn.execute(OWNER_ONLY)
    on(runs_on, runtime, notes, PLANT)
    on(runs_on, runtime, notes, WRITER)
    assert drawn(conn) == NOTHING


# A project's own check (its migration, as the owner): a function that reads a table by name on its own search
# path, as Postgres' docs show. pg_temp, not listed there, is searched first for tables: while a rewind puts
# rows back as the replaying owner, a view an earlier request left in its session's pg_temp, under that name,
# would be what the check reads, and the view calls the request's own function as that owner.
KNOWN = """
CREATE SEQUENCE public.owner_only;
CREATE TABLE public.known (body text PRIMARY KEY);
INSERT INTO public.known VALUES ('kept'), ('edited');
CREATE FUNCTION public.is_known(body text) RETURNS boolean LANGUAGE sql STABLE SET search_path = public
    AS $$ SELECT EXISTS (SELECT FROM known k WHERE k.body = is_known.body) $$;
ALTER TABLE notes ADD CONSTRAINT notes_body_known CHECK (public.is_known(body));
"""
SHADOW = ts(
    "shadow",
    planted(
        """
export default async function (req, ctx) {
  await ctx.db.sql(`CREATE FUNCTION pg_temp.evil() RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
  IF current_user NOT IN ('flux_anon', 'flux_user', 'flux_service', 'flux_authenticator') THEN
    PERFORM pg_catalog.nextval('public.owner_only');
  END IF;
  RETURN NEXT 'kept'; RETURN NEXT 'edited';
END $$`, []);
  await ctx.db.sql("CREATE VIEW pg_temp.known AS SELECT e AS body FROM pg_temp.evil() AS e", []);
  return { planted: true };
}
"""
    ),
)
EDITOR = ts(
    "editor",
    "export default async (req, ctx) => ctx.db.query({ update: 'notes', set: { body: 'edited' },"
    " where: { body: { eq: 'kept' } } });",
)


@pytest.mark.parametrize("mode", ["live", "as-of"])
def test_a_table_an_earlier_request_left_in_pg_temp_is_not_what_a_rewind_reads_for_the_project(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
) -> None:
    conn.execute(KNOWN)
    on(runs_on, runtime, notes, WRITER)
    edited = on(runs_on, runtime, notes, EDITOR)
    on(runs_on, runtime, notes, SHADOW)
    result = replayed(conn, runs_on, runtime, notes, EDITOR, edited.request_id, mode)
    assert conn.execute("SELECT is_called FROM public.owner_only").fetchone() == (False,)
    assert result.verdict == "same", (result.error, result.divergences[:3])


@pytest.mark.parametrize("mode", ["live", "as-of"])
def test_a_search_path_an_earlier_request_left_on_its_connection_is_not_the_replays(
    conn: psycopg.Connection[Any],
    runs_on: psycopg.Connection[Any],
    runtime: Runtime,
    notes: Catalog,
    mode: str,
) -> None:
    """A session-wide SET of an earlier request stays on the pooled connection; the replay runs on the
    connection's own settings, as the recorded request did."""
    written = on(runs_on, runtime, notes, RAW_WRITER)
    on(runs_on, runtime, notes, MOVER)
    result = replayed(conn, runs_on, runtime, notes, RAW_WRITER, written.request_id, mode)
    assert result.verdict == "same", (result.error, result.divergences[:3])


# The gateway's own statements on a request connection (the request's record, as flux_authenticator, on
# search path '', where pg_temp comes first for types) cast by name (`(r->>0)::uuid`): a domain `uuid` an
# earlier request left in pg_temp has its check run as flux_authenticator, which may read flux.api_keys and
# flux.secrets and write any request's record, and which no request role may become.
LOOTER = ts(
    "looter",
    planted(
        """
export default async function (req, ctx) {
  await ctx.db.sql(`CREATE FUNCTION pg_temp.loot() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF current_user = 'flux_authenticator' THEN
    INSERT INTO public.loot SELECT current_user, count(*) FROM flux.api_keys;
  END IF;
  RETURN true;
END $$`, []);
  await ctx.db.sql("CREATE DOMAIN pg_temp.uuid AS pg_catalog.uuid CHECK (pg_temp.loot())", []);
  return { planted: true };
}
"""
    ),
)


def test_a_type_a_request_left_in_pg_temp_runs_nothing_as_the_connections_login(
    conn: psycopg.Connection[Any], runs_on: psycopg.Connection[Any], runtime: Runtime, notes: Catalog
) -> None:
    conn.execute("CREATE TABLE public.loot (who text, keys bigint); GRANT INSERT ON public.loot TO PUBLIC")
    on(runs_on, runtime, notes, LOOTER)  # its own record, on the domain it just made
    on(runs_on, runtime, notes, WRITER)  # the next request on that connection, and its record
    assert conn.execute("SELECT count(*) FROM public.loot").fetchone() == (0,)
