"""Runs WebAssembly core modules that follow the Flux ABI (docs/functions.md), each call in a fresh instance.

A module exports `memory`, `flux_alloc(len) -> ptr` and `flux_handle(ptr, len) -> i64` (the result's pointer
<< 32 | its length; JSON in, JSON out) and may import `flux.call(ptr, len) -> i64` (one host call, JSON
`{"op", "args"}` in, `{"ok", "value" | "error"}` out) and `flux.log(ptr, len)`. WASI is there for languages
whose runtime needs it: stdout and stderr become log spans, and its clock and random source are the host's
recorded `now` and `random`. Compiled code is cached on disk by the sha256 of the Wasm; CPU is bounded by
fuel, time by an epoch deadline, memory by a cap (a grow past it fails).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import wasmtime
from wasmtime import Config, Engine, FuncType, Linker, Module, Store, Trap, TrapCode, ValType, WasiConfig
from wasmtime import _ffi as wasm_ffi  # the unchecked call path (see `_call`)
from wasmtime import component as wasm_component
from wasmtime._slab import Slab

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
from flux.runtime.host import Host, not_json
from flux.runtime.limits import FunctionLimits
from flux.runtime.wasi_command import (
    Command,
    CommandFailed,
    Streams,
    command_linker,
    failure,
    is_command,
    split_command,
    start,
)

Compiled = TypeVar("Compiled", Module, "wasm_component.Component")
Loaded = TypeVar("Loaded")

EPOCH_TICK_S = 0.005
PAGE = 65_536
_REQUIRED_EXPORTS = ("memory", "flux_alloc", "flux_handle")
_ERRNO_SUCCESS, _ERRNO_INVAL = 0, 28


@dataclass
class _Run:
    """The request a thread is running, for the host functions (which the linker shares across requests)."""

    host: Host
    store: Store
    memory: wasmtime.Memory | None = None
    output: dict[str, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()}
    )
    ended: bool = False  # its last output logged: WASI's callbacks, which outlive it, drop what comes after
    errors: list[str] = field(default_factory=list)  # its first stderr lines, to say why it exited
    last_error: str | None = None  # its last line on stderr
    streams: Any = None  # a WASI command's stdin and stdout (wasi_command.Streams)
    late: bool = False  # it wrote output past its deadline, which was dropped: it ends with FX301


_current = threading.local()


def active_run() -> _Run:
    """The request this thread is running (host functions are shared by every request of the linker)."""
    run: _Run | None = getattr(_current, "run", None)
    if run is None:
        raise RuntimeError("a Flux host function was called outside a request")
    return run


MAX_TABLES = 4
TABLE_ELEMENT_BYTES = 8  # what wasmtime keeps for a funcref


def limited_store(engine: Engine, limits: FunctionLimits) -> Store:
    """A store for one call: its fuel, its deadline (in epoch ticks) and its memory cap."""
    store = Store(engine)
    store.set_fuel(limits.fuel)
    store.set_epoch_deadline(max(1, int(limits.timeout_ms / 1000 / EPOCH_TICK_S)))
    store.set_limits(memory_size=limits.memory_bytes)
    return store


def limit_to_one_module(store: Store, limits: FunctionLimits) -> Store:
    """`store` (a `limited_store`) for one instance of a core module. Wasmtime caps each memory and each
    table, not their sum: the store holds one memory (a module declaring twenty would have twenty caps) and
    a few tables, each of at most 1/16 of the memory cap (a funcref takes 8 bytes)."""
    store.set_limits(
        memory_size=limits.memory_bytes,
        table_elements=limits.memory_bytes // 16 // TABLE_ELEMENT_BYTES,
        instances=1,
        tables=MAX_TABLES,
        memories=1,
    )
    return store


@contextmanager
def running(host: Host, store: Store, argv: list[str] | None = None) -> Iterator[_Run]:
    """Make `host` this thread's active run while Wasm runs, with WASI's stdout and stderr as its log lines
    (the last, unterminated one is logged at the end); then free the store.

    The store is closed here rather than left to the garbage collector: each one holds an instance's memory
    reservation (4 GiB of address space), and wasmtime-py keeps WASI's output callbacks, which refer to the
    run and so to the store, in a global table until the store is freed: left alone, no store ever was."""
    run = _current.run = _Run(host, store)
    _current.raised = None
    wasi = WasiConfig()
    wasi.stdout_custom = lambda data: capture_output(run, "stdout", data)  # called on wasmtime's threads
    wasi.stderr_custom = lambda data: capture_output(run, "stderr", data)
    if argv is not None:
        wasi.argv = argv
    store.set_wasi(wasi)
    try:
        yield run
    finally:
        try:
            _flush_output(run)
        finally:
            run.ended = True
            _current.run = None
            _current.raised = None
            run.memory = None
            store.close()


class EpochClock:
    """The engine's epoch, which a thread advances every `EPOCH_TICK_S` while a call runs (a store's deadline
    counts ticks). With no call running the thread sleeps: a worker serving TypeScript or `/db/query` is not
    interrupted 200 times a second for the GIL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._running = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._tick, name="flux-wasm-epoch", daemon=True).start()

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """Keep the clock ticking while the block runs."""
        with self._changed:
            self._running += 1
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1

    def _tick(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._running > 0)
            time.sleep(EPOCH_TICK_S)
            self.engine.increment_epoch()


