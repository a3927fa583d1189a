"""Cache invalidation across processes: one daemon thread per process LISTENs on every channel its caches
follow, on one connection, and calls back on each NOTIFY (and after each reconnection, since anything may have
changed while it was not listening)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from flux import db

log = logging.getLogger("flux.listen")
Key = TypeVar("Key")
Value = TypeVar("Value")
POLL_S = 0.25  # how often the listener looks up from waiting, to notice close()


class Listener:
    """Callbacks by channel, called from one thread with its own connection: a process that follows five
    channels holds one connection and wakes four times a second, not five of each."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def on(self, channel: str, *callbacks: Callable[[], None]) -> None:
        """Call each of `callbacks` on every NOTIFY of `channel` (subscribe before `start`)."""
        if self._thread is not None:
            raise RuntimeError("the listener has started: subscribe before start()")
        self._callbacks.setdefault(channel, []).extend(callbacks)

    def follow(self, cache: NotifiedCache[Any]) -> None:
        """Drop `cache`'s value on every NOTIFY of its channel."""
        self.on(cache.channel, cache.invalidate)

    def start(self, dsn: str) -> None:
        """Listen from a daemon thread with its own connection (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(dsn,), name="flux-listener", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop listening (within a quarter of a second)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _notified(self, channels: list[str]) -> None:
        for channel in channels:
            for callback in self._callbacks.get(channel, ()):
                try:
                    callback()
                except Exception:  # a callback's bug must not cost the other channels their connection
                    log.exception("a callback on %s failed", channel)

    def _run(self, dsn: str) -> None:
        while not self._closed.is_set():
            try:
                with db.connect(dsn, autocommit=True) as conn:
                    for channel in self._callbacks:
                        conn.execute(f"LISTEN {channel}")
                    self._notified(list(self._callbacks))
                    while not self._closed.is_set():
                        for notification in conn.notifies(timeout=POLL_S):
                            self._notified([notification.channel])
            except Exception as exc:  # reconnect after a lost connection; never let the thread die
                if not self._closed.is_set():
                    log.warning("the listener lost its connection: %s", db.as_flux_error(exc))
                    self._closed.wait(1.0)


class NotifiedCache(Generic[Value]):
    """A value loaded on first use from a connection and dropped on each NOTIFY of `channel` (a Listener
    `follow`s it) or by `invalidate`. A load that a notification overtook is served once but not kept."""

    def __init__(self, channel: str, load: Callable[[Any], Value]) -> None:
        self.channel = channel
        self._load = load
        self._value: Value | None = None
        self._generation = 0
        self._lock = threading.Lock()

    def get(self, conn: Any) -> Value:
        value = self._value
        if value is None:
            with self._lock:
                value = self._value
                if value is None:
                    generation = self._generation
                    value = self._load(conn)
                    if generation == self._generation:
                        self._value = value
        return value

    def invalidate(self) -> None:
        self._generation += 1
        self._value = None


class KeyedCache(Generic[Key, Value]):
    """Values loaded one key at a time (`load(conn, key)`) and all dropped by `clear`, which a Listener calls.
    A load that a `clear` overtook lands in the dropped dictionary, so it is never kept."""

    def __init__(self, load: Callable[[Any, Key], Value]) -> None:
        self._load = load
        self._values: dict[Key, Value] = {}

    def get(self, conn: Any, key: Key) -> Value:
        values = self._values
        if key not in values:
            values[key] = self._load(conn, key)
        return values[key]

    def clear(self) -> None:
        self._values = {}
