"""The dashboard's pages under `/flux/`: sign-in, requests (with a live feed), a trace's waterfall, the diff
of two traces, a replay, a row's history, the queue and the deployments. Each page checks the session's admin
key with the management API's own check and reads through the same functions the API and the CLI use."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import hmac
import math
import re
import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import falcon
import jinja2

from flux import jsontext, replay
from flux.api import deploy
from flux.api.admin import check_admin_key
from flux.api.resources import replay_served
from flux.dashboard._pages import first_divergence, route_stats, trace_data
from flux.dashboard._session import COOKIE, LIFETIME_S, Sealer, Session
from flux.errors import (
    AdminKeyRefused,
    CsrfRefused,
    DashboardElsewhere,
    DashboardHostRefused,
    DashboardMethodRefused,
    DashboardPageNotFound,
    FluxError,
    InvalidRequest,
    InvalidTimeWindow,
    LiveFeedNotYours,
    ScriptedRequestRefused,
    SignInRequired,
)
from flux.queue import cron, jobs
from flux.runtime.secrets import load_key
from flux.trace import diff, state, tree

HERE = Path(__file__).parent
SIGNIN_COOKIE = "flux_signin"  # the sign-in form's own CSRF token, before there is a session
# No inline script or style, nothing from another origin, no framing; the pages' one script and one stylesheet
# come from /flux/static/.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml"}  # fmt: skip
_DASHBOARD_PATH = re.compile(r"/flux/[A-Za-z0-9._~/?&=%+-]*")  # no scheme, no host, nothing to break a header
# A Host header the project's port may send a browser on to: a name or IPv4 address, or an IPv6 one in
# brackets, and an optional port; nothing that could end the authority (`/`, `?`, `#`, `@`) or a header.
_HOST_HEADER = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
_URI_SAFE = "/!$&'()*+,;=:@-._~"  # what stays as it is when the redirect puts a decoded path back in a URI
PERIODS = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "24h": timedelta(days=1),
           "7d": timedelta(days=7)}  # fmt: skip
LIVE_RETRY_MS = 1000  # how soon the browser asks the live feed again once an answer ended (see on_get_live)
LIVE_STREAM_S = 8.0  # the longest one answer of the live feed stays open, holding its worker
LIVE_WAIT_S = 1.0  # within it, how long it waits for an announcement before it looks at the inbox anyway
# Advisory lock classes (two-int form): one open stream per session, and the server's stream slots.
_LIVE_SESSIONS, _LIVE_SLOTS = 0x464C5853, 0x464C5854
GZIP_FROM_BYTES = 8192  # trace.json bigger than this goes gzipped
STATS_SAMPLE = 1000  # the newest requests of the window that a route's error rate and percentiles come from
SHOWN_REQUESTS = 100  # the newest of them, listed


# The dashboard's addresses: (path, Pages' responder suffix).
PAGE_ROUTES = (
    ("/flux/signin", "signin"), ("/flux/signout", "signout"),
    ("/flux/requests", "requests"), ("/flux/requests/live", "live"),
    ("/flux/requests/{request_id}", "trace"), ("/flux/requests/{request_id}/trace.json", "trace_json"),
    ("/flux/requests/{request_id}/replay", "replay"),
    ("/flux/diff", "diff"), ("/flux/rows", "rows"),
    ("/flux/queue", "queue"), ("/flux/queue/jobs/{job_id:int}/retry", "retry"),
    ("/flux/queue/jobs/{job_id:int}/cancel", "cancel"),
    ("/flux/deployments", "deployments"), ("/flux/deployments/{version:int}/activate", "activate"),
)  # fmt: skip


def register(
    app: falcon.App,  # type: ignore[type-arg]
    pool: Any,
    project_dir: Path,
    gateway: Any = None,
    *,
    live_streams: int = 1,
) -> None:
    """Mount the dashboard on `app`, the dashboard's own (it answers nothing else): its pages read on `pool`
    (the worker's admin connections) and replay on the worker's `gateway`; sessions are sealed under a key
    derived from the project's secret key. At most `live_streams` live feeds stay open at once (each holds a
    worker up to LIVE_STREAM_S); past that, a feed answers what is waiting and ends."""
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # the templates are the package's: they change with Flux, not while it runs
    )
    templates.filters["json"] = lambda value: jsontext.display(value, indent=2)
    templates.filters["ms"] = _ms
    templates.filters["moment"] = _moment_shown
    pages = Pages(pool, project_dir, gateway, templates, live_streams)
    app.add_middleware(_DashboardAnswers())
    app.add_error_handler(falcon.HTTPError, _dashboard_http_error)
    app.add_route("/flux", _Home())
    app.add_route("/flux/", _Home())
    app.add_route("/flux/static/{name}", _Static())
    for path, suffix in PAGE_ROUTES:
        app.add_route(path, pages, suffix=suffix)
    app.add_sink(_nothing_else, prefix="/")


def _nothing_else(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
    raise DashboardPageNotFound(f"no dashboard page at {req.path}", hint="start from /flux/requests")


def redirect_to_port(app: falcon.App, port: int) -> None:  # type: ignore[type-arg]
    """On the project's port, the dashboard's addresses lead to the same address on the dashboard's `port`:
    a page opened there (a link, a bookmark) comes to the dashboard, in its own origin."""
    moved = _Moved(port)
    for path in ("/flux", "/flux/", "/flux/static/{name}", *(path for path, _ in PAGE_ROUTES)):
        app.add_route(path, moved)


class _Moved:
    def __init__(self, port: int) -> None:
        self.port = port

    def on_get(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        given = req.get_header("host")
        if given is None:  # HTTP/1.0 without one: the listener's address
            given = req.env.get("SERVER_NAME", "")
            given = f"[{given}]" if ":" in given else given
        found = _HOST_HEADER.fullmatch(given)
        if found is None:
            raise DashboardHostRefused(
                f"the Host header {given[:100]!r} is not a host name", hint="open the dashboard by its name"
            )
        # The Host header the browser sent, so the dashboard opens on the same host name (never cached, as
        # it depends on that header); the path's bytes as they were sent (Falcon's path is decoded: a %0d%0a
        # in it would end the header), and the query string as it came.
        path = (req.env.get("SCRIPT_NAME", "") + req.env.get("PATH_INFO", "")).encode("latin-1")  # PEP 3333
        location = f"{req.scheme}://{found.group('name')}:{self.port}{quote(path, safe=_URI_SAFE)}"
        if req.query_string:
            location += "?" + quote(req.query_string, safe=_URI_SAFE + "?%")
        raise falcon.HTTPFound(location, headers={"cache-control": "no-store"})

    on_head = on_get

    def _elsewhere(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        raise DashboardElsewhere(
            f"the dashboard answers on port {self.port}, not here", hint="open the dashboard on its own port"
        )

    on_post = on_put = on_patch = on_delete = _elsewhere


class ByPort:
    """The worker's WSGI app: a request that came in on the dashboard's port (gunicorn's SERVER_PORT is the
    port of the listener that accepted it, whatever the Host header says) goes to the dashboard, any other
    to the project's app."""

    def __init__(self, project: Any, dashboard: Any, dashboard_port: int) -> None:
        self.project = project
        self.dashboard = dashboard
        self.dashboard_port = str(dashboard_port)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        app = self.dashboard if environ.get("SERVER_PORT") == self.dashboard_port else self.project
        return app(environ, start_response)