@dataclass(frozen=True)
class LoadedModule:
    sha256: str
    pre: wasmtime.InstancePre
    reactor: bool = False  # exports `_initialize` (a WASI reactor's constructors: C, Rust with std)
    command: Command | None = None  # a WASI command's start (wasi_command.py), not the core ABI


def new_engine() -> Engine:
    """An engine as every Flux process makes it: code one compiled and serialized, another can load."""
    config = Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    return Engine(config)


class WasmRuntime:
    """One engine, linker and compiled-code cache per process; `run` is safe from several threads."""

    def __init__(self, cache_dir: Path) -> None:
        self.engine = new_engine()
        self.cache_dir = cache_dir
        self.linker = _make_linker(self.engine)
        self._loaded = CompiledOnce(self._prepare)
        self._modules = CompiledOnce(self._compile)  # by the module's own sha: interpreters are shared
        self.clock = EpochClock(self.engine)

    def load(self, wasm: bytes, sha: str | None = None) -> LoadedModule:
        """The module for this code, compiled once per process and once per machine (a serialized cache)."""
        return self._loaded.get(wasm, sha)

    def _prepare(self, sha: str, wasm: bytes) -> LoadedModule:
        code, command = split_command(wasm)
        module = self._modules.get(code, sha if code is wasm else None)
        if is_command(module, command):
            try:
                pre = command_linker(self.engine, module, _define_recorded_wasi).instantiate_pre(module)
            except wasmtime.WasmtimeError as exc:
                raise InvalidFunctionCode(
                    f"the WASI command imports what Flux does not give: {exc}"
                ) from None
            return LoadedModule(sha, pre, command=command or Command())
        exports = {export.name: export.type for export in module.exports}
        missing = [name for name in _REQUIRED_EXPORTS if name not in exports]
        if missing:
            raise InvalidFunctionCode(
                f"the Wasm module does not export {', '.join(missing)}",
                hint="export memory, flux_alloc and flux_handle (see docs/functions.md)",
            )
        for name, (params, results) in _ABI_TYPES.items():
            if name in exports and not _has_type(exports[name], params, results):
                raise InvalidFunctionCode(
                    f"the Wasm module's {name} is {exports[name]}, not {_type_text(params, results)}",
                    hint="see the Flux ABI in docs/functions.md",
                )
        try:
            pre = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise InvalidFunctionCode(f"the Wasm module imports what Flux does not give: {exc}") from None
        return LoadedModule(sha, pre, reactor="_initialize" in exports)

    def _compile(self, sha: str, wasm: bytes) -> Module:
        """The module compiled, from the machine's cache when it is there (by the sha256 of its bytes)."""
        return compile_module(self.engine, self.cache_dir, sha, wasm)

    def prepare(self, code: bytes, sha: str) -> None:
        """Start loading the module on a thread of its own (a deploy reached this worker): a large module
        (an interpreter) is then compiled, or read from the cache, before its first request."""

        def load() -> None:
            with contextlib.suppress(FluxError):  # a request reports it
                self.load(code, sha)

        threading.Thread(target=load, daemon=True, name=f"flux-load-{sha[:12]}").start()

    def run(self, loaded: LoadedModule, request: Any, host: Host, limits: FunctionLimits) -> Any:
        """Call the function with `request` (JSON) in a fresh instance; its JSON result, or a FluxError."""
        host.run_deadline = time.monotonic() + limits.timeout_ms / 1000  # a fetch ends by then too
        argv = list(loaded.command.args) if loaded.command is not None else None
        store = limit_to_one_module(limited_store(self.engine, limits), limits)
        with self.clock.ticking(), running(host, store, argv) as run:
            if loaded.command is not None:
                result = self._call_command(loaded, loaded.command, request, run, limits)
            else:
                result = self._call(loaded, request, run, limits)
            if run.late:
                raise FunctionTimedOut(
                    f"the function wrote output past its {limits.timeout_ms} ms", hint="raise `timeout_ms`"
                )
        try:
            return jsontext.loads(result)
        except ValueError as exc:
            raise InvalidFunctionResponse(f"the function returned invalid JSON: {exc}") from None
        except RecursionError:  # past orjson's 1024 levels, Python's parser runs out of stack
            raise InvalidFunctionResponse(
                "the function returned JSON nested too deeply to read", hint="return JSON that nests less"
            ) from None

    def _call_command(
        self, loaded: LoadedModule, command: Command, request: Any, run: _Run, limits: FunctionLimits
    ) -> bytes:
        """Run a WASI command: the request on its stdin, its host calls answered as it reads, its last line
        on stdout the result (wasi_command.py)."""
        store = run.store
        run.streams = Streams(bytearray(jsontext.dumps(request) + b"\n"), limit=limits.memory_bytes)
        try:
            with host_errors():
                instance = _instantiate(loaded, store, limits)
            memory = instance.exports(store).get("memory")
            run.memory = memory if isinstance(memory, wasmtime.Memory) else None
            try:
                with host_errors():
                    start(store, instance, command)
            except wasmtime.ExitTrap as exit:
                if exit.code != 0:
                    said = _said(run, last=True)
                    fallback = f"the command exited with status {exit.code}"
                    raise _out_of_memory(said, run, limits) or failure(said, fallback) from None
            except CommandFailed as failed:
                said = _said(run, last=True)
                raise _out_of_memory(said, run, limits) or failure(said, str(failed)) from None
            streams: Streams = run.streams
            response = streams.perform_calls(run.host, keep_last=True)
            assert response is not None
            return response
        except Trap as trap:
            raise trap_error(trap, run, limits) from None
        except wasmtime.WasmtimeError as exc:
            raise FunctionCrashed(f"the Wasm function failed: {first_line(exc)}") from None

    def _call(self, loaded: LoadedModule, request: Any, run: _Run, limits: FunctionLimits) -> bytes:
        store = run.store
        try:
            with host_errors():
                instance = _instantiate(loaded, store, limits)
                memory = wasmtime.Memory._from_raw(_export(store, instance, b"memory").of.memory)
                run.memory = memory
                if loaded.reactor:
                    _call(store, _export(store, instance, b"_initialize"))
                payload = jsontext.dumps(request)
                pointer = _call(store, _export(store, instance, b"flux_alloc"), len(payload)) & 0xFFFF_FFFF
                if pointer == 0 and payload:
                    raise FunctionFailed(f"flux_alloc({len(payload)}) returned 0, not a pointer")
                guest_write(memory, store, payload, pointer, "flux_alloc's pointer")
                packed = _call(store, _export(store, instance, b"flux_handle"), pointer, len(payload))
                return _read(memory, store, packed)
        except Trap as trap:
            raise trap_error(trap, run, limits) from None
        except wasmtime.ExitTrap as exit:
            raise exit_error(exit, run) from None
        except wasmtime.WasmtimeError as exc:
            raise FunctionCrashed(f"the Wasm function failed: {first_line(exc)}") from None


