"""Bounded work in process (issue 25): the admin key before the body, tenant validation, the API key cache's
misses, and one query's answer held to max_answer_rows and max_answer_bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flux import db
from flux.api.admin import create_admin_key
from flux.config import load_settings
from flux.data import Catalog, Limits, run_query
from flux.errors import AnswerTooLarge, InvalidConfig
from flux.gateway.auth import KeyCache, hash_key, new_api_key
from tests.fixtures.gateway import GatewayClient, gateway_client

Conn = psycopg.Connection[Any]


@pytest.fixture
def client(dsn: str, tmp_path: Path) -> Any:
    with gateway_client(load_settings(tmp_path, env={}), dsn) as client:
        yield client


@pytest.fixture
def admin(conn: Conn) -> dict[str, str]:
    return {"authorization": f"Bearer {create_admin_key(conn, 'tests').key}"}


class _Unreadable(io.RawIOBase):
    """A body that fails the test if anyone reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the body was read before the admin key was checked")


@pytest.mark.parametrize("path", ["/flux/api/deployments", "/flux/api/tenants", "/flux/api/jobs"])
def test_no_body_is_read_without_an_admin_key(client: GatewayClient, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer flux_admin_unknown"}):
        answer = client.simulate_post(path, headers={**headers, "content-type": "application/json",
                                                     "content-length": str(32 * 1024 * 1024)},
                                      extras={"wsgi.input": _Unreadable()})  # fmt: skip
        assert answer.status_code == 401 and answer.json["code"] == "FX606", answer.json


def test_a_declared_body_over_the_bound_is_refused_unread(
    client: GatewayClient, admin: dict[str, str]
) -> None:
    headers = {**admin, "content-type": "application/json", "content-length": str(1024**3)}
    answer = client.simulate_post(
        "/flux/api/deployments", headers=headers, extras={"wsgi.input": _Unreadable()}
    )
    assert answer.status_code == 413 and answer.json["code"] == "FX003"
    assert str(256 * 1024 * 1024) in answer.json["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": ""}, "must not be empty"),
        ({"name": "   "}, "must not be empty"),
        ({"name": "a\nb"}, "control characters"),
        ({"name": "x" * 101}, "at most 100 characters"),
        ({"name": "t", "rate_per_s": 4.9e-324, "burst": 5}, "rate_per_s"),
        ({"name": "t", "rate_per_s": 0, "burst": 5}, "rate_per_s"),
        ({"name": "t", "rate_per_s": -1, "burst": 5}, "rate_per_s"),
        ({"name": "t", "rate_per_s": 1e300, "burst": 5}, "rate_per_s"),
        ({"name": "t", "rate_per_s": 10**400, "burst": 5}, "rate_per_s"),
        ({"name": "t", "rate_per_s": 1, "burst": 0}, "burst"),
        ({"name": "t", "rate_per_s": 1, "burst": 10**12}, "burst"),
    ],
)
def test_tenants_are_validated(client: GatewayClient, admin: dict[str, str], body: Any, words: str) -> None:
    answer = client.simulate_post("/flux/api/tenants", json=body, headers=admin)
    assert answer.status_code == 400 and answer.json["code"] == "FX607", answer.json
    assert words in answer.json["message"]
    assert client.simulate_get("/flux/api/tenants", headers=admin).json["items"] == []


def test_a_sane_tenant_is_taken(client: GatewayClient, admin: dict[str, str]) -> None:
    body = {"name": "acme", "rate_per_s": 0.5, "burst": 10}
    assert client.simulate_post("/flux/api/tenants", json=body, headers=admin).status_code == 201
    key = client.simulate_post("/flux/api/keys", json={"tenant": "acme", "name": ""}, headers=admin)
    assert key.status_code == 400 and key.json["code"] == "FX607"


def test_the_key_cache_keeps_a_bounded_number_of_misses(conn: Conn) -> None:
    made = new_api_key()
    conn.execute("INSERT INTO flux.api_keys (prefix, key_hash, role) VALUES (%s, %s, 'user')",
                 (made.prefix, made.key_hash))  # fmt: skip
    cache = KeyCache(max_misses=50)
    with psycopg.connect(db.request_dsn(conn.info.dsn), autocommit=True) as request_conn:
        caller = cache.get(request_conn, made.key_hash)
        assert caller is not None and caller.role == "user"
        for i in range(500):
            assert cache.get(request_conn, hash_key(f"flux_made_up_{i}")) is None
        assert len(cache) == 51  # the live key and the 50 latest misses
        assert cache.get(request_conn, made.key_hash) is caller
        cache.clear()
        assert len(cache) == 0


def test_answer_settings_are_checked(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={"FLUX_MAX_ANSWER_ROWS": "500", "FLUX_MAX_ANSWER_BYTES": "65536"})
    assert (settings.max_answer_rows, settings.max_answer_bytes) == (500, 65536)
    for env in ({"FLUX_MAX_ANSWER_ROWS": "0"}, {"FLUX_MAX_ANSWER_BYTES": "lots"},
                {"FLUX_MAX_DEPLOY_BYTES": str(2**40)}):  # fmt: skip
        with pytest.raises(InvalidConfig):
            load_settings(tmp_path, env=env)


def test_an_answer_is_held_to_its_rows_and_bytes(shop: Catalog, as_role: Any) -> None:
    query = {"select": "customers", "columns": ["id", {"orders_by_customer_id": ["id"]}]}
    with as_role("user") as conn:
        whole = run_query(conn, query, shop, "user")
        rows = len(whole["rows"]) + sum(len(c["orders_by_customer_id"]) for c in whole["rows"])
        assert run_query(conn, query, shop, "user", Limits(max_answer_rows=rows))["rows"] == whole["rows"]
        with pytest.raises(AnswerTooLarge, match=f"over {rows - 1} \\(max_answer_rows\\)"):
            run_query(conn, query, shop, "user", Limits(max_answer_rows=rows - 1))
    with as_role("user") as conn, pytest.raises(AnswerTooLarge, match="over 10 bytes \\(max_answer_bytes\\)"):
        run_query(conn, query, shop, "user", Limits(max_answer_bytes=10))
    for count in ("exact", "planned"):
        with as_role("user") as conn:
            counted = run_query(conn, {**query, "count": count}, shop, "user")
            assert counted["rows"] == whole["rows"]
        with as_role("user") as conn, pytest.raises(AnswerTooLarge):
            run_query(conn, {**query, "count": count}, shop, "user", Limits(max_answer_bytes=10))
