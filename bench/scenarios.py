"""The table's in-process rows (`bench/suite.py`): runtime, queue, mutation tracking, trace store and replay,
each against its floor or peer measured in the same run, alternating over rounds."""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bench.table import Row, interleaved, paired, pick, row_from_pairs, scaled

# -- runtime -------------------------------------------------------------------------------------------------

ECHO_JS = """// The floor of a warm Deno call: read a JSON line from stdin, answer one, over the same pipes.
const encoder = new TextEncoder();
const stdin = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
let buffered = "";
function writeLine(text) {
  const bytes = encoder.encode(text + "\\n");
  let written = 0;
  while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
}
writeLine(JSON.stringify({ type: "ready" }));
for (;;) {
  const newline = buffered.indexOf("\\n");
  if (newline >= 0) {
    const message = JSON.parse(buffered.slice(0, newline));
    buffered = buffered.slice(newline + 1);
    writeLine(JSON.stringify({ type: "done", id: message.id, result: { ok: true } }));
    continue;
  }
  const { value, done } = await stdin.read();
  if (done) Deno.exit(0);
  buffered += value;
}
"""


def runtime_rows(dsn: str, quick: bool) -> list[Row]:
    from bench.runtime import TRIVIAL_PY, TRIVIAL_TS, TRIVIAL_WAT, _function
    from flux import db
    from flux.data import load_catalog
    from flux.runtime import FunctionLimits, Runtime
    from flux.runtime.host import Host
    from flux.runtime.wasm import compile_wat
    from flux.trace.recorder import Recorder

    rounds = pick(quick, 9, 5, 3)
    rows = []
    with psycopg.connect(dsn, autocommit=True) as conn, tempfile.TemporaryDirectory() as cache:
        runtime = Runtime(Path(cache))
        try:
            request_id = str(uuid.uuid4())
            host = Host(db.RequestTransaction(conn, role="user", request_id=request_id), load_catalog(conn),
                        "user", Recorder(request_id))  # fmt: skip
            limits = FunctionLimits()
            wasm = compile_wat(TRIVIAL_WAT)
            rows.append(_wasm_row(runtime, host, limits, wasm, rounds, pick(quick, 1000, 200, 50)))
            fn = _function("trivial", "typescript", TRIVIAL_TS)
            rows.append(_deno_row(runtime, host, fn, rounds, pick(quick, 500, 100, 30)))
            rows.append(
                _component_row(runtime, host, Path(cache), TRIVIAL_PY, rounds, pick(quick, 50, 10, 3))
            )
        finally:
            runtime.close()
    return rows


def _wasm_row(runtime: Any, host: Any, limits: Any, wasm: bytes, rounds: int, calls: int) -> Row:
    import wasmtime

    loaded = runtime.wasm.load(wasm)
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, wasm)
    pre = wasmtime.Linker(engine).instantiate_pre(module)  # linked once, as Flux does
    request = {"path": "/"}

    def direct() -> Any:
        """A fresh instance (of the module linked once) and the trivial call by hand: the request written in,
        the answer read out."""
        store = wasmtime.Store(engine)
        instance = pre.instantiate(store)
        exports = instance.exports(store)
        memory, alloc, handle = exports["memory"], exports["flux_alloc"], exports["flux_handle"]
        data = json.dumps(request).encode()
        pointer = alloc(store, len(data))
        memory.write(store, data, pointer)
        result = handle(store, pointer, len(data))
        return json.loads(memory.read(store, result >> 32, (result >> 32) + (result & 0xFFFFFFFF)))

    flux_call = lambda: runtime.wasm.run(loaded, request, host, limits)  # noqa: E731
    assert flux_call() == direct() == {"ok": True}
    for _ in range(100):
        flux_call(), direct()
    figures = scaled(interleaved(rounds, calls, flux_call, direct), 1e6)
    return row_from_pairs("runtime: Wasm fresh instance + trivial call", "us", "wasmtime by hand", figures,
                          target="<= 150", target_of="flux",
                          note="Flux: epoch deadline, fuel, memory cap, host imports, and wasmtime's C API"
                          " called directly (flux/runtime/wasm.py); by hand: wasmtime-py's public API, a"
                          " Store, InstancePre.instantiate, alloc/handle, nothing else")  # fmt: skip


