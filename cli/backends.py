"""What `flux secrets|tenants|keys|deployments|rollback|queue` and `flux trace|tail|why|state` work on: the
database (DATABASE_URL, or the project's embedded Postgres) or, when FLUX_URL is set, a Flux server's
management API. Both answer the same shapes, so each command is written once."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flux.trace.tree import Trace
    from flux.trace.why import Why

from flux.errors import FluxError

Row = dict[str, Any]
FOLLOW_POLL_S = 0.5  # how often `flux tail` through the API asks for what was recorded since


class Backend(Protocol):
    def list_deployments(self) -> list[Row]: ...
    def rollback(self, version: int) -> None: ...
    def set_secret(self, name: str, value: str) -> None: ...
    def list_secrets(self) -> list[Row]: ...
    def remove_secret(self, name: str) -> None: ...
    def create_tenant(self, name: str, rate_per_s: float | None, burst: int | None) -> str: ...
    def list_tenants(self) -> list[Row]: ...
    def create_key(self, role: str, tenant: str | None, name: str | None) -> Row: ...
    def list_keys(self) -> list[Row]: ...
    def revoke_key(self, key: str) -> int: ...
    def push_jobs(self, jobs: list[Row]) -> list[Row]: ...
    def list_jobs(
        self, status: str | None, queue: str | None, function: str | None, limit: int
    ) -> list[Row]: ...
    def get_job(self, job_id: int) -> Row: ...
    def queue_stats(self) -> list[Row]: ...
    def retry_job(self, job_id: int) -> Row: ...
    def cancel_job(self, job_id: int) -> Row: ...
    def list_schedules(self) -> list[Row]: ...
    def trace(self, request_id: str) -> Trace: ...
    def requests(self, filters: Row) -> list[Row]: ...
    def follow(self, filters: Row) -> Iterator[Row]: ...
    def why(self, request_id: str) -> Why: ...
    def row_history(self, table: str, key: str) -> list[Row]: ...
    def row_blame(self, table: str, key: str) -> list[Row]: ...
    def table_blame(self, table: str, limit: int) -> list[Row]: ...


@contextmanager
def backend(project: Path, *, reads_only: bool = False) -> Iterator[Backend]:
    """The management API when FLUX_URL is set, else the database. A command that `reads_only` never creates
    a database: with no project, no DATABASE_URL and no FLUX_URL it is FX807."""
    from cli.remote import remote

    api = remote()
    if api is not None:
        yield ViaApi(api)
        return
    with database_connection(project, reads_only=reads_only, flux_url_works=True) as conn:
        yield ViaDatabase(conn, project)


@contextmanager
def database_connection(
    project: Path, *, reads_only: bool = False, flux_url_works: bool = False
) -> Iterator[Any]:
    """An autocommit connection to DATABASE_URL or the project's embedded Postgres, migrated (see
    `database_for` for `reads_only`)."""
    from cli.db import database_for
    from flux import db, migrate

    with database_for(project, reads_only=reads_only, flux_url_works=flux_url_works) as (dsn, _):
        migrate.migrate(dsn)
        with db.connect(dsn, autocommit=True) as conn:
            yield conn


class ViaDatabase:
    def __init__(self, conn: Any, project: Path) -> None:
        self.conn = conn
        self.project = project

    def list_deployments(self) -> list[Row]:
        from flux.api.deploy import list_deployments

        return list_deployments(self.conn)

    def rollback(self, version: int) -> None:
        from flux.api.deploy import rollback_in

        rollback_in(self.conn, version)

    def set_secret(self, name: str, value: str) -> None:
        from flux.api.secrets import set_secret
        from flux.runtime.secrets import load_key

        set_secret(self.conn, load_key(self.project.resolve()), name, value)

    def list_secrets(self) -> list[Row]:
        from flux.api.secrets import list_secrets

        return [{"name": name, "updated_at": at} for name, at in list_secrets(self.conn)]

    def remove_secret(self, name: str) -> None:
        from flux.api.secrets import remove_secret

        remove_secret(self.conn, name)

    def create_tenant(self, name: str, rate_per_s: float | None, burst: int | None) -> str:
        from flux.api.keys import create_tenant

        return create_tenant(self.conn, name, rate_per_s, burst)

    def list_tenants(self) -> list[Row]:
        from flux.api.keys import list_tenants

        return list_tenants(self.conn)

    def create_key(self, role: str, tenant: str | None, name: str | None) -> Row:
        from flux.api.keys import create_key

        created = create_key(self.conn, role, tenant, name)
        return {"id": created.id, "key": created.key, "prefix": created.prefix, "role": created.role,
                "tenant": created.tenant}  # fmt: skip

    def list_keys(self) -> list[Row]:
        from flux.api.keys import list_keys

        return list_keys(self.conn)

    def revoke_key(self, key: str) -> int:
        from flux.api.keys import revoke_key

        return revoke_key(self.conn, key)

    def push_jobs(self, jobs: list[Row]) -> list[Row]:
        from flux.queue import push

        return push(self.conn, jobs)

    def list_jobs(self, status: str | None, queue: str | None, function: str | None, limit: int) -> list[Row]:
        from flux.queue import list_jobs

        return list_jobs(self.conn, status=status, queue=queue, function=function, limit=limit)

    def get_job(self, job_id: int) -> Row:
        from flux.queue import get_job

        return get_job(self.conn, job_id)

    def queue_stats(self) -> list[Row]:
        from flux.queue import stats

        return stats(self.conn)

    def retry_job(self, job_id: int) -> Row:
        from flux.queue import retry

        return retry(self.conn, job_id)

    def cancel_job(self, job_id: int) -> Row:
        from flux.queue import cancel

        return cancel(self.conn, job_id)

    def list_schedules(self) -> list[Row]:
        from flux.queue.cron import list_schedules

        return list_schedules(self.conn)

    def trace(self, request_id: str) -> Trace:
        from flux.trace.tree import find_trace

        return find_trace(self.conn, request_id)

    def requests(self, filters: Row) -> list[Row]:
        from flux.trace.tree import list_requests

        return list_requests(self.conn, **filters)

    def follow(self, filters: Row) -> Iterator[Row]:
        from flux.trace.tree import follow_requests

        return follow_requests(self.conn, **filters)

    def why(self, request_id: str) -> Why:
        from flux.trace.why import explain_request

        return explain_request(self.conn, self.trace(request_id))

    def row_history(self, table: str, key: str) -> list[Row]:
        from flux.trace.state import history

        return history(self.conn, table, key)

    def row_blame(self, table: str, key: str) -> list[Row]:
        from flux.trace.state import blame

        return blame(self.conn, table, key)

    def table_blame(self, table: str, limit: int) -> list[Row]:
        from flux.trace.state import table_blame

        return table_blame(self.conn, table, limit)


class ViaApi:
    def __init__(self, api: Any) -> None:
        self.api = api

    def _all(self, path: str, cursor: str = "after") -> list[Row]:
        """Every item of a paginated list, with its times as datetimes."""
        items: list[Row] = []
        page = self.api.call("GET", path, params={"limit": 500})
        while True:
            items += [_times(item) for item in page["items"]]
            if page["next"] is None:
                return items
            page = self.api.call("GET", path, params={"limit": 500, cursor: page["next"]})

    def list_deployments(self) -> list[Row]:
        return self._all("/flux/api/deployments", cursor="before")

    def rollback(self, version: int) -> None:
        self.api.call("POST", f"/flux/api/deployments/{version}/activate")

    def set_secret(self, name: str, value: str) -> None:
        self.api.call("PUT", f"/flux/api/secrets/{name}", {"value": value})

    def list_secrets(self) -> list[Row]:
        return self._all("/flux/api/secrets")

    def remove_secret(self, name: str) -> None:
        self.api.call("DELETE", f"/flux/api/secrets/{name}")

    def create_tenant(self, name: str, rate_per_s: float | None, burst: int | None) -> str:
        body = {"name": name, "rate_per_s": rate_per_s, "burst": burst}
        return str(
            self.api.call("POST", "/flux/api/tenants", {k: v for k, v in body.items() if v is not None})["id"]
        )

    def list_tenants(self) -> list[Row]:
        return self._all("/flux/api/tenants")

    def create_key(self, role: str, tenant: str | None, name: str | None) -> Row:
        body = {"role": role, "tenant": tenant, "name": name}
        return dict(self.api.call("POST", "/flux/api/keys", {k: v for k, v in body.items() if v is not None}))

    def list_keys(self) -> list[Row]:
        return self._all("/flux/api/keys")

    def revoke_key(self, key: str) -> int:
        return int(self.api.call("DELETE", f"/flux/api/keys/{key}")["revoked"])

    def push_jobs(self, jobs: list[Row]) -> list[Row]:
        return list(self.api.call("POST", "/flux/api/jobs", {"jobs": jobs})["items"])

    def list_jobs(self, status: str | None, queue: str | None, function: str | None, limit: int) -> list[Row]:
        params = {"status": status, "queue": queue, "function": function, "limit": limit}
        page = self.api.call("GET", "/flux/api/jobs", params=params)
        return [_times(item) for item in page["items"]]

    def get_job(self, job_id: int) -> Row:
        job = _times(self.api.call("GET", f"/flux/api/jobs/{job_id}"))
        return job | {"runs": [_times(run) for run in job["runs"]]}

    def queue_stats(self) -> list[Row]:
        return list(self.api.call("GET", "/flux/api/jobs/stats")["items"])

    def retry_job(self, job_id: int) -> Row:
        return _times(self.api.call("POST", f"/flux/api/jobs/{job_id}/retry"))

    def cancel_job(self, job_id: int) -> Row:
        return _times(self.api.call("POST", f"/flux/api/jobs/{job_id}/cancel"))

    def list_schedules(self) -> list[Row]:
        return self._all("/flux/api/cron")

    def trace(self, request_id: str) -> Trace:
        from flux.trace.tree import trace_from_record

        record = self.api.call("GET", f"/flux/api/requests/{request_id}", exact_numbers=True)
        return trace_from_record(_record(record))

    def requests(self, filters: Row) -> list[Row]:
        errors, replayable = filters.pop("errors", False), filters.pop("replayable", False)
        params = filters | {
            "errors": "true" if errors else None,
            "replayable": "true" if replayable else None,
        }
        for name in ("since", "until"):  # a period ago, or a moment
            moment = params.pop(name, None)
            if isinstance(moment, timedelta):
                params[f"{name}_s"] = int(moment.total_seconds())
            elif moment is not None:
                params[name] = moment.isoformat()
        return [_times(row) for row in self.api.call("GET", "/flux/api/requests", params=params)["items"]]

    def follow(self, filters: Row) -> Iterator[Row]:
        """New requests through the API, from the moment this returns: the server keeps their ids for this
        follower between calls (none is missed) and holds no worker waiting; a call each FOLLOW_POLL_S."""
        errors = filters.pop("errors", False)
        params = filters | {"errors": "true" if errors else None}
        follower = self.api.call("POST", "/flux/api/requests/followers")["id"]
        return self._followed(f"/flux/api/requests/followers/{follower}", params)

    def _followed(self, path: str, params: Row) -> Iterator[Row]:
        try:
            while True:
                asked = time.monotonic()
                for row in self.api.call("GET", path, params=params)["items"]:
                    yield _times(row)
                time.sleep(max(0.0, FOLLOW_POLL_S - (time.monotonic() - asked)))
        finally:
            with contextlib.suppress(FluxError):
                self.api.call("DELETE", path)

    def why(self, request_id: str) -> Why:
        from flux.trace.why import why_from_record

        record = self.api.call("GET", f"/flux/api/requests/{request_id}/why", exact_numbers=True)
        return why_from_record({
            "record": _record(record["record"]), "failed": _maybe_times(record["failed"]),
            "reads": [_times(span) for span in record["reads"]],
            "earlier": [change | {"change": _maybe_times(change["change"])} for change in record["earlier"]],
        })  # fmt: skip

    def row_history(self, table: str, key: str) -> list[Row]:
        return self._rows(f"/flux/api/state/{table}/history", {"key": key})

    def row_blame(self, table: str, key: str) -> list[Row]:
        return self._rows(f"/flux/api/state/{table}/blame", {"key": key})

    def table_blame(self, table: str, limit: int) -> list[Row]:
        return self._rows(f"/flux/api/state/{table}/blame", {"limit": limit})

    def _rows(self, path: str, params: Row) -> list[Row]:
        answer = self.api.call("GET", path, params=params, exact_numbers=True)
        return [_times(row) for row in answer["items"]]


def _times(item: Row) -> Row:
    """`item` with its times (`at`, `*_at`) as datetimes, as the database gives them."""
    return {
        k: datetime.fromisoformat(v) if (k == "at" or k.endswith("_at")) and isinstance(v, str) else v
        for k, v in item.items()
    }


def _maybe_times(item: Row | None) -> Row | None:
    return None if item is None else _times(item)


def _record(record: Row) -> Row:
    """A trace record from the API with its rows' times as datetimes."""
    return record | {
        "request": _times(record["request"]), "job": _maybe_times(record["job"]),
        "spans": [_times(span) for span in record["spans"]],
        "mutations": [_times(mutation) for mutation in record["mutations"]],
    }  # fmt: skip
