"""Attacks on the dashboard's own port, its live stream, the requests window and what a project can write into
a row that no span made: a real `flux server` (two sync workers), asked with raw HTTP. Each hole found has a
test that failed before its fix; the attacks that held are kept as tests too."""

from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from flux.dashboard._routes import LIVE_STREAM_S
from tests.dashboard.test_attacks import (  # noqa: F401  (browser, hostile, server: fixtures)
    HOSTILE,
    PAYLOADS,
    Hostile,
    Server,
    _no_injection,
    browser,
    fx_code,
    hostile,
    server,
    watched_page,
)
from tests.fixtures.processes import call_json

pytestmark = pytest.mark.slow


def _raw(server: Server, port: int, request: bytes, timeout: float = 15) -> bytes:  # noqa: F811
    """One request as bytes on the wire; the whole answer (the server closes after it)."""
    with socket.create_connection((server.host, port), timeout=timeout) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    return answer


def _live_url(server: Server, session: str) -> str:  # noqa: F811
    page = server.ask("GET", "/flux/requests", session=session)
    return re.search(r'data-live="([^"]+)"', page.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]


# -- 1. the two ports ---------------------------------------------------------------------------------------


def test_a_hostile_host_header_gets_no_redirect_elsewhere_and_no_500(server: Server) -> None:  # noqa: F811
    """Before, the project's port built its redirect from the Host header as sent: `Host: a:b` answered 500
    (FX900: Falcon's host parser raised), and `Host: evil.example/x?` led to evil.example (port 80), `[::1`
    to `[::]`. Now a Host that is not a host name (and port) is refused with 400 (FX147); a good one, IPv6
    in brackets included, is kept."""
    for host in ("a:b", "evil.example/x?", "[::1", "a@evil.example", "a:99999999999", "", "a b", "a,b"):
        answer = server.ask("GET", "/flux/queue", headers={"host": host}, port=server.port)
        assert answer.status == 400 and fx_code(answer) == "FX147", (host, answer.status, answer.headers)
        assert "location" not in answer.headers, host
    for host, expected in (("example.test", "example.test"), ("example.test:80", "example.test"),
                           ("[::1]:4000", "[::1]"), ("127.0.0.1", "127.0.0.1")):  # fmt: skip
        answer = server.ask("GET", "/flux/queue?a=1", headers={"host": host}, port=server.port)
        assert answer.status == 302, (host, answer)
        assert answer.headers["location"] == f"http://{expected}:{server.dashboard_port}/flux/queue?a=1", host
        assert answer.headers["cache-control"] == "no-store"


def test_the_redirect_keeps_the_path_as_it_was_sent(server: Server) -> None:  # noqa: F811
    """Before, the redirect's Location was the path decoded: `%0d%0a`, `%E2%80%A8`, `%FF` or `%00` in it
    answered gunicorn's bare 500 (a header it refused to send), and `%2500` became `%00` (decoded twice on
    the way). Now the path goes on percent-encoded as it came."""
    for sent in ("/flux/requests/%0D%0ASet-Cookie:%20x=1", "/flux/requests/%E2%80%A8", "/flux/requests/%00",
                 "/flux/requests/%25%30%30", "/flux/requests/%C3%A9", "/flux/requests/%FF"):  # fmt: skip
        answer = server.ask("GET", sent, port=server.port)
        assert answer.status == 302, (sent, answer.status, answer.text[:200])
        location = urlsplit(answer.headers["location"])
        assert location.netloc == f"{server.host}:{server.dashboard_port}", sent
        assert "set-cookie" not in {k.lower() for k in answer.headers if answer.headers[k]} - {"set-cookie"}
        assert answer.headers.get("set-cookie", "") == "", sent
        assert location.path.upper() == sent.upper().replace("%25%30%30", "%2500"), (sent, location)
    kept = server.ask("GET", "/flux/requests?route=/a%20b&x=%0d%0a", port=server.port)
    assert kept.headers["location"].endswith("/flux/requests?route=/a%20b&x=%0d%0a")