def _deno_row(runtime: Any, host: Any, fn: Any, rounds: int, calls: int) -> Row:
    import subprocess

    from flux.runtime.deno import _Worker, deno_binary

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "echo.js"
        script.write_text(ECHO_JS)
        process = subprocess.Popen(
            [deno_binary(), "run", "--no-prompt", "--no-config", "--no-lock", "--quiet", str(script)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", ""), "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"},
        )  # fmt: skip
        worker = _Worker(process, 0)
        try:
            assert worker.receive(time.monotonic() + 30) == {"type": "ready"}

            def echo() -> Any:
                worker.send({"type": "run", "id": 1, "request": {"path": "/"}})
                return worker.receive(time.monotonic() + 10)

            flux_call = lambda: runtime.execute(fn, {"path": "/"}, host)  # noqa: E731
            for _ in range(100):
                flux_call(), echo()
            figures = scaled(interleaved(rounds, calls, flux_call, echo), 1e6)
        finally:
            worker.stop()
    return row_from_pairs("runtime: Deno warm call", "us", "deno JSON-lines echo", figures,
                          target="<= 300", target_of="flux",
                          note="Flux: a fresh context per call, recorded clock/randomness; floor: a bare deno"
                          " echo read and answered through the same _Worker pipes")  # fmt: skip


def _component_row(runtime: Any, host: Any, scratch: Path, source: str, rounds: int, calls: int) -> Row:
    import wasmtime

    from flux.runtime.build import build_function

    folder = scratch / "functions" / "trivial_py"
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(source)
    fn = build_function(folder, scratch / "build")
    loaded = runtime.components.load(fn.code)
    from wasmtime import component as wasm_component

    from flux.runtime.component import HOST_INTERFACE

    engine = runtime.components.engine  # it meters fuel and epochs: a store on it must allow some
    plain = wasm_component.Linker(engine)  # WASI 0.2 as wasmtime has it, and the host calls refused
    plain.add_wasip2()
    with plain.root() as root, root.add_instance(HOST_INTERFACE) as imports:
        imports.add_func("call", lambda store, op, args: '{"error": "no host"}')
        imports.add_func("log", lambda store, message: None)

    def compiled_once() -> Any:
        """The floor: the compiled component in a plain store, instantiated and called, nothing else."""
        store = wasmtime.Store(engine)
        store.set_fuel(1 << 62)
        store.set_epoch_deadline(1 << 40)
        store.set_wasi(wasmtime.WasiConfig())
        instance = plain.instantiate(store, loaded.component)
        handle = instance.get_func(store, "handle")
        result = handle(store, '{"path": "/"}')
        handle.post_return(store)
        return json.loads(result)

    flux_call = lambda: runtime.components.run(loaded, {"path": "/"}, host, fn.limits)  # noqa: E731
    assert flux_call() == compiled_once() == {"ok": True}
    for _ in range(10):
        flux_call(), compiled_once()
    figures = scaled(interleaved(rounds, calls, flux_call, compiled_once), 1e3)
    return row_from_pairs("runtime: Python component instance + call", "ms", "compiled once, plain store",
                          figures, target="<= 3", target_of="flux",
                          note=f"componentize-py, {len(fn.code) / 1e6:.0f} MB; Flux adds its limits (fuel,"
                          " deadline, memory cap) and recorded host")  # fmt: skip


# -- queue ---------------------------------------------------------------------------------------------------


def queue_rows(dsn: str, quick: bool) -> list[Row]:
    import importlib.metadata
    import shutil

    from psycopg import conninfo

    from bench import queue as q

    rounds, jobs, latency_jobs = pick(quick, (5, 2000, 60), (2, 300, 20), (2, 60, 5))
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-queue-"))
    peer_dsn = conninfo.make_conninfo(dsn, dbname=q.PEER_DATABASE)
    env = {**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        q._deploy_noop(dsn, folder)
        q._create_peer_database(dsn, peer_dsn)
        sides = [q._flux_side(dsn, folder), q._peer_side(peer_dsn, folder)]
        with (
            psycopg.connect(dsn, autocommit=True) as flux_conn,
            psycopg.connect(peer_dsn, autocommit=True) as peer_conn,
            q.WorkerProcess("Flux", sides[0].worker, env, folder / "flux.log") as flux_worker,
            q.WorkerProcess("procrastinate", sides[1].worker, env, folder / "peer.log") as peer_worker,
        ):
            on = {"Flux": (flux_conn, flux_worker), "procrastinate": (peer_conn, peer_worker)}
            for side in sides:
                conn, worker = on[side.name]
                q._warm_up(conn, side, worker)

            def processed(side: Any) -> float:
                conn, worker = on[side.name]
                with conn.transaction():
                    side.push(conn, jobs)
                clock = time.perf_counter()
                q._wait_until_finished(conn, side, worker)
                return jobs / (time.perf_counter() - clock)

            def latency(side: q.Side) -> float:
                conn, worker = on[side.name]
                ids: list[int] = []
                for _ in range(latency_jobs):
                    ids += side.push(conn, 1)
                    time.sleep(q.LATENCY_GAP_S)
                q._wait_until_finished(conn, side, worker)
                return statistics.median(side.latency(conn, ids))

            rate = paired(rounds, lambda: processed(sides[0]), lambda: processed(sides[1]))
            start = paired(rounds, lambda: latency(sides[0]), lambda: latency(sides[1]))
        version = importlib.metadata.version("procrastinate")
        return [
            row_from_pairs("queue: jobs processed, 4 at once", "jobs/s", f"procrastinate {version}", rate,
                           target=">= 2", note=f"{jobs} no-op jobs a round (Flux: a Wasm function, each run"
                           " recorded as a request; procrastinate: an async no-op task), same Postgres"),
            row_from_pairs("queue: enqueue -> start p50, idle worker", "ms", f"procrastinate {version}",
                           start,
                           target="<= 5", target_of="flux",
                           note=f"{latency_jobs} jobs a round, pushed {q.LATENCY_GAP_S * 1000:.0f} ms apart"),
        ]  # fmt: skip
    finally:
        q._clean_up(dsn, folder)
        shutil.rmtree(folder, ignore_errors=True)


# -- mutation tracking ---------------------------------------------------------------------------------------

# supa_audit (github.com/supabase/supa_audit) is not packaged for this machine's Postgres, so its trigger is
# written here the way supa_audit's is: one row per change in a record_version table, the row and the old
# row as jsonb, a record id derived from the table and primary key, and the same indexes.
AUDIT_SQL = """
DROP SCHEMA IF EXISTS bench_audit CASCADE;
CREATE SCHEMA bench_audit;
CREATE TABLE bench_audit.record_version (
    id bigserial PRIMARY KEY,
    record_id uuid, old_record_id uuid,
    op text NOT NULL, ts timestamptz NOT NULL DEFAULT now(),
    table_oid oid NOT NULL, table_schema name NOT NULL, table_name name NOT NULL,
    record jsonb, old_record jsonb
);
CREATE INDEX record_version_record_id ON bench_audit.record_version (record_id) WHERE record_id IS NOT NULL;
CREATE INDEX record_version_old_record_id ON bench_audit.record_version (old_record_id)
    WHERE old_record_id IS NOT NULL;
CREATE INDEX record_version_ts ON bench_audit.record_version USING brin (ts);
CREATE INDEX record_version_table_oid ON bench_audit.record_version (table_oid);
CREATE FUNCTION bench_audit.insert_update_delete_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rec jsonb := CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END;
    old jsonb := CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END;
BEGIN
    INSERT INTO bench_audit.record_version (record_id, old_record_id, op, table_oid, table_schema, table_name,
                                            record, old_record)
    VALUES (CASE WHEN rec IS NOT NULL THEN md5(TG_RELID::text || (rec -> 'id')::text)::uuid END,
            CASE WHEN old IS NOT NULL THEN md5(TG_RELID::text || (old -> 'id')::text)::uuid END,
            TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, rec, old);
    RETURN NULL;  -- an AFTER trigger's answer is not used
END $$;
"""
AUDIT_TRIGGER_SQL = (
    b"CREATE TRIGGER audit_i_u_d AFTER INSERT OR UPDATE OR DELETE ON bench_audited"
    b" FOR EACH ROW EXECUTE FUNCTION bench_audit.insert_update_delete_trigger()"
)
TRACKING_TABLES = ("bench_plain", "bench_tracked", "bench_audited")


def tracking_rows(dsn: str, quick: bool) -> list[Row]:
    rounds, rows_per_round = pick(quick, (15, 300), (5, 150), (2, 20))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TRACKING_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}".encode())
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, email text, balance int)".encode())
        conn.execute("SELECT flux.track('bench_tracked')")
        conn.execute(AUDIT_SQL.encode())
        conn.execute(AUDIT_TRIGGER_SQL)
        try:
            keys = iter(range(1 << 30))

            def writes(table: str) -> Any:
                """One row's INSERT, UPDATE and DELETE, each a transaction of its own (committed)."""
                insert = f"INSERT INTO {table} (id, email, balance) VALUES (%s, %s, 10)".encode()
                update = f"UPDATE {table} SET balance = balance + 1 WHERE id = %s".encode()
                delete = f"DELETE FROM {table} WHERE id = %s".encode()

                def work() -> None:
                    key = next(keys)
                    with conn.transaction():
                        conn.execute(insert, (key, f"user{key}@example.com"))
                    with conn.transaction():
                        conn.execute(update, (key,))
                    with conn.transaction():
                        conn.execute(delete, (key,))

                return work

            work = {table: writes(table) for table in TRACKING_TABLES}
            for _ in range(20):  # warm: plans, the trigger functions
                for table in TRACKING_TABLES:
                    work[table]()
            per_write = 1e6 / 3  # seconds a row's three transactions to microseconds a write
            tracked = work["bench_tracked"]
            plain = scaled(interleaved(rounds, rows_per_round, tracked, work["bench_plain"]), per_write)
            audited = scaled(interleaved(rounds, rows_per_round, tracked, work["bench_audited"]), per_write)
            counted = conn.execute("SELECT count(*) FROM bench_audit.record_version").fetchone()
            assert counted is not None and counted[0] > 0
        finally:
            for table in TRACKING_TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}".encode())
            conn.execute("DROP SCHEMA IF EXISTS bench_audit CASCADE")
            conn.execute("DELETE FROM flux.mutations WHERE table_name = 'bench_tracked'")
    note = (f"{rows_per_round * 3} single-row INSERT/UPDATE/DELETE transactions a round on each side, each"
            " committed (synchronous commit on), one of each side in turn")  # fmt: skip
    return [
        row_from_pairs("tracking: tracked vs untracked write", "us", "untracked write", plain,
                       target="<= 1.5", note=note),
        row_from_pairs("tracking: Flux's trigger vs supa_audit's", "us", "supa_audit-style trigger", audited,
                       target="<= 1.2", note="supa_audit is not installable here: its trigger and table are"
                       " written in bench/scenarios.py the way supa_audit's are (jsonb row + old row,"
                       " record ids)"),
    ]  # fmt: skip


