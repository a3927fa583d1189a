"""Flux's `sync` worker: gunicorn's sync worker (one request at a time, connection closed after it) behind an
event loop that reads each request's head, and its body up to `BUFFERED_BODY_BYTES`, before the request takes
the worker. A slow or idle connection costs a socket in the loop, never the worker; one that has not sent its
head within the header deadline, or then its body within the body deadline, is answered 408 and closed.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Iterable
from typing import Any

from gunicorn import http, util
from gunicorn.workers.sync import SyncWorker

HEAD_TIMEOUT_S = 10.0  # a connection's request head must arrive within this (`[server] header_timeout_s`)
BODY_TIMEOUT_S = 30.0  # then its body, when the loop waits for it (`[server] body_timeout_s`)
IO_TIMEOUT_S = 10.0  # each read or write of a request being served (a body past the buffer, the answer)
HEAD_LIMIT_BYTES = 64 * 1024  # past this with no blank line, the parser gets it (and answers 431 or 400)
BUFFERED_BODY_BYTES = 1024 * 1024  # a body up to this is read in the loop too; a longer one by the request
FIRST_READ_BYTES = 64 * 1024  # a connection's first read: a whole request, almost always
READ_BYTES = 64 * 1024  # each later read of one still arriving (a bigger one: an mmap a read)
ACCEPTS_PER_WAKE = 64
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_CHUNKED = -1
# The headers that say whether a body follows, found in one scan of the head (the parser reads it all later).
_BODY_HEADER = re.compile(rb"\r\n[ \t]*(content-length|transfer-encoding)[ \t]*:([^\r\n]*)", re.IGNORECASE)
# Linux copies a listening socket's SO_RCVTIMEO and SO_SNDTIMEO to each connection it accepts: set once on the
# listeners, they bound every read and write of a request being served at no cost a request. Elsewhere each
# served socket gets Python's timeout (a poll before each read and write).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")


def _body_wanted(head: bytes | bytearray, end: int) -> int | None:
    """The body the loop waits for, from the head `head[:end]`: its content-length (when it buffers that
    much), _CHUNKED, or None (no body, or one the parser is to refuse or the request to read)."""
    wanted = None
    for name, value in _BODY_HEADER.findall(head, 0, end):
        if len(name) == len(b"content-length"):
            try:
                length = int(value.strip())
            except ValueError:
                return None  # the parser refuses it
            wanted = length if 0 < length <= BUFFERED_BODY_BYTES else None
        elif b"chunked" in value.lower():
            return _CHUNKED
    return wanted


def _body_arrived(buffer: bytes | bytearray, body_at: int, wanted: int | None) -> bool:
    body = len(buffer) - body_at
    if wanted is None or body >= BUFFERED_BODY_BYTES:
        return True
    if wanted == _CHUNKED:
        return buffer.endswith(b"0\r\n\r\n")
    return body >= wanted


def request_complete(buffer: bytes | bytearray) -> bool:
    """Whether `buffer`, all a connection has sent, holds a request the worker may serve now: its head, and
    its body when that is short enough to wait for (or so much is in that the parser must have it now: it
    refuses a head past HEAD_LIMIT_BYTES)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return len(buffer) > HEAD_LIMIT_BYTES
    return _body_arrived(buffer, end + 4, _body_wanted(buffer, end))


class _Pending:
    """A connection whose request has not fully arrived."""

    __slots__ = ("address", "body_at", "buffer", "client", "deadline", "listener", "scanned", "wanted")

    def __init__(
        self, client: socket.socket, address: Any, listener: socket.socket, data: bytes, deadline: float
    ) -> None:
        self.client = client
        self.address = address
        self.listener = listener
        self.buffer = bytearray(data)
        self.deadline = deadline
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
        self.wanted = _body_wanted(self.buffer, end)
        return True

    def arrived(self) -> bool:
        """`request_complete` of what has arrived so far, each byte of the head searched once."""
        if not self.head_arrived():
            return len(self.buffer) > HEAD_LIMIT_BYTES
        return _body_arrived(self.buffer, self.body_at, self.wanted)


