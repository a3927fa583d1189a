"""The table's in-process rows (`bench/suite.py`): runtime, queue, mutation tracking, trace store and replay,
each against its floor or peer measured in the same run."""

from __future__ import annotations

from bench.table import Row


def runtime_rows(dsn: str, quick: bool) -> list[Row]:
    raise NotImplementedError


def queue_rows(dsn: str, quick: bool) -> list[Row]:
    raise NotImplementedError


def tracking_rows(dsn: str, quick: bool) -> list[Row]:
    raise NotImplementedError


def trace_store_rows(dsn: str, quick: bool) -> list[Row]:
    raise NotImplementedError


def replay_rows(dsn: str, quick: bool) -> list[Row]:
    raise NotImplementedError
