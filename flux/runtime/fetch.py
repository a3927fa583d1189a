"""Outbound HTTP for functions: resolve the host first, refuse private addresses, then connect to the address
that was checked (pinned), so a DNS answer that changes between the check and the connection cannot reach
inside. Redirects are returned to the function, not followed: each hop would need its own check.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

import urllib3

from flux.errors import FetchFailed, FetchRefused, InvalidHostCall

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address not in _METADATA and address.is_global and not address.is_multicast


def fetch(args: Any, policy: FetchPolicy) -> dict[str, Any]:
    """Run one request: `{url, method?, headers?, body?, timeout_ms?}` -> `{status, headers, body}` (the body
    as text, or `body_base64` when it is not UTF-8)."""
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
    timeout = urllib3.Timeout(total=timeout_ms / 1000)
    pool = (
        urllib3.HTTPSConnectionPool(str(address), port, timeout=timeout, retries=False, maxsize=1,
                                    server_hostname=host, assert_hostname=host)
        if url.scheme == "https"
        else urllib3.HTTPConnectionPool(str(address), port, timeout=timeout, retries=False, maxsize=1)
    )  # fmt: skip
    with pool:
        try:
            response = pool.urlopen(
                method, target, body=body.encode() if body is not None else None,
                headers={"host": host_header, **headers}, redirect=False, preload_content=False,
                assert_same_host=False,
            )  # fmt: skip
            data = response.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise FetchFailed(f"fetch {method} {args['url']} failed: {exc}") from None
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