# -- trace store ---------------------------------------------------------------------------------------------


def trace_store_rows(dsn: str, quick: bool) -> list[Row]:
    from bench import inspect
    from flux.trace.tree import TRACE_STATEMENTS

    scale = float(os.environ.get("FLUX_BENCH_SCALE", "0.002" if quick else "1"))
    requests = max(1000, int(inspect.REQUESTS * scale))
    samples = pick(quick, inspect.SAMPLES, 50, 10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        took = inspect._generate(conn, requests)
        try:
            picks = random.Random(7)
            request_ids = [
                inspect._request_id(conn, picks.randrange(1, requests + 1)) for _ in range(samples)
            ]
            keys = [json.dumps({"id": picks.randrange(requests)}) for _ in range(samples)]
            lookups = (
                ("trace store: flux trace <id>",
                 [[(query, (rid,)) for query in TRACE_STATEMENTS] for rid in request_ids]),
                ("trace store: flux state history", [[(inspect._HISTORY, (key,))] for key in keys]),
                ("trace store: flux state blame", [[(inspect._BLAME, (key,))] for key in keys]),
            )  # fmt: skip
            rows = []
            for label, batch in lookups:
                times = sorted(_server_ms(conn, statements) for statements in batch)
                p95 = times[max(0, int(len(times) * 0.95) - 1)]
                p50 = statistics.median(times)
                rows.append(Row(label, "ms", p95, None, "", target="<= 50", target_of="flux",
                                pairs=len(times),
                                note=f"server time p95 (p50 {p50:.2f} ms) of {len(times)}"
                                f" random lookups; {requests:,} requests, {requests * 10:,} spans,"
                                f" {requests * 10:,} mutations (generated in {took:.0f} s)"))  # fmt: skip
            return rows
        finally:
            conn.execute("DROP TABLE IF EXISTS bench_items")
            if (
                requests <= 100_000
            ):  # a big store is left in the throwaway database (deleting it takes minutes)
                generated = f"SELECT md5('r' || i)::uuid FROM generate_series(1, {requests}) i"
                conn.execute(f"DELETE FROM flux.mutations WHERE request_id IN ({generated})".encode())
                conn.execute(f"DELETE FROM flux.spans WHERE request_id IN ({generated})".encode())
                conn.execute(f"DELETE FROM flux.requests WHERE id IN ({generated})".encode())


def _server_ms(conn: psycopg.Connection[Any], statements: list[tuple[str, tuple[Any, ...]]]) -> float:
    total = 0.0
    for query, params in statements:
        explained = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON, TIMING OFF) {query}", params).fetchone()
        plan = explained[0][0]  # type: ignore[index]
        total += plan["Planning Time"] + plan["Execution Time"]
    return total


