"""The gateway's Falcon sink: every request that is not /health or /ready comes here, gets its request id,
passes route, CORS, body, auth and rate-limit checks (each decision kept in the `gateway` span), and runs its
function as one recorded transaction. A request refused before its function runs is recorded too, and so is
one that fails where nothing else records it (no connection to be had); a request whose worker dies is
recorded by the master, from the row the gateway keeps in `inflight` while it serves it (FX815).

`POST /db/query` and `POST /db/explain` are built in: the body is a JSON query, run (or explained) under the
caller's role and claims like any `ctx.db.query`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import falcon

from flux import db, jsontext
from flux.data import CatalogCache, Limits
from flux.data.explain import explain
from flux.data.request import require_query_object
from flux.errors import (
    BodyTooDeep,
    FluxError,
    InternalError,
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
)
from flux.gateway import cors, ratelimit
from flux.gateway.auth import NOTIFY_CHANNEL as CALLERS_CHANNEL
from flux.gateway.auth import Authenticator
from flux.gateway.ids import continue_trace, new_request_id
from flux.gateway.routes import Route, RouteCache
from flux.listen import Listener
from flux.runtime.fetch import FetchPolicy
from flux.runtime.functions import NOTIFY_CHANNEL as DEPLOYMENTS_CHANNEL
from flux.runtime.functions import DeployedFunctions
from flux.runtime.host import Host
from flux.runtime.invoke import Caller, Executor, Function, invoke
from flux.runtime.response import Response, error_response
from flux.runtime.secrets import SecretCache
from flux.trace.inflight import InFlight
from flux.trace.recorder import Recorder, error_record
from flux.trace.writer import RecordWriter

Json = Any
_HIDDEN_HEADERS = {"authorization", "cookie", "x-api-key", "proxy-authorization"}
DB_QUERY = Route(id=0, method="POST", path="/db/query", function="db.query", auth="any")
DB_EXPLAIN = Route(id=0, method="POST", path="/db/explain", function="db.explain", auth="any")
_BUILTIN_ROUTES = {route.path: route for route in (DB_QUERY, DB_EXPLAIN)}
BUILTINS = {
    route.function: Function(route.function, "builtin", b"", "builtin") for route in _BUILTIN_ROUTES.values()
}


@dataclasses.dataclass
class Gateway:
    pool: Any  # request connections (flux_authenticator, autocommit)
    executor: Executor
    functions: DeployedFunctions
    auth: Authenticator
    routes: RouteCache
    catalogs: CatalogCache
    limiter: ratelimit.RateLimiter
    records: RecordWriter  # writes the records of requests that changed no data, off the request path
    secrets: SecretCache
    fetch_policy: FetchPolicy = dataclasses.field(default_factory=FetchPolicy)
    data_limits: Limits = dataclasses.field(default_factory=Limits)  # max_answer_rows and _bytes
    # the requests this worker serves now, which the master records as lost if the worker dies (gunicorn only)
    inflight: InFlight | None = None

    def __post_init__(self) -> None:
        self._executor = WithBuiltins(self.executor)
        self._connections = db.HeldConnections(self.pool)
        self._listener = Listener()
        for cache in (self.routes, self.catalogs, self.functions.active, self.secrets):
            self._listener.follow(cache)
        self._listener.on(CALLERS_CHANNEL, self.auth.keys.clear, self.limiter.tenants.clear)
        # after the cache dropped the old version (`follow`); also once when the listener connects
        self._listener.on(
            DEPLOYMENTS_CHANNEL, lambda: self.functions.prepare_active(self.pool, self.executor)
        )

    def listen(self, dsn: str) -> None:
        """Follow changes to routes, the catalog, deployments, secrets, keys and tenants (NOTIFY)."""
        self._listener.start(dsn)

    def __call__(self, req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
        try:
            self._serve(req, resp)
        except Exception as exc:  # no connection, no catalog, no record written: recorded all the same
            error = db.as_flux_error(exc)
            self._record_failure(req, error)
            if self.inflight is not None:
                self.inflight.end()
            if isinstance(error, InternalError) or error is exc:
                raise
            raise error from exc  # a driver's or the pool's error, answered with its FX code (FX801)
        # Not on SystemExit: that is gunicorn's timeout ending the worker, and the master records the request.
        if self.inflight is not None:
            self.inflight.end()

    def _serve(self, req: falcon.Request, resp: falcon.Response) -> None:
        request_id = req.context["request_id"] = req.env["flux.request_id"] = new_request_id()  # for logs too
        headers = _headers(req.env)
        trace = continue_trace(headers.get("traceparent"), request_id)
        resp.set_header("x-request-id", request_id)
        recorder = Recorder(request_id)
        started_us, clock = time.time_ns() // 1000, time.perf_counter_ns()
        method, path, client = req.method, req.path, req.remote_addr
        span = recorder.start("gateway", f"{method} {path}", input={
            "method": method, "path": path, "query": req.query_string, "client": client,
            "origin": headers.get("origin"),
        })  # fmt: skip
        decisions: dict[str, Json] = {}
        record: dict[str, Json] = {"trace_id": trace.trace_id, "method": method, "path": path}
        req.context["flux.unrecorded"] = (recorder, span, record, started_us, clock)
        if self.inflight is not None:
            self.inflight.begin({"id": request_id, "kind": "http", "started_us": started_us, **record})
        with self._connections.connection() as conn:
            try:
                if _is_preflight(req, headers):
                    routes = self.routes.get(conn).routes_for(
                        req.path, headers["access-control-request-method"]
                    )
                    resp.set_headers(
                        cors.preflight(
                            routes, headers["origin"], headers.get("access-control-request-headers")
                        )
                    )
                    resp.status = falcon.HTTP_204
                    recorder.finish(span, output={"preflight": True})
                    self._record(recorder, record | {"ok": True, "status": 204}, started_us, clock)
                    return
                route, params = self._route(conn, req)
                record["route_id"] = route.id or None
                req.env["flux.function"] = route.function  # for `flux dev`'s request lines
                decisions["route"] = {"id": route.id, "path": route.path, "function": route.function}
                resp.set_headers(cors.response_headers(route, headers.get("origin")))
                body = _body(req, route)
                caller = self.auth.authenticate(conn, route, headers)
                recorder.tenant_id = caller.tenant_id
                decisions["caller"] = {"role": caller.role, "tenant_id": caller.tenant_id}
                limits = self.limiter.limits(conn, route, caller, client or "")
                decision = ratelimit.take(conn, limits)
                if decision is not None:
                    decisions["rate_limit"] = decision.headers()
                    resp.set_headers(decision.headers())
                if route.id == 0:  # a built-in's body is a query: anything else is the client's mistake
                    require_query_object(body, f"{method} {route.path}")
                function = (
                    BUILTINS[route.function] if route.id == 0 else self.functions.get(conn, route.function)
                )
            except FluxError as refused:
                self._refuse(req, resp, refused, recorder, span, record, started_us, clock)
                return
            recorder.finish(span, output=decisions)
            if self.inflight is not None:  # what the record of a request lost in its function can say
                self.inflight.begin({
                    "id": request_id, "kind": "http", "started_us": started_us, "tenant_id": caller.tenant_id,
                    "function": function.name, "deployment_id": function.deployment_id,
                    "code_sha": function.sha256, **record,
                })  # fmt: skip
            request = {
                "method": method, "path": path, "params": params, "query": dict(req.params),
                "headers": {k: v for k, v in headers.items() if k not in _HIDDEN_HEADERS},
                "body": body, "user": dict(caller.claims) if caller.role != "anon" else None,
            }  # fmt: skip
            # A /db/query select is one read (two with a count): no transaction to open or commit.
            reads_only = route is DB_QUERY and isinstance(body, dict) and "select" in body
            outcome = self._run(conn, function, request, caller=caller, recorder=recorder, record=record,
                                traceparent=trace.traceparent(), started=(started_us, clock),
                                reads_only=reads_only)  # fmt: skip
        _respond(resp, outcome.response)

    def invoke_function(self, name: str, data: Json, role: str, admin_key_id: int) -> Any:
        """Run function `name` of the active version with `data` as its body, as `role`, for the management
        API (`flux invoke`); recorded like any request, its gateway span naming the admin key."""
        recorder = Recorder(new_request_id())
        path = f"/flux/api/functions/{name}/invoke"
        span = recorder.start("gateway", f"POST {path}", input={"function": name, "role": role})
        recorder.finish(span, output={"caller": {"admin_key": admin_key_id, "role": role}})
        request = {"method": "POST", "path": path, "params": {}, "query": {}, "headers": {}, "body": data,
                   "user": None}  # fmt: skip
        record: dict[str, Json] = {"method": "POST", "path": path}
        started = (time.time_ns() // 1000, time.perf_counter_ns())
        with self._connections.connection() as conn:
            if name not in self.functions.active.get(conn).functions:
                raise NotFound(f"no function {name!r} in the active version", hint="`flux deployments ls`")
            function = self.functions.get(conn, name)
            if self.inflight is not None:  # a worker killed while it runs: the master records it as lost
                self.inflight.begin({
                    "id": recorder.request_id, "kind": "http", "started_us": started[0], "function": name,
                    "deployment_id": function.deployment_id, "code_sha": function.sha256, **record,
                })  # fmt: skip
            try:
                outcome = self._run(conn, function, request, caller=Caller(role=role), recorder=recorder,
                                    record=record, started=started)  # fmt: skip
            except Exception:
                if self.inflight is not None:
                    self.inflight.end()
                raise
        # Not on SystemExit: that is gunicorn's timeout ending the worker, and the master records the request.
        if self.inflight is not None:
            self.inflight.end()
        return outcome

    def _run(self, conn: Any, function: Function, request: Json, **options: Any) -> Any:
        """One recorded run on this worker's runtime, catalog, secrets and record writer."""
        return invoke(
            conn, self._executor, function, request, catalog=self.catalogs.get(conn),
            fetch_policy=self.fetch_policy, records=self.records, secrets=self.secrets.get(conn),
            limits=self.data_limits, **options,
        )  # fmt: skip

    def close(self) -> None:
        """Write the records still queued; stop the listeners, the runtime's workers and the pool (a worker
        exiting needs none of this: its queued records are written at exit)."""
        self.records.close()
        self._listener.close()
        self._connections.close()
        close_executor = getattr(self.executor, "close", None)
        if close_executor is not None:
            close_executor()
        self.pool.close()

    def _route(self, conn: Any, req: falcon.Request) -> tuple[Route, dict[str, str]]:
        builtin = _BUILTIN_ROUTES.get(req.path)
        if builtin is not None:
            if req.method != "POST":
                message = f"{req.method} is not routed for {req.path}"
                raise MethodNotAllowed(message, details={"allow": ["POST"]}, hint="use POST")
            return builtin, {}
        return self.routes.get(conn).match(req.method, req.path)

    def _refuse(
        self, req: falcon.Request, resp: falcon.Response, refused: FluxError, recorder: Recorder,
        span: Any, record: dict[str, Json], started_us: int, clock: int,
    ) -> None:  # fmt: skip
        """Answer a request refused before its function ran, and record it with the gateway span's reason."""
        if span.duration_us is None:
            recorder.finish(span, error=refused)
        record |= {"ok": False, "status": refused.http_status, "error": error_record(refused)}
        self._record(recorder, record, started_us, clock)
        if isinstance(refused, RateLimited):
            resp.set_headers(refused.details["headers"])
        if isinstance(refused, MethodNotAllowed):
            resp.set_header("allow", ", ".join(refused.details["allow"]))
        _respond(resp, error_response(refused, recorder.request_id))

    def _record_failure(self, req: falcon.Request, error: FluxError) -> None:
        """Record a request that failed where nothing records it (every exception `_serve` lets out)."""
        unrecorded = req.context.get("flux.unrecorded")
        if unrecorded is None:
            return
        recorder, span, record, started_us, clock = unrecorded
        if span.duration_us is None:
            recorder.finish(span, error=error)
        record |= {"ok": False, "status": error.http_status, "error": error_record(error)}
        try:
            self._record(recorder, record, started_us, clock)
        except Exception:  # the writer is closed (the worker is stopping): the answer matters more
            return

    def _record(self, recorder: Recorder, record: dict[str, Json], started_us: int, clock: int) -> None:
        """Record a request the gateway answered alone (it changed no data: written off the request path)."""
        record |= {
            "kind": "http",
            "started_us": started_us,
            "duration_us": (time.perf_counter_ns() - clock) // 1000,
        }
        self.records.submit(recorder.record(record))


class WithBuiltins(Executor):
    """The runtime, plus the built-in endpoints, which run no code (so their record has no runtime span):
    `db.query` is one host call, recorded like any; `db.explain` is recorded as a `db:explain` span."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def execute(self, function: Function, request: Json, host: Host) -> Json:
        if function is BUILTINS["db.query"]:
            return host.call("db.query", request["body"])
        if function is BUILTINS["db.explain"]:
            with host.recorder.span("data", "db:explain", input=request["body"]) as span:
                explained = explain(host.conn, request["body"], host.catalog, host.role,  # type: ignore[arg-type]
                                    claims=request["user"], limits=host.limits)  # fmt: skip
                span.output = dataclasses.asdict(explained)
            return span.output
        return self.executor.execute(function, request, host)

    def prepare(self, function: Function) -> None:
        self.executor.prepare(function)

    def runs_apart(self, function: Function) -> bool:
        builtin = any(function is b for b in BUILTINS.values())
        return not builtin and self.executor.runs_apart(function)


def _headers(env: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers by lowercase name (what falcon's `headers_lower` gives, in one pass)."""
    headers = {
        name[5:].replace("_", "-").lower(): value for name, value in env.items() if name[:5] == "HTTP_"
    }
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if name in env:
            headers[name.replace("_", "-").lower()] = env[name]
    return headers