def _instantiate(loaded: LoadedModule, store: Store, limits: FunctionLimits) -> wasmtime.Instance:
    """A fresh instance of the module in `store`, or why the store's limits refuse it."""
    try:
        return loaded.pre.instantiate(store)
    except wasmtime.WasmtimeError as exc:
        text = str(exc)
        if "count too high" in text:  # memories, tables or instances (limit_to_one_module)
            raise InvalidFunctionCode(
                f"the module declares more than a Flux function may have: {first_line(exc)}",
                hint=f"a Flux function has one memory and at most {MAX_TABLES} tables",
            ) from None
        if ("memory" in text or "table" in text) and "limit" in text:
            raise FunctionOutOfMemory(
                f"the function needs more memory than its {limits.memory_mb} MB to start",
                hint="raise `memory_mb`",
            ) from None
        raise


# -- calls into an instance ------------------------------------------------------------------------------
# wasmtime-py's Func.__call__ reads the function's type back from wasmtime and converts each value on every
# call (about 40 us a call, a third of a no-op request). The ABI's exports are type-checked once, at load, so
# calls go through wasmtime's unchecked entry point with raw values instead.

_ABI_TYPES = {  # name: (params, results)
    "flux_alloc": (("i32",), ("i32",)),
    "flux_handle": (("i32", "i32"), ("i64",)),
    "_initialize": ((), ()),
}


