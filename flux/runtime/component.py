"""Runs WebAssembly components that implement the `function` world of `wit/flux.wit` (Python functions built
by componentize-py, or any language with a component toolchain), each call in a fresh instance.

The world exports `handle(request: string) -> string` (JSON both ways) and imports `host.call(op, args)` and
`host.log(message)`, the same operations as the core-module ABI. WASI 0.2 is linked for the language's
runtime: stdout and stderr become log spans, and its wall clock and random source are the host's recorded
`now` and `random`. The monotonic clock stays WASI's own (it cannot be replaced alone: its waits share its
instance), so Python's entry module makes `time.monotonic` and `time.perf_counter` read the recorded clock.
Limits are the core modules' (fuel, deadline, memory).

A component may answer `\0flux-error\0{json}` (never valid JSON) to fail the request with an error of its
own: Flux's entry module for Python does so with an exception the function did not catch (its type, message
and file:line). Compiling a large component takes seconds (Python's, about 18 MB, 15-30 s), so `flux deploy`
compiles it ahead (`compile_ahead`) into the cache, and a request waits for a compile no longer than its
`timeout_ms`.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import Trap
from wasmtime import component as wasm_component

from flux import jsontext
from flux.errors import (
    FluxError,
    FunctionCrashed,
    FunctionFailed,
    FunctionOutOfMemory,
    FunctionTimedOut,
    InvalidFunctionCode,
    InvalidFunctionResponse,
)
from flux.runtime._python_entry import ERROR_PREFIX
from flux.runtime.host import Host, not_json
from flux.runtime.limits import FunctionLimits
from flux.runtime.wasm import (
    WasmRuntime,
    active_run,
    clock_ns,
    compile_cached,
    first_line,
    host_errors,
    kept_on_this_thread,
    limited_store,
    running,
    trap_error,
)
from flux.runtime.wasmtime_bytes import lower_bytes_at_once

lower_bytes_at_once()  # WASI's random bytes, handed over a chunk at a time (see its module)

HOST_INTERFACE = "flux:function/host@0.1.0"


def wit_dir() -> Path:
    """The WIT of Flux's world: `wit/` beside the package in a checkout, `flux/_wit` in an installed wheel."""
    checkout = Path(__file__).resolve().parents[2] / "wit"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parents[1] / "_wit"


@dataclass(frozen=True)
class LoadedComponent:
    sha256: str
    component: wasm_component.Component
    linker: wasm_component.Linker