def _is_preflight(req: falcon.Request, headers: Mapping[str, str]) -> bool:
    return req.method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


def _body(req: falcon.Request, route: Route) -> Json:
    """The request's JSON body (None when empty), within the route's size limit. A chunked body has no
    content-length: gunicorn decodes its chunks and ends the stream after the last one
    (`wsgi.input_terminated`), so it is read up to one byte past the limit, like any other."""
    limit, length = route.max_body_bytes, req.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body is {length} bytes; this route takes {limit}", hint="send less")
    chunked = length is None and "chunked" in (req.get_header("transfer-encoding") or "").lower()
    raw = (req.stream if chunked else req.bounded_stream).read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the body is over {limit} bytes", hint="send less")
    if not raw:
        return None
    media = (req.content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"the body is {media or 'untyped'}, not JSON",
                                   hint="send content-type: application/json")  # fmt: skip
    try:
        return jsontext.loads_bounded(raw)
    except jsontext.TooDeep as exc:
        raise BodyTooDeep(str(exc), hint="send JSON that nests less deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}", hint="check the JSON you send") from None


def _respond(resp: falcon.Response, response: Response) -> None:
    resp.status = falcon.code_to_http_status(response.status)
    resp.set_headers(response.headers)
    media = ""
    for name, value in response.headers.items():
        if name.lower() == "content-type":
            media = value
            break
    if isinstance(response.body, str) and media and "json" not in media:
        resp.text = response.body  # the function chose its own content type
    elif response.body is not None or response.status != 204:
        resp.data = jsontext.dumps(response.body)
        resp.content_type = falcon.MEDIA_JSON
