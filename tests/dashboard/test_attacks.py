"""Attacks on the dashboard: a real `flux server` (gunicorn, as users run it) on the notes project, with
recorded requests whose paths, bodies and spans carry markup, asked with raw HTTP (so paths reach the server
as written) and, for script execution, in Debian's chromium. Each hole found has a test that failed before
its fix; the attacks that held are kept as tests too."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg.sql
import pytest

from flux.api.admin import create_admin_key
from flux.api.deploy import deploy
from flux.api.secrets import set_secret
from flux.config import load_settings
from flux.dashboard._routes import CSP, LIVE_STREAM_S
from flux.dashboard._session import _PURPOSE, Sealer
from flux.runtime.secrets import load_key
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.processes import call_json, flux_server
from tests.fixtures.projects import NOTES_TOML, edit_function, write_notes_project

pytestmark = pytest.mark.slow
SECRET_ROUTE = """
[[routes]]
method = "GET"
path = "/secret"
function = "show_secret"
auth = "none"

[[routes]]
method = "GET"
path = "/page"
function = "html_page"
auth = "none"
"""
# A page of the project's own (any function may answer HTML), here with what an XSS in it would run: read a
# dashboard page (its CSRF token) in the background with fetch, and through a window it opens.
HTML_PAGE = """export default async (req, ctx) => ({
  status: 200,
  headers: {"content-type": "text/html"},
  body: "<title>app</title><script>" +
    "const read = (t) => /name=.csrf. value=/.test(t) ? 'read the dashboard' : 'refused';" +
    "fetch('/flux/queue').then((r) => r.text()).then((t) => { document.title = read(t); })" +
    "  .catch(() => { document.title = 'refused'; });" +
    "const w = window.open('/flux/queue'); let looks = 0;" +
    "const look = () => { let seen = '';" +
    "  try { const body = w.document.body ? w.document.body.innerHTML : '';" +
    "        if (read(body) !== 'refused') seen = 'read the dashboard'; }" +
    "  catch (e) { seen = 'refused'; }" +
    "  if (seen) { document.body.dataset.popup = seen; }" +
    "  else if (++looks < 100) { setTimeout(look, 100); }" +
    "  else { document.body.dataset.popup = 'never loaded'; } };" +
    "look();" +
    "</script>",
})"""
# A function that answers its secret (then, edited, the secret and more): the record keeps `[secret:token]`.
SHOW_SECRET = """export default async (req, ctx) => {
  const token = await ctx.secrets.get("token");
  console.log("the token is " + token);
  return {token: token + "SUFFIX"};
}"""
SECRET_VALUE = "tok-" + "7Hq2xZp9Lm4Rv8Ws"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclass
class Server:
    host: str
    port: int
    dsn: str
    admin_key: str
    project: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        """The project's origin (its routes and the management API)."""
        return f"http://{self.host}:{self.port}"

    @property
    def dashboard_port(self) -> int:
        return self.port + 1  # flux server's default: the dashboard on the port after the project's

    @property
    def dashboard_url(self) -> str:
        """The dashboard's origin: its own port."""
        return f"http://{self.host}:{self.dashboard_port}"

    def ask(self, method: str, path: str, body: bytes | str = b"", headers: dict[str, str] | None = None,
            session: str | None = None, port: int | None = None) -> Answer:  # fmt: skip
        """One raw HTTP request: the path goes on the wire exactly as given; to the dashboard's port when it
        starts with /flux (in any case), else to the project's, unless `port` says."""
        if port is None:
            port = self.dashboard_port if path.lower().startswith("/flux") else self.port
        connection = http.client.HTTPConnection(self.host, port, timeout=60)
        try:
            sent = dict(headers or {})
            if session is not None:
                sent["cookie"] = f"flux_session={session}"
            data = body.encode() if isinstance(body, str) else body
            if data:
                sent.setdefault("content-type", "application/x-www-form-urlencoded")
            connection.putrequest(method, path, skip_host="host" in sent, skip_accept_encoding=True)
            for name, value in {**sent, "content-length": str(len(data))}.items():
                connection.putheader(name, value)
            connection.endheaders(data or None)
            answer = connection.getresponse()
            headers = {k.lower(): v for k, v in answer.getheaders()}
            headers["set-cookie"] = "\n".join(answer.msg.get_all("set-cookie") or [])
            return Answer(answer.status, headers, answer.read())
        finally:
            connection.close()

    def sign_in(self, key: str | None = None) -> str:
        form = self.ask("GET", "/flux/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        signin_cookie = re.search(r"flux_signin=([^;]+)", form.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
        answer = self.ask("POST", "/flux/signin", f"csrf={token}&key={quote(key or self.admin_key)}",
                          headers={"cookie": f"flux_signin={signin_cookie}"})  # fmt: skip
        found = re.search(r"flux_session=([^;]+)", answer.headers.get("set-cookie", ""))
        assert answer.status == 303 and found, answer
        return found.group(1)

    def sql_one(self, query: str, params: Any = ()) -> Any:
        """The first column of the first row of `query` on the server's database."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
        return row[0] if row else None

    def csrf(self, session: str) -> str:
        page = self.ask("GET", "/flux/queue", session=session)
        return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def server(
    pg_server: PostgresServer, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`flux server` on the notes project (no queue workers), with its notes recorded."""
    name = f"flux_test_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name, template=template_database)
    folder = tmp_path_factory.mktemp("attacks")
    project = write_notes_project(folder / "project", NOTES_TOML + SECRET_ROUTE)
    edit_function(project, "show_secret", SHOW_SECRET.replace("SUFFIX", ""))
    edit_function(project, "html_page", HTML_PAGE)
    env = {k: v for k, v in os.environ.items() if k != "FLUX_DATABASE_URL"}
    env |= {"DATABASE_URL": dsn, "PYTHONUNBUFFERED": "1"}
    deploy(dsn, load_settings(project, env={}))
    with psycopg.connect(dsn, autocommit=True) as conn:
        set_secret(conn, load_key(project, env=env), "token", SECRET_VALUE)
    try:
        with flux_server(project, env, "--queue-workers", "0", "--no-deploy", log=folder / "server.log") as (
            url,
            _,
        ):
            for text in ("a", "b"):
                assert call_json(f"{url}/notes", "POST", {"text": text})[0] == 201
            with psycopg.connect(dsn, autocommit=True) as conn:
                admin_key = create_admin_key(conn, "attacks").key
            yield Server("127.0.0.1", int(url.rsplit(":", 1)[1]), dsn, admin_key, project, env)
    finally:
        pg_server.drop_database(name)


FORM = {"content-type": "application/x-www-form-urlencoded"}
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


def seal(sealer: Sealer, fields: Any) -> str:
    """A cookie sealed as the dashboard seals one, holding `fields` as they are."""
    nonce = secrets.token_bytes(12)
    sealed = nonce + sealer._aead.encrypt(nonce, json.dumps(fields).encode(), _PURPOSE)
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def fx_code(answer: Answer) -> str:
    """The FX code of an error answer: its JSON's `code`, or an error page's heading."""
    if answer.headers.get("content-type", "").startswith("application/json"):
        return str(json.loads(answer.body)["code"])
    found = re.search(r"<h1>(FX\d+)</h1>", answer.text)
    return found.group(1) if found else ""


# -- 1. authentication and session --------------------------------------------------------------------------


def test_every_dashboard_answer_carries_the_security_headers(server: Server) -> None:
    """Redirects, refusals, errors and JSON too: before, only a page rendered by its responder had them (a
    hook after the responder does not run when it raises), so the 303 to sign-in, 401, 403 and 405 went
    without a CSP, nosniff or no-store."""
    session = server.sign_in()
    answers = {
        "redirect to sign-in": server.ask("GET", "/flux/queue"),
        "home": server.ask("GET", "/flux/"),
        "401 feed": server.ask("GET", "/flux/requests/live?follower=1"),
        "401 json": server.ask("GET", "/flux/requests/abc/trace.json"),
        "403 csrf": server.ask("POST", "/flux/queue/jobs/1/retry", "csrf=x", session=session),
        "405": server.ask("GET", "/flux/signout", session=session),
        "404 json": server.ask("GET", "/flux/requests/ffffffff/trace.json", session=session),
        "sign-in": server.ask("GET", "/flux/signin"),
        "static": server.ask("GET", "/flux/static/dashboard.js"),
        "missing static": server.ask("GET", "/flux/static/nope.js"),
    }
    for name, answer in answers.items():
        for header, value in SECURITY_HEADERS.items():
            assert answer.headers.get(header) == value, (name, header, answer.status)
        if name != "static":
            assert answer.headers.get("cache-control") == "no-store", name


def test_no_path_trick_or_method_reaches_a_page_without_a_session(server: Server) -> None:
    """Paths that are not the dashboard's own (double slashes, dot segments, encoded slashes, trailing dots,
    another case) answer FX143 on the dashboard's port and show nothing of it; on the project's port they go
    to the project's routes (FX004). HEAD and other methods are refused with FX142, never served."""
    tricks = ("/flux//requests", "/flux/requests/../queue", "/flux/%2frequests", "/flux/requests.",
              "/FLUX/queue", "/flux/./queue", "/flux/queue%00", "/flux/requests/%2e%2e/queue")  # fmt: skip
    for path in tricks:
        answer = server.ask("GET", path)
        assert answer.status == 404 and fx_code(answer) == "FX143", (path, answer.status, answer.text[:200])
        assert answer.headers["content-security-policy"] == CSP
        answer = server.ask("GET", path, port=server.port)
        assert answer.status == 404 and fx_code(answer) == "FX004", (path, answer.status, answer.text[:200])
    # which app answers is the listener's port, whatever the Host header says
    spoofed = {"host": f"127.0.0.1:{server.dashboard_port}"}
    for path in ("/flux/queue", "/flux/signin"):
        answer = server.ask("GET", path, headers=spoofed, port=server.port)
        assert answer.status == 302 and answer.headers["location"].endswith(f":{server.dashboard_port}{path}")
    answer = server.ask(
        "GET", "/notes/1", headers={"host": f"127.0.0.1:{server.port}"}, port=server.dashboard_port
    )
    assert answer.status == 404 and fx_code(answer) == "FX143"
    for path in ("/flux/requests/", "/flux/queue?x=1", "/flux/requests/abc"):
        answer = server.ask("GET", path)
        assert answer.status == 303 and answer.headers["location"].startswith("/flux/signin?next="), path
    for method in ("HEAD", "PUT", "DELETE", "PATCH"):
        answer = server.ask(method, "/flux/queue")
        assert answer.status == 405 and answer.headers["content-security-policy"] == CSP, method
        if method != "HEAD":
            assert fx_code(answer) == "FX142", method
    options = server.ask("OPTIONS", "/flux/queue")
    assert options.status == 200 and not options.body


def test_a_forged_tampered_foreign_or_expired_session_cookie_is_refused(server: Server) -> None:
    session = server.sign_in()
    assert server.ask("GET", "/flux/queue", session=session).status == 200
    raw = bytearray(base64.urlsafe_b64decode(session + "=" * (-len(session) % 4)))
    flipped = []
    for at in (0, 12, len(raw) // 2, len(raw) - 1):
        changed = bytearray(raw)
        changed[at] ^= 0x01
        flipped.append(base64.urlsafe_b64encode(bytes(changed)).decode().rstrip("="))
    ours = Sealer(load_key(server.project, env=server.env))
    now = time.time()
    forged = {
        "truncated": [session[:n] for n in (1, 10, 16, 22, len(session) - 1)],
        "bit flipped": flipped,
        "another project's key": [Sealer(secrets.token_bytes(32)).new_session(server.admin_key)[1]],
        "expired": [seal(ours, {"k": server.admin_key, "c": "x", "e": now - 1})],
        "unknown admin key": [seal(ours, {"k": "flux_admin_" + "A" * 32, "c": "x", "e": now + 60})],
        "not an admin key": [seal(ours, {"k": "anything", "c": "x", "e": now + 60})],
        "wrong shapes": [seal(ours, value) for value in ([], "k", {"k": server.admin_key}, None,
                                                          {"k": server.admin_key, "c": "x", "e": "later"})],
        "junk": ["", "=", "%00", "A" * 5000, "!!!!"],
    }  # fmt: skip
    for kind, cookies in forged.items():
        for cookie in cookies:
            page = server.ask("GET", "/flux/queue", session=cookie)
            assert page.status == 303 and "/flux/signin" in page.headers["location"], (kind, cookie[:40])
            feed = server.ask("GET", "/flux/requests/live?follower=1", session=cookie)
            assert feed.status == 401 and fx_code(feed) == "FX140", kind


def test_a_session_ends_with_its_admin_keys_expiry_or_revocation(server: Server) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        expiring = create_admin_key(conn, "expiring", expires_in=timedelta(seconds=1))
        revoked = create_admin_key(conn, "revoked")
    sessions = {"expired": server.sign_in(expiring.key), "revoked": server.sign_in(revoked.key)}
    for session in sessions.values():
        assert server.ask("GET", "/flux/queue", session=session).status == 200
    server.sql_one("UPDATE flux.admin_keys SET revoked_at = now() WHERE id = %s RETURNING id", (revoked.id,))
    time.sleep(1.1)
    for why, session in sessions.items():
        assert server.ask("GET", "/flux/queue", session=session).status == 303, why
        post = server.ask("POST", "/flux/signout", "csrf=x", session=session)
        assert post.status == 401 and fx_code(post) == "FX140", why


def test_signing_in_always_makes_a_new_session(server: Server) -> None:
    """Session fixation: a session cookie the browser already had (planted, or an old one) is never kept."""
    planted = server.sign_in()
    form = server.ask("GET", "/flux/signin", headers={"cookie": f"flux_session={planted}"})
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    signin = re.search(r"flux_signin=([^;]+)", form.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    answer = server.ask("POST", "/flux/signin", f"csrf={token}&key={quote(server.admin_key)}",
                        headers={"cookie": f"flux_signin={signin}; flux_session={planted}"})  # fmt: skip
    fresh = re.search(r"flux_session=([^;]+)", answer.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    assert answer.status == 303 and fresh != planted and server.csrf(fresh) != server.csrf(planted)


def test_a_session_cookie_replayed_after_sign_out_is_refused(server: Server) -> None:
    """Sign-out ends the session wherever its cookie was copied (flux.dashboard_signouts), and no other."""
    session, other = server.sign_in(), server.sign_in()
    assert server.ask("POST", "/flux/signout", f"csrf={server.csrf(session)}", session=session).status == 303
    assert server.ask("GET", "/flux/queue", session=session).status == 303  # to sign-in
    assert server.ask("GET", "/flux/queue", session=other).status == 200


def test_a_wrong_admin_key_is_refused_the_same_way_whatever_it_is(server: Server) -> None:
    """No rate limit, but nothing to learn: keys are 192 random bits, looked up by their sha256 (no compare
    of the key itself), and every wrong key gets the same answer."""
    answers = set()
    for wrong in (
        server.admin_key[:-1] + "x",
        server.admin_key[:20],
        "flux_admin_",
        "",
        "x" * 10_000,
        "flux_admin_\x00" + server.admin_key[11:],
    ):
        form = server.ask("GET", "/flux/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        signin = re.search(r"flux_signin=([^;]+)", form.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
        answer = server.ask("POST", "/flux/signin", f"csrf={token}&key={quote(wrong)}",
                            headers={"cookie": f"flux_signin={signin}"})  # fmt: skip
        assert answer.status == 401 and "flux_session" not in answer.headers["set-cookie"], wrong[:30]
        answers.add(re.search(r'id="refused">([^<]*)<', answer.text).group(1))  # type: ignore[union-attr]
    assert len(answers) <= 2, answers  # "needs an admin key" (no flux_admin_ prefix) or "is unknown"


def test_sign_in_goes_only_to_a_dashboard_page_of_this_server(server: Server) -> None:
    for elsewhere in ("//evil.example/", "/\\evil.example", "%2f%2fevil.example", "/%2f/evil.example",
                      "javascript:alert(1)", "/flux/\r\nset-cookie: x=y", "/flux/%0d%0aset-cookie:x=y",
                      "https://evil.example/flux/", "/flux/\\\\evil.example", "\\/evil.example",
                      " /flux/requests", "/flux/requests#x", "/flux/@evil.example"):  # fmt: skip
        form = server.ask("GET", "/flux/signin?next=" + quote(elsewhere, safe=""))
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        shown_next = re.search(r'name="next" value="([^"]*)"', form.text).group(1)  # type: ignore[union-attr]
        signin = re.search(r"flux_signin=([^;]+)", form.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
        answer = server.ask("POST", "/flux/signin",
                            f"csrf={token}&key={quote(server.admin_key)}&next={quote(elsewhere, safe='')}",
                            headers={"cookie": f"flux_signin={signin}"})  # fmt: skip
        location = answer.headers["location"]
        assert answer.status == 303 and location.startswith("/flux/") and not location.startswith("/flux//")
        assert "\\" not in location and "\r" not in location and "\n" not in location, elsewhere
        assert shown_next.startswith("/flux/"), shown_next
    escaped = server.ask("GET", "/flux/signin?next=" + quote('/flux/"><img src=x>', safe=""))
    assert "<img" not in escaped.text


# -- 2. CSRF ------------------------------------------------------------------------------------------------


def test_every_action_refuses_a_forged_post(server: Server) -> None:
    """Each action without the token, with another session's, as a GET, from another origin (another site, a
    `null` origin, another port of this host: same site, so SameSite=Strict alone would let it through), and
    as a text/plain form (a cross-site form's only way to send a body without a preflight)."""
    session, other = server.sign_in(), server.sign_in()
    token, others = server.csrf(session), server.csrf(other)
    request_id = server.sql_one("SELECT id::text FROM flux.requests LIMIT 1")
    actions = ("/flux/queue/jobs/1/retry", "/flux/queue/jobs/1/cancel", "/flux/deployments/1/activate",
               f"/flux/requests/{request_id}/replay", "/flux/signout")  # fmt: skip
    for action in actions:
        refusals = {
            "no token": server.ask("POST", action, "x=1", session=session),
            "empty token": server.ask("POST", action, "csrf=", session=session),
            "another session's": server.ask("POST", action, f"csrf={others}", session=session),
            "text/plain": server.ask("POST", action, f"csrf={token}", session=session,
                                     headers={"content-type": "text/plain"}),
            "multipart": server.ask("POST", action, '--b\r\ncontent-disposition: form-data; name="csrf"'
                                    f"\r\n\r\n{token}\r\n--b--\r\n", session=session,
                                    headers={"content-type": "multipart/form-data; boundary=b"}),
        }  # fmt: skip
        for origin in (
            "https://evil.example",
            "null",
            server.url,  # the project's own origin: same site as the dashboard's
            f"http://127.0.0.1:{server.dashboard_port + 1}",
            "http://localhost",
        ):
            refusals[f"origin {origin}"] = server.ask("POST", action, f"csrf={token}", session=session,
                                                      headers={"origin": origin})  # fmt: skip
        for name, answer in refusals.items():
            assert answer.status == 403 and fx_code(answer) == "FX141", (action, name, answer.status)
        as_get = server.ask("GET", action + "?csrf=" + token, session=session)
        assert as_get.status == 405 and fx_code(as_get) == "FX142", action
    for name, headers, body in (
        ("no sign-in cookie", {}, "csrf=abc&key=x"),
        ("another sign-in cookie", {"cookie": "flux_signin=abc"}, "csrf=abd&key=x"),
        ("another site", {"cookie": "flux_signin=abc", "origin": "https://evil.example"}, "csrf=abc&key=x"),
        ("null origin", {"cookie": "flux_signin=abc", "origin": "null"}, "csrf=abc&key=x"),
    ):
        answer = server.ask("POST", "/flux/signin", body, headers=headers)
        assert answer.status == 403 and "FX141" in answer.text, name
    assert server.ask("GET", "/flux/queue", session=session).status == 200  # the refusals did not sign it out


# -- 4. errors a user can cause -----------------------------------------------------------------------------


def test_malformed_parameters_answer_an_fx_code_never_a_500(server: Server) -> None:
    """Before: status=² (a digit to str.isdigit(), not to int()) answered 500 on the requests page and the
    live feed, a replay of version ² too, and a missing or non-numeric follower Falcon's own 400 without a
    code."""
    session = server.sign_in()
    token = server.csrf(session)
    request_id = server.sql_one("SELECT id::text FROM flux.requests LIMIT 1")
    asked = [
        ("GET", "/flux/requests?status=%C2%B2"), ("GET", "/flux/requests?status=99999999999999999999"),
        ("GET", "/flux/requests?slow_ms=nan"), ("GET", "/flux/requests?slow_ms=1e308"),
        ("GET", "/flux/requests?slow_ms=-inf"), ("GET", "/flux/requests?route=%00"),
        ("GET", "/flux/requests?kind=%00"), ("GET", "/flux/requests?since=10y"),
        ("GET", "/flux/requests?limit=1000000000"), ("GET", "/flux/requests/live"),
        ("GET", "/flux/requests/live?follower=x"), ("GET", "/flux/requests/live?follower=%C2%B2"),
        ("GET", "/flux/requests/live?follower=1&status=%C2%B2"),
        ("GET", "/flux/requests/live?follower=99999999999999999999"),
        ("GET", "/flux/requests/%00"), ("GET", "/flux/requests/%00/trace.json"),
        ("GET", "/flux/requests/" + "f" * 3000), ("GET", "/flux/diff?a=%00&b=1"),
        ("GET", "/flux/diff?a=zz&b=yy"), ("GET", "/flux/rows?table=%00"), ("GET", "/flux/rows?table=nope"),
        ("GET", "/flux/rows?table=a.b.c.d"),
        ("GET", "/flux/rows?table=%22"), ("GET", "/flux/rows?table=pg_catalog.pg_authid&key=1"),
        ("GET", "/flux/rows?table=notes&key=%00"), ("GET", "/flux/rows?table=notes&key=%7B"),
        ("GET", "/flux/rows?table=notes&key=99999999999999999999999"),
        ("GET", "/flux/rows?table=notes&key=1e999"),
        ("POST", "/flux/queue/jobs/99999999999999999999/retry"), ("POST", "/flux/queue/jobs/7/cancel"),
        ("POST", "/flux/deployments/99999999999999999999/activate"),
        ("GET", "/flux/static/..%2fdashboard.js"),
        ("GET", "/flux/nope"), ("GET", "/flux/requests?route=%FF%FE"),
        ("GET", "/flux/rows?table=%C0%AF&key=%FF"), ("GET", "/flux/requests/%C0%AF"),
        ("GET", "/flux/requests/%FF/trace.json"), ("GET", "/flux/diff?a=" + "a" * 2000 + "&b=b"),
        ("GET", "/flux/requests?route=a&route=b&status=200&status=500"),
        ("GET", "/flux/requests?from=%00"), ("GET", "/flux/requests?from=99999-01-01"),
        ("GET", "/flux/requests?until=0000-01-01"), ("GET", "/flux/requests?from=2026-01-01T00:00%2B99:00"),
        ("GET", "/flux/requests?from=0001-01-01&until=9999-12-31T23:59:59.999999"),
        ("GET", "/flux/requests?from=0001-01-01T00:00:00%2B14:00"),
        ("GET", "/flux/requests?until=" + "1" * 1000),
        ("GET", "/flux/requests?from=2026-01-02&until=2026-01-01"), ("GET", "/flux/requests?from=%C2%B2"),
    ]  # fmt: skip
    for extra in ("&code=version:%C2%B2", "&code=version:99999999999999999999", "&db=%00", "&db=as-of",
                  "&code=other"):  # fmt: skip
        asked.append(("POST", f"/flux/requests/{request_id}/replay?{extra}"))
    for method, path in asked:
        body = f"csrf={token}"
        if "/replay?" in path:
            path, _, extra = path.partition("?")
            body += extra
        answer = server.ask(method, path, body if method == "POST" else b"", session=session)
        assert answer.status < 500, (path, answer.status, answer.text[:300])
        assert "Traceback" not in answer.text, path
        if answer.status >= 400:
            assert re.fullmatch(r"FX\d{3}", fx_code(answer)), (path, answer.text[:300])


# -- 3. XSS: recorded data a hostile function or client controls ---------------------------------------------

MARK = "data-xss"
PAYLOADS = (
    f'<img {MARK} src=x onerror="window.__xss=1;alert(1)">',
    f'"><img {MARK} src=x onerror=alert(1)>',
    f"'><svg {MARK} onload=alert(1)>",
    f"</script><script {MARK}>window.__xss=1</script>",
    "javascript:window.__xss=1//",
    "\u2028\u2029</textarea><!--",
)
HOSTILE = " ".join(PAYLOADS)


@dataclass(frozen=True)
class Hostile:
    request: str  # a request whose path, spans, error, input and output carry the payloads
    other: str  # a second one, to diff against
    table: str  # a tracked table whose name carries markup


def _hostile_request(conn: psycopg.Connection[Any], path: str) -> str:
    """A request as a hostile function would leave it: markup in its path, function, error, span names,
    inputs, outputs, attributes and row changes (written as Flux writes records; a span's module is one of
    a fixed few, checked by the table)."""
    request_id = str(uuid.uuid4())
    error = {"code": "FX300", "message": HOSTILE, "stack": HOSTILE}
    conn.execute(
        "INSERT INTO flux.requests (id, kind, method, path, function, status, ok, duration_us, input, output,"
        " error) VALUES (%s, 'http', 'GET', %s, %s, 500, false, 900, %s, %s, %s)",
        (request_id, path, HOSTILE, json.dumps({"body": HOSTILE}), json.dumps({HOSTILE: HOSTILE}),
         json.dumps(error)),
    )  # fmt: skip
    conn.execute(
        "INSERT INTO flux.spans (request_id, seq, span_id, parent_seq, module, name, started_at, duration_us,"
        " ok, input, output, error, attributes)"
        " SELECT %(id)s, s, lpad(to_hex(s), 16, '0'), CASE WHEN s = 0 THEN NULL ELSE 0 END,"
        "   CASE WHEN s = 0 THEN 'runtime' ELSE 'data' END, %(text)s || s,"
        "   r.started_at + make_interval(secs => s / 1e5), 100, s <> 2,"
        "   %(json)s, %(json)s, CASE WHEN s = 2 THEN %(error)s::jsonb END, %(json)s"
        " FROM generate_series(0, 3) s, flux.requests r WHERE r.id = %(id)s",
        {
            "id": request_id,
            "text": HOSTILE,
            "json": json.dumps({HOSTILE: [HOSTILE]}),
            "error": json.dumps(error),
        },
    )
    conn.execute(
        "INSERT INTO flux.mutations (request_id, span_seq, table_schema, table_name, op, row_pk, old, new,"
        " changed) VALUES (%s, 1, %s, %s, 'UPDATE', %s, %s, %s, %s)",
        (request_id, HOSTILE, HOSTILE, json.dumps({HOSTILE: HOSTILE}), json.dumps({HOSTILE: HOSTILE}),
         json.dumps({HOSTILE: HOSTILE + "!"}), [HOSTILE]),
    )  # fmt: skip
    return request_id


@pytest.fixture(scope="module")
def hostile(server: Server) -> Hostile:
    # through the server, as a client would: a body and a path with markup
    assert call_json(f"{server.url}/notes", "POST", {"text": HOSTILE})[0] == 201
    server.ask("GET", "/notes/" + quote(PAYLOADS[0], safe=""))
    server.ask("GET", "/nowhere/" + quote(HOSTILE, safe="/"))
    table = f'<img {MARK} src=x onerror="alert(1)">'
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        first = _hostile_request(conn, "/" + HOSTILE)
        second = _hostile_request(conn, "/" + HOSTILE + "2")
        conn.execute(psycopg.sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(
            psycopg.sql.Identifier(table)))  # fmt: skip
        conn.execute("SELECT flux.track(%s::regclass)", (psycopg.sql.Identifier(table).as_string(conn),))
        conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (1, %s)").format(psycopg.sql.Identifier(table)),
                     (HOSTILE,))  # fmt: skip
        conn.execute(
            "INSERT INTO flux.jobs (queue, function, payload, status, attempts, max_attempts, last_error,"
            " parent_request_id) VALUES ('default', %s, %s, 'dead', 1, 1, %s, %s),"
            " ('default', %s, 'null', 'queued', 0, 1, NULL, NULL)",
            (HOSTILE, json.dumps(HOSTILE), json.dumps({"message": HOSTILE}), first, HOSTILE),
        )
        conn.execute(
            "INSERT INTO flux.cron (name, schedule, function, next_run_at) VALUES ('hostile', %s, %s, now())",
            (HOSTILE, HOSTILE),
        )
        conn.execute("UPDATE flux.deployments SET created_by = %s, git_commit = %s", (HOSTILE, HOSTILE))
    return Hostile(first, second, table)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"]
        )
        yield launched
        launched.close()


def _no_injection(page: Any, where: str, events: list[str]) -> None:
    """Nothing of the payloads became markup (whether or not the CSP would have stopped it), ran, or made a
    link of a `javascript:` URL."""
    found = page.evaluate(
        f"""() => ({{
            marked: document.querySelectorAll('[{MARK}]').length,
            scripts: Array.from(document.scripts).filter((s) => s.src.indexOf('/flux/static/') < 0).length,
            ran: window.__xss === 1,
            links: Array.from(document.querySelectorAll('[href],[src],[action]'))
                .map((e) => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('action'))
                .filter((u) => !u.startsWith('/flux/')),
        }})"""
    )
    assert found == {"marked": 0, "scripts": 0, "ran": False, "links": []}, (where, found)
    assert not events, (where, events)


def watched_page(browser: Any, server: Server) -> tuple[Any, list[str]]:
    """A signed-in page in a new browser context, and what it reports that markup should never cause: a
    dialog, a Content-Security-Policy violation, an uncaught error."""
    context = browser.new_context()
    page = context.new_page()
    events: list[str] = []
    page.on("dialog", lambda dialog: (events.append(f"dialog {dialog.message}"), dialog.dismiss()))
    page.on("console", lambda message: events.append(f"console {message.text}") if message.type == "error"
            and "Content Security Policy" in message.text else None)  # fmt: skip
    page.on("pageerror", lambda error: events.append(f"pageerror {error}"))
    page.goto(f"{server.dashboard_url}/flux/signin")
    page.fill("input[name=key]", server.admin_key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.dashboard_url}/flux/requests")
    return page, events


def test_recorded_markup_is_shown_as_text_on_every_page(
    server: Server, hostile: Hostile, browser: Any, tmp_path: Path
) -> None:
    """Every page, and the script's waterfall, span panel and live list, show the payloads as text: none
    becomes an element, runs, or makes a link (checked in chromium; a CSP violation or dialog fails too)."""
    page, events = watched_page(browser, server)
    shown = page.locator("#requests tbody").inner_text()
    assert PAYLOADS[0] in shown and "/nowhere/" in shown
    _no_injection(page, "requests", events)
    # the live list: a request recorded now, with markup in its path and body
    assert call_json(f"{server.url}/notes", "POST", {"text": HOSTILE})[0] == 201
    server.ask("GET", "/live/" + quote(HOSTILE, safe="/"))
    page.locator("#requests tbody tr.fresh", has_text="/live/").wait_for(timeout=10_000)
    _no_injection(page, "live requests", events)
    page.goto(f"{server.dashboard_url}/flux/requests/{hostile.request}")
    page.locator("#waterfall.ready").wait_for(timeout=10_000)
    assert PAYLOADS[0] in page.locator("#waterfall").inner_text()
    page.locator(".wf-row").nth(1).click()
    page.locator("#span-detail").wait_for(state="visible")
    assert PAYLOADS[3] in page.locator("#span-input").inner_text()
    assert PAYLOADS[1] in page.locator("#span-mutations").inner_text()
    page.fill("#span-filter", PAYLOADS[1][:12])
    _no_injection(page, "trace", events)
    visits = {
        "diff": f"/flux/diff?a={hostile.request}&b={hostile.other}",
        "rows": "/flux/rows?table=" + quote(psycopg.sql.Identifier(hostile.table).as_string(None), safe=""),
        "row": "/flux/rows?table=notes&key=3",
        "queue": "/flux/queue",
        "deployments": "/flux/deployments",
        "error page": "/flux/requests/" + quote(PAYLOADS[1], safe=""),
        "untracked table": "/flux/rows?table=" + quote(PAYLOADS[0], safe=""),
        "filters": "/flux/requests?route=" + quote(HOSTILE, safe="") + "&function=" + quote(PAYLOADS[1]),
        "sign-in next": "/flux/signin?next=" + quote('/flux/"><img data-xss src=x>', safe=""),
    }
    for where, path in visits.items():
        answer = page.goto(server.dashboard_url + path)
        assert answer is not None and answer.status < 500, (where, answer and answer.status)
        _no_injection(page, where, events)
    page.goto(server.dashboard_url + visits["rows"])
    quoted = psycopg.sql.Identifier(hostile.table).as_string(None)
    assert quoted in page.locator("select[name=table]").inner_text()
    page.screenshot(path=str(tmp_path / "hostile-rows.png"), full_page=True)
    page.context.close()


def test_a_link_cannot_put_its_own_words_in_the_dashboards_banner(server: Server) -> None:
    """Before, /flux/queue?done=… showed any text as the dashboard's own confirmation (a phishing line on a
    trusted page, through sign-in's `next` too); now only what an action's redirect says."""
    session = server.sign_in()
    lure = "Your session expired: paste your admin key at evil.example"
    for page in ("/flux/queue", "/flux/deployments"):
        shown = server.ask("GET", f"{page}?done={quote(lure)}", session=session)
        assert shown.status == 200 and "evil.example" not in shown.text and 'id="done"' not in shown.text, (
            page
        )
    kept = server.ask("GET", "/flux/deployments?done=version+1+is+active", session=session)
    assert '<p class="done" id="done">version 1 is active</p>' in kept.text


def _app_page_in_a_signed_in_browser(server: Server, browser: Any) -> tuple[str, str | None]:
    """What the project's page read of the dashboard, in a browser signed in to it: by fetch, and through
    the window it opened."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server.url}/flux/signin")  # the project's port leads to the dashboard's
    page.fill("input[name=key]", server.admin_key)
    page.click("button[type=submit]")
    page.wait_for_url("**/flux/requests")
    assert page.url == f"{server.dashboard_url}/flux/requests"
    page.goto(f"{server.url}/page")
    page.wait_for_function("document.title !== 'app' && document.body.dataset.popup", timeout=10_000)
    found = page.title(), page.evaluate("document.body.dataset.popup")
    context.close()
    return found


def test_a_script_cannot_fetch_a_dashboard_page_or_post_its_form(server: Server, browser: Any) -> None:
    """Before, a page of the project's own (same origin: a function may answer HTML) fetched /flux/queue in
    the background and read its CSRF token. Now a page fetched, or a form posted, by a script
    (Sec-Fetch-Mode other than navigate) is refused (FX144); trace.json and the feed, which the dashboard's
    own script fetches, are not."""
    fetched, _ = _app_page_in_a_signed_in_browser(server, browser)
    assert fetched == "refused"
    session = server.sign_in()
    token = server.csrf(session)
    script = {"sec-fetch-mode": "cors", "sec-fetch-site": "same-origin", "sec-fetch-dest": "empty"}
    for method, path, body in (("GET", "/flux/queue", ""), ("GET", "/flux/signin", ""),
                               ("POST", "/flux/deployments/1/activate", f"csrf={token}"),
                               ("POST", "/flux/signout", f"csrf={token}")):  # fmt: skip
        answer = server.ask(method, path, body, headers=script, session=session)
        assert answer.status == 403 and fx_code(answer) == "FX144", path
    page = server.ask("GET", "/flux/requests", session=session)
    live = re.search(r'data-live="([^"]+)"', page.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    assert server.ask("GET", live, headers=script, session=session).status == 200
    navigate = {"sec-fetch-mode": "navigate", "sec-fetch-site": "same-origin", "sec-fetch-dest": "document"}
    assert server.ask("GET", "/flux/queue", headers=navigate, session=session).status == 200


def test_a_page_of_the_project_cannot_read_the_dashboard_through_a_window(
    server: Server, browser: Any
) -> None:
    """Before, the dashboard shared its origin with the project's routes, and a function may answer HTML: a
    script in it (a hostile function, or an XSS in the app) opened a dashboard page in a window and read its
    CSRF token. Now the dashboard is an origin of its own (its port): the window the page opened at
    /flux/queue went to the dashboard's port, and the page can no longer read it."""
    _, popup = _app_page_in_a_signed_in_browser(server, browser)
    assert popup == "refused"


# -- 4. holding workers -------------------------------------------------------------------------------------


def _open_feed(server: Server, session: str) -> tuple[http.client.HTTPConnection, Any, str]:
    """A live feed of a fresh requests page, opened: its connection, its answer (being read) and its path."""
    page = server.ask("GET", "/flux/requests", session=session)
    live = re.search(r'data-live="([^"]+)"', page.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    connection = http.client.HTTPConnection(server.host, server.dashboard_port, timeout=30)
    connection.request("GET", live, headers={"cookie": f"flux_session={session}"})
    return connection, connection.getresponse(), live


def test_the_live_feed_streams_new_requests_within_its_bound(server: Server) -> None:
    """Before, each answer of the live feed ended at once (the browser polled every second). Now it stays
    open and sends each request as it is recorded, and ends by LIVE_STREAM_S: a new request arrives on the
    stream already open, which then ends within its bound."""
    connection, answer, _ = _open_feed(server, server.sign_in())
    try:
        opened = time.monotonic()
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/event-stream")
        assert answer.read1().startswith(b"retry: ")
        time.sleep(0.5)
        status, headers, _ = call_json(f"{server.url}/notes", "POST", {"text": "streamed"})
        assert status == 201
        received = b""
        while headers["x-request-id"].encode() not in received:
            chunk = answer.read1()
            assert chunk, f"the stream ended without the new request: {received[-300:]!r}"
            received += chunk
        arrived = time.monotonic() - opened
        assert arrived < LIVE_STREAM_S, arrived
        assert b"event: request" in received
        assert answer.read() is not None  # to its end
        lasted = time.monotonic() - opened
        assert LIVE_STREAM_S - 1 < lasted < LIVE_STREAM_S + 2, lasted
    finally:
        connection.close()


def test_a_feed_the_browser_left_ends_at_once(server: Server) -> None:
    """A browser closes the feed when it leaves the page: the stream sees it and ends, its worker and its
    session's one open stream free at once, not at the bound (the next page's feed stays open)."""
    session = server.sign_in()
    left, answer, _ = _open_feed(server, session)
    assert answer.read1().startswith(b"retry: ")
    answer.close()  # the socket closes with the last of the two holding it
    left.close()
    time.sleep(0.5)
    connection, answer, _ = _open_feed(server, session)
    try:
        opened = time.monotonic()
        assert answer.read1().startswith(b"retry: ")
        answer.read()
        assert time.monotonic() - opened > LIVE_STREAM_S - 1  # held open: the left one had let go
    finally:
        connection.close()
    # a client that sends more after its request (an EventSource never does) ends its stream at once too
    _, _, live = _open_feed(server, session)
    with socket.create_connection((server.host, server.dashboard_port), timeout=30) as raw:
        raw.sendall(f"GET {live} HTTP/1.1\r\nhost: x\r\ncookie: flux_session={session}\r\n\r\n".encode())
        assert raw.recv(65536).startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        raw.sendall(b"more")
        while raw.recv(65536):
            pass
        assert time.monotonic() - began < 2


def test_neither_the_live_feed_nor_idle_clients_hold_a_worker(server: Server) -> None:
    """An open live feed holds its sync worker, so it is bounded: it ends within LIVE_STREAM_S; a session
    keeps at most one open (its second answers at once and ends), and the server one worker fewer than it
    has (two here: another session's feed answers at once too). Meanwhile pages answer at once. Eight
    connections that never finish their request (as an unauthenticated client can open) leave both sync
    workers free for a sign-in."""
    session, other = server.sign_in(), server.sign_in()
    connection, answer, live = _open_feed(server, session)
    page = server.ask("GET", "/flux/requests", session=other)  # its own feed: a feed is its session's
    others = re.search(r'data-live="([^"]+)"', page.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    try:
        opened = time.monotonic()
        assert answer.read1().startswith(b"retry: ")
        for who, feed in ((session, live), (session, live), (other, others)):
            began = time.monotonic()
            quick = server.ask("GET", feed, session=who)
            assert quick.status == 200 and quick.text.startswith("retry: ")
            assert time.monotonic() - began < 1.5
        began = time.monotonic()
        assert server.ask("GET", "/flux/queue", session=session).status == 200
        assert time.monotonic() - began < 1.5
        answer.read()
        assert time.monotonic() - opened < LIVE_STREAM_S + 2
    finally:
        connection.close()
    idle = []
    try:
        for _ in range(8):
            held = socket.create_connection((server.host, server.dashboard_port))
            held.sendall(b"GET /flux/requests/live HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
            idle.append(held)
        time.sleep(0.3)
        began = time.monotonic()
        assert server.ask("GET", "/flux/signin").status == 200
        assert server.ask("GET", "/flux/queue", session=session).status == 200
        assert time.monotonic() - began < 2
    finally:
        for held in idle:
            held.close()


# -- 5. data exposure ---------------------------------------------------------------------------------------


def test_no_page_shows_a_secret_the_admin_key_or_the_session(server: Server) -> None:
    """A request that read a secret and answered it, its trace, its waterfall data, its diff with a replay
    against edited code (the replayed side comes from a live run with today's secret) and the replay's page:
    the secret shows only as `[secret:token]`. No page shows the admin key or the session cookie."""
    session = server.sign_in()
    status, headers, answered = call_json(f"{server.url}/secret")
    assert status == 200 and answered == {"token": SECRET_VALUE}
    request_id = headers["x-request-id"]
    edit_function(server.project, "show_secret", SHOW_SECRET.replace("SUFFIX", "!"))
    deploy(server.dsn, load_settings(server.project, env={}))
    replayed = server.ask("POST", f"/flux/requests/{request_id}/replay", f"csrf={server.csrf(session)}"
                          "&db=recorded&code=active", session=session)  # fmt: skip
    assert replayed.status == 200 and "[secret:token]!" in replayed.text, replayed.text[-2000:]
    replay_id = re.search(r'href="/flux/requests/([0-9a-f-]{36})">', replayed.text.split("Recorded as")[1])
    assert replay_id
    pages = {"replay": replayed}
    replay = replay_id.group(1)
    for path in (f"/flux/requests/{request_id}", f"/flux/requests/{request_id}/trace.json",
                 f"/flux/requests/{replay}/trace.json", f"/flux/diff?a={request_id}&b={replay}",
                 "/flux/requests", "/flux/queue", "/flux/deployments", "/flux/rows"):  # fmt: skip
        pages[path] = server.ask("GET", path, session=session)
    assert "[secret:token]" in pages[f"/flux/requests/{request_id}/trace.json"].text
    for path, answer in pages.items():
        assert answer.status == 200, path
        for leaked in (
            SECRET_VALUE,
            SECRET_VALUE[4:12],
            server.admin_key,
            server.admin_key[11:25],
            session[:40],
        ):
            assert leaked not in answer.text, (path, leaked)
