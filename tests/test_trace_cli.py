"""`flux trace <id>` and `flux trace ls` on requests recorded by real functions: a write with a job, a
failure, and a request the gateway refused; `flux.trace()` in SQL."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from flux.api.admin import create_admin_key
from flux.api.deploy import deploy
from flux.config import load_settings
from flux.errors import FollowerGone, RequestNotFound, TableNotTracked
from flux.trace.recorder import Recorder
from tests.fixtures.gateway import gateway_client
from tests.fixtures.processes import FLUX, free_port, wait_for_http

Conn = psycopg.Connection[Any]
FLUX_TOML = """
[[routes]]
method = "POST"
path = "/notes"
function = "add_note"
auth = "none"

[[routes]]
method = "GET"
path = "/notes/{id}"
function = "get_note"
auth = "none"

[[routes]]
method = "POST"
path = "/spin"
function = "spin"
auth = "none"

[[routes]]
method = "POST"
path = "/prices"
function = "price"
auth = "none"

[[routes]]
method = "PUT"
path = "/prices/{id}"
function = "price"
auth = "none"

[functions.spin]
timeout_ms = 300
"""
GET_NOTE = """export default async (req, ctx) => {
  const found = await ctx.db.query({select: "notes", where: {id: {eq: Number(req.params.id)}}});
  if (found.rows.length === 0) throw new Error("no such note");
  return found.rows[0];
}"""
ADD_NOTE = """export default async (req, ctx) => {
  if (!req.body?.text) throw new Error("no text");
  const note = await ctx.db.query({insert: "notes", values: {body: req.body.text}, returning: ["id"]});
  await ctx.queue.push("notify", {note: note.rows[0].id});
  console.log("added", note.rows[0].id);
  return {status: 201, body: note.rows[0]};
}"""
PRICE = """export default async (req, ctx) => {
  if (req.method === "POST") return (await ctx.db.query({insert: "prices", values: req.body})).count;
  const where = {id: {eq: Number(req.params.id)}};
  return (await ctx.db.query({update: "prices", set: {amount: req.body.amount}, where})).count;
}"""
SPAN_LINE = re.compile(r"^( *)(\S.*?) {2,}[\d.]+ ms ")
NOTES = "CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL);\n" \
        "GRANT SELECT, INSERT ON notes TO flux_anon;\n" \
        "CREATE TABLE prices (id int PRIMARY KEY, amount numeric(10, 2) NOT NULL);\n" \
        "GRANT SELECT, INSERT, UPDATE ON prices TO flux_anon;\n"  # fmt: skip


@pytest.fixture
def recorded(dsn: str, tmp_path: Path) -> dict[str, str]:
    """Requests through the gateway: two writes (each with a job), a failure, a refusal, a read, a timeout;
    their ids."""
    with gateway_client(_deployed(dsn, tmp_path), dsn) as client:
        ids = {
            "ok": client.simulate_post("/notes", json={"text": "hello"}),
            "again": client.simulate_post("/notes", json={"text": "world"}),
            "failed": client.simulate_post("/notes", json={}),
            "refused": client.simulate_get("/nowhere"),
            "read": client.simulate_get("/notes/1"),
            "timeout": client.simulate_post("/spin"),
            "priced": client.simulate_post("/prices", json={"id": 1, "amount": 12.5}),  # stored as 12.50
            "repriced": client.simulate_put("/prices/1", json={"amount": 11}),  # 11.00
        }
    return {name: result.headers["x-request-id"] for name, result in ids.items()}


def _deployed(dsn: str, tmp_path: Path) -> Any:
    """The notes project deployed; its settings."""
    (tmp_path / "flux.toml").write_text(FLUX_TOML)
    (tmp_path / "functions" / "add_note").mkdir(parents=True)
    (tmp_path / "functions" / "add_note" / "index.ts").write_text(ADD_NOTE)
    (tmp_path / "functions" / "get_note").mkdir(parents=True)
    (tmp_path / "functions" / "get_note" / "index.ts").write_text(GET_NOTE)
    (tmp_path / "functions" / "notify").mkdir(parents=True)
    (tmp_path / "functions" / "notify" / "index.ts").write_text("export default async () => ({})")
    (tmp_path / "functions" / "price").mkdir(parents=True)
    (tmp_path / "functions" / "price" / "index.ts").write_text(PRICE)
    (tmp_path / "functions" / "spin").mkdir(parents=True)
    (tmp_path / "functions" / "spin" / "index.ts").write_text(
        "export default async () => { while (true) {} }"
    )
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_notes.sql").write_text(NOTES)
    settings = load_settings(tmp_path, env={})
    deploy(dsn, settings)
    return settings


def flux(dsn: str, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"DATABASE_URL": dsn}, catch_exceptions=True)


def test_trace_shows_the_tree_the_mutations_and_the_jobs(dsn: str, recorded: dict[str, str]) -> None:
    shown = flux(dsn, "trace", recorded["ok"][:8])  # a unique prefix is enough
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert (
        lines[0].startswith(f"request {recorded['ok']}  POST /notes  201  ")
        and "fn=add_note  version 1" in lines[0]
    )
    spans = [
        match.groups() for line in lines[1:] if (match := SPAN_LINE.match(line)) and "clock:" not in line
    ]
    assert spans[:3] == [("", "POST /notes"), ("", "function:add_note"), ("  ", "db:insert(notes)")], (
        shown.output
    )
    assert ("  ", "queue:push(notify)") in spans and ("  ", "log:info") in spans
    insert_line = next(i for i, line in enumerate(lines) if line.startswith("  db:insert(notes)"))
    assert (
        lines[insert_line + 1] == '      INSERT notes {"id": 1}  body: ∅ → "hello", id: ∅ → 1'
    )  # under its span
    assert "mutations" not in lines  # every change is shown under the call that made it
    assert any(line.startswith("  job ") and "notify  queued" in line for line in lines)
    record = json.loads(flux(dsn, "trace", recorded["ok"], "--json").output)
    insert = next(span for span in record["spans"] if span["name"] == "db:insert(notes)")
    assert record["request"]["status"] == 201 and insert["output"]["rows"] == [{"id": 1}]
    assert any(s["name"] == "log:info" and s["input"]["message"] == "added 1" for s in record["spans"])


def test_a_failed_and_a_refused_request_show_why(dsn: str, recorded: dict[str, str]) -> None:
    failed = flux(dsn, "trace", recorded["failed"]).output
    assert " 500 " in failed.splitlines()[0] and "no text" in failed
    refused = flux(dsn, "trace", recorded["refused"]).output
    assert "GET /nowhere  404" in refused.splitlines()[0] and "error FX004" in refused
    listed = flux(dsn, "trace", "ls", "--errors").output.splitlines()
    assert {line.split()[2] for line in listed} == {
        recorded["failed"],
        recorded["refused"],
        recorded["timeout"],
    }
    timed_out = flux(dsn, "trace", recorded["timeout"]).output
    assert "POST /spin  504" in timed_out.splitlines()[0] and "error FX301" in timed_out
    assert "function:spin" in flux(dsn, "why", recorded["timeout"]).output
    assert len(flux(dsn, "trace", "ls", "--status", "201").output.splitlines()) == 2


def test_unknown_and_ambiguous_ids_are_refused_clearly(
    dsn: str, recorded: dict[str, str], conn: Conn
) -> None:
    assert isinstance(flux(dsn, "trace", "00000000-dead").exception, RequestNotFound)
    assert isinstance(flux(dsn, "trace", "not an id").exception, RequestNotFound)
    for last in ("1", "2"):
        conn.execute(
            "INSERT INTO flux.requests (id, ok) VALUES (%s, true)",
            (f"abcdef00-0000-4000-8000-00000000000{last}",),
        )
    ambiguous = flux(dsn, "trace", "abcdef00").exception
    assert isinstance(ambiguous, RequestNotFound) and "2 requests start with abcdef00" in ambiguous.message
    rows = conn.execute("SELECT depth, name FROM flux.trace(%s) WHERE module <> 'clock'", (recorded["ok"],))
    assert rows.fetchall()[:3] == [(0, "POST /notes"), (0, "function:add_note"), (1, "db:insert(notes)")]


def test_state_history_and_blame_of_a_row(dsn: str, recorded: dict[str, str], conn: Conn) -> None:
    conn.execute("UPDATE notes SET body = 'edited in psql' WHERE id = 1")
    versions = flux(dsn, "state", "history", "notes", "1").output.splitlines()
    assert " INSERT  request " + recorded["ok"] + "  fn=add_note  version 1  code " in versions[0]
    assert versions[1] == '    body: ∅ → "hello", id: ∅ → 1'
    assert versions[2].endswith("UPDATE  outside Flux (database user postgres)")
    assert versions[3] == '    body: "hello" → "edited in psql"'
    blamed = {
        line.split()[0]: line
        for line in flux(dsn, "state", "blame", "notes", '{"id": 1}').output.splitlines()
    }
    assert '"edited in psql"' in blamed["body"] and "outside Flux" in blamed["body"]
    assert recorded["ok"] in blamed["id"] and " INSERT " in blamed["id"]
    rows = conn.execute("SELECT op, function, actor FROM flux.row_history('notes', '{\"id\": 1}')").fetchall()
    assert rows == [("INSERT", "add_note", "flux_authenticator"), ("UPDATE", None, "postgres")]
    for args in (("nowhere", "1"), ("notes", '{"nope": 1}')):
        assert isinstance(flux(dsn, "state", "history", *args).exception, TableNotTracked), args
    assert flux(dsn, "state", "history", "notes", "9").output == "no recorded change to notes 9\n"
    conn.execute("INSERT INTO notes (body) VALUES ('gone'); DELETE FROM notes WHERE body = 'gone'")
    rows = flux(dsn, "state", "blame", "notes").output.splitlines()  # each row's last change
    assert len(rows) == 2 and rows[0].startswith('{"id": 1}  UPDATE  ') and "(body)  outside Flux" in rows[0]
    assert rows[1].startswith('{"id": 2}  INSERT  ') and f"(body, id)  request {recorded['again']}" in rows[1]


def test_numbers_show_as_they_were_recorded(dsn: str, recorded: dict[str, str], conn: Conn) -> None:
    # numeric(10, 2) keeps 12.50 and 11.00, and so does the record (jsonb): no float may make them 12.5, 11.0
    assert conn.execute("SELECT new->>'amount' FROM flux.mutations WHERE table_name = 'prices' ORDER BY id")\
        .fetchall() == [("12.50",), ("11.00",)]  # fmt: skip
    versions = flux(dsn, "state", "history", "prices", "1").output.splitlines()
    assert versions[1] == "    amount: ∅ → 12.50, id: ∅ → 1"
    assert versions[3] == "    amount: 12.50 → 11.00"
    blame = flux(dsn, "state", "blame", "prices", "1").output
    blamed = {line.split()[0]: line for line in blame.splitlines()}
    assert blamed["amount"].split()[1] == "11.00" and recorded["repriced"] in blamed["amount"]
    shown = flux(dsn, "trace", recorded["repriced"]).output.splitlines()
    assert '      UPDATE prices {"id": 1}  amount: 12.50 → 11.00' in shown, shown  # under db:update(prices)
    full = flux(dsn, "trace", recorded["priced"], "--full").output
    # each as recorded: the function sent 12.5, the row holds 12.50
    assert '"values": {"id": 1, "amount": 12.5}' in full and "amount: ∅ → 12.50, id: ∅ → 1" in full
    record = json.loads(flux(dsn, "trace", recorded["repriced"], "--json").output, parse_float=str)
    assert record["mutations"][0]["old"]["amount"] == "12.50"  # the JSON answer keeps the digits too


def test_diff_of_two_calls_of_one_route_shows_other_values(dsn: str, recorded: dict[str, str]) -> None:
    shown = flux(dsn, "trace", "diff", recorded["ok"], recorded["again"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith(f"a {recorded['ok']}  POST /notes  201") and lines[1].startswith("b ")
    spans = [line for line in lines if re.match(r"^[ ~+-] ", line) and " ms " in line]
    assert not any(line.startswith(("+", "-")) for line in spans), shown.output  # the same calls, in order
    insert = next(i for i, line in enumerate(lines) if line.startswith("~   db:insert(notes)"))
    assert '      input.values.body: "hello" → "world"' in lines[insert + 1 : insert + 4]
    assert "      output.rows[0].id: 1 → 2" in lines[insert + 1 : insert + 4]
    at = lines.index("mutations")
    assert lines[at + 1] == '~ INSERT public.notes {"id": 2}'
    assert '    new.body: "hello" → "world"' in lines[at + 2 :] and "    key.id: 1 → 2" in lines[at + 2 :]
    same = flux(dsn, "trace", "diff", recorded["ok"], recorded["ok"][:8]).output
    assert same.splitlines()[-1] == "same spans, outputs and mutations"


def test_diff_of_a_success_and_a_failure_shows_what_went_missing(dsn: str, recorded: dict[str, str]) -> None:
    shown = flux(dsn, "trace", "diff", recorded["ok"], recorded["failed"], "--json")
    assert shown.exit_code == 0, shown.output
    differences = json.loads(shown.output)
    assert {"path": "status", "a": 201, "b": 500} in differences["request"]
    status = {d["name"].strip(): d["status"] for d in differences["spans"]}
    assert status["db:insert(notes)"] == status["queue:push(notify)"] == "missing"
    assert status["POST /notes"] in ("same", "changed") and status["function:add_note"] == "changed"
    assert [(m["status"], m["op"]) for m in differences["mutations"]] == [("missing", "INSERT")]


def test_why_shows_the_failure_the_reads_and_who_changed_the_rows_before(
    dsn: str, recorded: dict[str, str]
) -> None:
    failed = flux(dsn, "why", recorded["failed"]).output.splitlines()
    assert failed[2] == "failed in function:add_note" and '"path": "/notes"' in failed[3], failed
    assert failed[4] == "  error: FX300: Error: no text" and failed[5].startswith(
        "    at default (functions/"
    )
    read = flux(dsn, "why", recorded["read"]).output.splitlines()
    assert "it did not fail" in read and "it read" in read
    assert any(line.startswith("  db:select(notes)  1 row  input: ") for line in read), read
    assert '    {"id": 1, "body": "hello"}' in read
    at = read.index("before it")
    assert read[at + 1].startswith('  public.notes {"id": 1} (read): INSERT of body, id at ')
    assert read[at + 2].startswith(f"    by request {recorded['ok']}  fn=add_note  version 1  code ")
    written = flux(dsn, "why", recorded["again"]).output.splitlines()
    assert '  INSERT notes {"id": 2}  body: ∅ → "world", id: ∅ → 2' in written
    assert '  public.notes {"id": 2} (written): no change recorded before' in written


def test_tail_prints_new_requests_as_they_are_recorded(dsn: str, tmp_path: Path, conn: Conn) -> None:
    settings = _deployed(dsn, tmp_path)
    conn.execute("LISTEN flux_requests")
    with gateway_client(settings, dsn) as client:
        client.simulate_get("/nowhere")
        assert list(conn.notifies(timeout=0.3)) == []  # nobody follows: no NOTIFY is sent
        tails = [_start_tail(dsn, tmp_path), _start_tail(dsn, tmp_path, "--errors")]
        try:
            ok = client.simulate_post("/notes", json={"text": "hi"}).headers["x-request-id"]
            failed = client.simulate_post("/notes", json={}).headers["x-request-id"]
            every, errors = (_lines(tail, 2 if tail is tails[0] else 1) for tail in tails)
        finally:
            for tail in tails:
                tail.send_signal(signal.SIGINT)
                tail.communicate(timeout=10)  # and close its pipes
    assert [line.split()[2] for line in every] == [ok, failed] and "POST /notes  fn=add_note" in every[0]
    assert [line.split()[2] for line in errors] == [failed] and " 500 FX300 " in errors[0]
    assert conn.execute("SELECT count(*) FROM flux.request_followers").fetchone() == (0,)


def test_a_follower_stopping_while_requests_are_recorded_fails_none_of_them(dsn: str, conn: Conn) -> None:
    from flux.trace.tree import start_following, stop_following, take_followed

    follower = start_following(conn, inbox=True)
    conn.execute("SET statement_timeout = '5s'")  # a recording that waited on the stop would wait for ever
    with psycopg.connect(dsn) as stopping:  # its DELETE is in flight while a request is recorded
        stop_following(stopping, follower)
        recorded = {"kind": "http", "ok": True, "started_us": time.time_ns() // 1000}
        Recorder(str(uuid.uuid4())).write(conn, recorded)
    with pytest.raises(FollowerGone):
        take_followed(conn, follower)
    start_following(conn, inbox=True)  # and the row left in the stopped follower's inbox is cleared
    assert conn.execute("SELECT follower_id FROM flux.request_follower_inbox").fetchall() == []


def _start_tail(where: str | dict[str, str], project: Path, *options: str) -> subprocess.Popen[str]:
    """`flux tail` on the database at `where`, or with the environment `where` (FLUX_URL)."""
    env = where if isinstance(where, dict) else {
        **os.environ, "DATABASE_URL": where, "PYTHONPATH": str(Path(__file__).resolve().parents[1])
    }  # fmt: skip
    tail = subprocess.Popen(
        [sys.executable, "-m", "cli", "tail", *options], cwd=project, text=True, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert tail.stderr is not None
    assert "following new requests" in tail.stderr.readline()  # it listens from here on
    return tail


def _request_id(url: str) -> str:
    """The request id the server gave a GET of `url` (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answered:
            return str(answered.headers["x-request-id"])
    except urllib.error.HTTPError as refused:
        return str(refused.headers["x-request-id"])


def _lines(tail: subprocess.Popen[str], count: int, timeout_s: float = 10) -> list[str]:
    """The next `count` lines `tail` prints (fewer if it falls silent for `timeout_s`)."""
    assert tail.stdout is not None
    stdout = tail.stdout
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(stdout.readline().rstrip("\n")) for _ in range(count)], daemon=True
    )
    reader.start()
    reader.join(timeout_s)
    return [lines.get() for _ in range(lines.qsize())]


