"""Random bytes for ids (request ids, trace and span ids): from the operating system's CSPRNG, as
`os.urandom`, but read 4 KiB at a time. A request takes five ids, and a system call for each was a measurable
share of the gateway's own work. Each thread draws from its own buffer; a forked process never reuses its
parent's.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 4096
_generation = 0  # bumped in a forked child: every buffer read before the fork is stale there


class _Buffer(threading.local):
    data = b""
    offset = 0
    generation = -1


_local = _Buffer()


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def random_bytes(count: int) -> bytes:
    """`count` (at most 4096) bytes from the OS's CSPRNG, never handed out twice."""
    if not 0 <= count <= _CHUNK:
        raise ValueError(f"random_bytes takes 0 to {_CHUNK} bytes at a time, not {count}")
    local = _local
    offset = local.offset
    if offset + count > len(local.data) or local.generation != _generation:
        local.data, local.generation, offset = os.urandom(_CHUNK), _generation, 0
    local.offset = offset + count
    return local.data[offset : offset + count]


def uuid4() -> str:
    """A random UUID (version 4) as text, as `str(uuid.uuid4())`."""
    raw = bytearray(random_bytes(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
