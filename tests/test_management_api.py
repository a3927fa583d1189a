"""The management API under /flux/api/: admin keys (expired and revoked ones refused), functions, versions
and rollback, tenants and keys with pagination, secrets that are never returned; and its OpenAPI document,
which schemathesis holds it to."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import pytest
import schemathesis

from flux.api.admin import create_admin_key
from flux.api.deploy import deploy
from flux.config import load_settings
from tests.fixtures.gateway import GatewayClient, gateway_client

Conn = psycopg.Connection[Any]
FLUX_TOML = """
[[routes]]
method = "GET"
path = "/greet"
function = "greet"
auth = "none"
"""


def _greet(version: str) -> str:
    return f"export default async (req, ctx) => ({{version: '{version}', key: await ctx.secrets.get('k')}})"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FLUX_SECRET_KEY", raising=False)
    (tmp_path / "flux.toml").write_text(FLUX_TOML)
    (tmp_path / "functions" / "greet").mkdir(parents=True)
    (tmp_path / "functions" / "greet" / "index.ts").write_text(_greet("v1"))
    return tmp_path


@pytest.fixture
def client(dsn: str, project: Path) -> Any:
    deploy(dsn, load_settings(project, env={}))
    with gateway_client(load_settings(project, env={}), dsn) as client:
        yield client


@pytest.fixture
def admin(conn: Conn) -> dict[str, str]:
    return {"authorization": f"Bearer {create_admin_key(conn, 'tests').key}"}


def test_every_call_needs_a_live_admin_key(client: GatewayClient, conn: Conn) -> None:
    expired = create_admin_key(conn, "old", timedelta(hours=-1)).key
    revoked = create_admin_key(conn, "gone")
    conn.execute("UPDATE flux.admin_keys SET revoked_at = now() WHERE id = %s", (revoked.id,))
    user_key = "flux_" + "x" * 32  # an API key is not an admin key
    for headers, words in (
        ({}, "needs an admin key"),
        ({"authorization": f"Bearer {expired}"}, "expired"),
        ({"authorization": f"Bearer {revoked.key}"}, "revoked"),
        ({"authorization": f"Bearer {user_key}"}, "needs"),
    ):  # fmt: skip
        refused = client.simulate_get("/flux/api/functions", headers=headers)
        assert refused.status_code == 401 and refused.json["code"] == "FX606", refused.json
        assert words in refused.json["message"]


def test_versions_rollback_tenants_keys_and_secrets(
    client: GatewayClient, admin: dict[str, str], dsn: str, project: Path
) -> None:
    assert (
        client.simulate_put("/flux/api/secrets/k", json={"value": "s3cret-v"}, headers=admin).status_code
        == 204
    )
    assert client.simulate_get("/greet").json == {"version": "v1", "key": "s3cret-v"}
    secrets = client.simulate_get("/flux/api/secrets", headers=admin).json
    assert [s["name"] for s in secrets["items"]] == ["k"] and "s3cret" not in str(secrets)
    functions = client.simulate_get("/flux/api/functions", headers=admin).json["items"]
    assert [(f["name"], f["runtime"], f["version"]) for f in functions] == [("greet", "typescript", 1)]

    (project / "functions" / "greet" / "index.ts").write_text(_greet("v2"))
    second = deploy(dsn, load_settings(project, env={}))
    versions = client.simulate_get("/flux/api/deployments", params={"limit": 1}, headers=admin).json
    assert [v["version"] for v in versions["items"]] == [second.id] and versions["next"] == second.id
    older = client.simulate_get(
        "/flux/api/deployments", params={"before": versions["next"]}, headers=admin
    ).json
    assert [v["version"] for v in older["items"]] == [1] and older["next"] is None
    activated = client.simulate_post("/flux/api/deployments/1/activate", headers=admin)
    assert activated.json == {"version": 1, "active": True}
    assert client.simulate_post("/flux/api/deployments/99/activate", headers=admin).json["code"] == "FX602"

    for name in ("acme", "beta", "cobalt"):
        made = client.simulate_post("/flux/api/tenants", json={"name": name, "rate_per_s": 2.5, "burst": 5},
                                    headers=admin)  # fmt: skip
        assert made.status_code == 201 and made.json["name"] == name
    page = client.simulate_get("/flux/api/tenants", params={"limit": 2}, headers=admin).json
    rest = client.simulate_get("/flux/api/tenants", params={"after": page["next"]}, headers=admin).json
    assert [t["name"] for t in page["items"] + rest["items"]] == ["acme", "beta", "cobalt"]
    assert page["items"][0]["rate_per_s"] == 2.5
    duplicate = client.simulate_post("/flux/api/tenants", json={"name": "acme"}, headers=admin)
    assert duplicate.status_code == 409 and duplicate.json["code"] == "FX130"

    key = client.simulate_post("/flux/api/keys", json={"tenant": "beta", "name": "ci"}, headers=admin).json
    assert key["key"].startswith("flux_") and key["tenant"] == "beta"
    listed = client.simulate_get("/flux/api/keys", headers=admin).json["items"]
    assert [(k["prefix"], k["tenant"], k["revoked_at"]) for k in listed] == [(key["prefix"], "beta", None)]
    assert key["key"] not in str(listed)
    assert client.simulate_delete(f"/flux/api/keys/{key['prefix']}", headers=admin).json == {
        "revoked": key["id"]
    }
    assert client.simulate_delete("/flux/api/secrets/k", headers=admin).status_code == 204
    assert client.simulate_delete("/flux/api/secrets/k", headers=admin).json["code"] == "FX605"
    bad = client.simulate_put("/flux/api/secrets/not-a-name", json={"value": "x"}, headers=admin)
    assert bad.status_code == 400 and bad.json["code"] == "FX603"


def test_the_management_api_holds_to_its_openapi_document(
    client: GatewayClient, admin: dict[str, str]
) -> None:
    """schemathesis generates calls from /flux/api/openapi.json: no answer is a 5xx or breaks the document."""
    schema = schemathesis.openapi.from_wsgi("/flux/api/openapi.json", client.app)
    failures = []
    for operation in schema.get_all_operations():
        api_operation = operation.ok()

        @hypothesis.settings(max_examples=25, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
        @hypothesis.given(case=api_operation.as_strategy())
        def check(case: Any) -> None:
            try:
                # Data that fits the document can still be refused fairly (a tenant that exists already, a
                # version or key that does not), so the acceptance check is left out.
                case.call_and_validate(  # spelled as schemathesis spells it, so its auth check can drop it
                    headers={"Authorization": admin["authorization"]},
                    excluded_checks=[schemathesis.checks.positive_data_acceptance],
                )
            except Exception as exc:  # collected, so one run shows every broken operation
                failures.append(f"{case.method} {case.formatted_path}: {exc}")

        check()
    assert not failures, "\n".join(failures[:5])


def test_an_uploaded_bundle_is_checked(client: GatewayClient, admin: dict[str, str]) -> None:
    code = "export default async () => 1"
    sha = hashlib.sha256(code.encode()).hexdigest()
    function = {"name": "one", "runtime": "typescript", "sha256": sha}
    route = {"method": "GET", "path": "/one", "function": "one", "auth": "none"}
    cases = [
        ({"functions": [function]}, 400, "FX601"),  # no code, and the server has none with that sha
        ({"functions": [{**function, "code": "bm90IGl0"}]}, 400, "FX607"),  # code that is not that sha
        ({"functions": [{**function, "code": base64.b64encode(code.encode()).decode()}],
          "routes": [{**route, "colour": "red"}]}, 400, "FX601"),  # a route key flux.toml does not know
    ]  # fmt: skip
    for body, status, error in cases:
        answer = client.simulate_post("/flux/api/deployments", json=body, headers=admin)
        assert (answer.status_code, answer.json["code"]) == (status, error), answer.json
    missing = client.simulate_post("/flux/api/artifacts/missing", json={"sha256": [sha]}, headers=admin)
    assert missing.json == {"missing": [sha]}


def test_an_uploaded_component_is_compiled_before_it_is_active(
    client: GatewayClient, admin: dict[str, str], conn: Conn
) -> None:
    """The server compiles what `flux deploy` uploads before activating it (no request waits for that): code
    that does not compile is refused, and the version before stays active."""
    code = b"\x00asm\x0d\x00\x01\x00"  # a component's header and nothing else
    function = {"name": "one", "runtime": "component", "sha256": hashlib.sha256(code).hexdigest(),
                "code": base64.b64encode(code).decode()}  # fmt: skip
    active = conn.execute("SELECT id FROM flux.deployments WHERE active").fetchall()
    answer = client.simulate_post("/flux/api/deployments", json={"functions": [function]}, headers=admin)
    assert answer.json["code"] == "FX307" and "does not import flux:function/host" in answer.json["message"]
    assert conn.execute("SELECT id FROM flux.deployments WHERE active").fetchall() == active


def test_text_postgres_cannot_hold_is_refused(client: GatewayClient, admin: dict[str, str]) -> None:
    nul = client.simulate_post("/flux/api/tenants", json={"name": "a\x00b"}, headers=admin)
    assert nul.status_code == 400 and nul.json["code"] == "FX131", nul.json
    surrogate = client.simulate_post(
        "/flux/api/tenants",
        body=b'{"name": "\\ud800"}',
        headers={**admin, "content-type": "application/json"},
    )
    assert surrogate.status_code == 400 and surrogate.json["code"] == "FX001"
