"""Hosting: `flux server` and `flux dev` run one gunicorn master whose workers each serve `flux.app`.

Before forking, the master checks the port, brings up Postgres (the DATABASE_URL server, or the project's
embedded one) and migrates. The embedded Postgres is stopped when the master exits: on Ctrl-C, SIGTERM,
a failed boot, or any error.
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from flux import cpus, migrate
from flux.api.deploy import deploy
from flux.config import Settings
from flux.devloop import ACCESS_FORMAT, ProjectWatcher, let_go_in_fork
from flux.errors import InvalidConfig, PortInUse
from flux.postgres import EmbeddedPostgres
from flux.trace.inflight import InFlight, record_lost

log = logging.getLogger("flux.server")


def check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """Refuse to start when the host is not an address of this machine or the port is taken."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise InvalidConfig(
            f"cannot bind to host {host!r}: {exc.strerror}", hint="use an address such as 127.0.0.1"
        ) from exc
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {host} is already in use",
                    hint=f"stop the other process or pass another {flag}",
                ) from exc
            raise InvalidConfig(
                f"cannot listen on {host} port {port}: {exc.strerror}",
                hint="use an address of this machine and a port above 1023 unless running as root",
            ) from exc


def bind_address(host: str, port: int) -> str:
    """gunicorn's bind string: IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def binds(settings: Settings) -> list[str]:
    """gunicorn's binds: the project's port, and the dashboard's (an origin of its own) when it has one."""
    found = [bind_address(settings.host, settings.port)]
    if settings.dashboard_listen_port:
        found.append(bind_address(settings.host, settings.dashboard_listen_port))
    return found


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yield the DSN to use: DATABASE_URL as is, or the embedded cluster, stopped on the way out."""
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir, settings.pg_bindir, settings.pg_fallback_dir)
    owner = os.getpid()
    try:
        log.info("starting the embedded Postgres in %s", settings.data_dir)
        yield embedded.start()
    finally:
        # Forked gunicorn workers unwind through this frame too; only the process that started it stops it.
        if os.getpid() == owner:
            embedded.stop()


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Make SIGTERM unwind like Ctrl-C while Postgres starts, so the `finally` blocks still run."""

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# `sync` is gunicorn's sync worker behind a loop that reads each request before it takes the worker, so slow
# or idle connections cannot stall the server (flux/httpworker.py).
WORKER_CLASSES = {"sync": "flux.httpworker.FluxSyncWorker", "gthread": "gthread"}


class _GracefulArbiter(Arbiter):  # type: ignore[misc]
    """Ctrl-C stops as gently as SIGTERM: workers finish their in-flight requests (up to graceful_timeout)."""

    def handle_int(self) -> None:
        self.handle_term()


def _ignore_terminal_interrupt(worker: Any) -> None:
    # Ctrl-C reaches every process of the terminal's group; a worker waits for the master's SIGTERM instead,
    # so it is never cut off in the middle of a response.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _after_dev_fork(then: Any) -> Any:
    """gunicorn's post_fork under `flux dev`: let go of the dev replays' descriptors, then `then`'s."""

    def post_fork(server: Any, worker: Any) -> None:
        let_go_in_fork()
        if then is not None:
            then(server, worker)

    return post_fork


# This worker process's requests in flight, shared with the master (set after the fork, read by `load`).
_worker_inflight: InFlight | None = None


def _before_fork(arbiter: Any, worker: Any, *, pins: bool, slots: int) -> None:
    """In the master: the memory where the worker about to fork keeps its requests in flight (and its CPU)."""
    worker.flux_inflight = InFlight(slots)
    if pins:
        cpus.assign_cpu(arbiter, worker)


def _after_fork(arbiter: Any, worker: Any, *, pins: bool) -> None:
    global _worker_inflight
    _worker_inflight = worker.flux_inflight
    if pins:
        cpus.pin_to_assigned_cpu(arbiter, worker)


def _record_lost_requests(arbiter: Any, worker: Any, *, dsn: str) -> None:
    """In the master, once a worker has exited: the requests it was serving are recorded as lost (FX815)."""
    inflight: InFlight | None = getattr(worker, "flux_inflight", None)
    if inflight is None:
        return
    try:
        rows = inflight.take()
    finally:
        inflight.close()
    if rows:
        record_lost(dsn, rows, f"worker {worker.pid} exited")


