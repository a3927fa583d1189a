"""Schedules: 5-field cron expressions in a time zone (parsed by cronsim), kept in flux.cron. A project's
`[[cron]]` tables are synced by each deploy; the management API adds its own. Every queue worker fires the due
ticks through `flux.fire_cron`, which lets exactly one process fire each tick. A tick missed while no worker
ran fires once on recovery, then the schedule moves on to its next tick after now.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from flux import db, jsontext
from flux.errors import InvalidSchedule, NotFound

Json = Any
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_QUEUE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_KEYS = {"name", "schedule", "function", "timezone", "payload", "queue", "enabled"}


@dataclass(frozen=True)
class Schedule:
    """One entry of flux.cron, checked: its expression parses and its time zone exists."""

    name: str
    schedule: str
    function: str
    timezone: str = "UTC"
    payload: Json = None
    queue: str = "default"
    enabled: bool = True

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after `after`, in UTC."""
        return next_tick(self.schedule, self.timezone, after)


def next_tick(schedule: str, timezone: str, after: datetime) -> datetime:
    """The first time strictly after `after` that the 5-field `schedule` names on the clocks of `timezone`."""
    local = after.astimezone(ZoneInfo(timezone)).replace(microsecond=0)
    return next(CronSim(schedule, local)).astimezone(UTC)


def parse_schedule(entry: Mapping[str, Json], where: str) -> Schedule:
    """`entry` (a `[[cron]]` table or an API body) as a Schedule; anything wrong is an FX406 naming
    `where`."""
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise InvalidSchedule(
            f"{where}: unknown key {unknown[0]!r}", hint=f"known: {', '.join(sorted(_KEYS))}"
        )
    for key in ("name", "schedule", "function"):
        if not isinstance(entry.get(key), str):
            raise InvalidSchedule(f"{where}: {key} is required and is text", hint="see docs/queue.md")
    if not _NAME.match(entry["name"]) or not _NAME.match(entry["function"]):
        raise InvalidSchedule(f"{where}: name and function are names (letters, digits, _ and -)")
    queue, timezone = entry.get("queue", "default"), entry.get("timezone", "UTC")
    if not isinstance(queue, str) or not _QUEUE.match(queue):
        raise InvalidSchedule(
            f"{where}: queue {queue!r} is not a queue name", hint="lower-case letters, digits"
        )
    if not isinstance(entry.get("enabled", True), bool):
        raise InvalidSchedule(f"{where}: enabled is true or false")
    try:
        ZoneInfo(timezone)
    except (
        ZoneInfoNotFoundError,
        ValueError,
        TypeError,
        OSError,
    ) as exc:  # OSError: a zone folder, or too long
        raise InvalidSchedule(
            f"{where}: unknown time zone {timezone!r}", hint="use a name like Europe/Riga"
        ) from exc
    if len(entry["schedule"].split()) != 5:
        raise InvalidSchedule(
            f"{where}: schedule {entry['schedule']!r} does not have 5 fields",
            hint="minute hour day-of-month month day-of-week, e.g. '*/5 * * * *'",
        )
    try:
        CronSim(entry["schedule"], datetime.now(UTC))
    except CronSimError as exc:
        raise InvalidSchedule(
            f"{where}: schedule {entry['schedule']!r}: {exc}", hint="see `man 5 crontab`"
        ) from exc
    return Schedule(
        entry["name"],
        entry["schedule"],
        entry["function"],
        timezone,
        entry.get("payload"),
        queue,
        entry.get("enabled", True),
    )


def upsert(conn: Any, schedule: Schedule, source: str) -> None:
    """Create or change one schedule; a changed expression or time zone starts from its next tick after
    now."""
    first = schedule.next_tick(datetime.now(UTC))
    db.execute_command(
        conn,
        "INSERT INTO flux.cron AS c (name, schedule, timezone, function, payload, queue, enabled,"
        " next_run_at, source) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9)"
        " ON CONFLICT (name) DO UPDATE SET schedule = EXCLUDED.schedule, timezone = EXCLUDED.timezone,"
        " function = EXCLUDED.function, payload = EXCLUDED.payload, queue = EXCLUDED.queue,"
        " enabled = EXCLUDED.enabled, source = EXCLUDED.source,"
        " next_run_at = CASE WHEN (c.schedule, c.timezone) = (EXCLUDED.schedule, EXCLUDED.timezone)"
        "                    THEN c.next_run_at ELSE EXCLUDED.next_run_at END",
        [
            schedule.name,
            schedule.schedule,
            schedule.timezone,
            schedule.function,
            jsontext.dumps_text(schedule.payload),
            schedule.queue,
            schedule.enabled,
            first,
            source,
        ],
    )


