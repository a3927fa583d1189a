"""The Falcon app through Falcon's test client, and the maintenance loop every worker runs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from falcon import testing
from psycopg_pool import ConnectionPool

from flux.app import create_app
from flux.config import load_settings
from flux.maintenance import MaintenanceLoop


@pytest.fixture
def pool(dsn: str) -> ConnectionPool:
    with ConnectionPool(dsn, min_size=1, max_size=2, open=True) as opened:
        yield opened


def test_health_and_ready(pool: ConnectionPool, project_dir: Path) -> None:
    client = testing.TestClient(create_app(load_settings(project_dir, env={}), pool))
    assert client.simulate_get("/health").json == {"status": "ok"}
    assert client.simulate_get("/ready").json == {"status": "ready"}


def test_ready_names_the_migrations_the_database_lacks(pool: ConnectionPool, project_dir: Path) -> None:
    (project_dir / "migrations").mkdir()
    (project_dir / "migrations" / "0001_orders.sql").write_text("CREATE TABLE orders (id int PRIMARY KEY);\n")
    client = testing.TestClient(create_app(load_settings(project_dir, env={}), pool))
    response = client.simulate_get("/ready")
    assert response.status_code == 503
    assert response.json == {"status": "unavailable", "migrations_pending": ["project:0001"]}


def test_ready_is_503_when_the_database_is_down(project_dir: Path) -> None:
    with ConnectionPool("postgresql://nobody@127.0.0.1:1/x", min_size=0, max_size=1, open=True) as dead:
        client = testing.TestClient(create_app(load_settings(project_dir, env={}), dead))
        response = client.simulate_get("/ready")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"


def test_an_unknown_path_is_a_404_not_a_500(pool: ConnectionPool, project_dir: Path) -> None:
    client = testing.TestClient(create_app(load_settings(project_dir, env={}), pool))
    assert client.simulate_get("/nope").status_code == 404


def test_the_maintenance_loop_recreates_missing_span_partitions(pool: ConnectionPool, dsn: str) -> None:
    tomorrow = f"spans_{datetime.now(UTC).date() + timedelta(days=1):%Y%m%d}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE flux.{tomorrow}".encode())
        loop = MaintenanceLoop(pool, interval_s=0.05).start()
        try:
            deadline = time.monotonic() + 10
            while conn.execute("SELECT to_regclass(%s)", (f"flux.{tomorrow}",)).fetchone() == (None,):
                assert time.monotonic() < deadline, "flux.maintain() did not run"
                time.sleep(0.05)
        finally:
            loop.stop()


def test_an_unexpected_exception_is_fx900_for_the_client_and_logged_for_the_operator(
    pool: ConnectionPool, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Boom:
        def on_get(self, req: object, resp: object) -> None:
            raise ValueError("internal detail")

    app = create_app(load_settings(project_dir, env={}), pool)
    app.add_route("/boom", Boom())
    response = testing.TestClient(app).simulate_get("/boom")

    assert response.status_code == 500
    assert response.json["code"] == "FX900"
    assert "internal detail" not in response.text
    assert "internal detail" in caplog.text
