"""The fidelity corpus: requests recorded from every language Flux runs (TypeScript, JavaScript,
AssemblyScript, WAT, C, Rust, Python, Go, Ruby), each using time, randomness, a secret, a fetch, database
reads and writes (inserts into an identity-keyed table whose defaults are now() and gen_random_uuid()), a
queue push and a log line, plus one that throws and one cut off by its time limit, replay `same` on their own
code in every database mode, with no ignore rule anywhere. The functions are in
tests/replay/corpus/<language>/."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux import db
from flux.data import Catalog, load_catalog
from flux.errors import FluxError
from flux.gateway.handler import BUILTINS, WithBuiltins
from flux.replay import Replay, ReplayResult, built_code, recording_of, replay
from flux.runtime import Caller, Function, Outcome, Runtime, invoke
from flux.runtime.build import build_function
from flux.runtime.fetch import FetchPolicy
from flux.runtime.limits import FunctionLimits
from flux.trace.recorder import Recorder
from flux.trace.tree import load_trace
from tests.fixtures.runtime import ts
from tests.runtime.test_examples import PROJECT, TOOLCHAINS

Conn = psycopg.Connection[Any]
CORPUS = Path(__file__).resolve().parent / "corpus"
LOCAL = FetchPolicy(allow=("127.0.0.1",))
SECRETS = {"token": "s3cret-Value"}
EVENTS_SQL = """
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body text NOT NULL,
    amount numeric(10, 2) NOT NULL DEFAULT 12.50,
    at timestamptz NOT NULL DEFAULT now(),
    uid uuid NOT NULL DEFAULT gen_random_uuid()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON events TO flux_user, flux_service;
SELECT flux.track('events');
INSERT INTO events (body, amount) VALUES ('seeded', 7.10);
"""
# language: (folder, the role it runs as, the toolchain it needs)
LANGUAGES = {
    "typescript": ("ts", "service", None),
    "javascript": ("js", "user", None),
    "assemblyscript": ("as", "user", "as_notes"),
    "wat": ("wat", "user", None),
    "c": ("c", "user", "c_notes"),
    "rust": ("rust", "user", "rust_notes"),
    "python": ("py", "user", None),
    "go": ("go", "user", "go_notes"),
    "ruby": ("rb", "user", "rb_notes"),
}
# What each operation's span is named, and the operations each language's request makes (the WAT function
# keeps its calls as constant data, so it has no URL to fetch; the JavaScript one reads no secret).
OPERATIONS = {
    "time": "clock:now",
    "randomness": "clock:random",
    "secret": "secrets:get(token)",
    "fetch": "fetch:GET 127.0.0.1:",
    "read": "db:select(events)",
    "write": "db:insert(events)",
    "push": "queue:push(after)",
    "log": "log:",
}
MADE = {language: set(OPERATIONS) for language in LANGUAGES} | {
    "wat": set(OPERATIONS) - {"fetch"},
    "javascript": set(OPERATIONS) - {"secret"},
}
MODES = ["recorded", "live", "as-of"]
KINDS = ["all", "throw!", "timeout~"]  # a run that does everything, one that then throws, one that then spins
TIMEOUT_MS = 400  # the limit of the run that spins (the others have the default)
# componentize-py builds and compiles for about a minute; Go and Ruby (its 30 MB interpreter) for half of one
SLOW = {"python", "go", "ruby"}


def _param(language: str, mode: str) -> Any:
    marks = [pytest.mark.slow] if language in SLOW else []
    return pytest.param(language, mode, marks=marks, id=f"{language}-{mode}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, runtime: Runtime) -> Iterator[Callable[[str], Function]]:
    """`corpus(language)`: its function, built once for the module (compiled ahead, as `flux deploy` does)."""
    built: dict[str, Function] = {}

    def build(language: str) -> Function:
        if language not in built:
            folder, _, toolchain = LANGUAGES[language]
            if toolchain and not TOOLCHAINS[toolchain]() and os.environ.get("CI") != "true":
                pytest.skip(f"the toolchain for {language} is not installed (.ci/run installs it)")
            source = tmp_path_factory.mktemp(language) / f"corpus_{folder}"
            shutil.copytree(CORPUS / folder, source)
            modules = PROJECT / "functions" / "as_notes" / "node_modules"
            if folder == "as" and modules.is_dir():  # the same compiler, as its lock pins: no second npm ci
                (source / "node_modules").symlink_to(modules)
            fn = build_function(source, source.parent / "build")
            if fn.runtime == "component":
                runtime.components.load(fn.code, fn.sha256)
            elif fn.runtime == "wasm":
                runtime.wasm.load(fn.code, fn.sha256)
            built[language] = fn
        return built[language]

    yield build


@pytest.fixture
def events(conn: Conn, notes: Catalog) -> Catalog:
    conn.execute(EVENTS_SQL.encode())
    return load_catalog(conn)


def record(conn: Conn, runtime: Runtime, catalog: Catalog, fn: Function, role: str, body: Any) -> Outcome:
    """Run `fn` as one committed request, as the gateway would."""
    request = {"method": "POST", "path": f"/{fn.name}", "body": body}
    return invoke(conn, runtime, fn, request, catalog=catalog, caller=Caller(role=role), secrets=SECRETS,
                  fetch_policy=LOCAL)  # fmt: skip


def replayed(conn: Conn, runtime: Runtime, catalog: Catalog, request_id: str, fn: Function, mode: str,
             **options: Any) -> ReplayResult:  # fmt: skip
    how = Replay(WithBuiltins(runtime), built_code({fn.name: fn}), catalog, mode=mode,  # type: ignore[arg-type]
                 fetch_policy=LOCAL, **{"secrets": SECRETS, **options})  # fmt: skip
    with db.request_connection(conn) as runs_on:
        return replay(conn, recording_of(load_trace(conn, request_id)), how, runs_on)


def _shown(result: ReplayResult) -> list[Any]:
    return [
        (d.kind, d.at, d.message, [(c.path, c.a, c.b) for c in d.changes[:4]]) for d in result.divergences
    ]


CASES = [_param(language, mode) for language in LANGUAGES for mode in MODES]


@pytest.mark.parametrize(("language", "mode"), CASES)
def test_every_recorded_request_replays_same_on_its_own_code(
    conn: Conn, runtime: Runtime, events: Catalog, corpus: Callable[[str], Function], local_server: str,
    language: str, mode: str,
) -> None:  # fmt: skip
    fn = corpus(language)
    role = LANGUAGES[language][1]
    functions = {kind: fn for kind in KINDS} | {
        "timeout~": replace(fn, limits=FunctionLimits(timeout_ms=TIMEOUT_MS))
    }
    outcomes = {}
    for kind in KINDS:
        body = {"text": f"from {language}", "url": local_server, "do": kind}
        outcomes[kind] = record(conn, runtime, events, functions[kind], role, body)
    assert outcomes["all"].error is None, outcomes["all"].error
    assert _code(outcomes["throw!"].error) in ("FX300", "FX303"), outcomes["throw!"].error
    assert _code(outcomes["timeout~"].error) == "FX301", outcomes["timeout~"].error
    names = _span_names(conn, outcomes["all"].request_id)
    made = {op for op, span in OPERATIONS.items() if any(name.startswith(span) for name in names)}
    assert made == MADE[language], names
    written = conn.execute(
        "SELECT new FROM flux.mutations WHERE request_id = %s", [outcomes["all"].request_id]
    )
    (row,) = [found[0] for found in written]
    assert row["id"] > 1 and row["at"] and row["uid"] and row["amount"] == 12.5  # what the database generated
    results = {
        kind: replayed(conn, runtime, events, outcomes[kind].request_id, functions[kind], mode)
        for kind in KINDS
    }
    assert {kind: r.verdict for kind, r in results.items()} == dict.fromkeys(KINDS, "same"), {
        kind: _shown(r) for kind, r in results.items() if r.verdict != "same"
    }
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (2,)  # the seed and the one that ran
    assert conn.execute("SELECT count(*) FROM flux.jobs").fetchone() == (1,)


def _code(error: FluxError | None) -> str | None:
    return error.code if error is not None else None


def _span_names(conn: Conn, request_id: str) -> list[str]:
    rows = conn.execute("SELECT name FROM flux.spans WHERE request_id = %s ORDER BY seq", (request_id,))
    return [row[0] for row in rows]


# Cut off by its time limit while a fetch was slow: replayed, the fetch answers at once and the function goes
# on past the point where it was cut off, and is cut off there, however it handles the call that finds it so.
CUT_OFF_DURING_A_CALL = """
export default async function (req, ctx) {
  await ctx.fetch(req.body.url + "/sleep/0.7");
  try {
    await ctx.log("after the fetch");
  } catch (error) {
    throw new Error("could not log: " + error.code);
  }
  return { done: true };
}
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_run_cut_off_during_a_slow_call_replays_same(
    conn: Conn, runtime: Runtime, events: Catalog, local_server: str, mode: str
) -> None:
    fn = ts("cut_off", CUT_OFF_DURING_A_CALL, timeout_ms=TIMEOUT_MS)
    outcome = record(conn, runtime, events, fn, "user", {"url": local_server})
    assert _code(outcome.error) == "FX301", outcome.error
    assert _span_names(conn, outcome.request_id)[-1].startswith("fetch:GET")  # cut off after the fetch
    result = replayed(conn, runtime, events, outcome.request_id, fn, mode)
    assert result.verdict == "same", _shown(result)