class _Poller:
    """Readiness of file descriptors: epoll where there is one, else poll.

    A listener is not registered EPOLLEXCLUSIVE (one wakeup a connection, rather than one in every worker):
    level-triggered, a worker busy serving still counts as woken, so the next connections would wait for it
    while another worker idles (measured: /db/query served 20 to 30% fewer requests than with both woken)."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = select.poll() if self._epoll is None else None
        self._data: dict[int, Any] = {}

    def register(self, fd: int, data: Any) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            assert self._poll is not None
            self._poll.register(fd, select.POLLIN)
        self._data[fd] = data

    def unregister(self, fd: int) -> None:
        del self._data[fd]
        (self._epoll or self._poll).unregister(fd)  # type: ignore[union-attr]

    def wait(self, timeout_s: float) -> Iterable[Any]:
        """The data of each descriptor that became readable within `timeout_s`."""
        if self._epoll is None:
            assert self._poll is not None
            ready = self._poll.poll(timeout_s * 1000)
        else:
            ready = self._epoll.poll(timeout_s)
        return [self._data[fd] for fd, _ in ready if fd in self._data]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


class FluxSyncWorker(SyncWorker):  # type: ignore[misc]
    """Reads requests in a poll loop; serves each, once it has arrived, as gunicorn's sync worker does.

    The common case costs what gunicorn's own loop does or less: a connection accepted with its request
    already in (one read, one scan of the head for its end and its body's length) is served at once, with no
    per-connection state, no switch of the socket's blocking mode and no timeout poll around its reads and
    writes; only a request still arriving gets a `_Pending` and a place in the poller."""

    def run(self) -> None:
        if self.cfg.is_ssl:  # TLS handshakes would need the loop to speak TLS: plain sync, as before
            super().run()
            return
        settings = getattr(self.app, "settings", None)  # Flux's; a bare gunicorn app runs on the defaults
        self._head_timeout_s = float(getattr(settings, "header_timeout_s", HEAD_TIMEOUT_S))
        self._body_timeout_s = float(getattr(settings, "body_timeout_s", BODY_TIMEOUT_S))
        if _KERNEL_TIMEOUTS:
            timeval = struct.pack("@ll", int(IO_TIMEOUT_S), int(IO_TIMEOUT_S % 1 * 1e6))
            for listener in self.sockets:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self._poller = _Poller()
        # by file descriptor, each in the order of its deadlines: waiting for a head, then for a body
        self._heads: dict[int, _Pending] = {}
        self._bodies: dict[int, _Pending] = {}
        self._accepting = False
        self._poller.register(self.PIPE[0], None)
        self._set_accepting(True)
        # The heartbeat gunicorn's master watches, and the check that the master lives, are made on a wake at
        # most this often, not on every one (gunicorn's loop makes them on each request).
        beat_s = min(1.0, (self.timeout or 1.0) / 10)
        next_beat = 0.0
        try:
            while self.alive:
                now = time.monotonic()
                if now >= next_beat:
                    self.notify()
                    if not self.is_parent_alive():
                        break
                    next_beat = now + beat_s
                self._set_accepting(len(self._heads) + len(self._bodies) < self.cfg.worker_connections)
                for ready in self._poller.wait(self._wait_s(now)):
                    if ready is None:
                        _drain(self.PIPE[0])
                    elif isinstance(ready, _Pending):
                        self._read(ready)
                    else:
                        self._accept(ready)
                    if not self.alive:
                        break
                if self._heads or self._bodies:
                    self._expire()
        except OSError as exc:
            if exc.errno not in (errno.EINTR, errno.EBADF):
                raise
        finally:
            for pending in [*self._heads.values(), *self._bodies.values()]:
                self._drop(pending)
            self._poller.close()

    def _wait_s(self, now: float) -> float:
        wait = self.timeout or 0.5
        for waiting in (self._heads, self._bodies):
            if waiting:
                first = next(iter(waiting.values()))  # the first deadline: each dict is in their order
                wait = min(wait, max(first.deadline - now, 0.0))
        return wait

    def _set_accepting(self, accepting: bool) -> None:
        if accepting == self._accepting:
            return
        for listener in self.sockets:
            if accepting:
                listener.setblocking(False)
                self._poller.register(listener.fileno(), listener)
            else:
                self._poller.unregister(listener.fileno())
        self._accepting = accepting

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                client, address = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                    return
                raise
            # The socket stays blocking (Python makes it close-on-exec already); the loop's reads of it pass
            # MSG_DONTWAIT instead, so serving it needs no switch back.
            try:
                data = client.recv(FIRST_READ_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                util.close(client)
                continue
            if data is not None and request_complete(data):  # usually: served at once, never polled
                self._serve(listener, client, address, data)
            elif data == b"":  # gone before it sent anything
                util.close(client)
            else:
                deadline = time.monotonic() + self._head_timeout_s
                pending = _Pending(client, address, listener, data or b"", deadline)
                self._heads[client.fileno()] = pending
                self._poller.register(client.fileno(), pending)
                self._advance(pending)
            if not self.alive:
                return

    def _read(self, pending: _Pending) -> None:
        while True:
            try:
                data = pending.client.recv(READ_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(pending)
                return
            if not data:  # the client went away before its request arrived
                self._drop(pending)
                return
            pending.buffer += data
            if self._advance(pending):
                return

    def _advance(self, pending: _Pending) -> bool:
        """Serve `pending` if its request has arrived (True); else move it on to wait for its body once its
        head is in."""
        had_head = pending.body_at >= 0
        if pending.arrived():
            self._forget(pending)
            self._serve(pending.listener, pending.client, pending.address, bytes(pending.buffer))
            return True
        if not had_head and pending.body_at >= 0:  # the head is in: the body has a deadline of its own
            fd = pending.client.fileno()
            self._bodies[fd] = self._heads.pop(fd)
            pending.deadline = time.monotonic() + self._body_timeout_s
        return False

    def _expire(self) -> None:
        now = time.monotonic()
        for waiting in (self._heads, self._bodies):
            while waiting:
                first = next(iter(waiting.values()))
                if first.deadline > now:
                    break
                try:
                    first.client.send(_TIMED_OUT, socket.MSG_DONTWAIT)
                except OSError:
                    pass
                self._drop(first)

    def _forget(self, pending: _Pending) -> None:
        fd = pending.client.fileno()
        self._heads.pop(fd, None)
        self._bodies.pop(fd, None)
        self._poller.unregister(fd)

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        util.close(pending.client)

    def _serve(self, listener: socket.socket, client: socket.socket, address: Any, data: bytes) -> None:
        if not _KERNEL_TIMEOUTS:  # a stalled client cannot hold the worker long
            client.settimeout(IO_TIMEOUT_S)
        self.handle_buffered(listener, client, address, data)

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
        except (TimeoutError, BlockingIOError, ssl.SSLError) as exc:  # BlockingIOError: SO_RCVTIMEO's
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