class _DashboardAnswers:
    """Every answer of a dashboard address carries the security headers: pages, but also redirects, refusals
    (401, 403, 405), errors and JSON, which a hook after the responder would miss (it does not run when the
    responder or a hook before it raises)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.dashboard = True

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        if not req.context.get("dashboard"):
            return
        resp.set_header("content-security-policy", CSP)
        resp.set_header("x-content-type-options", "nosniff")
        resp.set_header("referrer-policy", "same-origin")
        resp.set_header("x-frame-options", "DENY")
        if not isinstance(resource, _Static) or resp.status_code != 200:
            resp.set_header("cache-control", "no-store")


def _dashboard_http_error(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
    """Falcon's own refusals of a dashboard address (a method it does not take, a missing file, a malformed
    parameter) as the FX errors a user can look up; any other address's as Falcon makes them."""
    if not req.context.get("dashboard") or not isinstance(error, falcon.HTTPError):
        raise error
    flux_error: FluxError
    if error.status_code == 405:
        flux_error = DashboardMethodRefused(
            f"{req.method} is not how {req.path} is asked",
            hint="open pages with GET; actions are their buttons",
        )
    elif error.status_code == 404:
        flux_error = DashboardPageNotFound(
            f"no dashboard page at {req.path}", hint="start from /flux/requests"
        )
    else:
        flux_error = InvalidRequest(error.description or error.title, hint="check the address's parameters")
    resp.status = falcon.code_to_http_status(flux_error.http_status)
    resp.media = flux_error.to_dict(None)