class FluxApplication(BaseApplication):  # type: ignore[misc]
    """Gunicorn configured from Settings; each worker builds its own app and connection pool after fork."""

    def __init__(self, settings: Settings, dsn: str, *, reload: bool) -> None:
        self.settings = settings
        self.dsn = dsn
        self.reload = reload
        super().__init__()

    def load_config(self) -> None:
        config = {
            "bind": binds(self.settings),
            "workers": self.settings.workers,
            "worker_class": WORKER_CLASSES[self.settings.worker_class],
            "threads": self.settings.threads,
            "reload": self.reload,
            "graceful_timeout": 10 if self.reload else 30,
            "post_worker_init": _ignore_terminal_interrupt,
            "accesslog": "-" if self.reload else None,
            "access_log_format": ACCESS_FORMAT if self.reload else None,
            "logger_class": "flux.devloop.DevAccessLog" if self.reload else None,
            "proc_name": "flux",
        }
        pins = self._pins_workers()
        config |= {
            "pre_fork": functools.partial(_before_fork, pins=pins, slots=self.settings.threads + 1),
            "post_fork": functools.partial(_after_fork, pins=pins),
            "child_exit": functools.partial(_record_lost_requests, dsn=self.dsn),
        }
        if self.reload:  # a worker forked after a dev replay lets go of its Deno and connection
            config["post_fork"] = _after_dev_fork(config.get("post_fork"))
        if "control_socket_disable" in self.cfg.settings:  # gunicorn 24+: one per master would collide
            config["control_socket_disable"] = True
        for key, value in config.items():
            if value is not None:
                self.cfg.set(key, value)

    def _pins_workers(self) -> bool:
        settings = self.settings
        cpu_count = len(cpus.allowed_cpus())
        if not cpus.should_pin(settings.pin_workers, settings.worker_class, settings.workers, cpu_count):
            return False
        if not cpus.SUPPORTED and settings.pin_workers == "on":
            log.warning("pin_workers = on: this platform cannot pin a process to a CPU; the workers run free")
        return cpus.SUPPORTED

    def run(self) -> None:
        try:
            _GracefulArbiter(self).run()
        except RuntimeError as exc:  # gunicorn's way of saying it could not boot
            print(f"flux: gunicorn could not start: {exc}", file=sys.stderr)
            sys.exit(1)

    def load(self) -> Any:
        from flux.app import create_wsgi

        app = create_wsgi(self.settings, self.dsn, inflight=_worker_inflight)
        # What the worker loaded to serve (modules, compiled code, the first catalog) lives as long as it
        # does: frozen, the cycle collector no longer walks it. Its full collections had cost the worker
        # about 40 ms every few thousand requests (8 µs a request), a stall in the middle of one.
        gc.freeze()
        return app


def serve(settings: Settings, *, reload: bool = False, deploy_project: bool = True) -> None:
    """Run Flux until Ctrl-C or SIGTERM; returns only after Postgres (if embedded) has stopped. The project
    folder is deployed first (a no-op when it is the active version), unless `deploy_project` is False: then
    the active version is served as it is."""
    check_port_free(settings.host, settings.port)
    if settings.dashboard_listen_port:
        check_port_free(settings.host, settings.dashboard_listen_port, "--dashboard-port (0: no dashboard)")
    with terminate_on_sigterm(), database(settings) as dsn:
        applied = migrate.migrate(dsn)  # Flux's own; the project's go with its deploy, in one transaction
        for migration in applied:
            log.info("applied %s", migration.label)
        if deploy_project:
            deployment = deploy(dsn, settings)
            for migration in deployment.migrations:
                log.info("applied %s", migration.label)
            log.info("%s version %d", "deployed" if deployment.created else "serving", deployment.id)
        watcher = (
            ProjectWatcher(dsn, settings.project_dir, replay_last=settings.dev_replay_last)
            if reload
            else None
        )
        if watcher is not None:
            watcher.start()  # in the master only: gunicorn's workers fork without this thread
        children = _start_children(dsn, settings)
        children_owner = os.getpid()
        print(
            f"flux: serving on http://{bind_address(settings.host, settings.port)}",
            file=sys.stderr,
            flush=True,
        )
        if settings.dashboard_listen_port:
            dashboard_at = bind_address(settings.host, settings.dashboard_listen_port)
            print(
                f"flux: dashboard on http://{dashboard_at}/flux/",
                file=sys.stderr,
                flush=True,
            )
        try:
            FluxApplication(settings, dsn, reload=reload).run()
        finally:
            if watcher is not None:
                watcher.stop()
            if children_owner == os.getpid():  # forked workers unwind here too
                _stop_children(children)


def _start_children(dsn: str, settings: Settings) -> list[subprocess.Popen[bytes]]:
    """The processes beside gunicorn's: the queue workers (`flux worker`, `queue_workers` threads), and the
    one that sends every finished trace to an OTLP collector. Processes, not threads of the master: gunicorn's
    workers fork from it, and would inherit their connections."""
    env = {**os.environ, "DATABASE_URL": dsn}
    children = []
    with _terminal_interrupt_ignored():
        if settings.queue_workers:
            children.append(subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", str(settings.project_dir), "--concurrency",
                 str(settings.queue_workers)], env=env,
            ))  # fmt: skip
        if settings.otlp_endpoint:
            log.info("sending every trace to %s", settings.otlp_endpoint)
            children.append(subprocess.Popen(
                [sys.executable, "-m", "flux.trace.forward", "--endpoint", settings.otlp_endpoint], env=env
            ))  # fmt: skip
    return children


@contextmanager
def _terminal_interrupt_ignored() -> Iterator[None]:
    """SIGINT ignored in the master while it starts its children, which inherit that: Ctrl-C reaches every
    process of the terminal's group, and one that came while a child was still starting (importing) ended it
    with a KeyboardInterrupt traceback. The master stops its children with SIGTERM; `flux worker` takes
    Ctrl-C again (to stop gently) once it runs."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each (queue workers finish their running jobs first), then wait for them."""
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=40)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
