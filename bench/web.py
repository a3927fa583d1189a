"""Flux over HTTP against its floors and OpenTelemetry, with wrk, side by side in one run (the table's `data
engine` and `whole path` rows):

- the data engine's single-row select, 20-row nested select and single-row insert through `POST /db/query`,
  against the hand-written endpoints of `bench/floor_app.py` running the same SQL (req/s at 4 connections);
- a recorded request through the whole path (gateway, a TypeScript function, two reads, one insert into a
  tracked table with its mutation row) against the same app by hand, bare and with OpenTelemetry's
  auto-instrumentation exporting to a local OTLP sink (ms per request at one connection: no queueing, so the
  difference is what each adds to a request).

Both servers run under Flux's own gunicorn application class with the same settings (`bench/servers.py`),
each measured round alternating with the other, and the rows are medians of the paired ratios.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import psycopg

from bench import floor_app, servers
from bench.table import Row, paired, pick, row_from_pairs
from flux.gateway.auth import hash_key, new_api_key

FLUX_TOML = """
[[routes]]
method = "POST"
path = "/orders"
function = "orders"
auth = "key"

[[routes]]
method = "POST"
path = "/orders-wasm"
function = "orders_wasm"
auth = "key"
"""
ORDERS_TS = """// The whole path's function: two reads and one insert (into a tracked table), as
// bench/floor_app.py's `/orders` does by hand.
export default async (req: any, ctx: any) => {
  const account = (await ctx.db.query({
    select: "bench_accounts", columns: ["id", "email", "name"], where: { id: { eq: req.body.account } },
  })).rows[0];
  const product = (await ctx.db.query({
    select: "bench_products", columns: ["sku", "price"], where: { sku: { eq: req.body.sku } },
  })).rows[0];
  if (!account || !product) return { status: 404, body: {} };
  const order = await ctx.db.query({
    insert: "bench_path_orders", values: { account_id: account.id, sku: product.sku, total: product.price },
    returning: ["id"],
  });
  return { order: order.rows[0].id, email: account.email, total: String(product.price) };
};
"""
ORDERS_C = r"""// The whole path's function in C (Wasm): two reads and one insert into a tracked table, as the
// TypeScript `orders` and bench/floor_app.py's `/orders` do. It reads JSON by looking for keys (Flux's).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((import_module("flux"), import_name("call")))
uint64_t flux_call(const char *json, uint32_t len);

__attribute__((export_name("flux_alloc"))) void *flux_alloc(uint32_t len) { return malloc(len ? len : 1); }

static const char *call(const char *json, uint32_t *len) {
    uint64_t packed = flux_call(json, (uint32_t)strlen(json));
    *len = (uint32_t)packed;
    return (const char *)(uintptr_t)(packed >> 32);
}

// The raw JSON value of the first "key" in `json` (a number, or a string's characters without quotes).
static int field(const char *json, uint32_t len, const char *key, char *out, size_t size) {
    char pattern[64];
    int n = snprintf(pattern, sizeof pattern, "\"%s\":", key);
    for (const char *at = json; at + n <= json + len; at++) {
        if (memcmp(at, pattern, (size_t)n) != 0) continue;
        const char *start = at + n, *end = start;
        if (*start == '"') {
            end = memchr(++start, '"', (size_t)(json + len - start));
        } else {
            while (end < json + len && *end != ',' && *end != '}' && *end != ']') end++;
        }
        if (!end || (size_t)(end - start) >= size) return 0;
        memcpy(out, start, (size_t)(end - start));
        out[end - start] = 0;
        return 1;
    }
    return 0;
}

static char out[512];

static uint64_t answer(const char *text) {
    return ((uint64_t)(uintptr_t)text << 32) | (uint32_t)strlen(text);
}