class ComponentRuntime:
    """Components on the engine (and epoch clock) of a WasmRuntime; `run` is safe from several threads."""

    def __init__(self, wasm: WasmRuntime) -> None:
        self.engine = wasm.engine
        self.clock = wasm.clock
        self.cache_dir = wasm.cache_dir
        self._loading: dict[str, Future[LoadedComponent]] = {}
        self._lock = threading.Lock()

    def load(self, code: bytes, sha: str | None = None, wait_ms: int | None = None) -> LoadedComponent:
        """The component for this code, compiled once per machine (or read from the cache, in milliseconds)
        on a thread of its own, once per process. With `wait_ms`, a caller waits no longer than that: FX301,
        while the compile goes on for the requests after it."""
        future = self.prepare(code, sha or hashlib.sha256(code).hexdigest())
        try:
            return future.result(None if wait_ms is None else wait_ms / 1000)
        except FutureTimeout:
            raise FunctionTimedOut(
                f"the function's code was still compiling after {wait_ms} ms (its timeout_ms)",
                hint="try again shortly: it compiles once per machine (`flux deploy` compiles it ahead)",
            ) from None

    def prepare(self, code: bytes, sha: str) -> Future[LoadedComponent]:
        """The component's load, started now on a thread of its own unless it was already."""
        with self._lock:
            future = self._loading.get(sha)
            if future is None:
                future = self._loading[sha] = Future()
                threading.Thread(target=self._prepare, args=(sha, code, future), daemon=True,
                                 name=f"flux-compile-{sha[:12]}").start()  # fmt: skip
        return future

    def ready(self, sha: str) -> bool:
        """Whether the component with this sha is loaded in this process (a request runs it at once)."""
        future = self._loading.get(sha)
        return future is not None and future.done() and future.exception() is None

    def _prepare(self, sha: str, code: bytes, future: Future[LoadedComponent]) -> None:
        try:
            component = compile_component(self.engine, self.cache_dir, sha, code)
            future.set_result(LoadedComponent(sha, component, self._linker(component)))
        except BaseException as exc:
            with self._lock:  # the next request tries again (a full disk, say, may not last)
                self._loading.pop(sha, None)
            future.set_exception(exc)

    def _linker(self, component: wasm_component.Component) -> wasm_component.Linker:
        """WASI 0.2, with its wall clock and random source replaced (in the versions the component imports)
        by the host's recorded ones, and Flux's host interface."""
        linker = wasm_component.Linker(self.engine)
        linker.add_wasip2()
        linker.allow_shadowing = True
        imports = check_world(self.engine, component)
        with linker.root() as root:
            with root.add_instance(HOST_INTERFACE) as host:
                host.add_func("call", kept_on_this_thread(_host_call))
                host.add_func("log", kept_on_this_thread(_host_log))
            for name in imports:
                if name.startswith("wasi:clocks/wall-clock@"):
                    with root.add_instance(name) as clock:
                        clock.add_func("now", kept_on_this_thread(_wall_clock_now))
                        clock.add_func("resolution", kept_on_this_thread(_wall_clock_resolution))
                elif name.startswith("wasi:random/random@"):
                    with root.add_instance(name) as random:
                        random.add_func("get-random-bytes", kept_on_this_thread(_random_bytes))
                        random.add_func("get-random-u64", kept_on_this_thread(_random_u64))
        return linker

    def load_and_run(self, code: bytes, sha: str, request: Any, host: Host, limits: FunctionLimits) -> Any:
        """`run`, after `load` waited at most `timeout_ms`; the run has what is left of it."""
        started = time.monotonic()
        loaded = self.load(code, sha, wait_ms=limits.timeout_ms)
        waited_ms = int((time.monotonic() - started) * 1000)
        if waited_ms > 0:
            limits = replace(limits, timeout_ms=max(1, limits.timeout_ms - waited_ms))
        return self.run(loaded, request, host, limits)

    def run(self, loaded: LoadedComponent, request: Any, host: Host, limits: FunctionLimits) -> Any:
        """Call `handle` with `request` (JSON) in a fresh instance; its JSON result, or a FluxError."""
        host.run_deadline = time.monotonic() + limits.timeout_ms / 1000  # a fetch ends by then too
        with self.clock.ticking(), running(host, limited_store(self.engine, limits)) as run:
            store = run.store
            try:
                with host_errors():  # what a host function raised, not the bare error it became
                    instance = loaded.linker.instantiate(store, loaded.component)
                    handle = instance.get_func(store, "handle")
                    if handle is None:
                        raise InvalidFunctionCode(
                            "the component does not export handle", hint="see wit/flux.wit"
                        )
                    result = handle(store, jsontext.dumps_text(request))
                    handle.post_return(store)
            except Trap as trap:
                raise trap_error(trap, run, limits) from None
            except wasmtime.WasmtimeError as exc:
                raise _component_error(exc, limits) from None
        if not isinstance(result, str):
            raise InvalidFunctionResponse("handle must return a string of JSON")
        if result.startswith(ERROR_PREFIX):
            raise guest_error(result[len(ERROR_PREFIX) :], limits)
        try:
            return jsontext.loads(result)
        except ValueError as exc:
            raise InvalidFunctionResponse(f"the function returned invalid JSON: {exc}") from None


def compile_component(
    engine: wasmtime.Engine, cache_dir: Path, sha: str, code: bytes
) -> wasm_component.Component:
    """The compiled component, from `cache_dir` (by sha) or compiled now and written there."""

    def compile_now() -> wasm_component.Component:
        try:
            return wasm_component.Component(engine, code)
        except wasmtime.WasmtimeError as exc:
            raise InvalidFunctionCode(f"the function is not a valid component: {first_line(exc)}") from None

    return compile_cached(
        cache_dir / f"{sha}.component.cwasm",
        lambda path: wasm_component.Component.deserialize_file(engine, path),
        compile_now,
    )