@pytest.mark.parametrize("mode", MODES)
def test_a_db_query_request_and_a_job_replay_same(
    conn: Conn,
    runtime: Runtime,
    events: Catalog,
    corpus: Callable[[str], Function],
    local_server: str,
    mode: str,
) -> None:
    """`POST /db/query` runs no code (its one call is the run); a job runs as the service role."""
    query = {
        "insert": "events",
        "values": [{"body": "one"}, {"body": "two", "amount": 1.5}],
        "returning": ["*"],
    }
    request = {"method": "POST", "path": "/db/query", "body": query}
    recorder = Recorder(str(uuid.uuid4()))  # the gateway's span names the caller of a run with no code
    recorder.event("gateway", "gateway", output={"caller": {"role": "user", "tenant_id": None}})
    builtin = invoke(conn, WithBuiltins(runtime), BUILTINS["db.query"], request, catalog=events,
                     caller=Caller(role="user"), recorder=recorder)  # fmt: skip
    assert builtin.error is None, builtin.error
    fn = corpus("javascript")
    job = invoke(conn, runtime, fn, {"body": {"text": "from a job", "url": local_server}}, catalog=events,
                 caller=Caller(role="service"), kind="job", fetch_policy=LOCAL)  # fmt: skip
    assert job.error is None, job.error
    for outcome in (builtin, job):
        result = replayed(conn, runtime, events, outcome.request_id, fn, mode)
        assert result.verdict == "same", _shown(result)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (4,)


# Text that jsonb cannot hold (U+0000, a lone surrogate) is recorded with visible escapes: compared so.
UNSTORABLE = r"""
export default async function (req, ctx) {
  const text = "nul \u0000 and a lone \ud800 surrogate";
  await ctx.log(text, { text });
  return { text };
}
"""


@pytest.mark.parametrize("mode", MODES)
def test_text_jsonb_cannot_hold_replays_same(
    conn: Conn, runtime: Runtime, events: Catalog, mode: str
) -> None:
    fn = ts("unstorable", UNSTORABLE)
    outcome = record(conn, runtime, events, fn, "user", {})
    assert outcome.error is None, outcome.error
    result = replayed(conn, runtime, events, outcome.request_id, fn, mode)
    assert result.verdict == "same", _shown(result)


@pytest.mark.parametrize("mode", MODES)
def test_a_secret_changed_since_replays_same(
    conn: Conn,
    runtime: Runtime,
    events: Catalog,
    corpus: Callable[[str], Function],
    local_server: str,
    mode: str,
) -> None:
    """The function gets today's value, compared as the record keeps it (`[secret:token]`), in the fetch's
    headers and in the response alike."""
    fn = corpus("typescript")
    outcome = record(conn, runtime, events, fn, "service", {"text": "rotated", "url": local_server})
    assert outcome.error is None, outcome.error
    assert outcome.response.body["signed"] == "sig:s3cret-Value"
    result = replayed(conn, runtime, events, outcome.request_id, fn, mode, secrets={"token": "r0tated"})
    assert result.verdict == "same", _shown(result)


# A run cut off by its time limit after all its calls: a replay slower to get there (here, a tighter limit
# than the database's 250 ms sleep leaves room for) still gets there, and is cut off at the same point.
SLOW_THEN_SPINS = """
export default async function (req, ctx) {
  await ctx.db.sql("SELECT pg_sleep(0.25)");
  await ctx.log("slept");
  for (;;) { /* past the time limit */ }
}
"""


def test_a_slower_replay_of_a_run_cut_off_still_reaches_where_it_was_cut_off(
    conn: Conn, runtime: Runtime, events: Catalog
) -> None:
    fn = ts("slow_then_spins", SLOW_THEN_SPINS, timeout_ms=1000)
    outcome = record(conn, runtime, events, fn, "service", {})
    assert _code(outcome.error) == "FX301", outcome.error
    assert _span_names(conn, outcome.request_id)[-1] == "log:info"
    slower = replace(fn, limits=FunctionLimits(timeout_ms=200))
    result = replayed(conn, runtime, events, outcome.request_id, slower, "live")
    assert result.verdict == "same", _shown(result)


# A failed request's writes were rolled back, so flux.mutations has none of them: its inserts are pinned from
# the rows they returned, but an update is pinned by its old row (flux.tg_mutations__pin_replay), which the
# recording of a failed request does not have. An update whose trigger sets now() then reads another time.
TOUCHED_AT = """
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.at := now(); RETURN NEW; END $$;
CREATE TRIGGER events_touch BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION touch();
"""
UPDATES_THEN_THROWS = """
export default async function (req, ctx) {
  const { rows } = await ctx.db.query({ update: "events", set: { body: "touched" }, where: { id: { eq: 1 } },
                                        returning: ["at"] });
  throw new Error("refused at " + rows[0].at);
}
"""


@pytest.mark.parametrize("mode", ["live", "as-of"])
def test_a_failed_request_s_update_with_a_now_trigger_replays_same(
    conn: Conn, runtime: Runtime, events: Catalog, mode: str
) -> None:
    conn.execute(TOUCHED_AT)
    fn = ts("touches", UPDATES_THEN_THROWS)
    outcome = record(conn, runtime, events, fn, "user", {})
    assert _code(outcome.error) == "FX300", outcome.error
    result = replayed(conn, runtime, events, outcome.request_id, fn, mode)
    assert result.verdict == "same", _shown(result)