__attribute__((export_name("flux_handle"))) uint64_t flux_handle(const char *request, uint32_t len) {
    char account[32], sku[64], id[32], email[128], price[32], query[512], order[32];
    uint32_t got;
    const char *reply;
    if (!field(request, len, "account", account, sizeof account)
        || !field(request, len, "sku", sku, sizeof sku))
        return answer("{\"status\":400,\"body\":{}}");
    snprintf(query, sizeof query, "{\"op\":\"db.query\",\"args\":{\"select\":\"bench_accounts\",\"columns\":"
             "[\"id\",\"email\",\"name\"],\"where\":{\"id\":{\"eq\":%s}}}}", account);
    reply = call(query, &got);
    if (!field(reply, got, "id", id, sizeof id) || !field(reply, got, "email", email, sizeof email))
        return answer("{\"status\":404,\"body\":{}}");
    snprintf(query, sizeof query, "{\"op\":\"db.query\",\"args\":{\"select\":\"bench_products\",\"columns\":"
             "[\"sku\",\"price\"],\"where\":{\"sku\":{\"eq\":\"%s\"}}}}", sku);
    reply = call(query, &got);
    if (!field(reply, got, "price", price, sizeof price)) return answer("{\"status\":404,\"body\":{}}");
    snprintf(query, sizeof query, "{\"op\":\"db.query\",\"args\":{\"insert\":\"bench_path_orders\","
             "\"values\":{\"account_id\":%s,\"sku\":\"%s\",\"total\":%s},\"returning\":[\"id\"]}}",
             id, sku, price);
    reply = call(query, &got);
    if (!field(reply, got, "id", order, sizeof order)) return answer("{\"status\":500,\"body\":{}}");
    snprintf(out, sizeof out, "{\"order\":%s,\"email\":\"%s\",\"total\":\"%s\"}", order, email, price);
    return answer(out);
}
"""
SCHEMA_SQL = """
DROP TABLE IF EXISTS bench_items, bench_orders, bench_events, bench_path_orders, bench_products,
    bench_accounts CASCADE;
CREATE TABLE bench_accounts (id int PRIMARY KEY, email text NOT NULL, name text);
CREATE TABLE bench_products (sku text PRIMARY KEY, title text NOT NULL, price numeric(10,2) NOT NULL);
CREATE TABLE bench_orders (id serial PRIMARY KEY, account_id int NOT NULL REFERENCES bench_accounts,
                           status text NOT NULL DEFAULT 'open', total numeric(10,2) NOT NULL DEFAULT 0);
CREATE TABLE bench_items (order_id int REFERENCES bench_orders ON DELETE CASCADE, sku text,
                          quantity int NOT NULL, PRIMARY KEY (order_id, sku));
