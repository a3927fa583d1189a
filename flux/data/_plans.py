"""The plan cache's store: least recently used first out, bounded in entries and in bytes (see data/shape.py).

A plan's size is counted as its key and its SQL text: both grow with the query, and they dominate the rest."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MAX_PLANS = 4096
MAX_PLAN_BYTES = 16 * 1024 * 1024  # all plans of one catalog together
MAX_ONE_PLAN_BYTES = 256 * 1024  # a query bigger than this is planned every time, never kept


class PlanCache:
    def __init__(self, max_entries: int = MAX_PLANS, max_bytes: int = MAX_PLAN_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._plans: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def get(self, key: Any) -> Any:
        found = self._plans.get(key)
        if found is None:
            return None
        self._plans.move_to_end(key)
        return found[0]

    def put(self, key: Any, plan: Any, size: int) -> None:
        """Keep `plan` (about `size` bytes) unless it alone is too big; the least recently used go to fit."""
        if size > min(MAX_ONE_PLAN_BYTES, self.max_bytes):
            return
        old = self._plans.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        while self._plans and (len(self._plans) >= self.max_entries or self.bytes + size > self.max_bytes):
            _, (_, dropped) = self._plans.popitem(last=False)
            self.bytes -= dropped
        self._plans[key] = (plan, size)
        self.bytes += size

    def clear(self) -> None:
        self._plans.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._plans)
