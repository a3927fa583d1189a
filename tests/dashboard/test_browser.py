"""The dashboard in a real browser: Playwright drives Debian's chromium (`.ci/run` installs it; Playwright's
own browser download is never used) against `flux server` on the notes project. Screenshots are saved under
the test run's folder; the 10,000-span trace's timings are printed (run with -s to see them)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux.api.admin import create_admin_key
from flux.api.deploy import deploy
from flux.config import load_settings
from flux.queue import jobs
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.processes import call_json, flux_server, run_flux
from tests.fixtures.projects import GET_NOTE_CHANGED, edit_function, write_notes_project

pytestmark = pytest.mark.slow
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BIG_TRACE_SPANS = 10_000


@dataclass(frozen=True)
class Dashboard:
    url: str  # the dashboard's origin (its own port)
    app: str  # the project's (its routes)
    admin_key: str
    dsn: str
    shots: Path
    big_trace: str
    dead_job: int


@pytest.fixture(scope="module")
def dashboard(
    pg_server: PostgresServer, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    """`flux server` (no queue workers, so jobs stay as the tests leave them) on the notes project: version 1
    served three notes and three reads, version 2 (get_note answers the id as text) is active; a dead job and
    a recorded request of 10,000 spans are in its database."""
    name = f"flux_test_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name, template=template_database)
    folder = tmp_path_factory.mktemp("dashboard")
    project = write_notes_project(folder / "project")
    env = {k: v for k, v in os.environ.items() if k != "FLUX_DATABASE_URL"}
    env |= {"DATABASE_URL": dsn, "PYTHONUNBUFFERED": "1"}
    deploy(dsn, load_settings(project, env={}))
    try:
        with flux_server(project, env, "--queue-workers", "0", "--no-deploy", log=folder / "server.log") as (
            url,
            _,
        ):
            for text in ("a", "b", "c"):
                assert call_json(f"{url}/notes", "POST", {"text": text})[0] == 201
            for number in (1, 2, 3):
                assert call_json(f"{url}/notes/{number}")[2]["id"] == number
            edit_function(project, "get_note", GET_NOTE_CHANGED)
            # through the deploy gate: the three reads diverge (the id comes back as text), accepted
            gated = run_flux(["deploy", "--gate", "--accept-divergence"], env, project, timeout=120)
            assert "deployed version 2 (divergence accepted)" in gated.stdout, gated.stdout + gated.stderr
            with psycopg.connect(dsn, autocommit=True) as conn:
                admin_key = create_admin_key(conn, "dashboard tests").key
                big = _record_big_trace(conn, BIG_TRACE_SPANS)
                (dead,) = jobs.push(
                    conn, [{"function": "add_note", "payload": {"text": "d"}, "max_attempts": 1}]
                )
                # as a worker does, then it fails
                conn.execute("SELECT flux.claim_jobs('tests', NULL, 1, 30)")
                died = conn.execute(
                    "SELECT flux.fail_job(%s, 'tests', 1, NULL, %s)",
                    (dead["id"], '{"code": "FX300", "message": "it broke"}'),
                ).fetchone()
                assert died == ("dead",)
            port = int(url.rsplit(":", 1)[1])
            yield Dashboard(f"http://127.0.0.1:{port + 1}", url, admin_key, dsn, folder / "screenshots", big,
                            int(dead["id"]))  # fmt: skip
    finally:
        pg_server.drop_database(name)


def _record_big_trace(conn: psycopg.Connection[Any], count: int) -> str:
    """A request of `count` spans (a function making db calls, each 40 µs after the last), written as Flux
    writes records."""
    request_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO flux.requests (id, kind, method, path, function, status, ok, duration_us, input, output)"
        " VALUES (%s, 'http', 'GET', '/big', 'big', 200, true, %s, '{}', '{}')",
        (request_id, count * 40 + 100),
    )
    conn.execute(
        "INSERT INTO flux.spans (request_id, seq, span_id, parent_seq, module, name, started_at, duration_us,"
        " ok, input, output)"
        " SELECT %s, s, lpad(to_hex(s), 16, '0'), CASE WHEN s = 0 THEN NULL ELSE 0 END,"
        "        CASE WHEN s = 0 THEN 'runtime' ELSE 'data' END,"
        "        CASE WHEN s = 0 THEN 'function:big' ELSE 'db:select(notes) #' || s END,"
        "        r.started_at + make_interval(secs => s * 40 / 1e6), CASE WHEN s = 0 THEN %s ELSE 30 END,"
        "        s %% 997 <> 5, jsonb_build_object('n', s), jsonb_build_object('rows', s)"
        " FROM generate_series(0, %s - 1) s, flux.requests r WHERE r.id = %s",
        (request_id, count * 40, count, request_id),
    )
    return request_id


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, dashboard: Dashboard) -> Iterator[Any]:
    """A signed-in page of a fresh browser context (its own cookies)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    sign_in(page, dashboard)
    yield page
    context.close()