# -- replay --------------------------------------------------------------------------------------------------


def replay_rows(dsn: str, quick: bool) -> list[Row]:
    from bench import replay as r
    from flux import db
    from flux.data import load_catalog
    from flux.gateway.handler import WithBuiltins
    from flux.replay import Replay, built_code, recording_of, replay
    from flux.runtime import Caller, Runtime, invoke
    from flux.trace.tree import load_trace

    recorded, window, samples, undone = pick(
        quick, (r.RECORDED, 2000, r.SAMPLES, r.UNDONE), (40, 200, 7, 200), (10, 30, 3, 20)
    )
    source = (r.ROOT / "examples/quickstart/functions/add_note/index.ts").read_bytes()
    add_note = r._function("add_note", source.replace(b'"notes"', b'"bench_notes"'))
    reader = r._function("read_note", r.READER)
    with psycopg.connect(dsn, autocommit=True) as conn, tempfile.TemporaryDirectory() as cache:
        conn.execute(r.NOTES.encode())
        catalog = load_catalog(conn)
        runtime = Runtime(Path(cache))
        executor = WithBuiltins(runtime)
        try:
            anon = Caller("anon")
            originals = []
            for i in range(recorded):
                request = {"method": "POST", "path": "/notes", "body": {"text": f"note {i}"}}
                originals.append(
                    invoke(conn, executor, add_note, request, catalog=catalog, caller=anon).request_id
                )
            how = Replay(executor, built_code({"add_note": add_note, "read_note": reader}), catalog)
            recordings = [recording_of(load_trace(conn, request_id)) for request_id in originals]
            results = [replay(conn, recording, how) for recording in recordings]
            r._check(results)
            each = [
                res.server_us / rec.request["duration_us"]
                for res, rec in zip(results, recordings, strict=True)
            ]
            quiet = Replay(executor, how.code_for, catalog, record=False)
            clock = time.perf_counter()
            for i in range(window):
                replay(conn, recordings[i % len(recordings)], quiet)
            per_second = window / (time.perf_counter() - clock)
            with db.request_connection(conn) as runs_on:
                as_of = {
                    shape: as_of_ratios(conn, runs_on, executor, reader, catalog, samples, writes, undone)
                    for shape, writes in AS_OF_SHAPES.items()
                }
        finally:
            runtime.close()
            conn.execute("DROP TABLE IF EXISTS bench_notes")
    original_us = statistics.median(rec.request["duration_us"] for rec in recordings)
    replay_us = statistics.median(res.server_us for res in results)
    return [
        Row("replay: recorded mode vs the original", "us", replay_us, original_us, "original request",
            ratio=statistics.median(each), spread=_deciles(each), pairs=len(each), target="<= 1.0",
            note=f"quickstart add_note (TypeScript, one insert), {recorded} requests each replayed once;"
            " server time; spread is p10-p90 of the per-request ratios"),
        *(Row(f"replay: as-of vs the original, {shape.format(n=undone)}", "us",
              statistics.median(replayed), statistics.median(originals), "original request",
              ratio=statistics.median(ratios), spread=_deciles(ratios), pairs=len(ratios), target="<= 3.0",
              note="a one-row read (TypeScript) replayed as of its time, on one request connection; one"
              f" statement putting the table back by hand (rolled back): {statistics.median(by_hand):.0f} us;"
              f" the same read on today's data: {statistics.median(today):.0f} us")
          for shape, (originals, replayed, ratios, by_hand, today) in as_of.items()),
        Row("replay: window throughput", "replays/s", per_second, None, "", target=">= 100", target_of="flux",
            note=f"{window} recorded-mode replays back to back, unrecorded"),
    ]  # fmt: skip