def sync_project(conn: Any, entries: Iterable[Mapping[str, Json]]) -> list[Schedule]:
    """Make the project's schedules (source `project`) exactly `entries`, in the caller's transaction; those
    made through the API are left alone. A name may not be both."""
    schedules = [parse_schedule(entry, f"flux.toml cron {n}") for n, entry in enumerate(entries, 1)]
    names = [schedule.name for schedule in schedules]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidSchedule(
            f"flux.toml cron {repeated[0]!r} is defined twice", hint="give each a name of its own"
        )
    taken = db.execute_rows(
        conn, "SELECT name FROM flux.cron WHERE source = 'api' AND name = ANY($1::text[])", [names]
    )
    if taken:
        raise InvalidSchedule(
            f"cron {taken[0][0]!r} was made through the API",
            hint="delete it there, or rename it in flux.toml",
        )
    db.execute_command(
        conn, "DELETE FROM flux.cron WHERE source = 'project' AND NOT (name = ANY($1::text[]))", [names]
    )
    for schedule in schedules:
        upsert(conn, schedule, "project")
    return schedules


def fire_due(conn: Any, now: datetime | None = None) -> list[int]:
    """Fire every due tick once (across all processes); returns the ids of the jobs this call enqueued. A
    schedule whose expression no longer parses is skipped (it was checked when it was saved)."""
    now = now or datetime.now(UTC)
    due = db.execute_rows(
        conn,
        "SELECT name, schedule, timezone, next_run_at FROM flux.cron WHERE enabled AND next_run_at <= $1"
        " ORDER BY next_run_at",
        [now],
    )
    fired = []
    for name, schedule, timezone, tick in due:
        try:
            following = next_tick(schedule, timezone, max(now, tick))
        except (CronSimError, ZoneInfoNotFoundError, ValueError, OSError):
            continue
        row = db.execute_raw(conn, "SELECT flux.fire_cron($1, $2, $3)", [name, tick, following])
        if row is not None and row[0] is not None:
            fired.append(row[0])
    return fired


_COLUMNS = "name, schedule, timezone, function, payload, queue, enabled, next_run_at, last_run_at, source"


def list_schedules(conn: Any) -> list[dict[str, Json]]:
    """Every schedule, by name."""
    return db.fetch_dicts(conn, f"SELECT {_COLUMNS} FROM flux.cron ORDER BY name")


def get_schedule(conn: Any, name: str) -> dict[str, Json]:
    """One schedule, else FX605."""
    found = db.fetch_dicts(conn, f"SELECT {_COLUMNS} FROM flux.cron WHERE name = %s", (name,))
    if not found:
        raise NotFound(f"no cron schedule {name!r}", hint="list them with `flux queue cron`")
    return found[0]


def save(conn: Any, schedule: Schedule) -> None:
    """Create or change a schedule of the API's; one from flux.toml is changed there, by a deploy."""
    _refuse_project(conn, schedule.name)
    upsert(conn, schedule, "api")


def delete(conn: Any, name: str) -> None:
    """Remove a schedule of the API's."""
    get_schedule(conn, name)
    _refuse_project(conn, name)
    db.execute_command(conn, "DELETE FROM flux.cron WHERE name = $1", [name])


def _refuse_project(conn: Any, name: str) -> None:
    if db.execute_rows(conn, "SELECT 1 FROM flux.cron WHERE name = $1 AND source = 'project'", [name]):
        raise InvalidSchedule(
            f"cron {name!r} comes from flux.toml", hint="change it there and deploy, or pick another name"
        )