class _Home:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise falcon.HTTPSeeOther("/flux/requests")


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    files = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.suffix in STATIC_TYPES:
            data = path.read_bytes()
            files[path.name] = (data, STATIC_TYPES[path.suffix], hashlib.sha256(data).hexdigest()[:16])
    return files


class _Static:
    """The dashboard's script and stylesheet, shipped in the package; served without a session (the sign-in
    page uses them) and only by name from the package's own list."""

    files = _load_static()

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        found = self.files.get(name)
        if found is None:
            raise falcon.HTTPNotFound()
        data, content_type, etag = found
        resp.etag = etag
        resp.cache_control = ["no-cache"]  # revalidated by etag: a new Flux serves its new files at once
        if req.if_none_match and any(tag == etag for tag in req.if_none_match):
            resp.status = falcon.HTTP_304
            return
        resp.data = data
        resp.content_type = content_type


def _session_first(req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]) -> None:
    """Every page but sign-in needs a session whose admin key is still live (checked as the management API
    checks it); every POST, its CSRF token and a same-origin Origin. A page asked for without one redirects
    to sign-in; a feed, a JSON answer or a POST is refused with 401 (FX140). A page or a POST that a script
    fetched rather than the browser opened is refused first (FX144)."""
    wants_page = req.method == "GET" and not req.path.endswith((".json", "/live"))
    mode = req.get_header("sec-fetch-mode")
    if mode is not None and mode != "navigate" and (wants_page or req.method == "POST"):
        # A page read, or a form posted, by a script: the dashboard's own script only fetches trace.json and
        # the feed. A script of another page of this origin (a project's function may answer HTML) would
        # otherwise read a page's CSRF token and post its forms in the background.
        raise ScriptedRequestRefused(f"{req.path} is opened in the browser, not fetched by a script",
                                     hint="open the page, or submit its form, yourself")  # fmt: skip
    if req.path == "/flux/signin":
        return  # its own token (the sign-in cookie) protects its form
    pages: Pages = resource
    session = pages.sealer.open(req.cookies.get(COOKIE))
    admin_key_id = None
    if session is not None:
        with pages.pool.connection() as conn:
            conn.autocommit = True
            try:
                admin_key_id = check_admin_key(conn, f"Bearer {session.admin_key}")
                if conn.execute(_SIGNED_OUT, [session.csrf]).fetchone() is not None:
                    session = None
            except AdminKeyRefused:
                session = None
    if session is None:
        if wants_page:
            raise falcon.HTTPSeeOther("/flux/signin?" + urlencode({"next": req.relative_uri}))
        raise SignInRequired("this dashboard call needs a session", hint="sign in at /flux/signin")
    if req.method == "POST":
        _check_same_origin(req)
        if not session.csrf_matches(_form(req).get("csrf") or req.get_header("x-csrf-token")):
            raise CsrfRefused("the form's CSRF token is missing or not this session's",
                              hint="reload the page and submit the form again")  # fmt: skip
    req.context.session = session
    req.context.admin_key_id = admin_key_id


