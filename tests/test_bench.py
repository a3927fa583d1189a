"""The bench's floors cannot go stale silently: each hand-written endpoint runs the SQL text and parameters
Flux compiles for the same JSON query, takes on the caller with the statement Flux's request transaction
sends, answers the same rows, and is served by Flux's own gunicorn application with the same settings and pool
size.
The last test runs `make bench-quick` at a tiny scale and checks it prints every row (no threshold)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from falcon import testing

from bench import floor_app, servers, web
from bench.floor_server import FloorApplication
from flux import db, jsontext
from flux.data import load_catalog, prepare, run_query
from flux.data.plan import Limits
from flux.server import FluxApplication

REPO = Path(__file__).resolve().parents[1]
QUERIES = [
    (floor_app.PK_QUERY, floor_app.PK_SQL, floor_app.pk_params),
    (floor_app.NESTED_QUERY, floor_app.NESTED_SQL, floor_app.nested_params),
    (floor_app.INSERT_QUERY, floor_app.INSERT_SQL, floor_app.insert_params),
]


@pytest.fixture
def bench_db(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(web.SCHEMA_SQL.encode())
    return dsn


@pytest.mark.parametrize("query, sql, params", QUERIES, ids=["pk", "nested", "insert"])
def test_each_floor_runs_the_sql_and_parameters_flux_compiles(
    bench_db: str, query: dict[str, Any], sql: str, params: Any
) -> None:
    with psycopg.connect(bench_db, autocommit=True) as conn:
        planned = prepare(query, load_catalog(conn), "user")
    assert sql == planned.sql
    assert params(query) == planned.params


def test_the_floor_takes_on_the_caller_as_flux_does() -> None:
    """The same settings statement (role, request id, claims, tenant, statement timeout) with the same
    values a user's request of Flux sends."""
    limits = Limits()
    transaction = db.RequestTransaction(None, role="user", request_id="r", claims={"sub": "bench"},  # type: ignore[arg-type]
                                        statement_timeout_ms=limits.timeout_for("user"))  # fmt: skip
    settings = transaction._settings
    assert floor_app.SETTINGS_SQL == db._settings_sql(tuple(settings)).decode()
    assert floor_app.settings_params("r") == list(settings.values())


def test_the_floor_answers_what_flux_answers(bench_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    made = servers_key()
    monkeypatch.setenv("BENCH_KEY_HASH", made[1])
    client = testing.TestClient(floor_app.create(bench_db, 1))
    headers = {"authorization": f"Bearer {made[0]}"}
    with psycopg.connect(bench_db, autocommit=True) as conn:
        catalog = load_catalog(conn)
        for query, _, _ in QUERIES[:2]:
            name = "pk" if query is floor_app.PK_QUERY else "nested"
            with db.request_transaction(conn, role="user", request_id=str(uuid.uuid4())):
                expected = run_query(conn, query, catalog, "user")
            answer = client.simulate_post(f"/{name}", json=query, headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.json == json.loads(jsontext.dumps(expected)), name  # numbers as Flux sends them
            assert answer.json["rows"], name
        answer = client.simulate_post("/insert", json=floor_app.INSERT_QUERY, headers=headers)
        assert answer.json == {"count": 1}
        assert conn.execute("SELECT account_id, kind FROM bench_events").fetchall() == [(42, "click")]
        answer = client.simulate_post("/orders", json=web.PATH_BODY, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json["email"] == "user42@example.com"
        assert conn.execute("SELECT count(*) FROM flux.mutations WHERE table_name = 'bench_path_orders'"
                            ).fetchone() == (1,)  # fmt: skip
        refused = client.simulate_post("/pk", json=floor_app.PK_QUERY, headers={"authorization": "Bearer no"})
        assert refused.status_code == 401


def servers_key() -> tuple[str, str]:
    from flux.gateway.auth import hash_key, new_api_key

    made = new_api_key()
    return made.key, hash_key(made.key).hex()


def test_the_floor_is_served_like_flux(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flux's gunicorn application, only `load` replaced; a pool as big as a Flux worker's request pool."""
    assert issubclass(FloorApplication, FluxApplication)
    own = {name for name, value in vars(FloorApplication).items() if callable(value)}
    assert own == {"load"}

    from flux import app as flux_app

    sizes: list[int] = []

    class Stop(Exception):
        pass

    def fake_pool(dsn: str, **options: Any) -> Any:
        sizes.append(options["max_size"])
        raise Stop

    monkeypatch.setattr(flux_app, "create_pool", fake_pool)
    for threads in (1, 4):
        with pytest.raises(Stop):
            flux_app.create_gateway(flux_app.load_settings(env={}, threads=threads), "dbname=x")
        assert sizes[-1] == floor_app.pool_size(threads)
    assert servers.SERVER_ENV["FLUX_WORKER_CLASS"] == "sync"  # both servers get SERVER_ENV (bench/servers.py)


@pytest.mark.slow
def test_make_bench_quick_prints_every_row(tmp_path: Path) -> None:
    env = {**os.environ, "FLUX_BENCH_TINY": "1", "FLUX_BENCH_RESULTS": str(tmp_path)}
    env.pop("DATABASE_URL", None)  # its own embedded Postgres, as on a fresh clone
    done = subprocess.run(["make", "bench-quick"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    written = list(tmp_path.glob("*.json"))
    assert len(written) == 1
    rows = json.loads(written[0].read_text())["rows"]
    assert not [row for row in rows if row["error"]]
    scenarios = [row["scenario"] for row in rows]
    for prefix in (
        "data engine:",
        "whole path:",
        "runtime:",
        "queue:",
        "tracking:",
        "trace store:",
        "replay:",
    ):
        assert any(name.startswith(prefix) for name in scenarios), prefix
    for name in scenarios:
        assert name in done.stdout
