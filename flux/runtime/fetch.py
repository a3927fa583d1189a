"""Outbound HTTP for functions: resolve the host first, refuse private addresses, then connect to the address
that was checked (pinned), so a DNS answer that changes between the check and the connection cannot reach
inside; an IPv6 address that embeds an IPv4 one (NAT64, 6to4, Teredo, IPv4-mapped) is judged by the IPv4 one.
Redirects are returned to the function, not followed: each hop would need its own check. `timeout_ms` is one
deadline for connecting, the headers and the body together.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import urllib3

from flux.errors import FetchFailed, FetchRefused, FluxError, FunctionTimedOut, InvalidHostCall

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# Outgoing headers whose values a record never keeps (see host.recorded_input): credentials, whatever form.
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
REDACTED = "[redacted]"
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: the operator picks the prefix length
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765's ::ffff:0:a.b.c.d


@dataclass(frozen=True)
class FetchPolicy:
    """Hosts (names, addresses or networks such as `10.0.0.0/8`) a function may reach although private."""

    allow: tuple[str, ...] = ()

    def allows(self, host: str, address: Address) -> bool:
        for entry in self.allow:
            if entry.lower() == host.lower():
                return True
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False


def is_public(address: Address) -> bool:
    """Whether a function may reach `address` without an allow-list entry: a global unicast address that is
    not a cloud's metadata service, and, for an IPv6 address that embeds IPv4 ones, every IPv4 one so too
    (a NAT64 gateway or a 6to4 relay would carry the connection to the embedded address)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded:
            return all(is_public(inner) for inner in embedded)
    return address not in _METADATA and address.is_global and not address.is_multicast


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated
    (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`; for the local-use
    `64:ff9b:1::/48` every position RFC 6052 allows), 6to4 (`2002::/16`) and Teredo (`2001::/32`: its server
    and its de-obfuscated client); none for any other."""
    value = int(address)
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _IPV4_TRANSLATED or address in _IPV4_COMPATIBLE or address in _NAT64:
        return [ipaddress.IPv4Address(value & 0xFFFFFFFF)]
    if address in _NAT64_LOCAL:
        return [ipaddress.IPv4Address(_rfc6052_ipv4(value, length)) for length in (48, 56, 64, 96)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def _rfc6052_ipv4(value: int, prefix_length: int) -> int:
    """The IPv4 address embedded after a NAT64 prefix of `prefix_length` bits (RFC 6052, section 2.2: bits 64
    to 71 are always zero and skipped)."""
    octets = value.to_bytes(16, "big")
    start = prefix_length // 8
    embedded = [octets[i] for i in range(start, 16) if i != 8][:4]
    return int.from_bytes(bytes(embedded), "big")


def fetch(args: Any, policy: FetchPolicy, *, run_deadline: float | None = None) -> dict[str, Any]:
    """Run one request: `{url, method?, headers?, body?, timeout_ms?}` -> `{status, headers, body}` (the body
    as text, or `body_base64` when it is not UTF-8). It ends by `timeout_ms`, and by the run's own deadline
    (`run_deadline`, on the `time.monotonic` clock) if that comes first."""
    if not isinstance(args, dict) or not isinstance(args.get("url"), str):
        raise InvalidHostCall("fetch needs {url: string, method?, headers?, body?, timeout_ms?}")
    method = str(args.get("method", "GET")).upper()
    headers = args.get("headers") or {}
    body = args.get("body")
    timeout_ms = args.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if method not in _METHODS:
        raise InvalidHostCall(f"fetch method {method} is not one of {', '.join(sorted(_METHODS))}")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise InvalidHostCall("fetch headers are an object of strings")
    if body is not None and not isinstance(body, str):
        raise InvalidHostCall("a fetch body is a string (JSON.stringify an object first)")
    if (
        not isinstance(timeout_ms, int)
        or isinstance(timeout_ms, bool)
        or not 0 < timeout_ms <= MAX_TIMEOUT_MS
    ):
        raise InvalidHostCall(f"fetch timeout_ms is a whole number from 1 to {MAX_TIMEOUT_MS}")
    url = urllib.parse.urlsplit(args["url"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise FetchRefused(f"fetch goes over http or https only, not {args['url']!r}")
    host = url.hostname
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidHostCall(f"fetch url has a bad port: {exc}") from None
    address = _resolve(host, port, policy)
    target = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
    host_header = host if url.port is None else f"{host}:{url.port}"
    seconds, runs_out = timeout_ms / 1000, False
    left = None if run_deadline is None else run_deadline - time.monotonic()
    if left is not None and left < seconds:
        seconds, runs_out = max(left, 0.001), True
    deadline = _Deadline(seconds)
    # urllib3's read timeout bounds each read, and restarts with every byte: the deadline bounds them all.
    timeout = urllib3.Timeout(connect=deadline.seconds, read=deadline.seconds)
    pool = (
        _HTTPSPool(str(address), port, timeout=timeout, retries=False, maxsize=1, server_hostname=host,
                   assert_hostname=host, deadline=deadline)
        if url.scheme == "https"
        else _HTTPPool(str(address), port, timeout=timeout, retries=False, maxsize=1, deadline=deadline)
    )  # fmt: skip
    with pool, deadline:
        try:
            response = pool.urlopen(
                method, target, body=body.encode() if body is not None else None,
                headers={"host": host_header, **headers}, redirect=False, preload_content=False,
                assert_same_host=False,
            )  # fmt: skip
            data = response.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            if deadline.passed or isinstance(exc, urllib3.exceptions.TimeoutError):
                raise _timed_out(method, args["url"], timeout_ms, runs_out) from None
            raise FetchFailed(f"fetch {method} {args['url']} failed: {exc}") from None
        if deadline.passed:  # the body ended because the deadline shut the connection
            raise _timed_out(method, args["url"], timeout_ms, runs_out)
    if len(data) > MAX_RESPONSE_BYTES:
        raise FetchFailed(f"fetch {args['url']} answered more than {MAX_RESPONSE_BYTES} bytes")
    answer: dict[str, Any] = {"status": response.status, "headers": dict(response.headers.items())}
    try:
        answer["body"] = data.decode()
    except UnicodeDecodeError:
        answer["body_base64"] = base64.b64encode(data).decode()
    return answer


def _resolve(host: str, port: int, policy: FetchPolicy) -> Address:
    """The first address of `host` the policy lets a function reach; every address must pass, so a name
    that also points inside is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchFailed(f"fetch cannot resolve {host}: {exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        if not is_public(address) and not policy.allows(host, address):
            raise FetchRefused(
                f"fetch to {host} ({address}) is refused: not a public address",
                hint="allow-list the host in the function's settings if it must be reached",
            )
    return addresses[0]


def _timed_out(method: str, url: str, timeout_ms: int, runs_out: bool) -> FluxError:
    """FX311 when the call's `timeout_ms` passed; FX301 when the run's own time limit came first (the run
    ends there, as it would have at its next step)."""
    if runs_out:
        return FunctionTimedOut(
            f"the function ran past its time limit during fetch {method} {url}",
            hint="raise the function's `timeout_ms`, or give the fetch a shorter one",
        )
    return FetchFailed(
        f"fetch {method} {url} ran past its timeout_ms of {timeout_ms} ms (connecting, the headers and the"
        " body together)",
        hint=f"raise the call's timeout_ms (at most {MAX_TIMEOUT_MS}), or call a faster target",
    )


class _Deadline:
    """The end of one fetch, for connecting, the headers and the body together. When it passes, a timer shuts
    the connection down, so a read blocked on a target that sends a byte now and then ends there. The timer
    shuts down a duplicate of the socket, closed only after the timer is done: never a descriptor that was
    closed and given to another connection meanwhile."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.passed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        if self._timer.is_alive():
            self._timer.join()
        for sock in self._sockets:
            sock.close()

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down when the deadline passes (at once if it has)."""
        duplicate = sock.dup()
        with self._lock:
            self._sockets.append(duplicate)
            if self.passed:
                _shut_down(duplicate)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the connection is already gone


class _HTTPConnection(urllib3.connection.HTTPConnection):
    """A connection whose socket the fetch's deadline shuts down."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self.deadline.watch(sock)
        return sock


class _HTTPSConnection(_HTTPConnection, urllib3.connection.HTTPSConnection):
    """The TLS kind of `_HTTPConnection` (the deadline shuts down the socket under TLS)."""


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection
