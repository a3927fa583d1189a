"""The management API's JSON endpoints under `/flux/api/`, for the CLI and a dashboard. Every call needs an
admin key (`authorization: Bearer flux_admin_…`) and runs on the worker's admin connections; errors answer
`{code, message, hint}` like the rest of Flux. Lists take `limit` (1-500, default 100) and a cursor
(`after`, or `before` for versions) and answer `{items, next}`.

The OpenAPI document is served at `/flux/api/openapi.json` (flux/api/openapi.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import falcon

from flux import db, jsontext, replay
from flux.api import deploy, keys, secrets
from flux.api.admin import check_admin_key
from flux.api.openapi import document
from flux.errors import BodyTooDeep, InvalidRequest, MalformedBody, PayloadTooLarge, UnsupportedMediaType
from flux.gateway.handler import WithBuiltins
from flux.queue import cron, jobs
from flux.replay.recent import GateOptions
from flux.runtime import project_cache
from flux.runtime.secrets import SealedSecrets, load_key
from flux.trace import state, tree, why

Json = Any
MAX_LIMIT = 500
MAX_BODY_BYTES = 65_536
MAX_JOBS_BYTES = 16 * 1024 * 1024  # a batch of jobs (each payload is at most 1 MiB)
MAX_DEPLOY_BYTES = 256 * 1024 * 1024  # base64 code (a Python component is ~25 MB); `max_deploy_bytes`
# A bundle's bulk is a few long strings (code, SQL): a body of this many JSON items or more is not one, and
# parsed it would take some 60 bytes of memory per item (a 32 MB list of numbers took 500 MB).
MAX_DEPLOY_ITEMS = 1_000_000
# The deploy gate's replays on a server stop this long after the request came in: gunicorn kills a worker
# silent for 30 s (its default timeout), which the caller would see as a 500, and the CLI waits 60 s.
SERVER_GATE_BUDGET_S = 20.0


def register(
    app: falcon.App,  # type: ignore[type-arg]
    pool: Any,
    project_dir: Path,
    gateway: Any = None,
    max_deploy_bytes: int = MAX_DEPLOY_BYTES,
) -> None:
    """Mount the management API on `app`, using `pool` (the worker's admin connections) and, to invoke
    functions, the worker's `gateway`; deployment uploads over `max_deploy_bytes` are refused (413)."""
    api = _Api(pool, project_dir, gateway, max_deploy_bytes)
    app.add_route("/flux/api/openapi.json", _OpenApi())
    for path, suffix in (
        ("/flux/api/functions", "functions"), ("/flux/api/functions/{name}/invoke", "invoke"),
        ("/flux/api/routes", "routes"),
        ("/flux/api/deployments", "deployments"), ("/flux/api/artifacts/missing", "missing"),
        ("/flux/api/deployments/{version:int}/activate", "activate"),
        ("/flux/api/tenants", "tenants"), ("/flux/api/keys", "keys"), ("/flux/api/keys/{key}", "key"),
        ("/flux/api/secrets", "secrets"), ("/flux/api/secrets/{name}", "secret"),
        ("/flux/api/jobs", "jobs"), ("/flux/api/jobs/stats", "stats"), ("/flux/api/jobs/{job_id:int}", "job"),
        ("/flux/api/jobs/{job_id:int}/retry", "retry"), ("/flux/api/jobs/{job_id:int}/cancel", "cancel"),
        ("/flux/api/cron", "cron"), ("/flux/api/cron/{name}", "schedule"),
        ("/flux/api/requests", "requests"), ("/flux/api/requests/{request_id}", "request"),
        ("/flux/api/requests/followers", "followers"),
        ("/flux/api/requests/followers/{follower:int}", "follower"),
        ("/flux/api/requests/{request_id}/why", "why"),
        ("/flux/api/requests/{request_id}/replay", "replay"),
        ("/flux/api/state/{table}/history", "history"), ("/flux/api/state/{table}/blame", "blame"),
    ):  # fmt: skip
        app.add_route(path, api, suffix=suffix)


class _OpenApi:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _answer(resp, document())


def _admin_key_first(
    req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
) -> None:
    """Every management call checks the caller's admin key before anything else, its body above all: a
    caller without a live key is refused without a byte of the body read (a malformed header without even a
    query)."""
    with resource.pool.connection() as conn:
        conn.autocommit = True
        req.context.admin_key_id = check_admin_key(conn, req.get_header("authorization"))


@falcon.before(_admin_key_first)
class _Api:
    def __init__(self, pool: Any, project_dir: Path, gateway: Any, max_deploy_bytes: int) -> None:
        self.pool = pool
        self.project_dir = project_dir
        self.gateway = gateway
        self.max_deploy_bytes = max_deploy_bytes

    def _conn(self, req: falcon.Request) -> _Checked:
        """An admin connection for a caller whose key `_admin_key_first` checked (use it in a `with`)."""
        return _Checked(self.pool, req.context.admin_key_id)

    # -- functions and routes ---------------------------------------------------------------------------

    def on_get_functions(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._conn(req) as conn:
            items = db.fetch_dicts(
                conn,
                "SELECT f.name, f.runtime, f.language, f.sha256, f.limits, d.id AS version"
                " FROM flux.deployment_functions f JOIN flux.deployments d ON d.id = f.deployment_id"
                " WHERE d.active ORDER BY f.name",
            )
        _answer(resp, {"items": items, "next": None})

    def on_post_invoke(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        body = _body(req, {"data": object, "role": str})
        role = body.get("role", "service")
        if role not in keys.ROLES:
            raise InvalidRequest(f"role {role!r} is not one of {', '.join(keys.ROLES)}", hint="e.g. service")
        if self.gateway is None:
            raise InvalidRequest("this server runs no functions", hint="use flux server or flux dev")
        outcome = self.gateway.invoke_function(name, body.get("data"), role, req.context.admin_key_id)
        answer = outcome.response
        _answer(resp, {"request_id": outcome.request_id, "status": answer.status, "headers": answer.headers,
                       "body": answer.body})  # fmt: skip

    def on_get_routes(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._conn(req) as conn:
            items = db.fetch_dicts(
                conn,
                "SELECT id, method, path, function, auth, rate_per_s, burst, cors_origins AS cors,"
                " max_body_bytes FROM flux.routes ORDER BY id",
            )
        _answer(resp, {"items": items, "next": None})

    # -- deployments ------------------------------------------------------------------------------------

    def on_get_deployments(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit, before = _limit(req), _int_param(req, "before")
        with self._conn(req) as conn:
            items = deploy.list_deployments(conn, limit + 1, before)
        _page(resp, items, limit, "version")

    def on_post_deployments(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Deploy a bundle `flux deploy` built and uploaded (code only for artifacts the server lacks); with
        `gate`, this server runs the deploy gate first (a refusal is 409 FX515, its verdict in `details`)."""
        started = time.monotonic()
        fields = {"project": str, "git_commit": str, "routes": list, "functions": list, "migrations": list,
                  "cron": list, "gate": dict}  # fmt: skip
        body = _body(req, fields, required=("functions",), max_bytes=self.max_deploy_bytes,
                     max_items=MAX_DEPLOY_ITEMS)  # fmt: skip
        with self._conn(req) as conn:
            options = GateOptions.from_body(body["gate"]) if "gate" in body else None
            bundle = deploy.bundle_from_json(conn, body)
            if options is not None and self.gateway is None:
                raise InvalidRequest("this server runs no functions, so no gate", hint="use flux server")
            as_of = options is not None and options.mode == "as-of"
            # as-of runs the functions' SQL on a request connection, as the gateway does
            runner = self.gateway.pool.connection() if as_of else contextlib.nullcontext()
            with runner as runs_on:
                gate = self._gate(conn, options, runs_on, started) if options is not None else None
                deployment = deploy.deploy_bundle(
                    conn, bundle, compile_into=project_cache(self.project_dir), gate=gate
                )
        status = falcon.HTTP_201 if deployment.created else falcon.HTTP_200
        _answer(resp, {"version": deployment.id, "created": deployment.created,
                       "migrations": [m.label for m in deployment.migrations],
                       "gate": deployment.gate}, status)  # fmt: skip

    def _gate(self, conn: Any, options: GateOptions, runs_on: Any, started: float) -> deploy.Gate:
        """The deploy gate on this worker's runtime, catalog, secrets and fetch policy."""
        gateway = self.gateway
        how = replay.Replay(
            WithBuiltins(gateway.executor), replay.built_code({}), gateway.catalogs.get(conn),
            mode=options.mode, secrets=SealedSecrets(conn, lambda: load_key(self.project_dir)),
            fetch_policy=gateway.fetch_policy,
        )  # fmt: skip
        deadline = started + SERVER_GATE_BUDGET_S
        return deploy.Gate(how, options.window, options.accept, runs_on, deadline=deadline)

    def on_post_missing(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = _body(req, {"sha256": list}, required=("sha256",))
        shas = body["sha256"]
        if not all(isinstance(sha, str) for sha in shas) or len(shas) > 10_000:
            raise InvalidRequest("sha256 is a list of strings", hint="the sha256 of each built function")
        with self._conn(req) as conn:
            _answer(resp, {"missing": deploy.missing_artifacts(conn, shas)})

    def on_post_activate(self, req: falcon.Request, resp: falcon.Response, version: int) -> None:
        with self._conn(req) as conn:
            deploy.rollback_in(conn, version)
        _answer(resp, {"version": version, "active": True})

    # -- tenants and keys -------------------------------------------------------------------------------

    def on_get_tenants(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = _limit(req)
        with self._conn(req) as conn:
            items = keys.list_tenants(conn, limit + 1, req.get_param("after"))
        _page(resp, items, limit, "name")

    def on_post_tenants(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = _body(req, {"name": str, "rate_per_s": (int, Decimal), "burst": int}, required=("name",))
        try:
            rate = float(body["rate_per_s"]) if "rate_per_s" in body else None
        except OverflowError:
            raise InvalidRequest("rate_per_s is too large", hint="e.g. rate_per_s 10 with burst 20") from None
        with self._conn(req) as conn:
            tenant_id = keys.create_tenant(conn, body["name"], rate, body.get("burst"))
        _answer(resp, {"id": tenant_id, "name": body["name"]}, falcon.HTTP_201)

    def on_get_keys(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = _limit(req)
        with self._conn(req) as conn:
            items = keys.list_keys(conn, limit + 1, _int_param(req, "after"))
        _page(resp, items, limit, "id")

    def on_post_keys(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = _body(req, {"role": str, "tenant": str, "name": str})
        with self._conn(req) as conn:
            created = keys.create_key(conn, body.get("role", "user"), body.get("tenant"), body.get("name"))
        _answer(resp, {"id": created.id, "key": created.key, "prefix": created.prefix, "role": created.role,
                       "tenant": created.tenant}, falcon.HTTP_201)  # fmt: skip

    def on_delete_key(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        with self._conn(req) as conn:
            _answer(resp, {"revoked": keys.revoke_key(conn, key)})

    # -- secrets ----------------------------------------------------------------------------------------

    def on_get_secrets(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._conn(req) as conn:
            rows = secrets.list_secrets(conn)
        _answer(resp, {"items": [{"name": name, "updated_at": at} for name, at in rows], "next": None})

    def on_put_secret(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        body = _body(req, {"value": str}, required=("value",))
        secrets.check_name(name)
        with self._conn(req) as conn:
            secrets.set_secret(conn, load_key(self.project_dir), name, body["value"])
        resp.status = falcon.HTTP_204

    def on_delete_secret(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        with self._conn(req) as conn:
            secrets.remove_secret(conn, name)
        resp.status = falcon.HTTP_204

    # -- the queue --------------------------------------------------------------------------------------

    def on_post_jobs(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Push jobs (run as the service role); a taken idempotency key answers with its job."""
        body = _body(req, {"jobs": list}, required=("jobs",), max_bytes=MAX_JOBS_BYTES)
        with self._conn(req) as conn:
            _answer(resp, {"items": jobs.push(conn, body["jobs"])}, falcon.HTTP_201)

    def on_get_jobs(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = _limit(req)
        with self._conn(req) as conn:
            items = jobs.list_jobs(
                conn, status=req.get_param("status"), queue=req.get_param("queue"),
                function=req.get_param("function"), limit=limit + 1, before=_int_param(req, "before"),
            )  # fmt: skip
        _page(resp, items, limit, "id")

    def on_get_stats(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._conn(req) as conn:
            _answer(resp, {"items": jobs.stats(conn), "next": None})

    def on_get_job(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        with self._conn(req) as conn:
            _answer(resp, jobs.get_job(conn, job_id))

    def on_post_retry(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        with self._conn(req) as conn:
            _answer(resp, jobs.retry(conn, job_id))

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        with self._conn(req) as conn:
            _answer(resp, jobs.cancel(conn, job_id))

    def on_get_cron(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._conn(req) as conn:
            _answer(resp, {"items": cron.list_schedules(conn), "next": None})

    def on_put_schedule(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        fields = {"schedule": str, "function": str, "timezone": str, "payload": object, "queue": str,
                  "enabled": object}  # fmt: skip
        body = _body(req, fields, required=("schedule", "function"))
        schedule = cron.parse_schedule({"name": name, **body}, f"cron {name!r}")
        with self._conn(req) as conn:
            cron.save(conn, schedule)
            _answer(resp, cron.get_schedule(conn, name))

    def on_delete_schedule(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        with self._conn(req) as conn:
            cron.delete(conn, name)
        resp.status = falcon.HTTP_204

    # -- what was recorded (flux trace, why, state) ---------------------------------------------------------

    def on_get_requests(self, req: falcon.Request, resp: falcon.Response) -> None:
        slow_ms = _number_param(req, "slow_ms")
        with self._conn(req) as conn:
            items = tree.list_requests(
                conn, route=req.get_param("route"), function=req.get_param("function"),
                status=_int_param(req, "status"), kind=req.get_param("kind"),
                errors=req.get_param_as_bool("errors") or False, since=_moment(req, "since"),
                until=_moment(req, "until"), slow_ms=slow_ms, limit=_limit(req),
                replayable=req.get_param_as_bool("replayable") or False, replay_of=req.get_param("replay_of"),
            )  # fmt: skip
        _answer(resp, {"items": items, "next": None})

    def on_post_followers(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Follow new requests (`flux tail` through the API): their ids wait in an inbox between calls."""
        with self._conn(req) as conn:
            follower = tree.start_following(conn, inbox=True)
        _answer(resp, {"id": follower, "expires_in_s": tree.FOLLOWER_TTL_S}, falcon.HTTP_201)

    def on_get_follower(self, req: falcon.Request, resp: falcon.Response, follower: int) -> None:
        with self._conn(req) as conn:
            items = tree.take_followed(
                conn, follower, route=req.get_param("route"), function=req.get_param("function"),
                status=_int_param(req, "status"), errors=req.get_param_as_bool("errors") or False,
                slow_ms=_number_param(req, "slow_ms"),
            )  # fmt: skip
        _answer(resp, {"items": items, "next": None})

    def on_delete_follower(self, req: falcon.Request, resp: falcon.Response, follower: int) -> None:
        with self._conn(req) as conn:
            tree.stop_following(conn, follower)
        resp.status = falcon.HTTP_204

    def on_get_request(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        """A request's whole record (its id, or a prefix only it has)."""
        with self._conn(req) as conn:
            _answer(resp, tree.trace_record(tree.find_trace(conn, request_id)))

    def on_get_why(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        with self._conn(req) as conn:
            _answer(resp, why.why_record(why.explain_request(conn, tree.find_trace(conn, request_id))))

    def on_post_replay(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        """Replay a request on this server (`flux incident replay` through FLUX_URL): its result."""
        with self._conn(req) as conn:
            body = _body(
                req, {"db": str, "code": str, "version": int, "live_fetch": object, "record": object}
            )
            for flag in ("live_fetch", "record"):
                if not isinstance(body.get(flag, False), bool):
                    raise InvalidRequest(f"field {flag!r} is true or false", hint=f'e.g. "{flag}": true')
            mode, code, version = body.get("db", "recorded"), body.get("code", "active"), body.get("version")
            result = replay_served(
                conn,
                self.gateway,
                self.project_dir,
                request_id,
                mode,
                code,
                version,
                live_fetch=body.get("live_fetch", False),
                record=body.get("record", True),
            )
            _answer(resp, result.to_json())

    def on_get_history(self, req: falcon.Request, resp: falcon.Response, table: str) -> None:
        key = req.get_param("key", required=True)
        with self._conn(req) as conn:
            _answer(resp, {"items": state.history(conn, table, key), "next": None})

    def on_get_blame(self, req: falcon.Request, resp: falcon.Response, table: str) -> None:
        """Who last set each column of row `key`; without a key, each row's last change."""
        key = req.get_param("key")
        with self._conn(req) as conn:
            if key is None:
                items = state.table_blame(conn, table, _limit(req))
            else:
                items = state.blame(conn, table, key)
        _answer(resp, {"items": items, "next": None})


class _Checked:
    """`with _Checked(pool, admin_key_id) as conn:` an autocommit admin connection, for a checked caller."""

    def __init__(self, pool: Any, admin_key_id: int) -> None:
        self._checkout = pool.connection()
        self.admin_key_id = admin_key_id

    def __enter__(self) -> Any:
        conn = self._checkout.__enter__()
        try:
            conn.autocommit = True
        except BaseException as exc:
            self._checkout.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    def __exit__(self, *exc_info: Any) -> Any:
        return self._checkout.__exit__(*exc_info)


def _answer(resp: falcon.Response, value: Json, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.data = jsontext.dumps(value)
    resp.content_type = falcon.MEDIA_JSON


def _page(resp: falcon.Response, items: list[dict[str, Json]], limit: int, cursor: str) -> None:
    """One page of `items` (fetched with one extra, to know whether there is a next page)."""
    more = len(items) > limit
    items = items[:limit]
    _answer(resp, {"items": items, "next": items[-1][cursor] if more else None})


def _limit(req: falcon.Request) -> int:
    limit = _int_param(req, "limit")
    if limit is None:
        return 100
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(
            f"limit {limit} is outside 1-{MAX_LIMIT}", hint="ask for fewer, and follow `next`"
        )
    return limit


def _int_param(req: falcon.Request, name: str) -> int | None:
    text = req.get_param(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -(2**63) <= value < 2**63:
        raise InvalidRequest(f"{name} {text!r} is not a whole number", hint=f"e.g. {name}=10")
    return value


def _moment(req: falcon.Request, name: str) -> timedelta | datetime | None:
    """`{name}_s` seconds ago, or the moment `{name}` (ISO 8601, with its offset)."""
    seconds, text = _int_param(req, f"{name}_s"), req.get_param(name)
    if seconds is not None:
        if not 0 <= seconds <= 100 * 365 * 86_400:
            raise InvalidRequest(f"{name}_s {seconds} is outside 0 to a century", hint=f"e.g. {name}_s=3600")
        return timedelta(seconds=seconds)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRequest(
            f"{name} {text!r} is not a moment with its offset", hint=f"e.g. {name}=2026-01-31T09:00:00+00:00"
        )
    return moment


def _number_param(req: falcon.Request, name: str) -> float | None:
    text = req.get_param(name)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"{name} {text!r} is not a number", hint=f"e.g. {name}=2.5") from None


def _is_text(value: Json) -> bool:
    """Whether every string in `value` is Unicode text (JSON may escape lone surrogates, which are not)."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        return False
    return True


def _body(
    req: falcon.Request,
    fields: dict[str, Any],
    required: tuple[str, ...] = (),
    max_bytes: int = MAX_BODY_BYTES,
    max_items: int | None = None,
) -> dict[str, Json]:
    """The JSON object in the body, with only `fields` (each of its type) and every `required` one; a body
    over `max_bytes` (or with `max_items` JSON items or more) is refused, a declared one before it is read."""
    media = (req.content_type or "").split(";")[0].strip().lower()
    length = req.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"the body is {length} bytes; this call takes at most {max_bytes}",
                              hint="send less (a deployment's bound is max_deploy_bytes)")  # fmt: skip
    raw = req.bounded_stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body is over {max_bytes} bytes", hint="send less")
    if max_items is not None and raw.count(b",") >= max_items:
        raise PayloadTooLarge(f"the body holds {max_items} JSON items or more",
                              hint="a deployment is a few functions, routes and migrations")  # fmt: skip
    if raw and media != "application/json":
        raise UnsupportedMediaType(f"the body is {media or 'untyped'}, not JSON",
                                   hint="send content-type: application/json")  # fmt: skip
    try:
        body = jsontext.loads_bounded(raw) if raw else {}
    except jsontext.TooDeep as exc:
        raise BodyTooDeep(str(exc), hint="send JSON that nests less deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}", hint="check the JSON you send") from None
    if not _is_text(body):
        raise MalformedBody(
            "the body holds text that is not Unicode (a lone surrogate)", hint="send UTF-8 text"
        )
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", hint=f"fields: {', '.join(fields)}")
    for name, value in body.items():
        kind = fields.get(name)
        if kind is None:
            raise InvalidRequest(f"unknown field {name!r}", hint=f"fields: {', '.join(fields)}")
        if (
            kind is not object
            and value is not None
            and (not isinstance(value, kind) or isinstance(value, bool))
        ):
            raise InvalidRequest(f"field {name!r} has the wrong type", hint=f"fields: {', '.join(fields)}")
    missing = [name for name in required if body.get(name) is None]
    if missing:
        raise InvalidRequest(f"field {missing[0]!r} is required", hint=f"fields: {', '.join(fields)}")
    return {name: value for name, value in body.items() if value is not None}


def replay_served(
    conn: Any, gateway: Any, project_dir: Path, request_id: str, mode: str, code: str, version: int | None,
    *, live_fetch: bool = False, record: bool = True,
) -> replay.ReplayResult:  # fmt: skip
    """Replay `request_id` on this server's `gateway` (its runtime, catalogs, fetch policy and request
    connections), as the management API and the dashboard do; `conn` is the owner's."""
    replay.check_options(mode, code, version)
    if gateway is None:
        raise InvalidRequest("this server runs no functions", hint="use flux server or flux dev")
    how = replay.Replay(
        WithBuiltins(gateway.executor), replay.stored_code(conn, code, version), gateway.catalogs.get(conn),
        mode=mode, live_fetch=live_fetch, record=record,  # type: ignore[arg-type]
        secrets=SealedSecrets(conn, lambda: load_key(project_dir)), fetch_policy=gateway.fetch_policy,
    )  # fmt: skip
    # live and as-of run the function's SQL on a request connection, as the gateway does
    runner = gateway.pool.connection() if mode != "recorded" else contextlib.nullcontext()
    with runner as runs_on:
        return replay.replay_request(conn, request_id, how, runs_on).result