def _has_type(extern: Any, params: tuple[str, ...], results: tuple[str, ...]) -> bool:
    return (
        isinstance(extern, FuncType)
        and tuple(str(t) for t in extern.params) == params
        and tuple(str(t) for t in extern.results) == results
    )


def _type_text(params: tuple[str, ...], results: tuple[str, ...]) -> str:
    return f"func ({', '.join(params)}) -> ({', '.join(results)})"


def _export(store: Store, instance: wasmtime.Instance, name: bytes) -> Any:
    """The instance's export `name` (a wasmtime_extern_t); the module was checked to have it."""
    item = wasm_ffi.wasmtime_extern_t()
    found = wasm_ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), name, len(name), ctypes.byref(item)
    )
    assert found, name
    return item


def _call(store: Store, export: Any, *args: int) -> int:
    """Call an exported function whose type `_ABI_TYPES` checked (i32 arguments, one i32 or i64 result or
    none); its result as a signed 64-bit integer (0 without one). A trap raises Trap, another error
    WasmtimeError (an exit ExitTrap); what a host function raised is for `host_errors` to raise instead."""
    values = (wasm_ffi.wasmtime_val_raw_t * max(len(args), 1))()
    for index, arg in enumerate(args):
        values[index].i32 = arg
    trap = ctypes.POINTER(wasm_ffi.wasm_trap_t)()
    error = wasm_ffi.wasmtime_func_call_unchecked(
        store._context(), ctypes.byref(export.of.func), values, len(values), ctypes.byref(trap)
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise Trap._from_ptr(trap)
    return int(values[0].i64)


def compile_module(engine: Engine, cache_dir: Path, sha: str, wasm: bytes) -> Module:
    """`wasm` (whose sha256 is `sha`) compiled, through the cache in `cache_dir` (see `compile_cached`)."""

    def compile_now() -> Module:
        try:
            return Module(engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidFunctionCode(f"the function is not valid WebAssembly: {first_line(exc)}") from None

    return compile_cached(
        cache_dir / f"{sha}.cwasm", lambda path: Module.deserialize_file(engine, path), compile_now
    )


def compile_ahead_module(engine: Engine, cache_dir: Path, wasm: bytes) -> None:
    """Compile a module (a WASI command's interpreter without its script) into `cache_dir` unless it is there,
    as `WasmRuntime(cache_dir)` reads it: what `flux deploy` does, so no request waits for the compile."""
    code, _ = split_command(wasm)
    compile_module(engine, cache_dir, hashlib.sha256(code).hexdigest(), code)


class CompiledOnce(Generic[Loaded]):
    """Code prepared once per process, keyed by the sha256 of its bytes; concurrent first calls wait for one
    `prepare(sha, code)`."""

    def __init__(self, prepare: Callable[[str, bytes], Loaded]) -> None:
        self._prepare = prepare
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    def get(self, code: bytes, sha: str | None = None) -> Loaded:
        """`sha` is the code's sha256 when the caller knows it already (hashing a large module on every
        request would cost more than running it)."""
        sha = sha or hashlib.sha256(code).hexdigest()
        loaded = self._loaded.get(sha)
        if loaded is not None:
            return loaded
        with self._lock:
            if sha not in self._loaded:
                self._loaded[sha] = self._prepare(sha, code)
            return self._loaded[sha]


def compile_cached(path: Path, load: Callable[[str], Compiled], compile: Callable[[], Compiled]) -> Compiled:
    """Compiled code from its file in the cache, else compiled now and written there (atomically, since
    several processes share the cache). While one process compiles, the others wait for its file rather than
    compile the same code again (a lock file beside it). A file another wasmtime wrote fails to load: it is
    compiled again."""
    loaded = _load_cached(path, load)
    if loaded is not None:
        return loaded
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        loaded = _load_cached(path, load)  # compiled by the process that held the lock
        if loaded is not None:
            return loaded
        compiled = compile()
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_bytes(compiled.serialize())
        partial.replace(path)
    return compiled


def _load_cached(path: Path, load: Callable[[str], Compiled]) -> Compiled | None:
    if path.exists():
        try:
            return load(str(path))
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)
    return None


def compile_wat(text: str) -> bytes:
    """WebAssembly text to binary; ValueError with the parser's message when it is not valid."""
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise ValueError(str(exc).strip()) from None


def guest_bytes(memory: wasmtime.Memory, store: Any, pointer: int, length: int, what: str) -> bytes:
    """`length` bytes of the guest's memory at `pointer` (both unsigned 32-bit, as Wasm means them; Python
    sees a negative i32, which `Memory.read` would take from the end), or the run fails (FX300) if any lies
    outside it: never a clamped read, never an IndexError."""
    pointer, length = pointer & 0xFFFF_FFFF, length & 0xFFFF_FFFF
    if pointer + length > memory.data_len(store):
        raise outside_memory(what, pointer, length)
    return bytes(memory.read(store, pointer, pointer + length)) if length else b""


def guest_write(memory: wasmtime.Memory, store: Any, data: bytes, pointer: int, what: str) -> None:
    """`data` written into the guest's memory at `pointer` (unsigned 32-bit), or the run fails (FX300) if
    it does not fit there."""
    pointer &= 0xFFFF_FFFF
    if pointer + len(data) > memory.data_len(store):
        raise outside_memory(what, pointer, len(data))
    if data:
        memory.write(store, data, pointer)


def outside_memory(what: str, pointer: int, length: int) -> FunctionFailed:
    return FunctionFailed(
        f"the function gave the host {what} outside its memory ({length} bytes at {pointer})",
        hint="pass pointers and lengths within the module's exported memory",
    )


def _read(memory: wasmtime.Memory, store: Any, packed: int) -> bytes:
    packed &= 0xFFFF_FFFF_FFFF_FFFF
    pointer, length = packed >> 32, packed & 0xFFFF_FFFF
    if pointer + length > memory.data_len(store):
        raise InvalidFunctionResponse(f"the function's result ({pointer}, {length}) is outside its memory")
    return bytes(memory.read(store, pointer, pointer + length))


def trap_error(trap: Trap, run: _Run, limits: FunctionLimits) -> FluxError:
    code = trap.trap_code
    if code == TrapCode.OUT_OF_FUEL:
        return FunctionTimedOut(f"the function used all its CPU fuel ({limits.fuel})", hint="raise `fuel`")
    if code == TrapCode.INTERRUPT:
        return FunctionTimedOut(f"the function ran past {limits.timeout_ms} ms", hint="raise `timeout_ms`")
    if _memory_full(run, limits):
        return FunctionOutOfMemory(
            f"the function trapped with its memory at the {limits.memory_mb} MB limit",
            hint="raise `memory_mb`",
        )
    said = _said(run)
    return FunctionFailed(said or f"the function trapped: {first_line(trap)}")


def exit_error(exit: wasmtime.ExitTrap, run: _Run) -> FluxError:
    """A run that called WASI's `proc_exit` before it answered failed: with a Go panic's `panic: ...` line,
    else its last line on stderr (an SDK's error, written just before it exits), else its exit status."""
    said = _said(run) or run.last_error
    return FunctionFailed(
        said[:1000] if said else f"the function exited with status {exit.code} before it answered"
    )


def _said(run: _Run, last: bool = False) -> str | None:
    """Why a run stopped, by what it wrote on stderr: a Go panic's `panic: ...` line (a module's trap says
    nothing better), or, for a WASI command (`last`), its last line: an interpreter's error comes last."""
    _flush_output(run)
    said = run.last_error if last else next((line for line in run.errors if line.startswith("panic: ")), None)
    return said[:1000] if said else None


def _out_of_memory(said: str | None, run: _Run, limits: FunctionLimits) -> FluxError | None:
    """A command that failed because its memory was at the cap (an interpreter's own out-of-memory error,
    such as Ruby's `NoMemoryError`, raised when a grow failed)."""
    if (said or "").startswith("NoMemoryError") or _memory_full(run, limits):
        return FunctionOutOfMemory(
            f"the function failed with its memory at the {limits.memory_mb} MB limit: {said}",
            hint="raise `memory_mb`",
        )
    return None


def _memory_full(run: _Run, limits: FunctionLimits) -> bool:
    """Whether a trap came with the memory at its cap. Wasmtime does not say that a grow failed (the module
    sees -1 and traps its own way), so a trap within 1/8 of the cap (1 MiB at least) is out of memory."""
    margin = max(16 * PAGE, limits.memory_bytes // 8)
    return run.memory is not None and run.memory.data_len(run.store) + margin > limits.memory_bytes


MAX_LINE = 65_536  # bytes of WASI output kept waiting for a newline: a longer line is logged in pieces


def capture_output(run: _Run, stream: str, data: bytes) -> None:
    """WASI output of `run`, logged a line at a time on its own host; none once the run has ended (wasmtime
    may write from a thread of its own until the store is freed, and the run's record is being written), nor
    after its deadline (a write of a million newlines is host code, which no epoch interrupts: the run ends
    with FX301 as soon as it is back in Wasm). A line is kept until its newline up to MAX_LINE bytes."""
    if run.ended:
        return
    buffer = run.output[stream]
    deadline = getattr(run.host, "run_deadline", None)
    start = 0
    while (end := data.find(b"\n", start)) >= 0:  # one line at a time: a write may hold millions
        if deadline is not None and time.monotonic() > deadline:
            buffer.clear()
            run.late = True
            return
        line = data[start:end]
        if buffer:
            line = bytes(buffer) + line
            buffer.clear()
        _log_line(run, stream, line)
        start = end + 1
    buffer.extend(data[start:])
    while len(buffer) >= MAX_LINE:
        _log_line(run, stream, bytes(buffer[:MAX_LINE]))
        del buffer[:MAX_LINE]


def _flush_output(run: _Run) -> None:
    for stream, buffer in run.output.items():
        if buffer:
            _log_line(run, stream, bytes(buffer))
            buffer.clear()


def _log_line(run: _Run, stream: str, line: bytes) -> None:
    level = "info" if stream == "stdout" else "error"
    if stream == "stderr" and line.strip():
        run.last_error = line.decode(errors="replace").strip()
        if len(run.errors) < 20:
            run.errors.append(run.last_error)
    run.host.call("log", {"level": level, "message": line.decode(errors="replace"), "stream": stream})


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or ["unknown error"])[0]


# -- host functions ---------------------------------------------------------------------------------------
# wasmtime-py's own trampoline keeps what a host function raised in one global for the whole process
# (`wasmtime._func.LAST_EXCEPTION`) until the thread that entered Wasm reads it back: with requests on two
# threads (a worker's, the queue's), one request's error could end the other (its trap, or even its clean
# exit, raising it) and the first then saw a bare trap. Flux defines its host functions through a trampoline
# of its own, which keeps what one raised on the thread that ran it (a run is on one thread): `host_errors`.

_HOST_FUNCTIONS: Slab[tuple[Callable[..., Any], list[ValType], bool]] = Slab()


@wasm_ffi.wasmtime_func_callback_t  # type: ignore[untyped-decorator]
def _host_trampoline(index: Any, caller_ptr: Any, params: Any, count: int, results: Any, wanted: int) -> Any:
    caller = wasmtime.Caller(caller_ptr)
    try:
        function, result_types, access_caller = _HOST_FUNCTIONS.get(index or 0)
        args: list[Any] = [caller] if access_caller else []
        args.extend(wasmtime.Val._from_raw(caller, params[i], owned=False).value for i in range(count))
        value = function(*args)
        values = [] if wanted == 0 else [value] if wanted == 1 else list(value)
        for i, item in enumerate(values):
            results[i] = wasmtime.Val._convert_to_raw(caller, result_types[i], item)
        return 0
    except BaseException as exc:
        _keep_raised(exc)
        return ctypes.cast(Trap("a Flux host function failed")._consume(), ctypes.c_void_p).value
    finally:
        caller._invalidate()


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # type: ignore[untyped-decorator]
def _host_finalize(index: Any) -> None:
    _HOST_FUNCTIONS.deallocate(index or 0)


def define_host(
    linker: Linker, module: str, name: str, kind: FuncType, function: Callable[..., Any], access_caller: bool
) -> None:
    """`linker.define_func`, but what `function` raises stays on its thread (see `host_errors`)."""
    module_bytes, name_bytes = module.encode(), name.encode()
    index = _HOST_FUNCTIONS.allocate((function, list(kind.results), access_caller))
    error = wasm_ffi.wasmtime_linker_define_func(
        linker.ptr(),
        ctypes.create_string_buffer(module_bytes),
        len(module_bytes),
        ctypes.create_string_buffer(name_bytes),
        len(name_bytes),
        kind.ptr(),
        _host_trampoline,
        index,
        _host_finalize,
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def kept_on_this_thread(function: Callable[..., Any]) -> Callable[..., Any]:
    """A component's host function (wasmtime-py's component linker has no trampoline of Flux's), whose
    exceptions stay on its thread for `host_errors` to raise: it raises a bare WasmtimeError in their place,
    which wasmtime-py hands back as the call's error, where any other exception would go through a variable
    of the whole process and end another thread's run."""

    def host(*args: Any) -> Any:
        try:
            return function(*args)
        except wasmtime.WasmtimeError:
            raise
        except BaseException as exc:
            _keep_raised(exc)
            raise wasmtime.WasmtimeError("a Flux host function failed") from None

    return host


def _keep_raised(exc: BaseException) -> None:
    """Keep what a host function raised for this thread's `host_errors`: the first only (a nested call's
    error follows from it)."""
    if getattr(_current, "raised", None) is None:
        _current.raised = exc


@contextmanager
def host_errors() -> Iterator[None]:
    """Around code that enters Wasm: a trap or error that a host function of this thread's run caused
    raises what that function raised (a FluxError with its code), not the bare trap."""
    _current.raised = None
    try:
        yield
    except (Trap, wasmtime.WasmtimeError):
        raised: BaseException | None = getattr(_current, "raised", None)
        _current.raised = None
        if raised is not None:
            raise raised from None
        raise


def _make_linker(engine: Engine) -> Linker:
    linker = Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    i32, i64 = ValType.i32(), ValType.i64()
    define_host(linker, "flux", "call", FuncType([i32, i32], [i64]), _flux_call, access_caller=True)
    define_host(linker, "flux", "log", FuncType([i32, i32], []), _flux_log, access_caller=True)
    _define_recorded_wasi(linker)
    return linker


def _define_recorded_wasi(linker: Linker) -> None:
    """WASI's clock and randomness from the host's recorded `now` and `random`, and its sleep bounded by the
    run's deadline, over what `define_wasi` gave."""
    i32, i64 = ValType.i32(), ValType.i64()
    wasi = "wasi_snapshot_preview1"
    define_host(
        linker, wasi, "clock_time_get", FuncType([i32, i64, i32], [i32]), _clock_time_get, access_caller=True
    )
    define_host(linker, wasi, "random_get", FuncType([i32, i32], [i32]), _random_get, access_caller=True)
    define_host(
        linker, wasi, "poll_oneoff", FuncType([i32, i32, i32, i32], [i32]), _poll_oneoff, access_caller=True
    )


def _memory(caller: wasmtime.Caller) -> wasmtime.Memory:
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise FunctionCrashed("the module has no exported memory")
    return memory


def _flux_call(caller: wasmtime.Caller, pointer: int, length: int) -> int:
    run = active_run()
    memory = _memory(caller)
    try:
        message = jsontext.loads_bounded(guest_bytes(memory, caller, pointer, length, "a host call"))
    except ValueError as exc:
        answer = not_json(exc)
    else:
        op = message.get("op") if isinstance(message, dict) else None
        args = message.get("args") if isinstance(message, dict) else None
        answer = run.host.answer(op, args)
    reply = jsontext.dumps(answer)
    alloc = caller.get("flux_alloc")
    assert isinstance(alloc, wasmtime.Func)
    target = int(alloc(caller, len(reply))) & 0xFFFF_FFFF
    guest_write(memory, caller, reply, target, "flux_alloc's pointer for a host call's answer")
    return (target << 32) | len(reply)


def _flux_log(caller: wasmtime.Caller, pointer: int, length: int) -> None:
    message = guest_bytes(_memory(caller), caller, pointer, length, "a log line").decode(errors="replace")
    active_run().host.answer("log", {"level": "info", "message": message})


def _clock_time_get(caller: wasmtime.Caller, clock_id: int, precision: int, out: int) -> int:
    """WASI's clocks read the host's recorded `now` (realtime and monotonic alike)."""
    del precision
    if clock_id not in (0, 1, 2, 3):
        return _ERRNO_INVAL
    nanoseconds = clock_ns(active_run().host.call("now", None))
    guest_write(_memory(caller), caller, nanoseconds.to_bytes(8, "little"), out, "clock_time_get a time")
    return _ERRNO_SUCCESS


def clock_ns(milliseconds: Any) -> int:
    """The host's `now` (milliseconds to the microsecond: a float when read, a Decimal when a replay gives
    back the recorded one) in nanoseconds, the same for both: `float * 1e6` is not exact, and would differ."""
    return round(float(milliseconds) * 1000) * 1000


def _random_get(caller: wasmtime.Caller, pointer: int, length: int) -> int:
    """WASI's random bytes come from the host's recorded `random` (the place checked first: a length of
    gigabytes is refused at once, not drawn)."""
    memory = _memory(caller)
    length &= 0xFFFF_FFFF
    if (pointer & 0xFFFF_FFFF) + length > memory.data_len(caller):
        raise outside_memory("random_get a buffer", pointer & 0xFFFF_FFFF, length)
    chunks = []
    for offset in range(0, length, 65_536):
        chunk = min(length - offset, 65_536)
        chunks.append(base64.b64decode(active_run().host.call("random", {"bytes": chunk})))
    guest_write(memory, caller, b"".join(chunks), pointer, "random_get a buffer")
    return _ERRNO_SUCCESS


_SUBSCRIPTION, _EVENT = 48, 32  # bytes of a WASI subscription and of an event
_MAX_SUBSCRIPTIONS = 4096
_CLOCK, _ABSTIME = 0, 1  # a subscription's tag for a clock; its flag for an absolute time


def _poll_oneoff(caller: wasmtime.Caller, subscriptions: int, events: int, count: int, written: int) -> int:
    """WASI's sleep (Go's `time.Sleep` and its idle scheduler, C's `nanosleep`): the shortest clock wait, in
    real time but never past the run's deadline, which ends the run (FX301) however long it asked to sleep: a
    sleep in the host is not Wasm, which the epoch deadline would interrupt. A wait on a file descriptor is
    ready at once (reads and writes go to the host's own streams, which never block)."""
    count &= 0xFFFF_FFFF
    if not 0 < count <= _MAX_SUBSCRIPTIONS:
        return _ERRNO_INVAL
    memory = _memory(caller)
    raw = guest_bytes(memory, caller, subscriptions, count * _SUBSCRIPTION, "poll_oneoff subscriptions")
    waits, ready = [], []
    for index in range(count):
        entry = raw[index * _SUBSCRIPTION : (index + 1) * _SUBSCRIPTION]
        if entry[8] == _CLOCK:
            timeout = int.from_bytes(entry[24:32], "little")
            if int.from_bytes(entry[40:42], "little") & _ABSTIME:
                timeout = max(0, timeout - time.time_ns())
            waits.append((timeout, entry[:8]))
        else:
            ready.append((entry[:8], entry[8]))
    answered: list[bytes] = []
    if ready:
        answered = [userdata + bytes([0, 0, tag]) + bytes(5) + bytes(16) for userdata, tag in ready]
    else:
        timeout, userdata = min(waits)
        run = active_run()
        deadline = run.host.run_deadline
        seconds = timeout / 1e9
        if deadline is not None and time.monotonic() + seconds > deadline:
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise FunctionTimedOut("the function slept past its time limit", hint="raise `timeout_ms`")
        time.sleep(seconds)
        answered = [userdata + bytes([0, 0, _CLOCK]) + bytes(5) + bytes(16)]
    guest_write(memory, caller, b"".join(answered), events, "poll_oneoff events")
    guest_write(memory, caller, len(answered).to_bytes(4, "little"), written, "poll_oneoff a count")
    return _ERRNO_SUCCESS