CREATE TABLE bench_events (id bigserial PRIMARY KEY, account_id int NOT NULL, kind text NOT NULL,
                           at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_path_orders (id bigserial PRIMARY KEY, account_id int NOT NULL, sku text NOT NULL,
                                total numeric(10,2) NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO bench_accounts
    SELECT i, 'user' || i || '@example.com', 'User ' || i FROM generate_series(1, 1000) i;
INSERT INTO bench_products SELECT 'sku' || i, 'Product ' || i, 1 + i % 50 FROM generate_series(0, 99) i;
INSERT INTO bench_orders (account_id, status, total)
    SELECT 1 + i % 1000, (ARRAY['open', 'paid', 'cancelled'])[1 + i % 3], (i % 10000) / 100.0
      FROM generate_series(1, 10000) i;
INSERT INTO bench_items SELECT o, 'sku' || (o * 7 + k) % 100, 1 + (o + k) % 5
      FROM generate_series(1, 10000) o, generate_series(1, 3) k WHERE k <= 2 + o % 2;
GRANT SELECT ON bench_accounts, bench_products, bench_orders, bench_items TO flux_user;
GRANT SELECT, INSERT ON bench_events, bench_path_orders TO flux_user;
GRANT USAGE ON SEQUENCE bench_events_id_seq, bench_path_orders_id_seq TO flux_user;
SELECT flux.track('bench_path_orders');
ANALYZE bench_accounts, bench_products, bench_orders, bench_items;
"""
CLEAN_SQL = (
    "DROP TABLE IF EXISTS bench_items, bench_orders, bench_events, bench_path_orders, bench_products,"
    " bench_accounts CASCADE"
)
PATH_BODY = {"account": 42, "sku": "sku7"}
OTEL_ROW = "whole path: Flux vs by hand + OpenTelemetry"


def setup(dsn: str, folder: Path) -> str:
    """The project (its route and function), the tables, and an API key of role user; the key."""
    (folder / "flux.toml").write_text(FLUX_TOML)
    (folder / "functions" / "orders").mkdir(parents=True)
    (folder / "functions" / "orders" / "index.ts").write_text(ORDERS_TS)
    (folder / "functions" / "orders_wasm").mkdir()
    (folder / "functions" / "orders_wasm" / "index.c").write_text(ORDERS_C)
    made = new_api_key()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.encode())
        conn.execute("INSERT INTO flux.api_keys (prefix, key_hash, role) VALUES (%s, %s, 'user')",
                     (made.prefix, made.key_hash))  # fmt: skip
    return made.key


def rows(dsn: str, quick: bool) -> list[Row]:
    """The data engine's three rows and the whole path's three, from one Flux server, one floor server and one
    floor server with OpenTelemetry."""
    servers.ensure_wrk()
    rounds, seconds = pick(quick, (11, 3.0), (3, 2.0), (2, 1.0))
    folder = Path(tempfile.mkdtemp(prefix="flux-bench-web-"))
    folder.chmod(0o755)
    try:
        key = setup(dsn, folder)
        key_hash = hash_key(key).hex()
        env = {"BENCH_KEY_HASH": key_hash}
        with ExitStack() as stack:
            sink = stack.enter_context(servers.otlp_sink(folder))
            flux = stack.enter_context(servers.flux_server(dsn, folder))
            floor = stack.enter_context(servers.floor_server(dsn, folder, env))
            otel = stack.enter_context(servers.floor_server(dsn, folder, {**env, "BENCH_OTEL": sink}, "otel"))
            found = _data_rows(folder, key, flux, floor, rounds, seconds)
            found += _path_rows(folder, key, flux, floor, otel, rounds, seconds)
            received = servers.sink_received(sink)
            deadline = time.monotonic() + 10  # the BatchSpanProcessor exports every 5 s
            while not received["exports"] and time.monotonic() < deadline:
                time.sleep(0.5)
                received = servers.sink_received(sink)
            if not received["exports"]:
                raise RuntimeError("the OTLP sink received no spans: OpenTelemetry was not measured")
            otel_row = next(row for row in found if row.scenario == OTEL_ROW)
            otel_row.note += f"; the sink received {received['exports']} exports, {received['bytes']:,} bytes"
        return found
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(CLEAN_SQL)
            conn.execute("DELETE FROM flux.mutations WHERE table_name = 'bench_path_orders'")
        shutil.rmtree(folder, ignore_errors=True)


def _data_rows(folder: Path, key: str, flux: str, floor: str, rounds: int, seconds: float) -> list[Row]:
    found = []
    for label, name, query, target in (
        ("data engine: select 1 row by key", "pk", floor_app.PK_QUERY, ">= 0.7"),
        (f"data engine: select {floor_app.NESTED_ROWS} rows + nested", "nested", floor_app.NESTED_QUERY,
         ">= 0.7"),
        ("data engine: insert 1 row", "insert", floor_app.INSERT_QUERY, ">= 0.7"),
    ):  # fmt: skip
        script = servers.post_script(folder, name, json.dumps(query), key)
        for url in (f"{flux}/db/query", f"{floor}/{name}"):
            servers.wrk(url, script, duration_s=1)  # warm: plans, prepared statements, caches
        figures = paired(
            rounds,
            lambda script=script: servers.wrk(f"{flux}/db/query", script, seconds)[1],
            lambda script=script, name=name: servers.wrk(f"{floor}/{name}", script, seconds)[1],
        )
        found.append(row_from_pairs(
            label, "req/s", "Falcon + psycopg by hand", figures, target=target,
            note="" if name != "pk" else "POST /db/query (recorded) vs the same SQL by hand, prepared and"
            " pipelined, 4 connections, 2 sync workers pinned (both)",
        ))  # fmt: skip
    return found


def _path_rows(
    folder: Path, key: str, flux: str, floor: str, otel: str, rounds: int, seconds: float
) -> list[Row]:
    script = servers.post_script(folder, "orders", json.dumps(PATH_BODY), key)
    urls = {
        "flux": f"{flux}/orders",
        "wasm": f"{flux}/orders-wasm",
        "bare": f"{floor}/orders",
        "otel": f"{otel}/orders",
    }
    for name, url in urls.items():
        _check_order(name, url, key)
        servers.wrk(url, script, duration_s=1)
    per_request: dict[str, list[float]] = {name: [] for name in urls}
    order = list(urls)
    for index in range(rounds):
        for name in order[index % 4 :] + order[: index % 4]:  # each goes first in turn
            rate = servers.wrk(urls[name], script, seconds, connections=1)[1]
            per_request[name].append(1000 / rate)
    flux_ms, bare_ms, otel_ms = per_request["flux"], per_request["bare"], per_request["otel"]
    against_bare = (flux_ms, bare_ms, [f / b for f, b in zip(flux_ms, bare_ms, strict=True)])
    against_otel = (flux_ms, otel_ms, [f / o for f, o in zip(flux_ms, otel_ms, strict=True)])
    otel_added = [o - b for o, b in zip(otel_ms, bare_ms, strict=True)]

    def added(ms: list[float]) -> tuple[list[float], list[float], list[float]]:
        """Flux's ms a request over the app by hand, OTel's, and their ratios, round by round."""
        flux_added = [f - b for f, b in zip(ms, bare_ms, strict=True)]
        ratios = [f / o if o > 0 else float("inf") for f, o in zip(flux_added, otel_added, strict=True)]
        return flux_added, otel_added, ratios

    return [
        row_from_pairs("whole path: Flux vs by hand, untraced", "ms/req", "Falcon + psycopg, no tracing",
                       against_bare,
                       note="POST /orders: gateway, TypeScript function, 2 reads, 1 insert into a tracked"
                       " table (Flux records request, spans, inputs, outputs, mutation); 1 connection,"
                       " mean ms a request"),
        row_from_pairs(OTEL_ROW, "ms/req", "Falcon + psycopg + OTel",
                       against_otel,
                       note="OTel: falcon + psycopg auto-instrumentation, SDK BatchSpanProcessor, OTLP/HTTP"
                       " exporter to a local sink (a request span and a span per statement)"),
        row_from_pairs("whole path: added per request, Flux vs OTel", "ms", "OTel's added", added(flux_ms),
                       note="each side's ms a request over the untraced app by hand, same round; Flux's"
                       " includes running the TypeScript function (the app by hand has none)"),
        row_from_pairs("whole path: added per request, Flux Wasm vs OTel", "ms", "OTel's added",
                       added(per_request["wasm"]),
                       note="the same, the function in C built to Wasm (bench/web.py's ORDERS_C)"),
    ]  # fmt: skip


def _check_order(name: str, url: str, key: str) -> None:
    """One `/orders` request answered as it should be (an order made), before its rate counts."""
    request = urllib.request.Request(url, json.dumps(PATH_BODY).encode(), method="POST", headers={
        "content-type": "application/json", "authorization": f"Bearer {key}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    if not (isinstance(body, dict) and body.get("order") and body.get("email") == "user42@example.com"):
        raise RuntimeError(f"{name}'s /orders answered {body!r}")
