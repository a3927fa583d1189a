"""`ctx.fetch`'s bounds: `timeout_ms` is one deadline for connecting, the headers and the body together (a
target that drips bytes cannot hold a request past it), and the address guard judges an IPv6 address that
embeds an IPv4 one by the IPv4 one (checked offline, by the policy function: no such traffic is sent)."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import psycopg
import pytest

from flux.runtime.fetch import FetchPolicy, embedded_ipv4, is_public
from tests.fixtures.runtime import ts

Conn = psycopg.Connection[Any]
LOCAL = FetchPolicy(allow=("127.0.0.1",))


CAUGHT = """
export default async function (req, ctx) {
  const started = Date.now();
  try {
    const answer = await ctx.fetch(req.body.url, { timeout_ms: 1000 });
    return { status: answer.status, took: Date.now() - started };
  } catch (e) {
    return { code: e.code, message: e.message };
  }
}
"""
UNCAUGHT = "export default async (req, ctx) => (await ctx.fetch(req.body.url, { timeout_ms: 1000 })).body"


@pytest.mark.parametrize("dripped", ["body", "headers"])
def test_a_dripping_target_ends_the_fetch_at_its_timeout_with_fx311(
    conn: Conn, call: Any, dripping_server: str, dripped: str
) -> None:
    url = f"{dripping_server}/{dripped}"
    started = time.monotonic()
    caught = call(ts("caught", CAUGHT), {"body": {"url": url}}, fetch_policy=LOCAL)
    took = time.monotonic() - started
    assert caught.error is None, caught.error
    assert caught.response.body["code"] == "FX311", caught.response.body
    assert "ran past its timeout_ms of 1000 ms" in caught.response.body["message"]
    assert took < 2.5, f"the fetch took {took:.1f} s for a timeout of 1 s (30 s before the deadline)"
    span = conn.execute(
        "SELECT error->>'code', duration_us FROM flux.spans WHERE request_id = %s AND module = 'fetch'",
        [caught.request_id],
    ).fetchone()
    assert span is not None and span[0] == "FX311" and 900_000 <= span[1] < 2_000_000, span

    started = time.monotonic()
    uncaught = call(ts("uncaught", UNCAUGHT), {"body": {"url": url}}, fetch_policy=LOCAL)
    assert time.monotonic() - started < 2.5
    assert uncaught.error is not None and uncaught.error.code == "FX311"
    row = conn.execute(
        "SELECT status, ok, error->>'code' FROM flux.requests WHERE id = %s", [uncaught.request_id]
    ).fetchone()
    assert row == (502, False, "FX311")  # the request ends with its error, and its record


def test_a_target_within_the_timeout_answers_as_before(call: Any, local_server: str) -> None:
    outcome = call(ts("caught", CAUGHT), {"body": {"url": f"{local_server}/sleep/0.2"}}, fetch_policy=LOCAL)
    assert outcome.response.body["status"] == 200, outcome.response.body


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64, well-known prefix
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b:1:7f00:0:100::", "127.0.0.1"),  # NAT64 local use (RFC 8215), a /48 prefix
        ("64:ff9b:1::a00:1", "10.0.0.1"),  # the same prefix, read as a /96
        ("2002:a00:1::1", "10.0.0.1"),  # 6to4
        ("2002:c0a8:101::", "192.168.1.1"),
        ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible
        ("::ffff:10.1.2.3", "10.1.2.3"),  # IPv4-mapped
        ("::ffff:0:127.0.0.1", "127.0.0.1"),  # IPv4-translated
        ("::ffff:0:a9fe:a9fe", "169.254.169.254"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),  # Teredo: client 127.0.0.1, obfuscated
    ],
)
def test_an_ipv6_address_embedding_a_private_ipv4_one_is_not_public(address: str, inner: str) -> None:
    parsed = ipaddress.IPv6Address(address)
    assert ipaddress.IPv4Address(inner) in embedded_ipv4(parsed)
    assert not is_public(parsed)


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "::ffff:0:8.8.8.8", "::8.8.8.8",
     "2001:4860:4860::8888", "8.8.8.8"],
)  # fmt: skip
def test_an_address_embedding_a_public_ipv4_one_stays_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_teredo_is_judged_by_its_server_and_its_client() -> None:
    # server 65.54.227.120 (public), client 192.0.2.45 (documentation, not global)
    assert not is_public(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert embedded_ipv4(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")) == [
        ipaddress.IPv4Address("65.54.227.120"),
        ipaddress.IPv4Address("192.0.2.45"),
    ]


def test_a_fetch_ends_by_the_functions_own_time_limit_when_that_comes_first(
    conn: Conn, call: Any, dripping_server: str
) -> None:
    """A fetch allowed 60 s in a function allowed 1.5 s: the run ends at 1.5 s with FX301 (however the
    function handles the call's error), recorded, never held until a supervisor kills the worker."""
    patient = ts(
        "patient",
        "export default async (req, ctx) => {"
        " try { await ctx.fetch(req.body.url, {timeout_ms: 60000}); }"
        " catch (e) { return {caught: e.code}; } }",
        timeout_ms=1500,
    )
    started = time.monotonic()
    outcome = call(patient, {"body": {"url": f"{dripping_server}/body"}}, fetch_policy=LOCAL)
    took = time.monotonic() - started
    assert outcome.error is not None and outcome.error.code == "FX301", outcome.error
    assert took < 3.5, f"the run took {took:.1f} s for a time limit of 1.5 s"
    span = conn.execute(
        "SELECT error->>'code', error->>'message', attributes->>'aborted' FROM flux.spans"
        " WHERE request_id = %s AND module = 'fetch'",
        [outcome.request_id],
    ).fetchone()
    assert span is not None and span[0] == "FX301" and "during fetch GET" in span[1] and span[2] == "true"
    row = conn.execute("SELECT status, ok FROM flux.requests WHERE id = %s", [outcome.request_id])
    assert row.fetchone() == (504, False)
