"""`flux explain`: what a JSON query would run, as whom and under which policies, without running it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from flux import db
from flux.data.catalog import Catalog
from flux.data.engine import prepare, row_level_policies
from flux.data.plan import Limits, Role
from flux.db import JsonParam


@dataclass(frozen=True)
class Explanation:
    sql: str
    params: list[Any]
    role: Role
    column_rules: list[str]
    row_level: list[dict[str, Any]]
    plan: list[str]


def explain(
    conn: Any, query: Any, catalog: Catalog, role: Role, claims: dict[str, Any] | None = None,
    limits: Limits | None = None,
) -> Explanation:  # fmt: skip
    """Compile the query, then ask Postgres for its plan as `role` with `claims` (rolled back)."""
    planned = prepare(query, catalog, role, limits)
    params = [p.value if isinstance(p, JsonParam) else p for p in planned.params]
    timeout = (limits or Limits()).timeout_for(role)
    with db.request_transaction(
        conn, role=role, request_id=str(uuid.uuid4()), claims=claims, statement_timeout_ms=timeout,
        force_rollback=True,
    ):  # fmt: skip
        rows, _ = db.execute_statement(conn, "EXPLAIN " + planned.sql, planned.params)
        row_level = row_level_policies(conn, planned)
    lines = [row["QUERY PLAN"] for row in rows]
    return Explanation(planned.sql, params, role, planned.policies, row_level, lines)
