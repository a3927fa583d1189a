"""Host calls a function makes: fetch's address guard, secrets kept out of the record, the database after an
error, queue pushes and their idempotency keys."""

from __future__ import annotations

import ipaddress
from typing import Any

import psycopg
import pytest

from flux.runtime.fetch import FetchPolicy, is_public
from tests.fixtures.runtime import function

Conn = psycopg.Connection[Any]


def ts(name: str, source: str) -> Any:
    return function(name, "typescript", source)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1", "fd00:ec2::254",
     "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1"],
)  # fmt: skip
def test_private_loopback_link_local_and_metadata_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


def test_fetch_refuses_inside_addresses_unless_allow_listed(conn: Conn, call: Any, local_server: str) -> None:
    fn = ts(
        "fetcher",
        "export default async function (req, ctx) { const out = {};"
        " for (const url of req.body.urls) { try { out[url] = (await ctx.fetch(url)).status; }"
        " catch (e) { out[url] = e.code; } } return out; }",
    )
    urls = [
        f"{local_server}/a",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:1/",
        "file:///etc/passwd",
    ]
    refused = call(fn, {"body": {"urls": urls}}).response.body
    assert refused == dict.fromkeys(urls, "FX310")
    allowed = call(fn, {"body": {"urls": urls[:1]}}, fetch_policy=FetchPolicy(allow=("127.0.0.1",)))
    assert allowed.response.body == {urls[0]: 200}


def test_a_secret_is_given_to_the_function_and_never_written(conn: Conn, call: Any) -> None:
    fn = ts(
        "secretive",
        "export default async function (req, ctx) { const key = await ctx.secrets.get('api_key');"
        " console.log('calling with', key); return {length: key.length, echoed: key}; }",
    )
    outcome = call(fn, secrets={"api_key": "sk-live-123456"})
    assert outcome.response.body == {
        "length": 14,
        "echoed": "sk-live-123456",
    }  # the client gets what it returned
    record = conn.execute(
        "SELECT r.output::text, string_agg(s.input::text || coalesce(s.output::text, ''), ' ')"
        " FROM flux.requests r JOIN flux.spans s ON s.request_id = r.id GROUP BY r.output::text"
    ).fetchone()
    assert record is not None and "sk-live" not in record[0] + record[1]
    assert "[secret:api_key]" in record[0] and "calling with [secret:api_key]" in record[1]
    missing = call(
        ts("missing", "export default async function (req, ctx) { return await ctx.secrets.get('x'); }")
    )
    assert missing.error is not None and missing.error.code == "FX308"  # uncaught, the host's error fails it


def test_after_a_database_error_the_request_fails_and_its_writes_roll_back(conn: Conn, call: Any) -> None:
    fn = ts(
        "stubborn",
        "export default async function (req, ctx) {"
        " await ctx.db.query({insert: 'notes', values: {body: 'kept?'}});"
        " try { await ctx.db.query({insert: 'notes', values: {body: ''}}); } catch (e) {}"
        " try { await ctx.db.query({select: 'notes'}); } catch (e) { return {second: e.code}; } }",
    )
    outcome = call(fn)
    assert outcome.error is not None and outcome.error.code == "FX130"  # the first database error
    assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    spans = conn.execute(
        "SELECT name, error->>'code' FROM flux.spans WHERE request_id = %s AND seq > 2 ORDER BY seq",
        (outcome.request_id,),
    ).fetchall()
    assert spans == [("db:insert(notes)", None), ("db:insert(notes)", "FX130"), ("db:select(notes)", "FX309")]


def test_queue_push_is_idempotent_by_key_and_refuses_bad_jobs(conn: Conn, call: Any) -> None:
    fn = ts(
        "pusher",
        "export default async function (req, ctx) {"
        " const a = await ctx.queue.push('send_mail', {to: 1}, {idempotency_key: 'k1', priority: 5});"
        " const b = await ctx.queue.push('send_mail', {to: 2}, {idempotency_key: 'k1'});"
        " return {same: a.id === b.id}; }",
    )
    assert call(fn).response.body == {"same": True}
    assert conn.execute("SELECT function, payload, priority FROM flux.jobs").fetchall() == [
        ("send_mail", {"to": 1}, 5)
    ]
    bad = call(
        ts("bad_push", "export default async function (req, ctx) { await ctx.queue.push('no such!'); }")
    )
    assert bad.error is not None and bad.error.code == "FX401"
    assert conn.execute("SELECT count(*) FROM flux.jobs").fetchone() == (1,)
