"""The Falcon application every gunicorn worker serves, and the gunicorn entry point `create_wsgi()`.

Today it answers `/health` (the process is up) and `/ready` (Postgres answers and its migrations match this
code); the gateway, runtime and management API mount here as they land.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from flux import dashboard, db, migrate
from flux.api import resources as api
from flux.config import Settings, load_settings
from flux.data import CatalogCache, Limits
from flux.db import as_flux_error, create_pool
from flux.errors import FluxError, InternalError, InvalidConfig
from flux.gateway import openapi
from flux.gateway.auth import Authenticator
from flux.gateway.handler import Gateway
from flux.gateway.ratelimit import RateLimiter
from flux.gateway.routes import RouteCache
from flux.maintenance import MaintenanceLoop
from flux.runtime import Runtime, project_cache
from flux.runtime.fetch import FetchPolicy
from flux.runtime.functions import DeployedFunctions
from flux.runtime.secrets import SecretCache
from flux.trace.inflight import InFlight
from flux.trace.writer import RecordWriter

WsgiApp = falcon.App[falcon.Request, falcon.Response]
log = logging.getLogger("flux.app")


class Health:
    """Liveness: answers as long as the process can serve HTTP."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class OpenApi:
    """The OpenAPI document of `/db/query` and `/db/explain`."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = openapi.document()


class Ready:
    """Readiness: the database answers, has exactly the migrations this code ships, and (with a gateway)
    the route table loads."""

    def __init__(
        self, pool: Any, expected: dict[tuple[str, str], str], routes: RouteCache | None = None
    ) -> None:
        self.pool = pool
        self.expected = expected
        self.routes = routes

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            with self.pool.connection(timeout=2) as conn:
                applied = migrate.applied_checksums(conn)
                if self.routes is not None and not self._behind(applied):
                    self.routes.get(conn)
        except Exception as exc:
            error = as_flux_error(exc)
            if isinstance(error, InternalError):
                log.exception("readiness check failed")
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "code": error.code, "database": _public_message(error)}
            return
        behind = self._behind(applied)
        if behind:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "migrations_pending": behind}
            return
        resp.media = {"status": "ready"}

    def _behind(self, applied: dict[tuple[str, str], str]) -> list[str]:
        return sorted(
            f"{kind}:{version}"
            for (kind, version), checksum in self.expected.items()
            if applied.get((kind, version)) != checksum
        )


def _handle_flux_error(req: falcon.Request, resp: falcon.Response, error: FluxError, params: Any) -> None:
    resp.status = falcon.code_to_http_status(error.http_status)
    resp.media = error.to_dict(req.context.get("request_id"))


UNEXPECTED = "unexpected error; see the server log"


def _public_message(error: FluxError) -> str:
    """What a client may see: an FX900's text can hold internals, so it only points at the server log."""
    return UNEXPECTED if isinstance(error, InternalError) else error.message


def _handle_unexpected(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
    if isinstance(error, falcon.HTTPError):
        raise error
    log.exception("unexpected error in %s %s", req.method, req.path)
    _handle_flux_error(req, resp, InternalError(UNEXPECTED), params)


def create_app(settings: Settings, pool: Any, gateway: Gateway | None = None) -> WsgiApp:
    """Build the WSGI app for one worker process around its own connection pool; with a `gateway`, every
    other path goes to the project's routes (and /db/query)."""
    app = falcon.App()
    app.add_route("/health", Health())
    expected: dict[tuple[str, str], str] = {
        (m.kind, m.version): m.checksum for m in migrate.all_migrations(settings.project_migrations)
    }
    app.add_route("/ready", Ready(pool, expected, gateway.routes if gateway else None))
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(FluxError, _handle_flux_error)
    api.register(app, pool, settings.project_dir, gateway, max_deploy_bytes=settings.max_deploy_bytes)
    if settings.dashboard_listen_port:  # its old addresses here lead to its own port
        dashboard.redirect_to_port(app, settings.dashboard_listen_port)
    if gateway is not None:
        app.add_route("/db/openapi.json", OpenApi())
        app.add_sink(gateway, prefix="/")
    return app


def create_dashboard_app(settings: Settings, pool: Any, gateway: Gateway | None = None) -> WsgiApp:
    """The dashboard's own app, served on its own port so that it is an origin of its own: a page the project
    serves (a function may answer HTML) cannot read it. Nothing else answers there."""
    app = falcon.App()
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(FluxError, _handle_flux_error)
    # an open live feed holds a sync worker: one worker fewer than there are may be held so
    dashboard.register(app, pool, settings.project_dir, gateway, live_streams=settings.workers - 1)
    return app


def create_gateway(settings: Settings, dsn: str, inflight: InFlight | None = None) -> Gateway:
    """One worker's gateway: request connections as flux_authenticator, and caches that follow NOTIFY."""
    request_dsn = db.request_dsn(dsn)
    # A worker serves `threads` requests at a time and writes records from one thread; two more to spare.
    pool = create_pool(request_dsn, max_size=settings.threads + 3, name="flux-requests", autocommit=True)
    pool.open(wait=False)
    gateway = Gateway(
        pool=pool,
        executor=Runtime(project_cache(settings.project_dir)),
        functions=DeployedFunctions(),
        auth=Authenticator(settings),
        routes=RouteCache(),
        catalogs=CatalogCache(),
        limiter=RateLimiter(),
        records=RecordWriter(pool),
        secrets=SecretCache(settings.project_dir),
        fetch_policy=FetchPolicy(allow=settings.fetch_allow),
        data_limits=Limits(
            max_answer_rows=settings.max_answer_rows, max_answer_bytes=settings.max_answer_bytes
        ),
        inflight=inflight,
    )
    gateway.listen(request_dsn)
    return gateway


def create_wsgi(
    settings: Settings | None = None, dsn: str | None = None, inflight: InFlight | None = None
) -> Any:
    """Gunicorn entry point (`gunicorn 'flux.app:create_wsgi()'`): settings from the environment. The
    project's routes and the management API answer on its port, the dashboard on its own."""
    settings = settings or load_settings()
    dsn = dsn or settings.database_url
    if not dsn:
        raise InvalidConfig(
            "DATABASE_URL is not set",
            hint="set DATABASE_URL, or start with `flux server` to use the embedded Postgres",
        )
    pool = create_pool(dsn, max_size=2)
    pool.open(wait=False)
    MaintenanceLoop(pool).start()
    gateway = create_gateway(settings, dsn, inflight)
    project = create_app(settings, pool, gateway)
    if not settings.dashboard_listen_port:
        return project
    pages = create_dashboard_app(settings, pool, gateway)
    return dashboard.ByPort(project, pages, settings.dashboard_listen_port)