def sign_in(page: Any, dashboard: Dashboard, key: str | None = None) -> None:
    page.goto(f"{dashboard.url}/flux/")
    assert page.url.startswith(f"{dashboard.url}/flux/signin")
    page.fill("input[name=key]", key or dashboard.admin_key)
    page.click("button[type=submit]")


def shot(page: Any, dashboard: Dashboard, name: str) -> Path:
    """Save a screenshot of the page, and note its weight: the bytes of its HTML and of the JSON it fetched
    (uncompressed: Flux does not compress); the script and stylesheet, the same on every page, come on top."""
    dashboard.shots.mkdir(exist_ok=True)
    path = dashboard.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    weight = page.evaluate(
        """() => {
            const fetched = performance.getEntriesByType('resource')
                .filter((e) => e.initiatorType === 'fetch');
            return {html: performance.getEntriesByType('navigation')[0].decodedBodySize,
                    json: fetched.reduce((sum, e) => sum + e.decodedBodySize, 0),
                    json_sent: fetched.reduce((sum, e) => sum + e.encodedBodySize, 0)};
        }"""
    )
    weights = dashboard.shots / "page_weights.json"
    known = json.loads(weights.read_text()) if weights.exists() else {}
    weights.write_text(json.dumps({**known, name: weight}, indent=1))
    return path


def test_sign_in_and_see_a_new_request_appear_live(page: Any, dashboard: Dashboard) -> None:
    """A new request appears at the top without a reload, sent down the live feed's stream, which stays open
    (one request for it in these seconds, where asking every second would have made three or more)."""
    feeds: list[str] = []
    page.on("request", lambda request: feeds.append(request.url) if "/flux/requests/live" in request.url
            else None)  # fmt: skip
    page.wait_for_url(f"{dashboard.url}/flux/requests")
    page.goto(f"{dashboard.url}/flux/requests")
    assert page.locator("#requests tbody tr").count() >= 6
    # the sign-in page's stream may still hold the session's one stream: this page's first ask is then
    # refused at once and asked again a second later
    time.sleep(3)
    asked = feeds.count(feeds[-1])
    time.sleep(2)
    status, headers, _ = call_json(f"{dashboard.app}/notes", "POST", {"text": "live"})
    assert status == 201
    new_id = headers["x-request-id"]
    page.locator(f'#requests a[href="/flux/requests/{new_id}"]').wait_for(timeout=10_000)
    assert page.locator("#requests tbody tr").first.locator("a").get_attribute("href").endswith(new_id)
    # this page's feed was not asked again in these seconds: the answer that brought the request was open
    assert asked <= 2 and feeds.count(feeds[-1]) == asked, feeds
    shot(page, dashboard, "requests")


