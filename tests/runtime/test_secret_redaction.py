"""A secret a function read stays out of the record in every form it takes (issue 25, finding 8): upper and
lower case, truncated, URL-encoded, hex, base64 and base64url (alone, or of `user:secret` at each alignment),
in spans, error rows and log lines; and a fetch's credential headers are never recorded, whatever they hold.
Checked on a pg_dump of schema `flux` after the requests; a replay of such a request is still `same`."""

from __future__ import annotations

import base64
import subprocess
import urllib.parse
from typing import Any

import psycopg
import pytest

from flux import db
from flux.data import Catalog
from flux.gateway.handler import WithBuiltins
from flux.replay import Replay, built_code, recording_of, replay
from flux.runtime import Runtime
from flux.runtime.fetch import FetchPolicy
from flux.trace.recorder import Redactor
from flux.trace.tree import load_trace
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.runtime import ts

Conn = psycopg.Connection[Any]
LOCAL = FetchPolicy(allow=("127.0.0.1",))
KEY = "Zq7p/L2vX+9mK4t:R8wB3nY6cH1"
LEAKY = """
const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
function btoa(text) {  // the sandbox has none; ASCII text only
  let out = "";
  for (let i = 0; i < text.length; i += 3) {
    const [a, b, c] = [0, 1, 2].map((j) => text.charCodeAt(i + j));
    const n = (a << 16) | ((b || 0) << 8) | (c || 0);
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63] + (isNaN(b) ? "=" : ALPHABET[(n >> 6) & 63])
      + (isNaN(c) ? "=" : ALPHABET[n & 63]);
  }
  return out;
}
export default async function (req, ctx) {
  const key = await ctx.secrets.get("api_key");
  const hex = Array.from(key, (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");  // ASCII
  const b64url = btoa(key).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
  const answer = await ctx.fetch(
    req.body.url + "/echo?key=" + encodeURIComponent(key) + "&hex=" + hex.toUpperCase(),
    { headers: {
      authorization: "Basic " + btoa("user:" + key),
      "x-api-key": "opaque-" + key.length,
      cookie: "session=literal-cookie-value",
      "Proxy-Authorization": "Bearer literal-proxy-token",
      "x-signature": btoa("ab:" + key),
    } },
  );
  console.log("key is", key.toUpperCase());
  await ctx.log("key starts " + key.slice(0, 10) + "..., ends " + key.slice(-9));
  await ctx.log("encoded", { b64: btoa(key), b64url, hex, url: encodeURIComponent(key) });
  if (req.body.fail) throw new Error("refused with " + btoa("u:" + key) + " " + key.toLowerCase());
  return { echoed: JSON.parse(answer.body).pong, basic: btoa("x:" + key), lower: key.toLowerCase() };
}
"""


def leaked_forms(key: str) -> list[str]:
    """Every form LEAKY writes the key in (its encodings with what the function put around it)."""
    data = key.encode()

    def b64(prefix: str) -> str:
        return base64.b64encode(prefix.encode() + data).decode()

    return [
        key, key.upper(), key.lower(), key[:10], key[-9:], urllib.parse.quote(key, safe=""), data.hex(),
        data.hex().upper(), b64(""), b64("user:"), b64("ab:"), b64("u:"), b64("x:"),
        base64.urlsafe_b64encode(data).decode().rstrip("="),
    ]  # fmt: skip


def dump_flux(pg_server: PostgresServer, dsn: str) -> str:
    """pg_dump of schema `flux`, its rows included."""
    pg_dump = str(pg_server.bindir / "pg_dump")
    return subprocess.run(
        [pg_dump, "--schema=flux", "--no-owner", "-d", dsn], capture_output=True, text=True, check=True
    ).stdout


def test_no_form_of_a_secret_reaches_the_record(
    conn: Conn, call: Any, local_server: str, pg_server: PostgresServer, dsn: str
) -> None:
    leaky = ts("leaky", LEAKY)
    ok = call(leaky, {"body": {"url": local_server}}, secrets={"api_key": KEY}, fetch_policy=LOCAL)
    assert ok.error is None, ok.error
    assert ok.response.body["lower"] == KEY.lower()  # the client gets what the function returned
    assert ok.response.body["basic"] == base64.b64encode(f"x:{KEY}".encode()).decode()
    failed = call(leaky, {"body": {"url": local_server, "fail": True}}, secrets={"api_key": KEY},
                  fetch_policy=LOCAL)  # fmt: skip
    assert failed.error is not None and failed.error.code == "FX300"
    dump = dump_flux(pg_server, dsn)
    folded = dump.lower()
    assert "[secret:api_key]" in dump and "[redacted]" in dump
    for form in leaked_forms(KEY):
        for start in range(len(form) - 9):
            window = form[start : start + 10]
            assert window.lower() not in folded, f"{window!r} of {form!r} is in the dump"
    for literal in ("literal-cookie-value", "literal-proxy-token", "opaque-"):  # credential headers
        assert literal not in dump
    error = conn.execute("SELECT error->>'message' FROM flux.requests WHERE id = %s", [failed.request_id])
    assert "refused with dTp[secret:api_key]" in error.fetchone()[0]  # the error row keeps what is not secret


def test_a_replay_of_a_request_whose_fetch_sent_credentials_is_same(
    conn: Conn, runtime: Runtime, notes: Catalog, call: Any, local_server: str
) -> None:
    leaky = ts("leaky", LEAKY)
    outcome = call(leaky, {"body": {"url": local_server}}, secrets={"api_key": KEY}, fetch_policy=LOCAL)
    assert outcome.error is None, outcome.error
    how = Replay(WithBuiltins(runtime), built_code({leaky.name: leaky}), notes, fetch_policy=LOCAL,  # type: ignore[arg-type]
                 secrets={"api_key": KEY})  # fmt: skip
    with db.request_connection(conn) as runs_on:
        result = replay(conn, recording_of(load_trace(conn, outcome.request_id)), how, runs_on)
    assert result.verdict == "same", [(d.message, d.replayed) for d in result.divergences]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("nothing of it here", "nothing of it here"),
        ("short sk-li", "short sk-li"),  # fewer than 8 characters of it
        ("sk-live-0123456789abcdef", "[secret:k]"),
        ("SK-LIVE-0123456789ABCDEF", "[secret:k]"),
        ("log: sk-live-01…", "log: [secret:k]…"),
        ("Basic " + base64.b64encode(b"user:sk-live-0123456789abcdef").decode(), "Basic dXNlcjp[secret:k]Y="),
        ("c2stbGl2ZS0wMTIzNDU2Nzg5YWJjZGVm", "[secret:k]"),
        ("736B2D6C6976652D30313233343536373839616263646566", "[secret:k]"),
        ("sk-live-0123456789abcdef and again sk-live-0123456789abcdef", "[secret:k] and again [secret:k]"),
    ],
)
def test_the_redactor_finds_each_form(text: str, kept: str) -> None:
    assert Redactor({"sk-live-0123456789abcdef": "k"}).redact(text) == kept
