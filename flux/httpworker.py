"""Flux's `sync` worker: gunicorn's sync worker (one request at a time, connection closed after it) behind an
event loop that reads each request's head, and its body up to `BUFFERED_BODY_BYTES`, before the request takes
the worker. A slow or idle connection costs a socket in the loop, never the worker; one that has not sent its
head within `HEAD_TIMEOUT_S`, or then its body within `BODY_TIMEOUT_S`, is answered 408 and closed.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
import time
from typing import Any

from gunicorn import http, util
from gunicorn.workers.sync import SyncWorker

HEAD_TIMEOUT_S = 10.0  # a connection's request head must arrive within this
BODY_TIMEOUT_S = 30.0  # then its body, when the loop waits for it (up to BUFFERED_BODY_BYTES)
IO_TIMEOUT_S = 10.0  # each read or write of a request being served (a body past the buffer, the answer)
HEAD_LIMIT_BYTES = 64 * 1024  # past this with no blank line, the parser gets it (and answers 431 or 400)
BUFFERED_BODY_BYTES = 1024 * 1024  # a body up to this is read in the loop too; a longer one by the request
ACCEPTS_PER_WAKE = 64
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


_CHUNKED = -1


class _Pending:
    """A connection whose request has not fully arrived."""

    __slots__ = ("address", "body_at", "buffer", "client", "deadline", "listener", "registered", "scanned",
                 "wanted")  # fmt: skip

    def __init__(self, client: socket.socket, address: Any, listener: socket.socket) -> None:
        self.client = client
        self.address = address
        self.listener = listener
        self.buffer = bytearray()
        self.deadline = time.monotonic() + HEAD_TIMEOUT_S
        self.registered = False
        self.scanned = 0  # how far the search for the head's end has gone (each byte is looked at once)
        self.body_at = -1  # where the body starts, once the head has arrived
        self.wanted: int | None = None  # the body's length, _CHUNKED, or None: no body to wait for

    def head_arrived(self) -> bool:
        """Whether the head is in (found now or before); then `wanted` says what body to wait for."""
        if self.body_at >= 0:
            return True
        end = self.buffer.find(b"\r\n\r\n", max(self.scanned - 3, 0))
        if end < 0:
            self.scanned = len(self.buffer)
            return False
        self.body_at = end + 4
        self.wanted = _body_wanted(bytes(self.buffer[:end]))
        return True

    def arrived(self) -> bool:
        """Whether the request is in: its head, and its body when that is short enough to wait for (or so much
        is in that the parser must have it now: it refuses a head past HEAD_LIMIT_BYTES)."""
        if not self.head_arrived():
            return len(self.buffer) > HEAD_LIMIT_BYTES
        body = len(self.buffer) - self.body_at
        if body >= BUFFERED_BODY_BYTES or self.wanted is None:
            return True
        if self.wanted == _CHUNKED:
            return self.buffer.endswith(b"0\r\n\r\n")
        return body >= self.wanted


def _body_wanted(head: bytes) -> int | None:
    """The body the loop waits for: its content-length (when it buffers that much), _CHUNKED, or None."""
    wanted = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None  # the parser refuses it
            wanted = length if 0 < length <= BUFFERED_BODY_BYTES else None
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            return _CHUNKED
    return wanted


def request_complete(buffer: bytes | bytearray) -> bool:
    """Whether `buffer` holds a request the worker may serve now (`_Pending.arrived`)."""
    pending = _Pending.__new__(_Pending)
    pending.buffer, pending.scanned, pending.body_at, pending.wanted = bytearray(buffer), 0, -1, None
    return pending.arrived()


class FluxSyncWorker(SyncWorker):  # type: ignore[misc]
    """Reads requests in a selector loop; serves each, once it has arrived, as gunicorn's sync worker does."""

    def run(self) -> None:
        if self.cfg.is_ssl:  # TLS handshakes would need the loop to speak TLS: plain sync, as before
            super().run()
            return
        self._poller = selectors.DefaultSelector()
        # by file descriptor, each in the order of its deadlines: waiting for a head, then for a body
        self._heads: dict[int, _Pending] = {}
        self._bodies: dict[int, _Pending] = {}
        self._accepting = False
        self._poller.register(self.PIPE[0], selectors.EVENT_READ, None)
        self._set_accepting(True)
        try:
            while self.alive:
                self.notify()
                self._set_accepting(len(self._heads) + len(self._bodies) < self.cfg.worker_connections)
                for key, _ in self._poller.select(self._wait_s()):
                    if key.data is None:
                        _drain(self.PIPE[0])
                    elif isinstance(key.data, _Pending):
                        self._read(key.data)
                    else:
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    if not self.alive:
                        break
                self._expire()
                if not self.is_parent_alive():
                    break
        except OSError as exc:
            if exc.errno not in (errno.EINTR, errno.EBADF):
                raise
        finally:
            for pending in [*self._heads.values(), *self._bodies.values()]:
                self._drop(pending)
            self._poller.close()

    def _wait_s(self) -> float:
        wait = self.timeout or 0.5
        for waiting in (self._heads, self._bodies):
            if waiting:
                first = next(iter(waiting.values()))  # the first deadline: each dict is in their order
                wait = min(wait, max(first.deadline - time.monotonic(), 0.0))
        return wait

    def _set_accepting(self, accepting: bool) -> None:
        if accepting == self._accepting:
            return
        for listener in self.sockets:
            if accepting:
                listener.setblocking(False)
                self._poller.register(listener, selectors.EVENT_READ, listener)
            else:
                self._poller.unregister(listener)
        self._accepting = accepting

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                client, address = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                    return
                raise
            client.setblocking(False)
            util.close_on_exec(client)
            pending = _Pending(client, address, listener)
            self._heads[client.fileno()] = pending
            self._read(pending)  # usually the request is there already: served at once, never polled
            if not self.alive:
                return

    def _read(self, pending: _Pending) -> None:
        while True:
            try:
                data = pending.client.recv(256 * 1024)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(pending)
                return
            if not data:  # the client went away before its request arrived
                self._drop(pending)
                return
            pending.buffer += data
            had_head = pending.body_at >= 0
            if pending.arrived():
                self._serve(pending)
                return
            if not had_head and pending.body_at >= 0:  # the head is in: the body has a deadline of its own
                fd = pending.client.fileno()
                self._bodies[fd] = self._heads.pop(fd)
                pending.deadline = time.monotonic() + BODY_TIMEOUT_S
        if not pending.registered:
            self._poller.register(pending.client, selectors.EVENT_READ, pending)
            pending.registered = True

    def _expire(self) -> None:
        now = time.monotonic()
        for waiting in (self._heads, self._bodies):
            while waiting:
                first = next(iter(waiting.values()))
                if first.deadline > now:
                    break
                try:
                    first.client.send(_TIMED_OUT)
                except OSError:
                    pass
                self._drop(first)

    def _forget(self, pending: _Pending) -> None:
        fd = pending.client.fileno()
        self._heads.pop(fd, None)
        self._bodies.pop(fd, None)
        if pending.registered:
            self._poller.unregister(pending.client)
            pending.registered = False

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        util.close(pending.client)

    def _serve(self, pending: _Pending) -> None:
        self._forget(pending)
        client = pending.client
        client.settimeout(IO_TIMEOUT_S)  # blocking again, but a stalled client cannot hold the worker long
        self.handle_buffered(pending.listener, client, pending.address, bytes(pending.buffer))

    def handle_buffered(
        self, listener: socket.socket, client: socket.socket, address: Any, data: bytes
    ) -> None:
        """gunicorn's SyncWorker.handle, with the bytes the loop read handed to the parser first."""
        req = None
        try:
            parser = http.get_parser(self.cfg, client, address)
            parser.unreader.unread(data)
            req = next(parser)
            self.handle_request(listener, req, client, address)
        except http.errors.NoMoreData as exc:
            self.log.debug("Ignored premature client disconnection. %s", exc)
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
        except (TimeoutError, ssl.SSLError) as exc:
            self.log.debug("Closing a connection that stalled: %s", exc)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except BaseException as exc:
            self.handle_error(req, client, address, exc)
        finally:
            util.close_graceful(client)


def _drain(fd: int) -> None:
    try:
        os.read(fd, 64)
    except OSError:
        pass
