"""The gateway through Falcon's test client, against a real Postgres and real Deno: request ids, routes, auth
(API keys, JWT), rate limits, CORS, bad input, /db/query, and the record each request leaves."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import hypothesis
import jwt
import psycopg
import pytest
import schemathesis

from flux.api.admin import create_admin_key
from flux.api.deploy import deploy
from flux.config import Settings
from flux.gateway.auth import new_api_key
from flux.gateway.handler import _headers
from flux.trace.ids import request_span_id
from tests.fixtures.gateway import GatewayClient, gateway_client
from tests.fixtures.runtime import NOTES_SQL

Conn = psycopg.Connection[Any]
SECRET = "s" * 40
TENANT = "7d3c8a4e-0000-4000-8000-000000000001"
ROUTES = (
    {"method": "GET", "path": "/hello/{name}", "function": "hello", "auth": "none",
     "cors": ["https://app.example"]},
    {"method": "GET", "path": "/public", "function": "hello", "auth": "none", "cors": ["*"]},
    {"method": "POST", "path": "/notes", "function": "add_note", "auth": "any", "max_body_bytes": 200},
    {"method": "GET", "path": "/limited", "function": "hello", "auth": "none",
     "rate_per_s": 0.01, "burst": 2},
    {"method": "GET", "path": "/keys-only", "function": "hello", "auth": "key"},
    {"method": "POST", "path": "/relay", "function": "relay", "auth": "none"},
    {"method": "POST", "path": "/ask", "function": "ask", "auth": "any"},
)  # fmt: skip
FUNCTIONS = {
    "hello": "export default async (req) => ({hello: req.params.name ?? 'you', user: req.user})",
    "relay": "export default async (req, ctx) => JSON.parse((await ctx.fetch(req.body.url)).body)",
    "add_note": "export default async (req, ctx) => ({status: 201, body: (await ctx.db.query("
    "{insert: 'notes', values: {body: req.body.text}, returning: ['id', 'body']})).rows[0]})",
    "ask": "export default async (req, ctx) => { try { return await ctx.db.query(req.body) }"
    " catch (e) { return {status: 400, body: {code: e.code, problems: e.problems}} } }",
}


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[str, Any]]:
    """A JWKS endpoint on 127.0.0.1 publishing one RSA key (kid "k1"); yields its URL and the private key."""
    import http.server
    import json
    import threading

    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    document = json.dumps({"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", private
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(
    conn: Conn, dsn: str, tmp_path: Path, local_server: str, jwks: tuple[str, Any]
) -> Iterator[GatewayClient]:
    conn.execute(NOTES_SQL.encode())
    conn.execute(
        "INSERT INTO flux.tenants (id, name, rate_per_s, burst) VALUES (%s, 'acme', 0.01, 4)", (TENANT,)
    )
    conn.commit()
    for name, source in FUNCTIONS.items():
        (tmp_path / "functions" / name).mkdir(parents=True)
        (tmp_path / "functions" / name / "index.ts").write_text(source)
    settings = Settings(project_dir=tmp_path, jwt_secret=SECRET, jwks_url=jwks[0], fetch_allow=("127.0.0.1",),
                        routes=ROUTES)  # fmt: skip
    deploy(dsn, settings)
    with gateway_client(settings, dsn) as client:
        yield client


def _key(conn: Conn, role: str = "user", tenant: str | None = TENANT) -> str:
    made = new_api_key()
    conn.execute("INSERT INTO flux.api_keys (prefix, key_hash, role, tenant_id) VALUES (%s, %s, %s, %s)",
                 (made.prefix, made.key_hash, role, tenant))  # fmt: skip
    conn.commit()
    return made.key


def _record(conn: Conn, request_id: str) -> tuple[Any, list[tuple[Any, ...]]]:
    conn.commit()
    request = conn.execute(
        "SELECT status, ok, error->>'code', route_id IS NOT NULL, trace_id, tenant_id::text"
        " FROM flux.requests WHERE id = %s", (request_id,)
    ).fetchone()  # fmt: skip
    spans = conn.execute(
        "SELECT module, name, ok, error->>'code' FROM flux.spans WHERE request_id = %s ORDER BY seq",
        (request_id,),
    ).fetchall()
    return request, spans


def test_fetch_carries_the_requests_trace_to_the_callee(conn: Conn, client: Any, local_server: str) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    relayed = client.simulate_post(
        "/relay", json={"url": f"{local_server}/x"}, headers={"traceparent": parent}
    )
    assert relayed.status_code == 200, relayed.json
    sent = relayed.json["traceparent"]
    assert sent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and "00f067aa0ba902b7" not in sent
    assert sent.split("-")[2] == request_span_id(relayed.headers["x-request-id"])  # as flux trace export says


def test_a_request_gets_an_id_runs_its_function_and_is_recorded_as_one(conn: Conn, client: Any) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    result = client.simulate_get("/hello/ada", headers={"traceparent": parent})
    assert result.status_code == 200 and result.json == {"hello": "ada", "user": None}
    request_id = result.headers["x-request-id"]
    assert str(uuid.UUID(request_id, version=4)) == request_id
    request, spans = _record(conn, request_id)
    assert request == (200, True, None, True, "0af7651916cd43dd8448eb211c80319c", None)
    assert [s[:2] for s in spans][:2] == [("gateway", "GET /hello/ada"), ("runtime", "function:hello")]


def test_api_keys_run_as_their_role_and_tenant_and_revocation_is_live(conn: Conn, client: Any) -> None:
    key = _key(conn)
    created = client.simulate_post("/notes", json={"text": "hi"}, headers={"authorization": f"Bearer {key}"})
    assert created.status_code == 201 and created.json == {"id": 1, "body": "hi"}
    request, spans = _record(conn, created.headers["x-request-id"])
    assert request[:2] == (201, True) and request[5] == TENANT
    assert ("data", "db:insert(notes)", True, None) in spans
    assert conn.execute("SELECT request_id::text FROM flux.mutations").fetchall() == [
        (created.headers["x-request-id"],)
    ]
    untenanted = _key(conn, tenant=None)  # no tenant bucket: polling below cannot run into the rate limit
    assert client.simulate_get("/keys-only", headers={"x-api-key": untenanted}).status_code == 200
    conn.execute("UPDATE flux.api_keys SET revoked_at = now()")
    conn.commit()
    deadline = time.monotonic() + 3
    while (
        refused := client.simulate_get("/keys-only", headers={"x-api-key": untenanted})
    ).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key still worked after 3 s"
        time.sleep(0.1)
    assert refused.status_code == 401 and refused.json["code"] == "FX012"


def test_jwts_are_checked_and_their_claims_reach_the_function(client: Any) -> None:
    def token(**claims: Any) -> str:
        return jwt.encode({"sub": "bob", "exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")

    ok = client.simulate_post(
        "/notes", json={"text": "from bob"}, headers={"authorization": f"Bearer {token()}"}
    )
    assert ok.status_code == 201
    expired = token(exp=int(time.time()) - 10)
    forged = jwt.encode({"sub": "eve"}, "x" * 40, algorithm="HS256")
    for bad in (expired, forged, "not.a.token"):
        refused = client.simulate_post(
            "/notes", json={"text": "x"}, headers={"authorization": f"Bearer {bad}"}
        )
        assert refused.status_code == 401 and refused.json["code"] == "FX013", refused.json
    assert client.simulate_post("/notes", json={"text": "x"}).json["code"] == "FX011"
    key_route = client.simulate_get("/keys-only", headers={"authorization": f"Bearer {token()}"})
    assert (
        key_route.status_code == 401 and key_route.json["code"] == "FX012"
    )  # this route takes API keys only


def test_rs256_tokens_are_checked_against_the_jwks(client: Any, jwks: tuple[str, Any]) -> None:
    _, private = jwks
    claims = {"sub": "carol", "exp": int(time.time()) + 60}
    good = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"})
    unknown_kid = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k2"})
    ok = client.simulate_post("/notes", json={"text": "rs256"}, headers={"authorization": f"Bearer {good}"})
    assert ok.status_code == 201, ok.json
    refused = client.simulate_post(
        "/notes", json={"text": "x"}, headers={"authorization": f"Bearer {unknown_kid}"}
    )
    assert refused.status_code == 401 and refused.json["code"] == "FX013"


def test_a_tenants_bucket_spans_its_routes(conn: Conn, client: Any) -> None:
    key = _key(conn)  # a key of the tenant, whose bucket holds 4
    headers = {"authorization": f"Bearer {key}"}
    statuses = [
        client.simulate_post("/notes", json={"text": "t"}, headers=headers).status_code for _ in range(3)
    ]
    statuses += [client.simulate_get("/keys-only", headers=headers).status_code for _ in range(2)]
    assert statuses == [201, 201, 201, 200, 429]


def test_the_rate_limit_answers_429_with_retry_after_and_is_recorded(conn: Conn, client: Any) -> None:
    statuses = [client.simulate_get("/limited") for _ in range(3)]
    assert [s.status_code for s in statuses] == [200, 200, 429]
    refused = statuses[2]
    assert refused.json["code"] == "FX020" and int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "2" and refused.headers["ratelimit-remaining"] == "0"
    request, spans = _record(conn, refused.headers["x-request-id"])
    assert request[:3] == (429, False, "FX020") and spans == [("gateway", "GET /limited", False, "FX020")]


def test_cors_preflights_are_answered_by_the_gateway(client: Any) -> None:
    asked = {"origin": "https://app.example", "access-control-request-method": "GET"}
    allowed = client.simulate_options("/hello/x", headers=asked)
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "GET" in allowed.headers["access-control-allow-methods"]
    refused = client.simulate_options("/hello/x", headers={**asked, "origin": "https://evil.example"})
    assert refused.status_code == 403 and refused.json["code"] == "FX014"
    actual = client.simulate_get("/hello/x", headers={"origin": "https://app.example"})
    assert actual.headers["access-control-allow-origin"] == "https://app.example"
    anyone = client.simulate_options("/public", headers={**asked, "origin": "https://anyone.example"})
    assert (
        anyone.status_code == 204
        and anyone.headers["access-control-allow-origin"] == "https://anyone.example"
    )


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        (
            "POST",
            "/notes",
            {"body": "{not json", "headers": {"content-type": "application/json"}},
            400,
            "FX001",
        ),
        ("POST", "/notes", {"body": "text=1", "headers": {"content-type": "text/plain"}}, 415, "FX002"),
        ("POST", "/notes", {"json": {"text": "x" * 500}}, 413, "FX003"),
        ("GET", "/nowhere", {}, 404, "FX004"),
        ("DELETE", "/hello/ada", {}, 405, "FX005"),
        ("POST", "/notes", {"json": {}, "headers": {"authorization": "Bearer flux_nope"}}, 401, "FX012"),
    ],
)
def test_bad_requests_get_their_status_code_and_request_id_and_are_recorded(
    conn: Conn, client: Any, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    kwargs.setdefault("headers", {})
    if path == "/notes" and code not in ("FX012",):
        kwargs["headers"]["authorization"] = f"Bearer {_key(conn)}"
    result = client.simulate_request(method, path, **kwargs)
    assert result.status_code == status and result.json["code"] == code, result.json
    assert result.json["request_id"] == result.headers["x-request-id"]
    if code == "FX005":
        assert result.headers["allow"] == "GET"
    request, spans = _record(conn, result.headers["x-request-id"])
    assert request[:3] == (status, False, code) and spans[0][0] == "gateway" and spans[0][3] == code


def test_db_query_runs_under_the_callers_role_and_is_recorded(conn: Conn, client: Any) -> None:
    key = _key(conn)
    headers = {"authorization": f"Bearer {key}"}
    inserted = client.simulate_post("/db/query", json={"insert": "notes", "values": {"body": "via http"},
                                                       "returning": ["id"]}, headers=headers)  # fmt: skip
    assert inserted.status_code == 200 and inserted.json == {"count": 1, "rows": [{"id": 1}]}
    selected = client.simulate_post(
        "/db/query", json={"select": "notes", "columns": ["body"]}, headers=headers
    )
    assert selected.json["rows"] == [{"body": "via http"}]
    bad = client.simulate_post("/db/query", json={"select": "nope"}, headers=headers)
    assert bad.status_code == 400 and bad.json["code"] == "FX101"
    _, spans = _record(conn, inserted.headers["x-request-id"])
    assert [s[1] for s in spans] == ["POST /db/query", "db:insert(notes)"]  # a built-in runs no code


def test_every_statement_of_a_db_query_select_runs_as_the_caller(conn: Conn, client: Any, dsn: str) -> None:
    # A select goes without BEGIN: each of its statements (here the rows, the planned count and the policies)
    # carries the caller's role and settings itself; one that did not would run as flux_authenticator.
    conn.execute("CREATE VIEW whoami AS SELECT current_user::text AS role,"
                 " current_setting('flux.request_id', true) AS request_id;"
                 " GRANT SELECT ON whoami TO flux_user")  # fmt: skip
    conn.commit()
    client.gateway.catalogs.invalidate()
    headers = {"authorization": f"Bearer {_key(conn)}"}
    query = {"select": "whoami", "count": "planned", "explain_policies": True}
    answered = client.simulate_post("/db/query", json=query, headers=headers)
    assert answered.status_code == 200, answered.json
    assert answered.json["rows"] == [{"role": "flux_user", "request_id": answered.headers["x-request-id"]}]
    assert answered.json["count"] == 1 and answered.json["policies"]["row_level"]
    with psycopg.connect(dsn, user="flux_authenticator") as alone:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alone.execute("EXPLAIN SELECT * FROM whoami")


def test_health_and_ready_are_not_routes(client: Any) -> None:
    assert client.simulate_get("/health").json == {"status": "ok"}
    assert client.simulate_get("/ready").json == {"status": "ready"}  # migrations current, routes loaded


def test_text_jsonb_cannot_hold_is_still_recorded(conn: Conn, client: Any) -> None:
    headers = {"authorization": f"Bearer {_key(conn)}"}
    body = '{"select": "notes\\u0000", "where": {"id": {"eq": 100000000000000000000000}}, "x\\ud800": 1}'
    refused = client.simulate_post(
        "/db/query", body=body, headers={**headers, "content-type": "application/json"}
    )
    assert refused.status_code == 400 and refused.json["code"] == "FX105"  # the unknown key "x\ud800"
    request, _ = _record(conn, refused.headers["x-request-id"])
    assert request[:3] == (400, False, "FX105")  # recorded, the NUL kept as visible text


def test_a_refused_query_answers_its_first_problems_code_and_lists_every_problem(
    conn: Conn, client: Any
) -> None:
    headers = {"authorization": f"Bearer {_key(conn)}"}
    query = {"select": "notes", "columns": ["id", "bdy"], "where": {"idd": {"eq": 1}, "id": {"gtt": 1}}}
    for path in ("/db/query", "/db/explain"):
        refused = client.simulate_post(path, json=query, headers=headers)
        assert refused.status_code == 400, refused.json
        assert refused.json["code"] == "FX102"  # the first problem's own code, not the group's FX100
        assert refused.json["message"] == "notes has no column 'bdy' at /columns/1 (and 2 more)"
        assert refused.json["hint"] == "did you mean 'body'?"
        assert refused.json["problems"] == [
            {"code": "FX102", "pointer": "/columns/1", "message": "notes has no column 'bdy'",
             "hint": "did you mean 'body'?"},
            {"code": "FX102", "pointer": "/where/idd", "message": "notes has no column or relation 'idd'",
             "hint": "did you mean 'id'?"},
            {"code": "FX104", "pointer": "/where/id/gtt", "message": "unknown operator 'gtt'",
             "hint": "did you mean 'gt'?"},
        ]  # fmt: skip
        request, spans = _record(conn, refused.headers["x-request-id"])
        assert request[:3] == (400, False, "FX102") and spans[-1][3] == "FX102"  # the record says the same
    # A function's ctx.db.query sees the same code and problems.
    asked = client.simulate_post("/ask", json={"select": "notes", "where": {"bdy": "x"}}, headers=headers)
    assert asked.status_code == 400 and asked.json["code"] == "FX102", asked.json
    assert [p["pointer"] for p in asked.json["problems"]] == ["/where/bdy"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (None, "POST /db/query needs a body: one JSON query object"),
        ("null", "POST /db/query needs a body: one JSON query object"),
        ('[{"select": "notes"}]', "a query is a JSON object, and POST /db/query got a list"),
        ('"notes"', "a query is a JSON object, and POST /db/query got a string"),
        ("12", "a query is a JSON object, and POST /db/query got a number"),
    ],
)
def test_db_query_without_one_query_object_is_a_400_and_recorded(
    conn: Conn, client: Any, body: str | None, says: str
) -> None:
    headers = {"authorization": f"Bearer {_key(conn, tenant=None)}", "content-type": "application/json"}
    refused = client.simulate_post("/db/query", body=body, headers=headers)
    assert refused.status_code == 400 and refused.json["code"] == "FX105", refused.json
    assert refused.json["message"] == f"{says} at /" and refused.json["problems"][0]["pointer"] == "/"
    request, spans = _record(conn, refused.headers["x-request-id"])
    assert request[:3] == (400, False, "FX105") and spans == [("gateway", "POST /db/query", False, "FX105")]
    explained = client.simulate_post("/db/explain", body=body, headers=headers)
    assert explained.status_code == 400 and explained.json["code"] == "FX105"


def test_more_columns_than_postgres_allows_is_refused_before_it_runs(conn: Conn, client: Any) -> None:
    headers = {"authorization": f"Bearer {_key(conn, tenant=None)}"}
    widest = client.simulate_post("/db/query", json={"select": "notes", "columns": ["id"] * 1664},
                                  headers=headers)  # fmt: skip
    assert widest.status_code == 200 and widest.json["rows"] == [], widest.json  # Postgres's own limit
    for query, pointer in [
        ({"select": "notes", "columns": ["id"] * 1665}, "/columns"),
        ({"select": "notes", "columns": ["body"] * 1664}, "/columns"),  # plus the hidden key of the cursor
        ({"select": "notes", "columns": ["*"] * 900}, "/columns"),
        ({"insert": "notes", "values": {"body": "x"}, "returning": ["id"] * 2000}, "/returning"),
    ]:
        refused = client.simulate_post("/db/query", json=query, headers=headers)
        assert refused.status_code == 400 and refused.json["code"] == "FX113", refused.json
        assert refused.json["problems"][0]["pointer"] == pointer
        request, _ = _record(conn, refused.headers["x-request-id"])
        assert request[:3] == (400, False, "FX113")
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_a_jwt_whose_alg_does_not_fit_its_keys_is_a_401_and_recorded(
    conn: Conn, client: Any, jwks: tuple[str, Any]
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    claims = {"sub": "mallory", "exp": int(time.time()) + 60}
    ec_key = ec.generate_private_key(ec.SECP256R1())
    tokens = [
        jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "k1"}),  # k1 is an RSA key
        jwt.encode(claims, jwks[1], algorithm="PS256", headers={"kid": "k1"}),
        jwt.encode(claims, SECRET * 2, algorithm="HS512", headers={"kid": "k1"}),
    ]
    for token in tokens:
        refused = client.simulate_post(
            "/notes", json={"text": "x"}, headers={"authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 401 and refused.json["code"] == "FX013", refused.json
        request, spans = _record(conn, refused.headers["x-request-id"])
        assert request[:3] == (401, False, "FX013") and spans == [("gateway", "POST /notes", False, "FX013")]
    mismatch = client.simulate_post(
        "/notes", json={"text": "x"}, headers={"authorization": f"Bearer {tokens[0]}"}
    )
    assert mismatch.json["message"] == "the token's alg ES256 does not fit key 'k1', a RS256 key"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [129, 300, 5000])
@pytest.mark.parametrize("path", ["/db/query", "/relay"])
def test_json_nested_too_deep_is_a_400_and_recorded(conn: Conn, client: Any, path: str, depth: int) -> None:
    headers = {"authorization": f"Bearer {_key(conn, tenant=None)}", "content-type": "application/json"}
    refused = client.simulate_post(path, body=_nested(depth), headers=headers)
    assert refused.status_code == 400 and refused.json["code"] == "FX006", refused.json
    assert refused.json["message"] == "the JSON nests deeper than 128 levels"
    request, spans = _record(conn, refused.headers["x-request-id"])
    assert request[:3] == (400, False, "FX006") and spans[0][3] == "FX006"


def test_json_nested_to_the_limit_is_read_and_recorded(conn: Conn, client: Any) -> None:
    headers = {"authorization": f"Bearer {_key(conn, tenant=None)}", "content-type": "application/json"}
    body = '{"insert": "notes", "values": {"body": ' + _nested(126) + "}}"  # 128 levels
    refused = client.simulate_post("/db/query", body=body, headers=headers)
    assert refused.status_code == 400 and refused.json["code"] == "FX104", refused.json  # a list for text
    request, _ = _record(conn, refused.headers["x-request-id"])
    assert request[:3] == (400, False, "FX104")
    (depth,) = conn.execute(
        "WITH RECURSIVE d(v, n) AS (SELECT input #> '{body,values,body}', 1 FROM flux.requests"
        " WHERE id = %s UNION ALL SELECT v->0, n + 1 FROM d WHERE jsonb_array_length(v) > 0)"
        " SELECT max(n) FROM d",
        (refused.headers["x-request-id"],),
    ).fetchone()
    assert depth == 126  # the record holds the whole body


def test_a_bodys_depth_is_counted_alike_on_both_decoders() -> None:
    from flux import jsontext

    for number in ("1", "1.5"):  # orjson reads the first, the exact decoder the second
        for opening, closing in (("[", "]"), ('{"a": ', "}")):
            assert jsontext.loads_bounded(opening * 128 + number + closing * 128) is not None
            with pytest.raises(jsontext.TooDeep):
                jsontext.loads_bounded(opening * 129 + number + closing * 129)
    assert jsontext.loads_bounded('["' + "[" * 500 + '"]') == ["[" * 500]  # brackets in text are not levels


@pytest.mark.parametrize("depth", [300, 5000])
def test_the_management_api_refuses_json_nested_too_deep_with_a_400(
    client: Any, conn: Conn, depth: int
) -> None:
    admin = {"authorization": f"Bearer {create_admin_key(conn, 'deep').key}"}
    for path in ("/flux/api/functions/hello/invoke", "/flux/api/keys"):
        for headers, status, code in (({}, 401, "FX606"), (admin, 400, "FX006")):  # the key first (issue 25)
            refused = client.simulate_post(
                path, body=_nested(depth), headers={**headers, "content-type": "application/json"}
            )
            assert refused.status_code == status and refused.json["code"] == code, refused.json


def test_db_explain_shows_the_sql_and_plan_without_running_it(conn: Conn, client: Any) -> None:
    headers = {"authorization": f"Bearer {_key(conn)}"}
    query = {"insert": "notes", "values": {"body": "never"}}
    explained = client.simulate_post("/db/explain", json=query, headers=headers)
    assert explained.status_code == 200, explained.json
    assert explained.json["sql"].startswith("WITH") or "INSERT" in explained.json["sql"]
    assert explained.json["role"] == "user" and any(
        "Insert on notes" in line for line in explained.json["plan"]
    )
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    _, spans = _record(conn, explained.headers["x-request-id"])
    assert [s[1] for s in spans] == ["POST /db/explain", "db:explain"]


def test_a_route_added_in_the_database_is_live_without_a_restart(conn: Conn, client: Any) -> None:
    assert client.simulate_get("/hi").status_code == 404
    conn.execute(
        "INSERT INTO flux.routes (method, path, function, auth) VALUES ('GET', '/hi', 'hello', 'none')"
    )
    conn.commit()
    deadline = time.monotonic() + 1.5
    while client.simulate_get("/hi").status_code != 200:
        assert time.monotonic() < deadline, "the new route was not live within 1.5 s"
        time.sleep(0.05)


def test_ready_reports_pending_migrations_before_loading_routes(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_later.sql").write_text("CREATE TABLE later (id int PRIMARY KEY);\n")
    with gateway_client(Settings(project_dir=tmp_path), dsn) as client:
        ready = client.simulate_get("/ready")
    assert ready.status_code == 503 and ready.json["migrations_pending"] == ["project:0001"]


def test_the_db_endpoints_hold_to_their_openapi_document(client: Any, conn: Conn) -> None:
    """schemathesis generates requests from /db/openapi.json: no answer may be a 5xx or break the document."""
    schema = schemathesis.openapi.from_wsgi("/db/openapi.json", client.app)
    headers = {"authorization": f"Bearer {_key(conn, tenant=None)}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.path for op in operations) == ["/db/explain", "/db/query"]
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
        )
        def holds(case: Any) -> None:
            # A query can fit the document and still name a table that does not exist (FX100): the language
            # is checked against the catalog, not the document, so an acceptance check would not be fair.
            case.call_and_validate(
                headers=headers, excluded_checks=[schemathesis.checks.positive_data_acceptance]
            )

        holds()


def test_the_gateway_reads_headers_as_falcon_does() -> None:
    headers = {"Authorization": "Bearer k", "X-Forwarded-For": "10.0.0.1", "Content-Type": "application/json"}
    environ = falcon.testing.create_environ(path="/x", body=b"{}", headers=headers)
    assert _headers(environ) == dict(falcon.Request(environ).headers_lower)


def test_a_request_that_gets_no_connection_is_still_recorded(conn: Conn, client: GatewayClient) -> None:
    """Issue 25: a request the gateway could not serve for want of a connection (here its pool is closed; in
    production, Postgres down or every connection taken) still has its record, by the record writer."""
    from flux import db

    closed = db.create_pool(client.gateway.pool.conninfo, max_size=1)
    closed.close()
    served_by = client.gateway._connections
    client.gateway._connections = db.HeldConnections(closed)
    try:
        result = client.simulate_get("/hello/ada")
    finally:
        client.gateway._connections = served_by
    request_id = result.headers["x-request-id"]
    assert result.status_code == 503 and result.json["request_id"] == request_id
    assert result.json["code"] == "FX801"
    request, spans = _record(conn, request_id)
    assert request[:3] == (503, False, "FX801")
    assert [(module, ok) for module, _, ok, _ in spans] == [("gateway", False)]
