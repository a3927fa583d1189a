"""Ids drawn from a buffer of the OS's random bytes: valid UUIDs, never handed out twice, not across threads
nor across a fork (gunicorn forks its workers from the master)."""

from __future__ import annotations

import os
import threading
import uuid

from flux import randomness


def test_request_ids_are_version_4_uuids_in_canonical_text() -> None:
    ids = [randomness.uuid4() for _ in range(1000)]  # past one 4 KiB buffer
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_threads_draw_different_bytes() -> None:
    drawn: list[bytes] = []
    threads = [threading.Thread(target=lambda: drawn.append(randomness.random_bytes(16))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(drawn)) == 8


def test_a_forked_child_does_not_reuse_its_parents_buffer() -> None:
    randomness.random_bytes(8)  # the parent holds a buffer with bytes left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it draws next, to the parent
        os.write(write, randomness.random_bytes(16))
        os._exit(0)
    os.close(write)
    from_child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(from_child) == 16 and from_child != randomness.random_bytes(16)