def test_export_writes_an_otlp_trace(dsn: str, recorded: dict[str, str], tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    shown = flux(dsn, "trace", "export", recorded["ok"])
    assert shown.exit_code == 0, shown.output
    spans = json.loads(shown.stdout)["resourceSpans"][0]["scopeSpans"][0]["spans"]
    root, *children = spans
    assert root["name"] == "POST /notes" and "parentSpanId" not in root and root["kind"] == 2  # SERVER
    assert re.fullmatch(r"[0-9a-f]{32}", root["traceId"]) and {s["traceId"] for s in spans} == {
        root["traceId"]
    }
    ids = {span["spanId"] for span in spans}
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids) and len(ids) == len(spans)
    assert all(child["parentSpanId"] in ids for child in children)
    insert = next(span for span in children if span["name"] == "db:insert(notes)")
    assert [event["name"] for event in insert["events"]] == ["INSERT public.notes"]
    failed = json.loads(flux(dsn, "trace", "export", recorded["failed"]).stdout)
    assert failed["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["status"] == {
        "code": 2, "message": "FX300: Error: no text"
    }  # fmt: skip
    binary = tmp_path / "trace.pb"
    exported = flux(dsn, "trace", "export", recorded["ok"], "--format", "otlp-protobuf", "-o", str(binary))
    assert exported.exit_code == 0, exported.output
    decoded = ExportTraceServiceRequest.FromString(binary.read_bytes())
    assert len(decoded.resource_spans[0].scope_spans[0].spans) == len(spans)
    assert flux(dsn, "trace", "export", recorded["ok"], "--format", "zipkin").exit_code == 1


