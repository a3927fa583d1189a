"""What a replay costs, against the request it replays, measured in one run: the quickstart's `add_note`
(TypeScript, one insert) recorded N times, then replayed in `recorded` mode (throughput, and each replay's
server time against its original's), one-row reads replayed `as-of` with nothing, 1,000 later writes to the
row they read, or 1,000 rows made since to undo (each against its original's time), and the process's memory
over a window of 10,000 replays."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from flux import db
from flux.data import load_catalog
from flux.gateway.handler import WithBuiltins
from flux.replay import Replay, ReplayResult, built_code, recording_of, replay
from flux.runtime import Caller, Function, FunctionLimits, Runtime, invoke
from flux.trace.tree import load_trace

RECORDED = 300
UNDONE = 1000
SAMPLES = 21
WINDOW = 10_000
ROOT = Path(__file__).resolve().parents[1]
NOTES = """
DROP TABLE IF EXISTS bench_notes;
CREATE TABLE bench_notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL,
                          created_at timestamptz NOT NULL DEFAULT now());
GRANT SELECT, INSERT, UPDATE ON bench_notes TO flux_anon;
SELECT flux.track('bench_notes');
"""
READER = b"""export default async (req: any, ctx: any) => {
  const found = await ctx.db.query({ select: "bench_notes", where: { id: { eq: req.body.id } } });
  return { status: 200, body: found.rows[0] };
};"""


def _function(name: str, code: bytes) -> Function:
    import hashlib

    return Function(name, "typescript", code, hashlib.sha256(code).hexdigest(), FunctionLimits())


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def run(dsn: str) -> None:
    source = (ROOT / "examples/quickstart/functions/add_note/index.ts").read_bytes()
    add_note = _function("add_note", source.replace(b'"notes"', b'"bench_notes"'))
    reader = _function("read_note", READER)
    with psycopg.connect(dsn, autocommit=True) as conn, tempfile.TemporaryDirectory() as cache:
        conn.execute(NOTES.encode())
        catalog = load_catalog(conn)
        runtime = Runtime(Path(cache))
        executor = WithBuiltins(runtime)
        try:
            originals = []
            for i in range(RECORDED):
                request = {"method": "POST", "path": "/notes", "body": {"text": f"note {i}"}}
                outcome = invoke(conn, executor, add_note, request, catalog=catalog, caller=Caller("anon"))
                originals.append(outcome.request_id)
            how = Replay(executor, built_code({"add_note": add_note, "read_note": reader}), catalog)
            recordings = [recording_of(load_trace(conn, request_id)) for request_id in originals]
            started = time.perf_counter()
            results = [replay(conn, recording, how) for recording in recordings]
            per_second = len(results) / (time.perf_counter() - started)
            _check(results)
            original_us = statistics.median(r.request["duration_us"] for r in recordings)
            replay_us = statistics.median(r.server_us for r in results)
            print(f"replay: quickstart add_note, {RECORDED} recorded requests replayed in recorded mode")
            met = "met" if per_second >= 100 else "NOT met"
            print(f"  {per_second:6.0f} replays/s   (target >= 100/s: {met})")
            print(f"  server time p50: original {original_us:6.0f} us, replay {replay_us:6.0f} us, "
                  f"{replay_us / original_us:.2f}x   (target <= 1.00x)")  # fmt: skip
            _as_of(conn, executor, catalog, reader)
            _memory(conn, how, recordings)
        finally:
            runtime.close()


def _check(results: list[ReplayResult]) -> None:
    verdicts = {r.verdict for r in results}
    if verdicts != {"same"}:
        raise SystemExit(f"replays of unchanged code were not all same: {verdicts}")


def _as_of(conn: Any, executor: Any, catalog: Any, reader: Function) -> None:
    """Each shape of bench/scenarios.py's as-of rows: the replays' and originals' medians, and the median of
    each replay's ratio to its own original, on one request connection as a window's are."""
    from bench.scenarios import AS_OF_SHAPES, as_of_ratios

    with db.request_connection(conn) as runs_on:  # where the function's SQL runs, as in the server
        for shape, writes in AS_OF_SHAPES.items():
            measured = as_of_ratios(conn, runs_on, executor, reader, catalog, SAMPLES, writes, UNDONE)
            originals, replayed, ratios, by_hand, today = measured
            print(f"replay: as-of of a one-row read, {shape.format(n=UNDONE)}: original p50"
                  f" {statistics.median(originals):.0f} us, replay p50 {statistics.median(replayed):.0f} us,"
                  f" {statistics.median(ratios):.2f}x   (target <= 3.00x); the undo by hand"
                  f" {statistics.median(by_hand):.0f} us, the read on today's data"
                  f" {statistics.median(today):.0f} us")  # fmt: skip


def _memory(conn: Any, how: Replay, recordings: list[Any]) -> None:
    quiet = Replay(how.executor, how.code_for, how.catalog, record=False)
    marks = []
    for i in range(WINDOW):
        replay(conn, recordings[i % len(recordings)], quiet)
        if i % 2000 == 0 or i == WINDOW - 1:
            marks.append(_rss_mb())
    print(f"replay: memory over {WINDOW} replays (RSS MB every 2,000): "
          + " ".join(f"{mark:.0f}" for mark in marks)
          + f"   growth after the first 2,000: {marks[-1] - marks[1]:+.1f} MB   (target: flat)")  # fmt: skip
