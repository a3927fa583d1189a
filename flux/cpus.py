"""Which CPUs gunicorn's workers run on (`pin_workers`, Linux only): each worker pinned to one, spread evenly
over the CPUs the server may use, and every process a worker starts (Deno) given all of them back. Why, and
what it was measured to do: docs/performance-log.md ("each worker pinned to a CPU").
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

log = logging.getLogger("flux.server")
SUPPORTED = hasattr(os, "sched_setaffinity")
_server_cpus: set[int] | None = None  # in a pinned worker: the CPUs the server may use, for its children


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (every CPU where the platform cannot pin)."""
    if not SUPPORTED:
        return set(range(os.cpu_count() or 1))
    return os.sched_getaffinity(0)


def should_pin(mode: str, worker_class: str, workers: int, cpu_count: int) -> bool:
    """Whether a server of `workers` workers of `worker_class` on `cpu_count` CPUs pins them. `auto` pins sync
    workers only where measured to help: one worker on each of two or more CPUs (so a container that sees all
    of its host's CPUs is never crowded onto a few)."""
    if mode == "on":
        return True
    return mode == "auto" and worker_class == "sync" and cpu_count > 1 and workers == cpu_count


def assign_cpu(server: Any, worker: Any) -> None:
    """gunicorn's `pre_fork`, in the master: the new worker gets the CPU the fewest live workers have (so a
    worker that replaces a dead one takes its CPU)."""
    cpus = sorted(allowed_cpus())
    taken = Counter(getattr(live, "flux_cpu", None) for live in server.WORKERS.values())
    worker.flux_cpu = min(cpus, key=lambda cpu: (taken[cpu], cpu))


def pin_to_assigned_cpu(server: Any, worker: Any) -> None:
    """gunicorn's `post_fork`, in the new worker before it builds its app (so the threads it starts run on its
    CPU too). A worker that cannot be pinned (the CPU left its cpuset meanwhile) runs unpinned."""
    global _server_cpus
    cpus = allowed_cpus()
    try:
        os.sched_setaffinity(0, {worker.flux_cpu})
    except OSError as exc:
        log.warning("cannot pin worker %d to CPU %d (%s): it runs on any", os.getpid(), worker.flux_cpu, exc)
        return
    _server_cpus = cpus
    log.info("worker %d runs on CPU %d", os.getpid(), worker.flux_cpu)


def for_children() -> set[int] | None:
    """The CPUs a process started here must be given back (`unpin_child`): in a pinned worker, every CPU the
    server may use; None elsewhere (a child keeps this process's)."""
    return _server_cpus


def unpin_child() -> None:
    """In a process a pinned worker starts, before its program runs: every CPU the server may use (left as it
    is if that fails: the child then shares its worker's CPU)."""
    if _server_cpus is None:
        return
    try:
        os.sched_setaffinity(0, _server_cpus)
    except OSError:
        pass
