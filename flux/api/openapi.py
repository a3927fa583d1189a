"""The OpenAPI document of the management API (`GET /flux/api/openapi.json`)."""

from __future__ import annotations

from typing import Any

from flux import __version__

_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "pattern": "^FX[0-9]{3}$"},
        "message": {"type": "string"},
        "hint": {"type": "string", "nullable": True},
        "details": {"nullable": True},
        "request_id": {"type": "string", "nullable": True},
    },
}
_TEXT = {"type": "string"}
_WHEN = {"type": "string", "format": "date-time"}
_MAYBE_WHEN = {"type": "string", "format": "date-time", "nullable": True}
_MAYBE_TEXT = {"type": "string", "nullable": True}
_MAYBE_NUMBER = {"type": "number", "nullable": True}
_MAYBE_INT = {"type": "integer", "nullable": True}


def _object(properties: dict[str, Any], required: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(properties if required is None else required),
            "properties": properties}  # fmt: skip


def _page(item: dict[str, Any], cursor: dict[str, Any]) -> dict[str, Any]:
    return _object({"items": {"type": "array", "items": item}, "next": {**cursor, "nullable": True}})


_FUNCTION = _object({"name": _TEXT, "runtime": _TEXT, "language": _TEXT, "sha256": _TEXT,
                     "limits": {"type": "object"}, "version": {"type": "integer"}})  # fmt: skip
_ROUTE = _object({
    "id": {"type": "integer"}, "method": _TEXT, "path": _TEXT, "function": _TEXT, "auth": _TEXT,
    "rate_per_s": _MAYBE_NUMBER, "burst": _MAYBE_INT, "cors": {"type": "array", "items": _TEXT},
    "max_body_bytes": {"type": "integer"},
})  # fmt: skip
_DEPLOYMENT = _object({
    "version": {"type": "integer"}, "active": {"type": "boolean"}, "created_at": _WHEN, "created_by": _TEXT,
    "git_commit": _MAYBE_TEXT, "functions": {"type": "object", "additionalProperties": _TEXT},
    "gate": {"type": "string", "enum": ["passed", "accepted", "refused"], "nullable": True},
})  # fmt: skip
_TENANT = _object({"id": _TEXT, "name": _TEXT, "rate_per_s": _MAYBE_NUMBER, "burst": _MAYBE_INT,
                   "created_at": _WHEN, "keys": {"type": "integer"}})  # fmt: skip
_KEY = _object({"id": {"type": "integer"}, "prefix": _TEXT, "name": _MAYBE_TEXT, "role": _TEXT,
                "tenant": _MAYBE_TEXT, "created_at": _WHEN, "revoked_at": _MAYBE_WHEN})  # fmt: skip
_SECRET = _object({"name": _TEXT, "updated_at": _WHEN})
_RATE = {"type": "number", "minimum": 1 / 86_400, "maximum": 1_000_000}  # flux/api/keys.py checks both
_NAME = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"\S"}
_NEW_TENANT = _object(
    {"name": _NAME, "rate_per_s": _RATE, "burst": {"type": "integer", "minimum": 1, "maximum": 1_000_000}},
    ("name",),
)
_ROLE = {"type": "string", "enum": ["anon", "user", "service"]}
_NEW_KEY = _object({"role": _ROLE, "tenant": _TEXT, "name": _NAME}, ())
_CREATED_KEY = _object({"id": {"type": "integer"}, "key": _TEXT, "prefix": _TEXT, "role": _TEXT,
                        "tenant": _MAYBE_TEXT})  # fmt: skip
_INVOKED = _object({"request_id": _TEXT, "status": {"type": "integer"}, "headers": {"type": "object"},
                    "body": {"nullable": True}})  # fmt: skip
_RUNTIME = {"type": "string", "enum": ["wasm", "component", "typescript", "javascript"]}
_SHAS = {"type": "array", "items": _TEXT}
_BUNDLE = _object({
    "project": _TEXT, "git_commit": _MAYBE_TEXT,
    "routes": {"type": "array", "items": {"type": "object"}},
    "functions": {"type": "array", "items": _object({
        "name": _TEXT, "runtime": _RUNTIME,
        "language": _TEXT, "sha256": _TEXT, "limits": {"type": "object"},
        "code": {"type": "string", "format": "byte", "nullable": True},
    }, ("name", "runtime", "sha256"))},
    "migrations": {"type": "array", "items": _object({"file": _TEXT, "sql": _TEXT})},
    "cron": {"type": "array", "items": {"type": "object"}},
    "gate": _object({
        "last": {"type": "integer", "minimum": 1, "maximum": 10_000},
        "since_s": {"type": "integer", "minimum": 1}, "db": {"type": "string", "enum": ["recorded", "as-of"]},
        "accept": {"type": "boolean"},
    }, ()),
}, ("functions",))  # fmt: skip
_DEPLOYED = _object({"version": {"type": "integer"}, "created": {"type": "boolean"},
                     "migrations": {"type": "array", "items": _TEXT},
                     "gate": {"type": "object", "nullable": True}})  # fmt: skip
