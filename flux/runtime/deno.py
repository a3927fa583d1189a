"""Runs TypeScript and JavaScript functions on Deno: a pool of long-lived Deno processes with no permissions
(no network, files or env: the host API is the only way out), each running one call at a time in a fresh
context (deno_worker.js). Host calls travel as JSON lines over the process's pipes.

A call that runs past its wall-clock limit, or a process that dies (its V8 heap cap reached, say), costs that
process: it is killed and replaced, and the call fails with FX301, FX302 or FX306; the next call is fine.
"""

from __future__ import annotations

import itertools
import os
import queue
import selectors
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flux import cpus, jsontext
from flux.errors import (
    ERRORS,
    FluxError,
    FunctionCrashed,
    FunctionFailed,
    FunctionOutOfMemory,
    FunctionTimedOut,
    InvalidFunctionCode,
    InvalidFunctionResponse,
    error_for_code,
)
from flux.runtime.host import Host
from flux.runtime.limits import FunctionLimits

WORKER_SCRIPT = Path(__file__).with_name("deno_worker.js")
_SETPRIV, _TASKSET = shutil.which("setpriv"), shutil.which("taskset")  # util-linux's (see `_spawned`)
_WRAPPERS = ("setpriv:", "taskset:")  # how their errors begin
_REFUSED = threading.Event()  # set once they failed to start Deno: it starts without them from then on
START_TIMEOUT_S = 10.0
MAX_LINE_BYTES = 64 * 1024 * 1024
_USER_ERRORS = {"SyntaxError": InvalidFunctionCode, "InvalidResponse": InvalidFunctionResponse}
_run_ids = itertools.count(1)  # each run's own id, which every host call it makes must name


def deno_binary() -> str:
    """The Deno of the `deno` PyPI package (a dependency), else one on PATH."""
    try:
        import deno  # type: ignore[import-untyped]

        return str(deno.find_deno_bin())
    except (ImportError, FileNotFoundError):
        return "deno"