# A session that signed out (flux.dashboard_signouts, by the sha256 of its own CSRF token) until its cookie
# ends; signing out also clears the rows of sessions whose cookies have ended.
_SIGNED_OUT = (
    "SELECT FROM flux.dashboard_signouts"
    " WHERE session_sha256 = pg_catalog.sha256(pg_catalog.convert_to(%s, 'UTF8'))"
)
_SIGN_OUT = """
WITH ended AS (DELETE FROM flux.dashboard_signouts WHERE ends_at < pg_catalog.now())
INSERT INTO flux.dashboard_signouts (session_sha256, ends_at)
VALUES (pg_catalog.sha256(pg_catalog.convert_to(%s, 'UTF8')), pg_catalog.to_timestamp(%s))
ON CONFLICT (session_sha256) DO NOTHING
"""


# A gate's verdict as kept: its counts and its first divergences (each request with its replay's result).
_GATES = "SELECT id, gate FROM flux.deployments WHERE gate IS NOT NULL AND id = ANY(%s)"


def _check_same_origin(req: falcon.Request) -> None:
    """A browser names the page a POST came from in Origin: it must be this dashboard's own."""
    origin = req.get_header("origin")
    if origin is not None and urlsplit(origin).netloc not in (req.netloc, req.forwarded_host):
        raise CsrfRefused(f"a form from {origin} may not post here", hint="use the dashboard's own pages")


def _form(req: falcon.Request) -> dict[str, str]:
    """The fields of a URL-encoded form body (read once, kept on the request)."""
    if "form" not in req.context:
        media = (req.content_type or "").split(";")[0].strip().lower()
        form: dict[str, str] = {}
        if media == "application/x-www-form-urlencoded":
            raw = req.bounded_stream.read(65_536).decode(errors="replace")
            form = {key: value for key, value in falcon.uri.parse_query_string(raw).items()
                    if isinstance(value, str)}  # fmt: skip
        req.context.form = form
    return dict(req.context.form)