_STATUS = {"type": "string", "enum": ["queued", "running", "failed", "done", "dead", "cancelled"]}
_JOB_FIELDS = {
    "id": {"type": "integer"}, "queue": _TEXT, "function": _TEXT, "status": _STATUS,
    "priority": {"type": "integer"}, "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
    "run_at": _WHEN, "created_at": _WHEN, "finished_at": _MAYBE_WHEN, "idempotency_key": _MAYBE_TEXT,
    "tenant_id": _MAYBE_TEXT, "role": _ROLE, "cron_name": _MAYBE_TEXT, "parent_request_id": _MAYBE_TEXT,
    "last_request_id": _MAYBE_TEXT, "last_error": {"type": "object", "nullable": True},
}  # fmt: skip
_JOB = _object(_JOB_FIELDS)
_RUN = _object({"attempt": {"type": "integer"}, "request_id": _MAYBE_TEXT, "worker": _TEXT,
                "ok": {"type": "boolean"}, "error": {"type": "object", "nullable": True},
                "finished_at": _WHEN})  # fmt: skip
_JOB_DETAIL = _object(
    {**_JOB_FIELDS, "payload": {"nullable": True}, "runs": {"type": "array", "items": _RUN}}
)
_NEW_JOB = _object({
    "function": _TEXT, "payload": {"nullable": True}, "run_at": _WHEN,
    "delay_ms": {"type": "integer", "minimum": 0},
    "priority": {"type": "integer"}, "queue": _TEXT, "idempotency_key": _TEXT,
    "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
}, ("function",))  # fmt: skip
_PUSHED_JOB = _object({"id": {"type": "integer"}, "created": {"type": "boolean"}})
_PUSHED = _object({"items": {"type": "array", "items": _PUSHED_JOB}})  # fmt: skip
_COUNT = {"type": "integer"}
_QUEUE_STATS = _object({"queue": _TEXT, "queued": _COUNT, "scheduled": _COUNT, "running": _COUNT,
                        "retrying": _COUNT, "dead": _COUNT, "done_last_hour": _COUNT,
                        "oldest_due_s": {"type": "number", "nullable": True}})  # fmt: skip
_SCHEDULE_FIELDS = {"schedule": _TEXT, "function": _TEXT, "timezone": _TEXT, "payload": {"nullable": True},
                    "queue": _TEXT, "enabled": {"type": "boolean"}}  # fmt: skip
_SCHEDULE = _object({**_SCHEDULE_FIELDS, "name": _TEXT, "next_run_at": _WHEN, "last_run_at": _MAYBE_WHEN,
                     "source": {"type": "string", "enum": ["project", "api"]}})  # fmt: skip
_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}


