"""Flux's `sync` worker: gunicorn's sync worker (one request at a time, connection closed after it) behind an
event loop that reads each request's head, and its body up to `BUFFERED_BODY_BYTES`, before the request takes
the worker. A slow or idle connection costs a socket in the loop, never the worker; one that has not sent its
request within `HEAD_TIMEOUT_S` is answered 408 and closed.
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

HEAD_TIMEOUT_S = 10.0  # a connection's whole request (head, and a buffered body) must arrive within this
IO_TIMEOUT_S = 10.0  # each read or write of a request being served (a body past the buffer, the answer)
HEAD_LIMIT_BYTES = 64 * 1024  # past this with no blank line, the parser gets it (and answers 431 or 400)
BUFFERED_BODY_BYTES = 1024 * 1024  # a body up to this is read in the loop too; a longer one by the request
ACCEPTS_PER_WAKE = 64
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class _Pending:
    """A connection whose request has not fully arrived."""

    __slots__ = ("address", "buffer", "client", "deadline", "listener", "registered")

    def __init__(self, client: socket.socket, address: Any, listener: socket.socket) -> None:
        self.client = client
        self.address = address
        self.listener = listener
        self.buffer = bytearray()
        self.deadline = time.monotonic() + HEAD_TIMEOUT_S
        self.registered = False


def request_complete(buffer: bytes | bytearray) -> bool:
    """Whether `buffer` holds a whole request head, and its body when that is short enough to wait for (or
    holds so much that the parser must have it now)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return len(buffer) > HEAD_LIMIT_BYTES
    body = len(buffer) - end - 4
    length: int | None = None
    chunked = False
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return True  # the parser refuses it
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if body >= BUFFERED_BODY_BYTES:
        return True
    if chunked:
        return buffer.endswith(b"0\r\n\r\n")
    return length is None or length > BUFFERED_BODY_BYTES or body >= length


class FluxSyncWorker(SyncWorker):  # type: ignore[misc]
    """Reads requests in a selector loop; serves each, once it has arrived, as gunicorn's sync worker does."""

    def run(self) -> None:
        if self.cfg.is_ssl:  # TLS handshakes would need the loop to speak TLS: plain sync, as before
            super().run()
            return
        self._poller = selectors.DefaultSelector()
        self._pending: dict[int, _Pending] = {}
        self._accepting = False
        self._poller.register(self.PIPE[0], selectors.EVENT_READ, None)
        self._set_accepting(True)
        try:
            while self.alive:
                self.notify()
                self._set_accepting(len(self._pending) < self.cfg.worker_connections)
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
            for pending in list(self._pending.values()):
                self._drop(pending)
            self._poller.close()

    def _wait_s(self) -> float:
        wait = self.timeout or 0.5
        if self._pending:
            first = next(iter(self._pending.values()))  # the oldest: deadlines follow arrival
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
            self._pending[client.fileno()] = pending
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
            if request_complete(pending.buffer):
                self._serve(pending)
                return
        if not pending.registered:
            self._poller.register(pending.client, selectors.EVENT_READ, pending)
            pending.registered = True

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.deadline > now:
                return
            try:
                first.client.send(_TIMED_OUT)
            except OSError:
                pass
            self._drop(first)

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.client.fileno(), None)
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
