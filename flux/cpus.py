"""Which CPUs gunicorn's workers run on (`pin_workers`): each worker pinned to one, spread evenly over the
CPUs the server may use, and every process a worker starts (Deno) given all of them back.

Pinned, a worker's threads (the request's, the record writer's) and the requests queued on it stay on one CPU.
Left to the scheduler on this project's 2-core bench machine, the CPUs sat idle 9 to 10% of the time under
load against 4% pinned, and `POST /db/query` served 7 to 22% more requests a second pinned
(docs/performance.md). `auto` pins sync workers, and only when they are at least as many as the CPUs: then
they cover every CPU, and pinning cannot crowd a server onto a few CPUs of a larger machine (a container that
sees every CPU of its host). A gthread worker serves several requests at once; pinned, its TypeScript calls
were slower in the one run measured, so it is pinned only with `on`.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

MODES = ("auto", "on", "off")
_server_cpus: set[int] | None = None  # in a pinned worker: the CPUs the server may use, for its children


def available() -> set[int]:
    """The CPUs this process may run on (every CPU where the platform cannot pin)."""
    if not hasattr(os, "sched_getaffinity"):
        return set(range(os.cpu_count() or 1))
    return os.sched_getaffinity(0)


def pins(mode: str, worker_class: str, workers: int, cpus: int) -> bool:
    """Whether `workers` workers of `worker_class` are pinned on a server that may use `cpus` CPUs."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    return mode == "on" or (mode == "auto" and worker_class == "sync" and workers >= cpus)


def choose(server: Any, worker: Any) -> None:
    """gunicorn's `pre_fork`, in the master: the new worker gets the CPU the fewest live workers have (so a
    worker that replaces a dead one takes its CPU)."""
    cpus = sorted(available())
    taken = Counter(getattr(live, "flux_cpu", None) for live in server.WORKERS.values())
    worker.flux_cpu = min(cpus, key=lambda cpu: (taken[cpu], cpu))


def pin(server: Any, worker: Any) -> None:
    """gunicorn's `post_fork`, in the new worker before it builds its app (the threads it starts run on its
    CPU too)."""
    global _server_cpus
    _server_cpus = available()
    os.sched_setaffinity(0, {worker.flux_cpu})


def release() -> None:
    """In a process a pinned worker starts, before its program runs: every CPU the server may use."""
    if _server_cpus is not None:
        os.sched_setaffinity(0, _server_cpus)
