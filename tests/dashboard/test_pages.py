"""The dashboard's pages and their security through Falcon's test client (the browser tests are in
test_browser.py): nothing without a session but sign-in and its assets, the session cookie's attributes,
CSRF on every POST, and every page answering for a signed-in admin."""

from __future__ import annotations

import gzip
import re
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from flux import db
from flux.api.admin import create_admin_key
from flux.app import create_app, create_dashboard_app, create_gateway
from flux.config import Settings, load_settings
from flux.dashboard import ByPort
from flux.dashboard import _routes as dashboard_routes
from flux.dashboard._routes import CSP
from flux.errors import InvalidConfig
from flux.server import binds
from tests.fixtures.gateway import GatewayClient
from tests.fixtures.processes import call_json
from tests.fixtures.projects import flux_dev, write_notes_project

PAGES = ("/flux/requests", "/flux/diff", "/flux/rows", "/flux/queue", "/flux/deployments")


class WorkerClient(GatewayClient):
    """A worker's WSGI app as gunicorn serves it (project and dashboard, told apart by the listener's port):
    requests go to the dashboard's port unless `port` says otherwise."""

    def __init__(self, app: Any, gateway: Any, dashboard_port: int) -> None:
        super().__init__(app, gateway)
        self.dashboard_port = dashboard_port

    def simulate_request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("port", self.dashboard_port)
        return super().simulate_request(*args, **kwargs)


@contextmanager
def worker_client(settings: Settings, dsn: str) -> Iterator[WorkerClient]:
    gateway = create_gateway(settings, dsn)
    admin = db.create_pool(dsn, max_size=2)
    admin.open()
    try:
        pages = create_dashboard_app(settings, admin, gateway)
        app = ByPort(create_app(settings, admin, gateway), pages, settings.dashboard_listen_port)
        yield WorkerClient(app, gateway, settings.dashboard_listen_port)
    finally:
        gateway.close()
        admin.close()


@pytest.fixture
def client(notes_project: Path, dsn: str) -> Any:
    with worker_client(load_settings(notes_project, env={}), dsn) as client:
        yield client