def check_world(engine: wasmtime.Engine, component: wasm_component.Component) -> list[str]:
    """The component's imports, once it is known to import Flux's host interface and export `handle`."""
    imports = list(component.type.imports(engine))
    for missing, what in ((HOST_INTERFACE not in imports, f"import {HOST_INTERFACE}"),
                          ("handle" not in component.type.exports(engine), "export handle")):  # fmt: skip
        if missing:
            raise InvalidFunctionCode(
                f"the component does not {what}", hint="build it for the world in wit/flux.wit"
            )
    return imports


def guest_error(text: str, limits: FunctionLimits) -> FluxError:
    """The error a component answered with (`ERROR_PREFIX` + JSON): for Python, the exception the function
    did not catch. The message names its type; the details keep the stack and the function's file:line."""
    try:
        error = jsontext.loads(text)
    except ValueError:
        error = None
    if not isinstance(error, dict):
        return InvalidFunctionResponse("the function answered an error that is not a JSON object")
    name, message = str(error.get("name") or "Error"), str(error.get("message") or "")
    details = {key: error.get(key) for key in ("file", "line")} | {
        "name": name,
        "stack": str(error.get("stack") or ""),
    }
    text = f"{name}: {message}" if message else name
    if error.get("response"):
        return InvalidFunctionResponse(text, details=details)
    if name == "MemoryError":
        return FunctionOutOfMemory(f"{text} (the limit is {limits.memory_mb} MB)", details=details,
                                   hint="use less memory, or raise `memory_mb`")  # fmt: skip
    return FunctionFailed(text, details=details)


def _component_error(exc: wasmtime.WasmtimeError, limits: FunctionLimits) -> FluxError:
    """A component's trap comes as an error whose text names the cause (the core API gives a trap code)."""
    text = str(exc)
    if "all fuel consumed" in text:
        return FunctionTimedOut(f"the function used all its CPU fuel ({limits.fuel})", hint="raise `fuel`")
    if "interrupt" in text:
        return FunctionTimedOut(f"the function ran past {limits.timeout_ms} ms", hint="raise `timeout_ms`")
    if "wasm backtrace" in text or "wasm trap" in text:
        cause = [line.strip() for line in text.splitlines() if line.strip().startswith("wasm trap")]
        return FunctionFailed(f"the function trapped: {cause[0] if cause else first_line(exc)}")
    return FunctionCrashed(f"the component failed: {first_line(exc)}")


# -- host functions (the linker is shared; the request is the thread's active run) -------------------------


def _host_call(store: Any, op: str, args: str) -> str:
    host = active_run().host
    try:
        answer = host.answer(op, jsontext.loads_bounded(args))
    except ValueError as exc:  # not JSON, or nested deeper than jsontext.MAX_DEPTH
        answer = not_json(exc)
    return jsontext.dumps_text(answer)


def _host_log(store: Any, message: str) -> None:
    active_run().host.answer("log", {"level": "info", "message": message})


def _datetime(milliseconds: Any) -> wasm_component.Record:
    nanoseconds = clock_ns(milliseconds)
    record = wasm_component.Record()
    record.seconds, record.nanoseconds = divmod(nanoseconds, 1_000_000_000)  # type: ignore[attr-defined]
    return record


def _wall_clock_now(store: Any) -> wasm_component.Record:
    return _datetime(active_run().host.call("now", None))


def _wall_clock_resolution(store: Any) -> wasm_component.Record:
    return _datetime(0.001)  # the host's clock counts microseconds


MAX_RANDOM_BYTES = 16 << 20  # what one get-random-bytes may ask for (a component's whole memory is less)


def _random_bytes(store: Any, count: int) -> bytes:
    """WASI's random bytes from the host's recorded `random`: a count past MAX_RANDOM_BYTES is refused at
    once, not drawn."""
    if count > MAX_RANDOM_BYTES:
        raise FunctionFailed(
            f"the function asked for {count} random bytes at once",
            hint=f"ask for at most {MAX_RANDOM_BYTES} at a time",
        )
    chunks = [
        base64.b64decode(active_run().host.call("random", {"bytes": min(count - offset, 65_536)}))
        for offset in range(0, count, 65_536)
    ]
    return b"".join(chunks)


def _random_u64(store: Any) -> int:
    return int.from_bytes(_random_bytes(store, 8), "little")
