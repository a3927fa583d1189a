"""The data engine: JSON queries compiled to SQL under the caller's role, its RLS and column policies.

catalog = CatalogCache().get(conn)
with db.request_transaction(conn, role="user", request_id=..., claims=...):
    result = run_query(conn, {"select": "users", "where": {"id": {"eq": 1}}}, catalog, "user")
"""

from flux.data.catalog import Catalog, CatalogCache, load_catalog
from flux.data.engine import prepare, run_query, run_sql
from flux.data.plan import Limits

__all__ = ["Catalog", "CatalogCache", "Limits", "load_catalog", "prepare", "run_query", "run_sql"]