def sign_in(
    client: GatewayClient, key: str, protocol: str = "http", next_page: str = "/flux/queue"
) -> tuple[str, Any]:
    """Sign in as a browser does (the form's token and its cookie): the session cookie and the answer."""
    form = client.simulate_get("/flux/signin", protocol=protocol)
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    answer = client.simulate_post(
        "/flux/signin", protocol=protocol, cookies={"flux_signin": form.cookies["flux_signin"].value},
        body=f"csrf={token}&key={quote(key)}&next={quote(next_page)}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    return answer.cookies["flux_session"].value if "flux_session" in answer.cookies else "", answer


def csrf_of(client: GatewayClient, session: str) -> str:
    page = client.simulate_get("/flux/queue", cookies={"flux_session": session})
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def test_without_a_session_pages_redirect_to_sign_in_and_calls_are_refused(client: GatewayClient) -> None:
    for page in (*PAGES, "/flux/requests/abc"):
        answer = client.simulate_get(page)
        assert answer.status_code == 303, page
        assert answer.headers["location"].endswith("/flux/signin?next=" + quote(page, safe=""))
    for call in ("/flux/requests/abc/trace.json", "/flux/requests/live"):
        answer = client.simulate_get(call, params={"follower": "1"})
        assert answer.status_code == 401 and answer.json["code"] == "FX140", call
    for post in ("/flux/queue/jobs/1/retry", "/flux/deployments/1/activate", "/flux/requests/abc/replay"):
        answer = client.simulate_post(
            post, body="csrf=x", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert answer.status_code == 401 and answer.json["code"] == "FX140", post
    forged = client.simulate_get("/flux/queue", cookies={"flux_session": "AAAA" * 30})
    assert forged.status_code == 303
    signin = client.simulate_get("/flux/signin")
    assert signin.status_code == 200 and signin.headers["content-security-policy"] == CSP
    assert client.simulate_get("/flux/static/dashboard.js").status_code == 200
    assert client.simulate_get("/flux/static/nope.js").status_code == 404


def test_signing_in_sets_an_http_only_strict_cookie_secure_over_tls(
    client: GatewayClient, conn: psycopg.Connection[Any]
) -> None:
    key = create_admin_key(conn, "dashboard").key
    refused, answer = sign_in(client, key + "x")
    assert not refused and answer.status_code == 401 and "FX606" in answer.text
    session, answer = sign_in(client, key)
    assert answer.status_code == 303 and answer.headers["location"].endswith("/flux/queue")
    for elsewhere in ("https://evil.example/", "//evil.example/flux/", "/flux/\r\nx: y", "/other"):
        _, answer = sign_in(client, key, next_page=elsewhere)
        assert answer.status_code == 303 and answer.headers["location"].endswith("/flux/requests"), elsewhere
    cookie = answer.cookies["flux_session"]
    assert cookie.http_only and cookie.same_site == "Strict" and not cookie.secure and cookie.path == "/flux"
    _, over_tls = sign_in(client, key, protocol="https")
    assert over_tls.cookies["flux_session"].secure
    for page in PAGES:
        shown = client.simulate_get(page, cookies={"flux_session": session})
        assert shown.status_code == 200, (page, shown.text[:500])
        assert shown.headers["content-security-policy"] == CSP and "<script>" not in shown.text
        assert " style=" not in shown.text and " on" + "click=" not in shown.text


def test_a_post_without_this_sessions_csrf_token_or_from_another_site_is_refused(
    client: GatewayClient, conn: psycopg.Connection[Any]
) -> None:
    session, _ = sign_in(client, create_admin_key(conn, "dashboard").key)
    form = {"content-type": "application/x-www-form-urlencoded"}
    cookies = {"flux_session": session}
    for body in ("", "csrf=", "csrf=forged"):
        refused = client.simulate_post(
            "/flux/deployments/1/activate", body=body, headers=form, cookies=cookies
        )
        assert refused.status_code == 403 and refused.json["code"] == "FX141", body
    token = csrf_of(client, session)
    elsewhere = client.simulate_post("/flux/deployments/1/activate", body=f"csrf={token}", cookies=cookies,
                                     headers={**form, "origin": "https://evil.example"})  # fmt: skip
    assert elsewhere.status_code == 403 and elsewhere.json["code"] == "FX141"
    done = client.simulate_post(
        "/flux/deployments/1/activate", body=f"csrf={token}", headers=form, cookies=cookies
    )
    assert done.status_code == 303 and "version+1+is+active" in done.headers["location"]
    no_token = client.simulate_post("/flux/signin", body="key=x&csrf=y", headers=form)
    assert no_token.status_code == 403 and "FX141" in no_token.text and "flux_session" not in no_token.cookies


def test_revoking_the_admin_key_ends_its_sessions(
    client: GatewayClient, conn: psycopg.Connection[Any]
) -> None:
    created = create_admin_key(conn, "dashboard")
    session, _ = sign_in(client, created.key)
    assert client.simulate_get("/flux/queue", cookies={"flux_session": session}).status_code == 200
    conn.execute("UPDATE flux.admin_keys SET revoked_at = now() WHERE id = %s", (created.id,))
    assert client.simulate_get("/flux/queue", cookies={"flux_session": session}).status_code == 303


def test_a_trace_its_waterfall_data_a_diff_and_a_rows_history(
    client: GatewayClient, conn: psycopg.Connection[Any]
) -> None:
    session, _ = sign_in(client, create_admin_key(conn, "dashboard").key)
    cookies = {"flux_session": session}
    listed = conn.execute("SELECT id::text FROM flux.requests WHERE path = '/notes' ORDER BY started_at")
    added = [row[0] for row in listed.fetchall()]
    page = client.simulate_get(f"/flux/requests/{added[0][:8]}", cookies=cookies)
    assert page.status_code == 200 and "POST /notes" in page.text
    data = client.simulate_get(f"/flux/requests/{added[0]}/trace.json", cookies=cookies).json
    names = [span[data["columns"].index("name")] for span in data["spans"]]
    assert any(name.startswith("db:insert(notes)") for name in names), names
    assert [m["op"] for rows in data["mutations"].values() for m in rows] == ["INSERT"]
    diff = client.simulate_get("/flux/diff", params={"a": added[0], "b": added[1]}, cookies=cookies)
    assert diff.status_code == 200 and "They differ" in diff.text and "diff-changed" in diff.text
    history = client.simulate_get("/flux/rows", params={"table": "notes", "key": "2"}, cookies=cookies)
    assert history.status_code == 200 and "INSERT" in history.text and "add_note" in history.text
    missing = client.simulate_get("/flux/requests/ffffffff", cookies=cookies)
    assert missing.status_code == 404 and "FX503" in missing.text


def test_a_big_trace_goes_gzipped_to_a_browser_that_takes_it(
    client: GatewayClient, conn: psycopg.Connection[Any]
) -> None:
    session, _ = sign_in(client, create_admin_key(conn, "dashboard").key)
    (request_id,) = conn.execute("SELECT id::text FROM flux.requests LIMIT 1").fetchone()  # type: ignore[misc]
    conn.execute(
        "INSERT INTO flux.spans (request_id, seq, span_id, parent_seq, module, name, started_at, duration_us)"
        " SELECT %s, 100 + s, 'x' || s, 0, 'log', 'log:info', r.started_at, 1"
        " FROM generate_series(1, 200) s, flux.requests r WHERE r.id = %s",
        (request_id, request_id),
    )
    url = f"/flux/requests/{request_id}/trace.json"
    plain = client.simulate_get(url, cookies={"flux_session": session})
    zipped = client.simulate_get(url, cookies={"flux_session": session}, headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in plain.headers and zipped.headers["content-encoding"] == "gzip"
    assert len(zipped.content) < len(plain.content) / 4 and len(plain.json["spans"]) > 200


def test_the_dashboard_answers_only_on_its_own_port_and_the_project_only_on_its(
    client: WorkerClient,
) -> None:
    """The dashboard is an origin of its own (its port): on the project's port its addresses lead there
    (GET) or are refused (FX145); on its port nothing but the dashboard answers (FX143)."""
    project_port = client.dashboard_port - 1
    moved = client.simulate_get("/flux/queue", params={"done": "x"}, port=project_port, host="example.test")
    assert moved.status_code == 302
    assert moved.headers["location"] == f"http://example.test:{client.dashboard_port}/flux/queue?done=x"
    assert moved.headers["cache-control"] == "no-store"
    for path in ("/flux", "/flux/", "/flux/static/dashboard.js", "/flux/requests/abc"):
        assert client.simulate_get(path, port=project_port).status_code == 302, path
    posted = client.simulate_post("/flux/queue/jobs/1/retry", body="csrf=x", port=project_port, headers=FORM)
    assert posted.status_code == 421 and posted.json["code"] == "FX145"
    assert client.simulate_get("/notes/1", port=project_port).json["id"] == 1
    assert client.simulate_get("/flux/api/deployments", port=project_port).json["code"] == "FX606"
    for path in ("/notes/1", "/flux/api/deployments", "/health", "/db/openapi.json", "/flux/nothing"):
        answer = client.simulate_get(path)
        assert answer.status_code == 404 and answer.json["code"] == "FX143", path
        assert answer.headers["content-security-policy"] == CSP
    assert client.simulate_get("/flux/").status_code == 303


FORM = {"content-type": "application/x-www-form-urlencoded"}


def test_the_dashboards_port_is_the_projects_plus_one_unless_set(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={}).dashboard_listen_port == 4001
    assert load_settings(tmp_path, env={}, port=5000).dashboard_listen_port == 5001
    assert load_settings(tmp_path, env={"FLUX_DASHBOARD_PORT": "0"}).dashboard_listen_port == 0
    (tmp_path / "flux.toml").write_text("[server]\nport = 4100\ndashboard_port = 9000\n")
    assert load_settings(tmp_path, env={}).dashboard_listen_port == 9000
    assert binds(load_settings(tmp_path, env={})) == ["127.0.0.1:4100", "127.0.0.1:9000"]
    assert binds(load_settings(tmp_path, env={}, dashboard_port=0)) == ["127.0.0.1:4100"]
    for wrong in ("4100", "x", "70000", "-1"):
        with pytest.raises(InvalidConfig, match="dashboard_port"):
            load_settings(tmp_path, env={"FLUX_DASHBOARD_PORT": wrong})


@pytest.mark.slow
def test_flux_dev_serves_the_dashboard(dsn: str, tmp_path: Path, flux_env: dict[str, str]) -> None:
    project = write_notes_project(tmp_path / "project")
    with flux_dev(project, {**flux_env, "DATABASE_URL": dsn}) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        dashboard = f"http://127.0.0.1:{port + 1}"
        status, _, refused = call_json(f"{dashboard}/flux/requests/abc/trace.json")
        assert status == 401 and refused["code"] == "FX140"
        signin = urllib.request.urlopen(f"{dashboard}/flux/signin", timeout=10)
        assert signin.status == 200 and signin.headers["content-security-policy"] == CSP
        moved = urllib.request.urlopen(f"{url}/flux/", timeout=10)  # followed to the dashboard's port
        assert moved.url == f"{dashboard}/flux/signin?next=%2Fflux%2Frequests"


def test_the_pages_have_no_inline_script_or_style_and_the_script_is_small() -> None:
    """The CSP forbids inline scripts, styles and handlers: the templates have none. All the dashboard's
    JavaScript together stays within 50 KB gzipped (issue 28's bound)."""
    package = Path(dashboard_routes.__file__).parent
    for template in sorted((package / "templates").glob("*.html")):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", text), template.name
        assert not re.search(r"(src|href)=\"(https?:)?//", text), f"{template.name} loads from elsewhere"
    scripts = sorted((package / "static").glob("*.js"))
    assert scripts and sum(len(gzip.compress(path.read_bytes(), 9)) for path in scripts) <= 50 * 1024