def _pages_answer_errors(responder: Callable[..., None]) -> Callable[..., None]:
    """A page that fails with a FluxError shows it (code, message, hint) on the page, with its HTTP status."""

    @functools.wraps(responder)
    def answer(self: Pages, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        try:
            responder(self, req, resp, **params)
        except FluxError as error:
            if error.code == "FX900":
                raise
            resp.status = falcon.code_to_http_status(error.http_status)
            self.render(req, resp, "error.html", error=error)

    return answer


@falcon.before(_session_first)
class Pages:
    def __init__(
        self, pool: Any, project_dir: Path, gateway: Any, templates: jinja2.Environment, live_streams: int = 1
    ) -> None:
        self.pool = pool
        self.live_streams = live_streams
        self.project_dir = project_dir
        self.gateway = gateway
        self.templates = templates
        self._sealer: Sealer | None = None

    @property
    def sealer(self) -> Sealer:
        """Sessions' sealer, made when the dashboard is first used: a server whose secret key is unusable
        (FX604) still starts, and its dashboard says why it cannot sign anyone in."""
        if self._sealer is None:
            self._sealer = Sealer(load_key(self.project_dir))
        return self._sealer

    @contextlib.contextmanager
    def conn(self) -> Iterator[Any]:
        """An autocommit admin connection (for a caller whose session `_session_first` checked)."""
        with self.pool.connection() as conn:
            conn.autocommit = True
            yield conn

    def render(self, req: falcon.Request, resp: falcon.Response, template: str, **values: Any) -> None:
        session: Session | None = req.context.get("session")
        page = self.templates.get_template(template).render(
            csrf=session.csrf if session else "", signed_in=session is not None, path=req.path, **values
        )
        resp.content_type = falcon.MEDIA_HTML
        resp.text = page

    # -- signing in and out -------------------------------------------------------------------------------

    @_pages_answer_errors
    def on_get_signin(self, req: falcon.Request, resp: falcon.Response) -> None:
        token = secrets.token_urlsafe(24)
        resp.set_cookie(SIGNIN_COOKIE, token, max_age=900, path="/flux/signin", secure=req.scheme == "https",
                        http_only=True, same_site="Strict")  # fmt: skip
        self.render(req, resp, "signin.html", token=token, next=_next(req.get_param("next")), refused=None)

    @_pages_answer_errors
    def on_post_signin(self, req: falcon.Request, resp: falcon.Response) -> None:
        _check_same_origin(req)
        form = _form(req)
        expected = req.cookies.get(SIGNIN_COOKIE)
        given = form.get("csrf")
        if not expected or not given or not secrets.compare_digest(expected.encode(), given.encode()):
            raise CsrfRefused("the sign-in form's token is missing or stale",
                              hint="open /flux/signin again and sign in from there")  # fmt: skip
        key = form.get("key", "").strip()
        try:
            with self.conn() as conn:
                check_admin_key(conn, f"Bearer {key}")
        except AdminKeyRefused as refused:
            resp.status = falcon.HTTP_401
            self.render(
                req, resp, "signin.html", token=expected, next=_next(form.get("next")), refused=refused
            )
            return
        _, cookie = self.sealer.new_session(key)
        resp.set_cookie(COOKIE, cookie, max_age=LIFETIME_S, path="/flux", secure=req.scheme == "https",
                        http_only=True, same_site="Strict")  # fmt: skip
        resp.unset_cookie(SIGNIN_COOKIE, path="/flux/signin")
        raise falcon.HTTPSeeOther(_next(form.get("next")))

    def on_post_signout(self, req: falcon.Request, resp: falcon.Response) -> None:
        """End the session everywhere (a copy of its cookie is refused from now on), then in this browser."""
        session: Session = req.context.session
        with self.conn() as conn:
            conn.execute(_SIGN_OUT, [session.csrf, session.expires_at])
        resp.unset_cookie(COOKIE, path="/flux")
        raise falcon.HTTPSeeOther("/flux/signin")

    # -- requests -------------------------------------------------------------------------------------------

    @_pages_answer_errors
    def on_get_requests(self, req: falcon.Request, resp: falcon.Response) -> None:
        filters = _request_filters(req)
        period = req.get_param("since") or "1h"
        if period not in PERIODS:
            raise InvalidRequest(f"since {period!r} is not one of {', '.join(PERIODS)}", hint="e.g. since=1h")
        start, until = _moment_param(req, "from"), _moment_param(req, "until")
        if start is not None and until is not None and until < start:
            raise InvalidTimeWindow(
                f"until ({until:%Y-%m-%d %H:%M:%S%z}) comes before from ({start:%Y-%m-%d %H:%M:%S%z})",
                hint="give an until after from, or leave one empty",
            )
        with self.conn() as conn:
            window = tree.list_requests(conn, **filters, kind=req.get_param("kind") or None,
                                        since=start or PERIODS[period], until=until,
                                        limit=STATS_SAMPLE)  # fmt: skip
            follower = tree.start_following(conn, inbox=True) if until is None else None
        rows = window[:SHOWN_REQUESTS]
        # a window that has ended gets nothing new: no live feed
        live = ""
        if follower is not None:
            proof = _follower_proof(req.context.session, follower)
            live = "/flux/requests/live?" + urlencode({"follower": follower, "proof": proof,
                                                       **_live_filters(req)})  # fmt: skip
        self.render(req, resp, "requests.html", rows=rows, stats=route_stats(window), periods=list(PERIODS),
                    period=period, start=start, until=until, live=live, given=dict(req.params),
                    sample=STATS_SAMPLE)  # fmt: skip

    def on_get_live(self, req: falcon.Request, resp: falcon.Response) -> None:
        """New requests as server-sent events: what was recorded since the follower's last answer, then each
        one as it is recorded, for up to LIVE_STREAM_S; then the answer ends and the browser asks again after
        `retry` ms. The follower's inbox keeps what no answer has sent yet, so nothing is lost in between.
        A sync worker (Flux's default) serves one request at a time: an open stream holds its worker, so only
        one stream per session, and `live_streams` on the server at once (one worker fewer than it has),
        stay open; any other answers what is waiting and ends at once."""
        given = req.get_param("follower") or ""
        if not (given.isascii() and given.isdigit() and len(given) < 19):
            raise InvalidRequest(f"follower {given!r} is not a follower's number",
                                 hint="reload /flux/requests to follow again")  # fmt: skip
        filters = _request_filters(req, live=True)
        session: Session = req.context.session
        # A follower's inbox is taken by whoever asks: only the session whose page started it may.
        given_proof = (req.get_param("proof") or "").encode()  # bytes: compare_digest refuses non-ASCII str
        if not hmac.compare_digest(given_proof, _follower_proof(session, int(given)).encode()):
            raise LiveFeedNotYours(f"follower {given} is not this session's",
                                   hint="reload /flux/requests to follow again")  # fmt: skip
        resp.content_type = "text/event-stream"
        resp.stream = self._live(int(given), filters, session.csrf, req.env.get("gunicorn.socket"))

    def _live(
        self, follower: int, filters: dict[str, Any], session_key: str, client: socket.socket | None
    ) -> Iterator[bytes]:
        with self.conn() as conn:
            held = self._hold_live_slot(conn, session_key)
            try:
                if held:
                    conn.execute(f"LISTEN {tree.CHANNEL}")
                ends = time.monotonic() + (LIVE_STREAM_S if held else 0.0)
                yield f"retry: {LIVE_RETRY_MS}\n\n".encode()
                while True:
                    try:
                        rows = tree.take_followed(conn, follower, **filters)
                    except FluxError as error:
                        yield _event("gone", error.message)
                        return
                    if rows:
                        yield b"".join(_event("request", jsontext.dumps_text(row)) for row in rows)
                    left = ends - time.monotonic()
                    if left <= 0 or not _wait_for_news(conn, client, min(left, LIVE_WAIT_S)):
                        return
            finally:
                if held:  # the connection goes back to the pool as it came
                    conn.execute("UNLISTEN *")
                    conn.execute("SELECT pg_catalog.pg_advisory_unlock_all()")

    def _hold_live_slot(self, conn: Any, session_key: str) -> bool:
        """Take this session's stream lock and one of the server's stream slots (advisory locks, released when
        the stream ends or its connection closes); False, holding neither, when either is taken."""
        if self.live_streams < 1:
            return False
        # Tried once, never waited for: a feed refused here holds the one worker kept for everything else,
        # so a session's storm of feeds (tabs, a script) would hold it for as long as each waited. The
        # browser asks again a second later (`retry`), by when the stream of a page it left has ended.
        (mine,) = conn.execute(
            "SELECT pg_catalog.pg_try_advisory_lock(%s, pg_catalog.hashtext(%s))",
            (_LIVE_SESSIONS, session_key),
        ).fetchone()
        if not mine:
            return False
        for slot in range(self.live_streams):
            (free,) = conn.execute(
                "SELECT pg_catalog.pg_try_advisory_lock(%s, %s)", (_LIVE_SLOTS, slot)
            ).fetchone()
            if free:
                return True
        conn.execute("SELECT pg_catalog.pg_advisory_unlock_all()")
        return False

    @_pages_answer_errors
    def on_get_trace(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        with self.conn() as conn:
            trace = tree.find_trace(conn, request_id)
            versions = [d["version"] for d in deploy.list_deployments(conn, 50)]
            replays = tree.list_requests(conn, replay_of=str(trace.request["id"]), limit=20)
        self.render(req, resp, "trace.html", trace=trace, request=trace.request, versions=versions,
                    modes=replay.MODES, replays=replays)  # fmt: skip

    def on_get_trace_json(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        """The trace as the waterfall draws it; gzipped for a browser that takes it (a 10,000-span trace is
        about 1.4 MB of JSON)."""
        with self.conn() as conn:
            trace = tree.find_trace(conn, request_id)
        data = jsontext.dumps(trace_data(trace))
        resp.content_type = falcon.MEDIA_JSON
        resp.vary = ["accept-encoding"]
        if len(data) > GZIP_FROM_BYTES and "gzip" in (req.get_header("accept-encoding") or "").lower():
            data = gzip.compress(data, compresslevel=5)
            resp.set_header("content-encoding", "gzip")
        resp.data = data

    @_pages_answer_errors
    def on_post_replay(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        """Replay the request on this server, as `POST /flux/api/requests/{id}/replay` does, and show the
        verdict and its first divergence."""
        form = _form(req)
        mode, code = form.get("db", "recorded"), form.get("code", "active")
        version = None
        if code.startswith("version:"):
            code, number = "active", code.removeprefix("version:")
            if not (number.isascii() and number.isdigit() and len(number) < 10):
                raise InvalidRequest(f"version {number!r} is not a number", hint="pick one from the list")
            version = int(number)
        with self.conn() as conn:
            result = replay_served(conn, self.gateway, self.project_dir, request_id, mode, code, version)
        self.render(req, resp, "replay.html", result=result.to_json(), mode=mode, code=code, version=version)

    # -- diff and rows --------------------------------------------------------------------------------------

    @_pages_answer_errors
    def on_get_diff(self, req: falcon.Request, resp: falcon.Response) -> None:
        a, b = req.get_param("a"), req.get_param("b")
        differences = first = None
        if a and b:
            with self.conn() as conn:
                differences = diff.diff_traces(tree.find_trace(conn, a), tree.find_trace(conn, b))
            first = first_divergence(differences)
        self.render(req, resp, "diff.html", differences=differences, first=first, a=a or "", b=b or "",
                    max_changes=diff.MAX_CHANGES)  # fmt: skip

    @_pages_answer_errors
    def on_get_rows(self, req: falcon.Request, resp: falcon.Response) -> None:
        table, key = (req.get_param("table") or "").strip(), (req.get_param("key") or "").strip()
        history = blame = rows = None
        with self.conn() as conn:
            tracked = [row[0] for row in conn.execute(
                "SELECT table_ref::text FROM flux.tracked_tables ORDER BY 1").fetchall()]  # fmt: skip
            if table and key:
                history, blame = state.history(conn, table, key), state.blame(conn, table, key)
            elif table:
                rows = state.table_blame(conn, table, 100)
        self.render(req, resp, "rows.html", table=table, key=key, tracked=tracked, history=history,
                    blame=blame, rows=rows)  # fmt: skip

    # -- queue and deployments ------------------------------------------------------------------------------

    @_pages_answer_errors
    def on_get_queue(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self.conn() as conn:
            counts = jobs.stats(conn)
            dead = jobs.list_jobs(conn, status="dead", limit=50)
            failed = jobs.list_jobs(conn, status="failed", limit=50)
            queued = jobs.list_jobs(conn, status="queued", limit=50)
            schedules = cron.list_schedules(conn)
        self.render(req, resp, "queue.html", counts=counts, dead=dead, failed=failed, queued=queued,
                    schedules=schedules, done=_done(req, _QUEUE_DONE))  # fmt: skip

    @_pages_answer_errors
    def on_post_retry(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        with self.conn() as conn:
            jobs.retry(conn, job_id)
        raise falcon.HTTPSeeOther("/flux/queue?" + urlencode({"done": f"job {job_id} queued to run again"}))

    @_pages_answer_errors
    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        with self.conn() as conn:
            jobs.cancel(conn, job_id)
        raise falcon.HTTPSeeOther("/flux/queue?" + urlencode({"done": f"job {job_id} cancelled"}))

    @_pages_answer_errors
    def on_get_deployments(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self.conn() as conn:
            versions = deploy.list_deployments(conn, 100)
            gates = dict(conn.execute(_GATES, ([d["version"] for d in versions],)).fetchall())
        self.render(req, resp, "deployments.html", versions=versions, gates=gates,
                    done=_done(req, _DEPLOYMENTS_DONE))  # fmt: skip

    @_pages_answer_errors
    def on_post_activate(self, req: falcon.Request, resp: falcon.Response, version: int) -> None:
        with self.conn() as conn:
            deploy.rollback_in(conn, version)
        raise falcon.HTTPSeeOther("/flux/deployments?" + urlencode({"done": f"version {version} is active"}))


# What an action's redirect says it did; a `done` the dashboard did not write (a link someone sent, with a
# message of their own) is not shown.
_QUEUE_DONE = re.compile(r"job [0-9]{1,19} (queued to run again|cancelled)")
_DEPLOYMENTS_DONE = re.compile(r"version [0-9]{1,19} is active")


def _wait_for_news(conn: Any, client: socket.socket | None, timeout: float) -> bool:
    """Wait up to `timeout` for an announcement of new requests on `conn`; False when the browser has closed
    the feed meanwhile (it left the page): the stream then ends at once rather than at its bound."""
    if client is None:
        for _ in conn.notifies(timeout=timeout, stop_after=1):
            pass
        return True
    readable, _, _ = select.select([conn.fileno(), client], [], [], timeout)
    if client in readable:
        # an EventSource sends nothing after its request: what comes is its closing (or bytes it has no
        # reason to send, which would wake this loop at once, again and again)
        return False
    if conn.fileno() in readable:
        for _ in conn.notifies(timeout=0.001, stop_after=1):
            pass
    return True


def _follower_proof(session: Session, follower: int) -> str:
    """What the live feed's address carries to show its follower is the session's own: a MAC of the follower's
    number under the session's secret CSRF token."""
    mac = hmac.new(session.csrf.encode(), f"live-follower:{follower}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def _event(name: str, data: str) -> bytes:
    """One server-sent event (`data` is one line: JSON, or a message)."""
    return f"event: {name}\ndata: {data}\n\n".encode()


def _done(req: falcon.Request, shape: re.Pattern[str]) -> str | None:
    given = req.get_param("done")
    return given if given and shape.fullmatch(given) else None


def _next(given: str | None) -> str:
    """Where to go after signing in: a dashboard path of this server, never another site."""
    if given and _DASHBOARD_PATH.fullmatch(given):
        return given
    return "/flux/requests"


def _request_filters(req: falcon.Request, *, live: bool = False) -> dict[str, Any]:
    status = req.get_param("status") or None
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses
    if status is not None and not (status.isascii() and status.isdigit() and len(status) == 3):
        raise InvalidRequest(f"status {status!r} is not an HTTP status", hint="e.g. status=500")
    slow = req.get_param("slow_ms") or None
    try:
        slow_ms = float(slow) if slow is not None else None
    except ValueError:
        raise InvalidRequest(f"slow_ms {slow!r} is not a number", hint="e.g. slow_ms=250") from None
    if slow_ms is not None and not (math.isfinite(slow_ms) and 0 <= slow_ms <= 1e9):
        raise InvalidRequest(f"slow_ms {slow!r} is not a number of ms", hint="e.g. slow_ms=250")
    return {"route": req.get_param("route") or None, "function": req.get_param("function") or None,
            "status": int(status) if status else None, "errors": req.get_param("errors") == "on",
            "slow_ms": slow_ms}  # fmt: skip


def _moment_param(req: falcon.Request, name: str) -> datetime | None:
    """The requests page's `from` or `until`: an ISO 8601 date, or date and time (`2026-12-07T19:30`, as a
    browser's datetime-local field sends it), in UTC unless it names its offset; None when empty."""
    given = (req.get_param(name) or "").strip()
    if not given:
        return None
    try:
        if len(given) > 40:
            raise ValueError(given)
        moment = datetime.fromisoformat(given)
    except ValueError:
        raise InvalidTimeWindow(
            f"{name} {given[:40]!r} is not a date and time", hint=f"e.g. {name}=2026-12-07T19:30 (UTC)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _moment_shown(moment: datetime) -> str:
    """A window's end in UTC (`2025-12-31 10:00:00` for `2026-01-01T00:00+14:00`), or with the offset it was
    given where UTC is past datetime's range (year 1 east of Greenwich, 9999 west)."""
    try:
        return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    except OverflowError:
        return moment.isoformat(sep=" ", timespec="seconds")


def _live_filters(req: falcon.Request) -> dict[str, str]:
    return {name: req.get_param(name) or "" for name in ("route", "function", "status", "errors", "slow_ms")
            if req.get_param(name)}  # fmt: skip


def _ms(duration_us: Any) -> str:
    return "" if duration_us is None else f"{int(duration_us) / 1000:.1f} ms"