# What an as-of replay of a one-row read takes back, made after the reads were recorded: nothing, many writes
# to the row it read, or many rows of its table made since (each a row the rewind deletes); with the one
# statement that puts the table back by hand (its floor: what a person who knew the writes would run), given
# the row's body and the table's last id before the writes.
AS_OF_SHAPES: dict[str, tuple[str, str] | None] = {
    "nothing to undo": None,
    "{n} later writes to its row": (
        "UPDATE bench_notes SET body = %s WHERE id = 1",
        "UPDATE bench_notes SET body = %(body)s WHERE id = 1",
    ),
    "{n} rows inserted since": (
        "INSERT INTO bench_notes (body) VALUES (%s)",
        "DELETE FROM bench_notes WHERE id > %(last)s",
    ),
}


def as_of_ratios(
    conn: Any,
    runs_on: Any,
    executor: Any,
    reader: Any,
    catalog: Any,
    samples: int,
    writes: tuple[str, str] | None,
    n: int,
) -> tuple[list[int], list[int], list[float], list[float], list[int]]:
    """`samples` one-row reads recorded, then `n` writes made (`writes`' first, if any) by another session,
    then each read replayed as-of on `runs_on` (after a warm-up): each original's server time, each
    replay's, each replay's ratio to its own original, the time of the statement that undoes the writes by
    hand (`writes`' second, in a transaction rolled back), and the same read's on today's data, as often."""
    from bench import replay as r
    from flux.replay import Replay, built_code, grants_ahead, recording_of, replay
    from flux.runtime import Caller, invoke
    from flux.trace.tree import load_trace

    request = {"method": "POST", "path": "/read", "body": {"id": 1}}
    anon = Caller("anon")
    invoke(conn, executor, reader, request, catalog=catalog, caller=anon)  # warm: not a cold start
    outcomes = [invoke(conn, executor, reader, request, catalog=catalog, caller=anon) for _ in range(samples)]
    recordings = [recording_of(load_trace(conn, o.request_id)) for o in outcomes]
    body, last = conn.execute(
        "SELECT (SELECT body FROM bench_notes WHERE id = 1), max(id) FROM bench_notes"
    ).fetchone()
    if writes is not None:
        with conn.transaction():
            for i in range(n):
                conn.execute(writes[0].encode(), [f"later {i}"])
    how = Replay(executor, built_code({"read_note": reader}), catalog, mode="as-of")
    originals, replayed, ratios = [], [], []
    with grants_ahead(conn):  # back to back, as a window replays
        for _ in range(3):  # the rewind's plans
            replay(conn, recordings[-1], how, runs_on)
        for recording in recordings:
            result = replay(conn, recording, how, runs_on)
            r._check([result])
            originals.append(recording.request["duration_us"])
            replayed.append(result.server_us)
            ratios.append(result.server_us / recording.request["duration_us"])
    by_hand = [
        _rolled_back_us(conn, writes[1] if writes else None, {"body": body, "last": last}) for _ in recordings
    ]
    today = []  # the same read on today's data: a row written 1,000 times since is slower to read
    for _ in recordings:
        again = invoke(conn, executor, reader, request, catalog=catalog, caller=anon)
        today.append(load_trace(conn, again.request_id, with_jobs=False).request["duration_us"])
    return originals, replayed, ratios, by_hand, today


def _rolled_back_us(conn: Any, sql: str | None, values: dict[str, Any]) -> float:
    """Microseconds to run `sql` (nothing, if None) in a transaction of its own, rolled back, with the table's
    triggers off (as its owner would, so that Flux does not record the undo)."""
    clock = time.perf_counter()
    with conn.transaction(force_rollback=True):
        conn.execute(b"SET LOCAL session_replication_role = replica")
        if sql is not None:
            conn.execute(sql.encode(), values)
    return (time.perf_counter() - clock) * 1e6


def _deciles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.1)], ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
