"""The replay engine on real Postgres and real Deno: a recorded run replays `same` on its own code in every
database mode, and each kind of change is reported as the first divergence, with both sides."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from flux import db
from flux.data import Catalog
from flux.gateway.handler import WithBuiltins
from flux.replay import Replay, ReplayResult, built_code, recording_of, replay
from flux.runtime import Runtime
from flux.runtime.fetch import FetchPolicy
from flux.runtime.invoke import Function
from flux.trace.tree import load_trace
from tests.fixtures.runtime import ts

LOCAL = FetchPolicy(allow=("127.0.0.1",))
WORKER = """
export default async function (req, ctx) {
  const started = Date.now();
  const token = Math.random().toString(36).slice(2);
  const uuid = crypto.randomUUID();
  const { rows: [note] } = await ctx.db.query({
    insert: "notes", values: { body: req.body.text + " " + token }, returning: ["id", "body"],
  });
  const found = await ctx.db.query({ select: "notes", where: { id: { eq: note.id } } });
  const pong = await ctx.fetch(req.body.url + "/ping");
  const job = await ctx.queue.push("after", { id: note.id });
  await ctx.log("made " + note.id);
  const took = Date.now() - started;
  return { status: 201, body: { note, found, pong: pong.status, job: job.status, started, uuid, took } };
}
"""


def replayed(conn: psycopg.Connection[Any], runtime: Runtime, catalog: Catalog, request_id: str,
             fn: Function, mode: str = "recorded", **options: Any) -> ReplayResult:  # fmt: skip
    how = Replay(WithBuiltins(runtime), built_code({fn.name: fn}), catalog, mode=mode,  # type: ignore[arg-type]
                 fetch_policy=LOCAL, **options)  # fmt: skip
    with db.request_connection(conn) as runs_on:
        return replay(conn, recording_of(load_trace(conn, request_id)), how, runs_on)


@pytest.mark.parametrize("mode", ["recorded", "live", "as-of"])
def test_unchanged_code_replays_same_in_every_mode(
    conn: psycopg.Connection[Any], runtime: Runtime, notes: Catalog, call: Any, local_server: str, mode: str
) -> None:
    fn = ts("worker", WORKER)
    outcome = call(fn, {"method": "POST", "path": "/w", "body": {"text": "hi", "url": local_server}},
                   fetch_policy=LOCAL)  # fmt: skip
    assert outcome.error is None, outcome.error
    result = replayed(conn, runtime, notes, outcome.request_id, fn, mode)
    assert result.verdict == "same", [(d.message, d.replayed) for d in result.divergences][-2:]
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM flux.jobs").fetchone()[0] == 1
    row = conn.execute("SELECT kind, replay_of::text FROM flux.requests WHERE id = %s", [result.replay_id])
    assert row.fetchone() == ("replay", outcome.request_id)


@pytest.mark.parametrize("mode", ["recorded", "live", "as-of"])
def test_a_changed_body_is_the_first_divergence(
    conn: psycopg.Connection[Any], runtime: Runtime, notes: Catalog, call: Any, local_server: str, mode: str
) -> None:
    fn = ts("worker", WORKER)
    outcome = call(fn, {"method": "POST", "path": "/w", "body": {"text": "hi", "url": local_server}},
                   fetch_policy=LOCAL)  # fmt: skip
    changed = ts("worker", WORKER.replace('req.body.text + " "', 'req.body.text + "! "'))
    result = replayed(conn, runtime, notes, outcome.request_id, changed, mode)
    assert result.verdict == "diverged"
    first = result.divergences[0]
    assert (first.kind, first.at) == ("call", "db.query#0 db:insert(notes)"), first
    assert first.changes[0].path == "args.values.body"