def _param(name: str, kind: str = "string", where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": {"type": kind}}


_JOB_ID = _param("job_id", "integer", "path")
_REQUEST_ID = {
    **_param("request_id", "string", "path"),
    "description": "a request id, or a prefix only it has",
}
_ROWS = _page({"type": "object"}, _TEXT)
_FOLLOWER = _param("follower", "integer", "path")
_FOLLOWING = _object({"id": {"type": "integer"}, "expires_in_s": {"type": "integer"}})
_RECORD = _object({"request": {"type": "object"}, "spans": {"type": "array", "items": {"type": "object"}},
                   "mutations": {"type": "array", "items": {"type": "object"}},
                   "jobs": {"type": "array", "items": {"type": "object"}},
                   "job": {"type": "object", "nullable": True}})  # fmt: skip
_WHY = _object({"record": _RECORD, "failed": {"type": "object", "nullable": True},
                "reads": {"type": "array", "items": {"type": "object"}},
                "earlier": {"type": "array", "items": {"type": "object"}}})  # fmt: skip
_TABLE = _param("table", "string", "path")
_KIND = {**_param("kind"), "schema": {"type": "string", "enum": ["http", "job", "cron", "replay"]}}
_CHANGE = _object({"path": _TEXT, "recorded": {"nullable": True}, "replayed": {"nullable": True}})
_DIVERGENCE = _object({
    "kind": {"type": "string", "enum": ["output", "status", "call", "span", "mutation", "error"]},
    "at": _TEXT, "recorded": {"nullable": True}, "replayed": {"nullable": True}, "message": _TEXT,
    "state": {"type": "boolean"}, "changes": {"type": "array", "items": _CHANGE},
})  # fmt: skip
_REPLAYED = _object({
    "request_id": _TEXT, "replay_id": _MAYBE_TEXT,
    "verdict": {"type": "string", "enum": ["same", "diverged", "drift", "error"]},
    "divergence": {**_DIVERGENCE, "nullable": True},
    "divergences": {"type": "array", "items": _DIVERGENCE},
    "error": {"type": "object", "nullable": True},
    "drift": {"type": "array", "items": {"type": "object"}},
    "not_rewound": {"type": "array", "items": _TEXT}, "undone": {"type": "integer"},
})  # fmt: skip
_REPLAY = _object({
    "db": {"type": "string", "enum": ["recorded", "live", "as-of"]},
    "code": {"type": "string", "enum": ["recorded", "active"]},
    "version": {"type": "integer"}, "live_fetch": {"type": "boolean"}, "record": {"type": "boolean"},
}, ())  # fmt: skip


def _call(
    summary: str,
    answer: dict[str, Any] | None,
    status: str = "200",
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    also: tuple[str, ...] = (),
    links: dict[str, tuple[str, str, dict[str, str]]] | None = None,
) -> dict[str, Any]:
    """One operation answering `answer` with `status` (and the `also` statuses), or an FX error. `links` name
    the calls its answer leads to, as (path, method, {parameter: expression}): what stateful clients
    (schemathesis) follow."""
    done: dict[str, Any] = {"description": summary}
    if answer is not None:
        done["content"] = {"application/json": {"schema": answer}}
    linked = {**done}
    if links:
        linked["links"] = {
            name: {"operationRef": "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method,
                   "parameters": parameters}
            for name, (path, method, parameters) in links.items()
        }  # fmt: skip
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"admin": []}],
        "parameters": params or [],
        "responses": {
            status: linked,
            **{code: done for code in also},
            "default": {"description": "refused: the FX code says why (docs/errors.md)",
                        "content": {"application/json": {"schema": _ERROR}}},
        },
    }  # fmt: skip
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Flux management API", "version": __version__},
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer",
                                                     "description": "an admin key, flux_admin_…"}}},
        "paths": {
            "/flux/api/functions": {"get": _call("The active version's functions", _page(_FUNCTION, _TEXT))},
            "/flux/api/functions/{name}/invoke": {"post": _call(
                "Run a function of the active version (recorded like any request)", _INVOKED,
                body=_object({"data": {}, "role": _ROLE}, ()),
                params=[_param("name", "string", "path")])},
            "/flux/api/routes": {"get": _call("The routes", _page(_ROUTE, _TEXT))},
            "/flux/api/deployments": {
                "get": _call("Deployed versions, newest first", _page(_DEPLOYMENT, {"type": "integer"}),
                             params=[_LIMIT, _param("before", "integer")]),
                "post": _call("Deploy a built project, as `flux deploy` uploads it (200: active already)",
                              _DEPLOYED, "201", body=_BUNDLE, also=("200",)),
            },
            "/flux/api/artifacts/missing": {"post": _call(
                "Which of these code sha256s the server lacks", _object({"missing": _SHAS}),
                body=_object({"sha256": _SHAS}))},
            "/flux/api/deployments/{version}/activate": {"post": _call(
                "Make a version active again (rollback)",
                _object({"version": {"type": "integer"}, "active": {"type": "boolean"}}),
                params=[_param("version", "integer", "path")])},
            "/flux/api/tenants": {
                "get": _call("Tenants by name", _page(_TENANT, _TEXT), params=[_LIMIT, _param("after")]),
                "post": _call("Create a tenant", _object({"id": _TEXT, "name": _TEXT}), "201",
                              body=_NEW_TENANT),
            },
            "/flux/api/keys": {
                "get": _call("API keys by id", _page(_KEY, {"type": "integer"}),
                             params=[_LIMIT, _param("after", "integer")]),
                "post": _call("Create an API key (its text is in this answer only)", _CREATED_KEY, "201",
                              body=_NEW_KEY, links={"Revoke": ("/flux/api/keys/{key}", "delete",
                                                               {"key": "$response.body#/prefix"})}),
            },
            "/flux/api/keys/{key}": {"delete": _call(
                "Revoke an API key (by id or prefix)", _object({"revoked": {"type": "integer"}}),
                params=[_param("key", "string", "path")])},
            "/flux/api/secrets": {"get": _call("Secret names (never values)", _page(_SECRET, _TEXT))},
            "/flux/api/secrets/{name}": {
                "put": _call("Set a secret", None, "204", body=_object({"value": _TEXT}),
                             params=[_param("name", "string", "path")],
                             links={"Remove": ("/flux/api/secrets/{name}", "delete",
                                               {"name": "$request.path.name"})}),
                "delete": _call("Remove a secret", None, "204", params=[_param("name", "string", "path")]),
            },
            "/flux/api/jobs": {
                "post": _call("Push jobs (run as the service role)", _PUSHED, "201",
                              body=_object({"jobs": {"type": "array", "items": _NEW_JOB, "minItems": 1}}),
                              links={name: (f"/flux/api/jobs/{{job_id}}{suffix}", method,
                                            {"job_id": "$response.body#/items/0/id"})
                                     for name, suffix, method in (("Get", "", "get"),
                                                                  ("Retry", "/retry", "post"),
                                                                  ("Cancel", "/cancel", "post"))}),
                "get": _call("Jobs, newest first", _page(_JOB, {"type": "integer"}),
                             params=[_LIMIT, _param("before", "integer"),
                                     {**_param("status"), "schema": _STATUS}, _param("queue"),
                                     _param("function")]),
            },
            "/flux/api/jobs/stats": {"get": _call("Jobs per queue and status", _page(_QUEUE_STATS, _TEXT))},
            "/flux/api/jobs/{job_id}": {"get": _call("One job with its attempts", _JOB_DETAIL,
                                                     params=[_JOB_ID])},
            "/flux/api/jobs/{job_id}/retry": {"post": _call(
                "Run a failed job now, or a dead or cancelled one again", _JOB, params=[_JOB_ID])},
            "/flux/api/jobs/{job_id}/cancel": {"post": _call(
                "Cancel a job that has not started", _JOB, params=[_JOB_ID])},
            "/flux/api/cron": {"get": _call("Cron schedules", _page(_SCHEDULE, _TEXT))},
            "/flux/api/requests": {"get": _call(
                "Recorded requests, newest first (flux trace ls)", _ROWS,
                params=[_LIMIT, _param("route"), _param("function"), _param("status", "integer"), _KIND,
                        _param("errors", "boolean"), _param("since_s", "integer"),
                        _param("until_s", "integer"), {**_param("since"), "schema": _WHEN},
                        {**_param("until"), "schema": _WHEN}, _param("slow_ms", "number"),
                        _param("replayable", "boolean"), _param("replay_of")])},
            "/flux/api/requests/followers": {"post": _call(
                "Follow new requests (flux tail): their ids wait for the follower's next call", _FOLLOWING,
                "201", links={name: ("/flux/api/requests/followers/{follower}", method,
                                     {"follower": "$response.body#/id"})
                              for name, method in (("Take", "get"), ("Stop", "delete"))})},
            "/flux/api/requests/followers/{follower}": {
                "get": _call("The requests recorded since the follower's last call, oldest first", _ROWS,
                             params=[_FOLLOWER, _param("route"), _param("function"),
                                     _param("status", "integer"), _param("errors", "boolean"),
                                     _param("slow_ms", "number")]),
                "delete": _call("Stop following", None, "204", params=[_FOLLOWER]),
            },
            "/flux/api/requests/{request_id}": {"get": _call(
                "A request's whole record: row, spans, row changes, jobs (flux trace)", _RECORD,
                params=[_REQUEST_ID])},
            "/flux/api/requests/{request_id}/why": {"get": _call(
                "Why a request went as it did (flux why)", _WHY, params=[_REQUEST_ID])},
            "/flux/api/requests/{request_id}/replay": {"post": _call(
                "Replay a request on this server, side effects off, and compare it with its recording"
                " (flux incident replay)", _REPLAYED, body=_REPLAY, params=[_REQUEST_ID])},
            "/flux/api/state/{table}/history": {"get": _call(
                "Every version of one row (flux state history)", _ROWS,
                params=[_TABLE, {**_param("key"), "required": True}])},
            "/flux/api/state/{table}/blame": {"get": _call(
                "Who last set each column of a row, or each row's last change (flux state blame)", _ROWS,
                params=[_TABLE, _param("key"), _LIMIT])},
            "/flux/api/cron/{name}": {
                "put": _call("Create or change a schedule (not one from flux.toml)", _SCHEDULE,
                             body=_object(_SCHEDULE_FIELDS, ("schedule", "function")),
                             params=[_param("name", "string", "path")],
                             links={"Remove": ("/flux/api/cron/{name}", "delete",
                                               {"name": "$request.path.name"})}),
                "delete": _call("Remove a schedule made through the API", None, "204",
                                params=[_param("name", "string", "path")]),
            },
        },
    }  # fmt: skip