def test_requests_within_a_window_of_ones_own(page: Any, dashboard: Dashboard) -> None:
    """From and until (UTC) narrow the list and the routes' figures to that window, with no live feed for a
    window that has ended; an until before from, or what is not a date, answers FX146 on the page."""
    with psycopg.connect(dashboard.dsn) as conn:
        (first,) = conn.execute(
            "SELECT min(started_at) AT TIME ZONE 'UTC' FROM flux.requests WHERE path = '/notes'"
        ).fetchone()  # type: ignore[misc]
    before = (first - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S")
    around = (first - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    page.goto(f"{dashboard.url}/flux/requests")
    page.fill("input[name=from]", around)
    page.fill("input[name=until]", before)
    page.click(".filters button")
    assert page.locator("#requests tbody tr").count() == 0
    assert page.locator("#window").inner_text().startswith(f"Routes from {around.replace('T', ' ')} until")
    assert page.locator("#requests").get_attribute("data-live") is None
    page.fill("input[name=until]", "")
    page.click(".filters button")
    assert page.locator("#requests tbody tr").count() >= 6
    assert page.locator("#requests").get_attribute("data-live")
    answer = page.goto(f"{dashboard.url}/flux/requests?from={before}&until={around}")
    assert answer is not None and answer.status == 400
    assert page.locator("h1").inner_text() == "FX146"
    assert "comes before from" in page.locator("#error").inner_text()
    answer = page.goto(f"{dashboard.url}/flux/requests?from=yesterday")
    assert answer is not None and answer.status == 400 and page.locator("h1").inner_text() == "FX146"


def test_pages_refuse_without_a_session_and_a_post_without_csrf(browser: Any, dashboard: Dashboard) -> None:
    context = browser.new_context()
    stranger = context.new_page()
    stranger.goto(f"{dashboard.url}/flux/queue")
    assert stranger.url == f"{dashboard.url}/flux/signin?next=%2Fflux%2Fqueue"
    assert (
        stranger.request.get(f"{dashboard.url}/flux/requests/{dashboard.big_trace}/trace.json").status == 401
    )
    sign_in(stranger, dashboard, key="flux_admin_wrong")
    assert "FX606" in stranger.locator("#refused").inner_text()
    sign_in(stranger, dashboard)
    stranger.wait_for_url(f"{dashboard.url}/flux/requests")
    forged = stranger.request.post(
        f"{dashboard.url}/flux/queue/jobs/{dashboard.dead_job}/retry", form={"x": "1"}
    )
    assert forged.status == 403 and forged.json()["code"] == "FX141"
    context.close()


def test_open_a_trace_and_a_spans_input_and_row_changes(page: Any, dashboard: Dashboard) -> None:
    with psycopg.connect(dashboard.dsn) as conn:
        (request_id,) = conn.execute(
            "SELECT id::text FROM flux.requests WHERE path = '/notes' ORDER BY started_at LIMIT 1"
        ).fetchone()  # type: ignore[misc]
    page.goto(f"{dashboard.url}/flux/requests/{request_id}")
    page.locator("#waterfall.ready").wait_for()
    insert = page.locator(".wf-row", has_text="db:insert(notes)")
    assert insert.locator(".wf-rows").inner_text() == "1 row"
    insert.click()
    assert '"insert": "notes"' in page.locator("#span-input").inner_text()
    assert "INSERT public.notes" in page.locator("#span-mutations").inner_text()
    assert page.locator(".wf-row.critical").count() >= 2
    path = shot(page, dashboard, "trace")
    assert path.stat().st_size > 10_000


def test_row_changes_no_span_made_are_drawn_on_the_trace_and_the_rows_page(
    page: Any, dashboard: Dashboard
) -> None:
    """A request's row change that no span made (a deferred trigger's, at commit) is a row of the waterfall of
    its own, at its time, whose click shows it; a change made outside Flux (psql, as the database owner) is in
    the row's history and blame with the database user who made it."""
    with psycopg.connect(dashboard.dsn, autocommit=True) as conn:
        (request_id, started) = conn.execute(
            "SELECT id::text, started_at FROM flux.requests WHERE path = '/notes' AND method = 'POST'"
            " ORDER BY started_at LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "INSERT INTO flux.mutations (request_id, span_seq, table_schema, table_name, op, row_pk, old,"
            " new, changed, at) VALUES (%s, NULL, 'public', 'audit_log', 'INSERT', '{\"id\": 7}', NULL,"
            ' \'{"id": 7, "what": "note added"}\', NULL, %s)',
            (request_id, started + timedelta(microseconds=500)),
        )
        conn.execute("UPDATE notes SET body = 'set in psql' WHERE id = 3")
        (owner,) = conn.execute("SELECT session_user").fetchone()  # type: ignore[misc]
    page.goto(f"{dashboard.url}/flux/requests/{request_id}")
    page.locator("#waterfall.ready").wait_for()
    lone = page.locator(".wf-row", has_text="row changes outside any span")
    assert lone.locator(".wf-rows").inner_text() == "1 row"
    lone.click()
    assert "INSERT public.audit_log" in page.locator("#span-mutations").inner_text()
    assert '"note added"' in page.locator("#span-mutations").inner_text()
    page.goto(f"{dashboard.url}/flux/rows?table=notes&key=3")
    last = page.locator("#history tbody tr").last
    assert f"{owner} (outside Flux)" in last.inner_text() and '"set in psql"' in last.inner_text()
    assert owner in page.locator("#blame tr", has_text="body").inner_text()
    shot(page, dashboard, "row-outside-flux")


def test_a_10000_span_trace_opens_and_scrolls(page: Any, dashboard: Dashboard) -> None:
    started = time.monotonic()
    page.goto(f"{dashboard.url}/flux/requests/{dashboard.big_trace}")
    box = page.locator("#waterfall.ready")
    box.wait_for(timeout=30_000)
    opened_s = time.monotonic() - started
    assert box.get_attribute("data-spans") == str(BIG_TRACE_SPANS)
    assert page.locator(".wf-row").count() < 200  # only the rows in view (and a few more) are in the page
    scrolled = page.evaluate(
        """async () => {
            const box = document.getElementById('waterfall');
            const began = performance.now();
            for (let step = 1; step <= 20; step++) {
                box.scrollTop = box.scrollHeight * step / 20;
                await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
            }
            return performance.now() - began;
        }"""
    )
    last = page.locator(f'.wf-row[data-seq="{BIG_TRACE_SPANS - 1}"]')
    last.wait_for()
    last.click()
    assert '"n": 9999' in page.locator("#span-input").inner_text()
    page.fill("#span-filter", "#4242")
    page.locator('.wf-row[data-seq="4242"]').wait_for()
    figures = {"spans": BIG_TRACE_SPANS, "open_s": round(opened_s, 2), "script_ms": float(box.get_attribute(
        "data-rendered-ms") or 0), "scroll_20_steps_ms": round(scrolled, 1)}  # fmt: skip
    print("10,000-span trace:", json.dumps(figures))
    (dashboard.shots.parent / "big_trace_figures.json").write_text(json.dumps(figures))
    shot(page, dashboard, "big-trace")


def test_compare_two_traces(page: Any, dashboard: Dashboard) -> None:
    with psycopg.connect(dashboard.dsn) as conn:
        a, b = (row[0] for row in conn.execute(
            "SELECT id::text FROM flux.requests WHERE path LIKE '/notes/%' ORDER BY started_at LIMIT 2"
        ).fetchall())  # fmt: skip
    page.goto(f"{dashboard.url}/flux/requests/{a}")
    page.fill(".compare input[name=b]", b)
    page.click(".compare button")
    assert page.locator("#diff-verdict").inner_text().startswith("They differ")
    assert page.locator("#span-diff tr.diff-changed").count() >= 1
    # the first divergence, at the top: the first span that differs, in execution order, marked in the table
    first_row = page.locator("#span-diff tbody tr:not(.diff-same)").first
    assert "first" in first_row.get_attribute("class").split()
    name = first_row.locator(".span-name").inner_text().lstrip("· ")
    top = page.locator("#first-divergence")
    assert top.locator(".where").inner_text().startswith(name)
    box = top.bounding_box()
    assert box is not None and box["y"] < page.locator("#span-diff").bounding_box()["y"]
    shot(page, dashboard, "diff")


def test_replay_a_request_and_see_its_divergence_against_edited_code(page: Any, dashboard: Dashboard) -> None:
    with psycopg.connect(dashboard.dsn) as conn:
        (request_id,) = conn.execute(
            "SELECT id::text FROM flux.requests WHERE path = '/notes/1' AND kind = 'http' ORDER BY started_at"
            " LIMIT 1"
        ).fetchone()  # type: ignore[misc]
    page.goto(f"{dashboard.url}/flux/requests/{request_id}")
    page.select_option(".replay select[name=code]", "version:2")  # get_note answers the id as text there
    page.click("#replay")
    assert page.locator("#verdict").inner_text() == "diverged"
    assert '"1"' in page.locator("#divergence").inner_text()
    shot(page, dashboard, "replay")
    page.click("#replay-diff")
    assert page.locator("#diff-verdict").inner_text().startswith("They differ")
    page.goto(f"{dashboard.url}/flux/requests/{request_id}")  # the original lists its replays
    with psycopg.connect(dashboard.dsn) as conn:
        replays = [row[0] for row in conn.execute(
            "SELECT id::text FROM flux.requests WHERE replay_of = %s ORDER BY started_at DESC", (request_id,)
        )]  # fmt: skip
    listed = page.locator("ul.replays li a:first-child").all_inner_texts()
    assert replays and listed == [replay[:8] for replay in replays], (listed, replays)


def test_open_a_rows_history(page: Any, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.url}/flux/rows")
    page.select_option("select[name=table]", "notes")
    page.fill("input[name=key]", "2")
    page.click(".filters button")
    history = page.locator("#history").inner_text()
    assert "INSERT" in history and "add_note" in history and '"b"' in history
    assert "body" in page.locator("#blame").inner_text()
    shot(page, dashboard, "rows")


def test_retry_a_dead_job_then_cancel_it(page: Any, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.url}/flux/queue")
    page.locator(f'#dead-jobs tr[data-job="{dashboard.dead_job}"] button').click()
    assert page.locator("#done").inner_text() == f"job {dashboard.dead_job} queued to run again"
    assert page.locator(f'#dead-jobs tr[data-job="{dashboard.dead_job}"]').count() == 0
    page.locator(f'#queued-jobs tr[data-job="{dashboard.dead_job}"] button').click()
    assert page.locator("#done").inner_text() == f"job {dashboard.dead_job} cancelled"
    with psycopg.connect(dashboard.dsn) as conn:
        (status,) = conn.execute(
            "SELECT status FROM flux.all_jobs WHERE id = %s", (dashboard.dead_job,)
        ).fetchone()  # type: ignore[misc]
    assert status == "cancelled"
    shot(page, dashboard, "queue")


def test_roll_back_a_deployment(page: Any, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.url}/flux/deployments")
    assert page.locator('#deployments tr[data-version="2"]').get_attribute("class") == "active"
    page.locator('#deployments tr[data-version="1"] button').click()
    assert page.locator("#done").inner_text() == "version 1 is active"
    assert page.locator('#deployments tr[data-version="1"]').get_attribute("class") == "active"
    deadline = time.monotonic() + 10
    while call_json(f"{dashboard.app}/notes/1")[2]["id"] != 1:  # version 1's get_note answers a number
        assert time.monotonic() < deadline
        time.sleep(0.2)
    shot(page, dashboard, "deployments")


def test_a_deploy_gates_diverged_requests_lead_to_their_traces_and_diff(
    page: Any, dashboard: Dashboard
) -> None:
    """Version 2 went through the deploy gate with its divergence accepted: its row lists the requests that
    diverged, each with its first difference and links to the original, its replay and their diff."""
    page.goto(f"{dashboard.url}/flux/deployments")
    gate = page.locator('#deployments tr[data-version="2"] ul.gate-divergences li')
    assert gate.count() == 3
    first = gate.first
    assert "GET /notes/" in first.locator("a.original").inner_text()
    assert first.locator(".verdict-diverged").inner_text() == "diverged"
    assert '"1"' in first.locator(".first").inner_text() or '"2"' in first.locator(".first").inner_text()
    original = first.get_attribute("data-request")
    first.locator("a.diff").click()
    assert page.locator("#diff-verdict").inner_text().startswith("They differ")
    assert original in page.url
    page.go_back()
    page.locator('#deployments tr[data-version="2"] ul.gate-divergences li a.replayed').first.click()
    assert "replay" in page.locator("main").inner_text().lower()
    shot(page, dashboard, "gate-replay")


def test_behind_a_tls_proxy_the_cookies_are_secure(dashboard: Dashboard) -> None:
    """gunicorn takes X-Forwarded-Proto from the proxies it trusts (FORWARDED_ALLOW_IPS, by default this
    machine) as the request's scheme: the dashboard's cookies are then Secure, and not otherwise."""
    plain = urllib.request.urlopen(f"{dashboard.url}/flux/signin", timeout=10)
    assert "Secure" not in plain.headers["set-cookie"] and "HttpOnly" in plain.headers["set-cookie"]
    request = urllib.request.Request(f"{dashboard.url}/flux/signin", headers={"x-forwarded-proto": "https"})
    proxied = urllib.request.urlopen(request, timeout=10)
    assert "Secure" in proxied.headers["set-cookie"] and "SameSite=Strict" in proxied.headers["set-cookie"]
