"""Periodic upkeep inside each server process: `flux.maintain()` keeps span partitions a week ahead.

Every worker runs it hourly on a daemon thread (it is idempotent and takes an advisory lock), so a server that
stays up for weeks never fills `flux.spans_default`. The queue's cron will own such schedules once it lands.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flux.db import as_flux_error

log = logging.getLogger("flux.maintenance")

INTERVAL_S = 3600.0


class MaintenanceLoop:
    """Call `flux.maintain()` through `pool` every `interval_s` seconds until `stop()`."""

    def __init__(self, pool: Any, interval_s: float = INTERVAL_S) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flux-maintenance", daemon=True)

    def start(self) -> MaintenanceLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def run_once(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("SELECT flux.maintain()")

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.run_once()
            except Exception as exc:  # the next round tries again; a failure must not kill the thread
                log.warning("flux.maintain() failed: %s", as_flux_error(exc))