@dataclass(eq=False)  # a process: compared by identity
class _Worker:
    process: subprocess.Popen[bytes]
    memory_mb: int
    shas: set[str] = field(default_factory=set)  # code the process has already been sent
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    pending: bytearray = field(default_factory=bytearray)  # read, not yet a whole line
    scanned: int = 0  # how much of `pending` holds no newline
    alive: bool = True
    between_runs: bool = True  # False from a run's start until its `done`: only then may it serve another

    def __post_init__(self) -> None:
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        self.selector.register(self.process.stdout, selectors.EVENT_READ)

    def send(self, message: Any) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(jsontext.dumps(message) + b"\n")
        stdin.flush()

    def receive(self, deadline: float) -> Any:
        """The next message, or None when the deadline passed; raises EOFError when the process died."""
        stdout = self.process.stdout
        assert stdout is not None
        while (end := self.pending.find(b"\n", self.scanned)) < 0:  # each byte looked at once: a long line
            self.scanned = len(self.pending)  # costs its length, not its length squared
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                return None
            chunk = _read_available(stdout)
            if chunk is None:
                continue
            if not chunk:
                raise EOFError
            self.pending += chunk
            if len(self.pending) > MAX_LINE_BYTES:
                raise InvalidFunctionResponse(f"the function sent a message over {MAX_LINE_BYTES} bytes")
        line = bytes(self.pending[:end])
        del self.pending[: end + 1]
        self.scanned = 0
        return jsontext.loads(line)

    def has_written(self) -> bool:
        """Whether the process has written something not read yet (a host call, the run's end)."""
        return bool(self.pending) or bool(self.selector.select(0))

    def stop(self) -> str:
        """Kill the process; what it wrote to stderr (why it died, if it did)."""
        self.process.kill()
        self.process.wait()
        self.selector.close()
        stderr = self.process.stderr
        reason = stderr.read().decode(errors="replace") if stderr is not None else ""
        for pipe in (self.process.stdin, self.process.stdout, stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # a pipe to a dead process may fail to flush
        return reason


def _read_available(stream: IO[bytes]) -> bytes | None:
    """What the pipe holds (b"" at its end), or None when a wake-up found nothing."""
    try:
        return os.read(stream.fileno(), 1 << 16)
    except BlockingIOError:
        return None


class DenoPool:
    """Deno processes started on demand, one per concurrent call, of which `size` are kept warm between calls;
    `run` is safe from several threads."""

    def __init__(
        self, size: int = 2, cache_dir: Path | None = None, worker_args: tuple[str, ...] = ()
    ) -> None:
        self.size = size
        self.cache_dir = cache_dir
        self.worker_args = worker_args  # after the script: `--phases` (bench/deno_run.py)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.busy: set[_Worker] = set()  # the workers running a call now

    def run(self, code: bytes, sha: str, lang: str, request: Any, host: Host, limits: FunctionLimits) -> Any:
        """Call the function's default export with `request`; its JSON result, or a FluxError."""
        worker = self._checkout(limits.memory_mb)
        self.busy.add(worker)
        started = host.call("now", None)
        seed = host.call("random", {"bytes": 32})
        run_id = next(_run_ids)
        message: dict[str, Any] = {
            "type": "run", "run": run_id, "sha": sha, "lang": lang, "request": request, "now": started,
            "seed": seed,
        }  # fmt: skip
        if sha not in worker.shas:
            message["code"] = code.decode()
        deadline = host.run_deadline = time.monotonic() + limits.timeout_ms / 1000
        try:
            worker.between_runs = False
            worker.send(message)
            worker.shas.add(sha)
            handed_over = time.monotonic()
            host.run_started()
            # The run's time is its own: when it called the host while the host did work of its own (a
            # replay's set-up), it waited for that work, which is added to its time. A run that made no call
            # meanwhile waited for nothing: it gets its limit and no more (else code that only spins would get
            # the set-up's time on top). A host with nothing to do (a request's) costs no look at the pipe.
            busy = time.monotonic() - handed_over
            if busy > 0.001 and worker.has_written():
                deadline = host.run_deadline = deadline + busy
            return self._serve(worker, run_id, host, deadline, limits)
        except (OSError, EOFError, ValueError) as exc:
            self._discard(worker)
            raise FunctionCrashed(f"the Deno worker failed: {exc}") from None
        finally:
            self.busy.discard(worker)
            if worker.alive and not worker.between_runs:  # left mid-run (a message too long, say): its rest
                self._discard(worker)  # would reach the next request
            if worker.alive and self._idle.qsize() < self.size:  # the call ended: the worker serves on
                self._idle.put(worker)
            elif worker.alive:
                self._discard(worker)

    def _serve(
        self, worker: _Worker, run_id: int, host: Host, deadline: float, limits: FunctionLimits
    ) -> Any:
        while True:
            try:
                message = worker.receive(deadline)
            except EOFError:
                reason = self._discard(worker)
                if any(sign in reason for sign in ("out of memory", "heap limit", "Allocation failed")):
                    raise FunctionOutOfMemory(
                        f"the function went past its {limits.memory_mb} MB heap", hint="raise `memory_mb`"
                    ) from None
                raise FunctionCrashed(f"the Deno worker died: {_last_line(reason)}") from None
            if message is None:
                self._discard(worker)
                raise FunctionTimedOut(
                    f"the function ran past {limits.timeout_ms} ms", hint="raise `timeout_ms`"
                )
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "call" and message.get("run") != run_id:
                # The worker refuses the calls of an ended run itself; one reaching here means the process can
                # no longer be trusted with anyone's request.
                self._discard(worker)
                raise FunctionCrashed("the Deno worker sent a host call of another run; it was stopped")
            if kind == "call":
                answer = host.answer(message.get("op"), message.get("args"))
                # The function's clock moves to the end of the call; the span keeps the value for replay.
                now = host.now(None)
                span = host.recorder.spans[-1]
                span.attributes = {**(span.attributes or {}), "clock_ms": now}
                worker.send({"type": "reply", "id": message.get("id"), "answer": answer, "now": now})
            elif kind == "done":
                worker.between_runs = True
                if message.get("ok"):
                    return message.get("value")
                raise _thrown(message.get("error") or {})
            else:
                self._discard(worker)
                raise FunctionCrashed(f"the Deno worker sent an unknown message {str(message)[:200]}")

    def _checkout(self, memory_mb: int) -> _Worker:
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            if worker.memory_mb == memory_mb and worker.process.poll() is None:
                return worker
            self._discard(worker)
        return self._start(memory_mb)

    def _start(self, memory_mb: int) -> _Worker:
        env = {"PATH": os.environ.get("PATH", ""), "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
        if self.cache_dir is not None:
            env["DENO_DIR"] = str(self.cache_dir)
        # Each run leaves a context behind (about 200 KB): a first old-space budget of a quarter of the heap
        # cap lets V8 collect them in fewer, larger batches (bench/deno_run.py: about 60 us of CPU a run less,
        # for about 16 MB more resident at 128 MB).
        v8_flags = f"--max-old-space-size={memory_mb},--initial-old-space-size={max(1, memory_mb // 4)}"
        deno = [deno_binary(), "run", "--no-prompt", "--no-config", "--no-lock", "--quiet",
                f"--v8-flags={v8_flags}", str(WORKER_SCRIPT), *self.worker_args]  # fmt: skip
        command, before_exec = _spawned(deno)
        worker, reason = self._launch(command, before_exec, env, memory_mb)
        if worker is None and command is not deno and reason.lstrip().startswith(_WRAPPERS):
            # util-linux's setpriv or taskset refused (a setpriv without --pdeathsig, CPUs the server no
            # longer has)? Deno starts as where they are missing, and so from now on if that works.
            try:
                worker, _ = self._launch(deno, _before_exec, env, memory_mb)
            except OSError:  # no Deno to run (what setpriv said too)
                worker = None
            if worker is not None:
                _REFUSED.set()
        if worker is None:
            raise FunctionCrashed(f"Deno did not start: {_last_line(reason)}")
        return worker

    def _launch(
        self, command: list[str], before_exec: Callable[[], None] | None, env: dict[str, str], memory_mb: int
    ) -> tuple[_Worker | None, str]:
        """The worker `command` starts, once ready; else None and why (what it wrote to stderr)."""
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            preexec_fn=before_exec,
        )  # fmt: skip
        worker = _Worker(process, memory_mb)
        try:
            ready = worker.receive(time.monotonic() + START_TIMEOUT_S)
        except EOFError:
            ready = None
        if not isinstance(ready, dict) or ready.get("type") != "ready":
            return None, worker.stop()
        return worker, ""

    def descriptors(self) -> list[int]:
        """The file descriptors of the pool's Deno processes (their pipes and selectors), idle or running a
        call: what a process forked from this one must let go of. Reads no lock (a fork may have copied one
        held), so it may miss a worker being started at that very moment."""
        found = []
        for worker in [*list(self._idle.queue), *list(self.busy)]:
            pipes = (worker.process.stdin, worker.process.stdout, worker.process.stderr)
            for item in (*pipes, worker.selector):
                try:
                    found.append(item.fileno())  # type: ignore[union-attr]
                except (AttributeError, OSError, ValueError):  # closed meanwhile
                    pass
        return found

    def _discard(self, worker: _Worker) -> str:
        worker.alive = False
        return worker.stop()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().stop()
            except queue.Empty:
                return


def _spawned(command: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """How to start `command` so that it dies with the Flux worker (and, from a pinned worker, runs on every
    CPU): through util-linux's `setpriv --pdeathsig` (and `taskset`), which Python starts without running any
    of its own code in the child (vfork and exec: about 4 ms quicker a Deno start than a fork, more in a
    large worker), or, where they are missing or refused (`_REFUSED`), with `_before_exec` in the forked
    child."""
    if sys.platform != "linux":
        return command, None
    if _REFUSED.is_set():
        return command, _before_exec
    dying = [_SETPRIV, "--pdeathsig", "KILL", "--", *command] if _SETPRIV is not None else None
    every_cpu = cpus.for_children()
    if dying is not None and every_cpu is None:
        return dying, None
    if dying is not None and _TASKSET is not None and every_cpu:
        return [_TASKSET, "--cpu-list", ",".join(map(str, sorted(every_cpu))), *dying], None
    return command, _before_exec


def _before_exec() -> None:
    """In the child, before Deno starts: die with the worker, and run on every CPU, not only on the one a
    pinned worker has (V8 runs threads of its own)."""
    _die_with_parent()
    cpus.unpin_child()


def _die_with_parent() -> None:
    """Be killed when the Flux worker dies (even by kill -9), so a function stuck in a loop never outlives the
    process that ran it. (Linux sends it when the spawning thread ends: gunicorn's sync workers run requests
    on their main thread.)"""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _thrown(error: dict[str, Any]) -> FluxError:
    """What the function threw, as the request's error: the message for the client, the stack for the span."""
    name, message = str(error.get("name", "Error")), str(error.get("message", ""))
    code = error.get("code")
    details = {"name": name, "stack": error.get("stack", ""), "code": code}
    if name == "FluxError" and isinstance(code, str) and code in ERRORS:  # a host call's error, not caught
        return error_for_code(code, message, details=details)
    kind = _USER_ERRORS.get(name, FunctionFailed)
    return kind(f"{name}: {message}" if name not in message else message, details=details)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