@pytest.mark.slow
def test_every_inspect_command_answers_the_same_through_the_management_api(
    dsn: str, recorded: dict[str, str], conn: Conn, tmp_path: Path, flux_env: dict[str, str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*FLUX, "server", "--no-deploy", "--port", str(port), "--queue-workers", "0"], cwd=tmp_path,
        env={**flux_env, "DATABASE_URL": dsn}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    through_api = {**flux_env, "FLUX_URL": url, "FLUX_ADMIN_KEY": create_admin_key(conn, "cli").key}
    through_database = {**flux_env, "DATABASE_URL": dsn}

    def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [*FLUX, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        return done.returncode, done.stdout, done.stderr

    try:
        wait_for_http(f"{url}/ready", timeout=30, process=server)
        assert run(through_api, "login")[0] == 0
        for args in (
            ["trace", recorded["ok"][:8]], ["trace", recorded["failed"], "--full"],
            ["trace", recorded["ok"], "--json"],
            ["trace", "ls"], ["trace", "ls", "--errors", "--since", "1h"], ["trace", "ls", "--slow", "0.5"],
            ["trace", "diff", recorded["ok"], recorded["again"]], ["trace", "export", recorded["ok"]],
            ["why", recorded["failed"]], ["why", recorded["read"]], ["why", recorded["timeout"]],
            ["state", "history", "notes", "1"], ["state", "blame", "notes", "1"], ["state", "blame", "notes"],
            ["state", "history", "prices", "1"], ["state", "blame", "prices", "1"],
            ["trace", recorded["repriced"]],
            ["trace", "0000dead"], ["state", "history", "nope", "1"],
        ):  # fmt: skip
            answered = run(through_api, *args)
            assert answered == run(through_database, *args), args
            assert answered[1] or answered[2].startswith("error FX50"), (args, answered)
        tail = _start_tail(through_api, tmp_path)  # through the API: the server keeps what it missed
        try:
            made = [_request_id(f"{url}/nowhere/{n}") for n in range(3)]
            followed = _lines(tail, 3)
        finally:
            tail.send_signal(signal.SIGINT)
            tail.communicate(timeout=10)
        assert [line.split()[2] for line in followed] == made and " 404 FX" in followed[0]
        assert conn.execute("SELECT count(*) FROM flux.request_followers").fetchone() == (0,)
        stopped = urllib.request.Request(f"{url}/flux/api/requests/followers/1", headers={
            "authorization": f"Bearer {through_api['FLUX_ADMIN_KEY']}"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as gone:
            urllib.request.urlopen(stopped, timeout=10)
        assert gone.value.code == 404 and json.loads(gone.value.read())["code"] == "FX505"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