def test_neither_port_answers_the_others_routes_whatever_the_request_says(server: Server) -> None:  # noqa: F811
    """Held: an absolute URI in the request line, a Host or X-Forwarded-Host naming the other port, or a
    Forwarded header, do not change which app answers (the listener's port): the dashboard's port answers
    only dashboard pages (FX143), the project's port never a dashboard page (it redirects, FX145 for a
    POST). X-Forwarded-Host does not steer the redirect."""
    project, dashboard = server.port, server.dashboard_port
    session = server.sign_in()
    for request in (
        b"GET http://127.0.0.1:%d/notes HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n\r\n" % (project, project),
        b"GET /flux/api/requests HTTP/1.1\r\nhost: 127.0.0.1:%d\r\nx-forwarded-host: 127.0.0.1:%d\r\n"
        b"forwarded: host=127.0.0.1:%d\r\n\r\n" % (project, project, project),
        b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n",
    ):
        answer = _raw(server, dashboard, request)
        assert answer.startswith(b"HTTP/1.1 404") and b"FX143" in answer, answer[:300]
    for request in (
        b"GET http://127.0.0.1:%d/flux/queue HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncookie: flux_session=%s\r\n"
        b"x-forwarded-host: evil.example\r\n\r\n" % (dashboard, dashboard, session.encode()),
    ):
        answer = _raw(server, project, request)
        assert answer.startswith(b"HTTP/1.1 302"), answer[:300]
        assert b"location: http://127.0.0.1:%d/flux/queue\r\n" % dashboard in answer
        assert b"csrf" not in answer
    posted = server.ask("POST", "/flux/signout", "csrf=x", session=session, port=project,
                        headers={"host": f"127.0.0.1:{dashboard}"})  # fmt: skip
    assert posted.status == 421 and fx_code(posted) == "FX145"


# -- 2. the live stream -------------------------------------------------------------------------------------


def test_a_session_cannot_take_another_sessions_live_feed(server: Server) -> None:  # noqa: F811
    """Before, the feed took any follower's inbox by its number (small, consecutive): another session (or a
    guess of the number of the CLI's `flux tail`) read what was meant for it, and took it away, so the first
    session's list missed those requests. Now a feed's address carries a proof made with its session's own
    secret, and another session's feed, or a number alone, is refused (403, FX148)."""
    owner, thief = server.sign_in(), server.sign_in()
    live = _live_url(server, owner)
    assert "proof=" in live
    status, headers, _ = call_json(f"{server.url}/notes", "POST", {"text": "meant for the owner"})
    assert status == 201
    follower = re.search(r"follower=(\d+)", live).group(1)  # type: ignore[union-attr]
    for stolen in (live, f"/flux/requests/live?follower={follower}",
                   f"/flux/requests/live?follower={follower}&proof=" + "0" * 32,
                   f"/flux/requests/live?follower={follower}&proof=%C3%A9"):  # fmt: skip
        answer = server.ask("GET", stolen, session=thief)
        assert answer.status == 403 and fx_code(answer) == "FX148", (stolen, answer.status, answer.text[:200])
        assert headers["x-request-id"] not in answer.text
    # the owner's feed still has it
    connection = server.ask("GET", live, session=owner)
    assert connection.status == 200 and headers["x-request-id"] in connection.text


def _no_locks_within(server: Server, seconds: float) -> bool:  # noqa: F811
    """Whether the feeds' advisory locks are all gone, waiting for them at most `seconds`."""
    deadline = time.monotonic() + seconds
    while _advisory_locks(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _advisory_locks(server) == 0


def _advisory_locks(server: Server) -> int:  # noqa: F811
    return int(server.sql_one(
        "SELECT count(*) FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND a.datname = current_database()"
    ))  # fmt: skip


def test_a_client_killed_mid_stream_leaves_no_lock_and_no_stream_outlives_its_bound(
    server: Server,  # noqa: F811
) -> None:
    """Held: a client reset (RST) mid-stream, one that half-closes, and one that never reads while requests
    are recorded all free their stream's advisory locks within the bound, and the project's routes answer
    meanwhile; a reconnect storm of one session answers at once and leaves no lock."""
    session = server.sign_in()
    assert _no_locks_within(server, LIVE_STREAM_S + 3)  # an earlier test's stream ends within its bound
    live = _live_url(server, session)
    request = f"GET {live} HTTP/1.1\r\nhost: x\r\ncookie: flux_session={session}\r\n\r\n".encode()
    # reset mid-stream
    raw = socket.create_connection((server.host, server.dashboard_port), timeout=10)
    raw.sendall(request)
    assert raw.recv(65536).startswith(b"HTTP/1.1 200")
    assert _advisory_locks(server) == 2  # the session's and a server slot
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    assert _no_locks_within(server, 3)
    # half-closed, and a reader that never reads while requests are recorded
    for half_close in (True, False):
        raw = socket.create_connection((server.host, server.dashboard_port), timeout=10)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.sendall(request)
        if half_close:
            raw.shutdown(socket.SHUT_WR)
        began = time.monotonic()
        for _ in range(20):
            assert call_json(f"{server.url}/notes", "POST", {"text": "x" * 2000})[0] == 201
        assert time.monotonic() - began < LIVE_STREAM_S
        assert _no_locks_within(server, began + LIVE_STREAM_S + 3 - time.monotonic()), half_close
        raw.close()
    # a storm: 30 feeds of one session at once; one stream of it is open at a time, every other answers at
    # once, and the project's routes answer meanwhile
    ended: list[float] = []
    held: list[tuple[float, float]] = []  # when each answer held open (> 3 s) began and ended

    def feed() -> None:
        connection = http.client.HTTPConnection(server.host, server.dashboard_port, timeout=60)
        try:
            connection.request("GET", live, headers={"cookie": f"flux_session={session}"})
            answer = connection.getresponse()
            assert answer.status == 200
            began = time.monotonic()  # answered: how long it is held, not how long it waited for a worker
            answer.read()
            ended.append(time.monotonic() - began)
            if ended[-1] > 3:
                held.append((began, time.monotonic()))
        finally:
            connection.close()

    storm = [threading.Thread(target=feed) for _ in range(30)]
    for thread in storm:
        thread.start()
    began = time.monotonic()
    assert call_json(f"{server.url}/notes", "POST", {"text": "during the storm"})[0] == 201
    assert time.monotonic() - began < 3
    for thread in storm:
        thread.join()
    # one stream of the session at a time: a feed that waited for a worker until the first stream ended may
    # hold the next (its lock is let go just before its client reads the end)
    spans = sorted(held)
    overlapping = [(a, b) for a, b in itertools.pairwise(spans) if b[0] <= a[1] - 1]
    assert len(ended) == 30 and not overlapping, (spans, sorted(ended))
    assert max(ended) < LIVE_STREAM_S + 3
    assert _no_locks_within(server, 3)


# -- 3. the requests window ---------------------------------------------------------------------------------


def test_hostile_windows_answer_fx146_or_a_bounded_page(server: Server) -> None:  # noqa: F811
    """Held: years 1 and 9999 at ±14:00 (past datetime's range in UTC), week dates, unicode digits, NaN-like
    words, 10 KB values and an until a moment before from answer a page or FX146, never a 5xx; each within
    a few seconds (the page reads at most its sample). Fixed: the window's heading showed a moment given with
    an offset as its local time, labelled UTC (`+14:00` read 14 hours off); it now says it in UTC."""
    session = server.sign_in()
    windows = ["from=0001-01-01T00:00%2B14:00&until=0001-01-01T00:01-14:00",
               "from=9999-12-31T23:59-14:00", "until=9999-12-31T23:59:59.999999-14:00",
               "from=2026-W01-1", "from=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-01-01", "from=NaN",
               "until=Infinity", "from=-0001-01-01", "from=" + "9" * 3000, "until=2026-01-01T00:00Z",
               "from=2026-01-01T00:00:00.000001&until=2026-01-01T00:00", "from=2026-01-01T24:00",
               "from=%E0%A5%A8%E0%A5%A6%E0%A5%A8%E0%A5%AC-01-01",
               "from=2026-01-01T00:00%2B23:59:59.999999"]  # fmt: skip
    for window in windows:
        began = time.monotonic()
        answer = server.ask("GET", f"/flux/requests?{window}", session=session)
        assert answer.status in (200, 400), (window[:80], answer.status, answer.text[:300])
        if answer.status == 400:
            assert fx_code(answer) == "FX146", window[:80]
        assert time.monotonic() - began < 5, window[:80]
    # the window's heading says the moment in UTC (before: the time as given, with its offset dropped and
    # "UTC" after it)
    given = {"from=2026-01-01T00:00%2B14:00": "from 2025-12-31 10:00:00 until now UTC",
             "until=2026-01-01T05:30-05:30": "from the start until 2026-01-01 11:00:00 UTC",
             "from=0001-01-01T00:00%2B14:00": "from 0001-01-01 00:00:00+14:00 until now UTC"}  # fmt: skip
    for window, shown in given.items():
        answer = server.ask("GET", f"/flux/requests?{window}", session=session)
        heading = re.search(r'<h2 id="window">Routes ([^<]*)</h2>', answer.text)
        assert heading is not None and heading.group(1) == shown, window
    # 10 KB: gunicorn refuses the request line (4 KB at most) before Flux sees it
    assert server.ask("GET", "/flux/requests?from=" + "9" * 10_000, session=session).status == 414


# -- 4. recorded values on the newest pages, in chromium -------------------------------------------------


def test_gate_divergences_and_first_divergences_show_recorded_markup_as_text(
    server: Server,  # noqa: F811
    hostile: Hostile,  # noqa: F811
    browser: Any,  # noqa: F811
) -> None:
    """Held: a deploy gate's divergences whose request (id, method, path, function), verdict, first change
    (path, both sides, as JSON keys and values) and message carry markup, and diffs whose first divergence is
    a span, a row change (table, op) or the outcome, all show it as text in chromium (nothing becomes an
    element, runs, or makes a link; no CSP violation)."""
    change = {"path": HOSTILE, "recorded": {HOSTILE: [HOSTILE]}, "replayed": HOSTILE}
    divergence = {"at": HOSTILE, "message": HOSTILE, "changes": [change]}
    items = [
        {"request": {"id": PAYLOADS[1], "method": HOSTILE, "kind": HOSTILE, "path": HOSTILE,
                     "function": HOSTILE},
         "result": {"verdict": PAYLOADS[1], "divergence": divergence, "replay_id": PAYLOADS[2]}},
        {"request": {"id": hostile.request, "method": None, "kind": HOSTILE, "path": None,
                     "function": HOSTILE},
         "result": {"verdict": "diverged", "divergence": {**divergence, "changes": []},
                    "replay_id": hostile.other}},
    ]  # fmt: skip
    gate = {"verdict": "passed", "db": HOSTILE, "replayed": 2, "took_ms": 1,
            "summary": {"same": 0, "diverged": 2, "drift": 0, "error": 0}, "divergences": items}  # fmt: skip
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("UPDATE flux.deployments SET gate = %s", (json.dumps(gate),))
        # a row change only one of the two has (the diff's first divergence, when no span differs)
        conn.execute(
            "INSERT INTO flux.mutations (request_id, span_seq, table_schema, table_name, op, row_pk, old,"
            " new, changed) VALUES (%s, NULL, %s, %s, 'INSERT', %s, NULL, %s, %s)",
            (hostile.other, HOSTILE, HOSTILE, json.dumps({HOSTILE: 1}), json.dumps({HOSTILE: HOSTILE}),
             [HOSTILE]),
        )  # fmt: skip
    page, events = watched_page(browser, server)
    answer = page.goto(f"{server.dashboard_url}/flux/deployments")
    assert answer is not None and answer.status == 200
    shown = page.locator(".gate-divergences").first.inner_text()
    assert PAYLOADS[0] in shown and PAYLOADS[3] in shown
    _no_injection(page, "gate divergences", events)
    for a, b in ((hostile.request, hostile.other), (hostile.other, hostile.request)):
        answer = page.goto(f"{server.dashboard_url}/flux/diff?a={a}&b={b}")
        assert answer is not None and answer.status == 200
        assert PAYLOADS[0] in page.locator("#first-divergence").inner_text()
        _no_injection(page, "first divergence", events)
    # the trace of a request whose row change no span made: its own waterfall row, and its panel
    page.goto(f"{server.dashboard_url}/flux/requests/{hostile.other}")
    page.locator("#waterfall.ready").wait_for(timeout=10_000)
    page.locator(".wf-row", has_text="outside any span").click()
    page.locator("#span-detail").wait_for(state="visible")
    assert PAYLOADS[1] in page.locator("#span-mutations").inner_text()
    _no_injection(page, "row changes outside any span", events)
    page.context.close()


# -- 5. row changes outside any span ------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "flux/trace loads a row change's JSON with the stock decoder (RecursionError past ~1000 levels) and the "
    "trace.json answer is written by orjson (254 levels at most): a jsonb a function writes into a tracked "
    "row nested deeper answers 500 on the trace, its trace.json and the diff. Needs a depth bound where the "
    "trace is read (flux/trace), not in the dashboard: its own issue."
))  # fmt: skip
def test_a_deeply_nested_value_a_function_wrote_into_a_row_does_not_break_the_trace(
    server: Server,  # noqa: F811
) -> None:
    """A project's deferred trigger (no span) writes a jsonb nested 300 and 2,000 levels deep into a tracked
    row: the trace, its trace.json and the diff must still answer (the value shown cut, or an FX code)."""
    session = server.sign_in()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        request_id = conn.execute("SELECT id::text FROM flux.requests ORDER BY started_at LIMIT 1").fetchone()
        assert request_id is not None
        for depth in (300, 2000):
            deep = "[" * depth + "1" + "]" * depth
            key = json.dumps({"id": 9000 + depth})
            conn.execute(
                "INSERT INTO flux.mutations (request_id, span_seq, table_schema, table_name, op, row_pk, old,"
                " new, changed) VALUES (%s, NULL, 'public', 'notes', 'UPDATE', %s, %s,"
                " jsonb_build_object('id', %s::int, 'text', %s::jsonb), ARRAY['text'])",
                (request_id[0], key, json.dumps({"id": 9000 + depth, "text": "x"}), 9000 + depth, deep),
            )  # fmt: skip
            try:
                for path in (f"/flux/requests/{request_id[0]}", f"/flux/requests/{request_id[0]}/trace.json",
                             f"/flux/diff?a={request_id[0]}&b={request_id[0]}"):  # fmt: skip
                    answer = server.ask("GET", path, session=session)
                    assert answer.status < 500, (depth, path, answer.text[:200])
            finally:
                conn.execute("DELETE FROM flux.mutations WHERE row_pk = %s", (key,))
