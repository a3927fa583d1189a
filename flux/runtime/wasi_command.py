"""The WASI-command ABI: a function that is a program (an interpreter and its script) rather than a module
exporting `flux_handle`. The request goes in on stdin as one JSON line; each line the program writes on stdout
is a host call (`{"op", "args"}`), answered with one line on stdin when it next reads it; the last line it
writes is its response. Flux serves `fd_read` and `fd_write` for fds 0, 1 and 2 itself, as it serves the
clock and randomness; stderr becomes log lines. A program that exits with a status other than 0 (or whose
interpreter reports an uncaught error) fails the request with its last line on stderr.

How the program starts is said by a custom section `flux.command` at the end of the module (JSON
`{"entry", "args", "script"}`): `entry` "start" runs WASI's `_start` with `args` as its arguments (any
interpreter built as a WASI command: `["qjs", "-e", script]`); "ruby" drives the reactor of CRuby's WASI build
(`ruby-init` with `args`, then the script evaluated by `rb-eval-string-protect`). A module with no such
section and a `_start` export runs as a command with no arguments. The compiled code is cached by the module
without the section, so functions that share an interpreter share its compile.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import wasmtime
from wasmtime import Engine, FuncType, Linker, Module, Store, ValType

from flux import jsontext
from flux.errors import (
    FluxError,
    FunctionFailed,
    FunctionTimedOut,
    InvalidFunctionCode,
    InvalidFunctionResponse,
)
from flux.runtime.host import not_json

SECTION = "flux.command"
_ERRNO_SUCCESS, _ERRNO_BADF, _ERRNO_INVAL = 0, 8, 28
_WASI = "wasi_snapshot_preview1"
_RUBY_INIT = "ruby-init: func(args: list<string>) -> ()"
_RUBY_LOADPATH = "ruby-init-loadpath: func() -> ()"
_RUBY_EVAL = "rb-eval-string-protect: func(str: string) -> tuple<handle<rb-abi-value>, s32>"
Entry = Literal["start", "ruby"]


@dataclass(frozen=True)
class Command:
    """How a command module starts (see the module's doc)."""

    entry: Entry = "start"
    args: tuple[str, ...] = ("function",)
    script: str = ""

    def section(self) -> bytes:
        """The custom section that says so, to append to the interpreter's module."""
        payload = json.dumps({"entry": self.entry, "args": list(self.args), "script": self.script}).encode()
        name = SECTION.encode()
        body = _leb128(len(name)) + name + payload
        return b"\x00" + _leb128(len(body)) + body


def with_command(module: bytes, command: Command) -> bytes:
    """`module` (an interpreter) with `command` appended as its `flux.command` section: one Wasm file."""
    return module + command.section()


def split_command(wasm: bytes) -> tuple[bytes, Command | None]:
    """The module without a trailing `flux.command` section, and the command it holds (None without one).
    Only the section headers are read (a few dozen in a module of megabytes)."""
    if wasm[:4] != b"\0asm":
        return wasm, None
    offset, last = 8, None
    try:
        while offset < len(wasm):
            start = offset
            size, offset = _read_leb128(wasm, offset + 1)
            last = (start, wasm[start], offset, offset + size)
            offset += size
    except IndexError:
        return wasm, None
    if last is None or last[1] != 0 or last[3] != len(wasm):
        return wasm, None
    start, _, body, end = last
    length, at = _read_leb128(wasm, body)
    if wasm[at : at + length] != SECTION.encode():
        return wasm, None
    try:
        given = json.loads(wasm[at + length : end])
        command = Command(given["entry"], tuple(given["args"]), given.get("script", ""))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidFunctionCode(f"the module's {SECTION} section is not valid: {exc}") from None
    if command.entry not in ("start", "ruby") or not all(isinstance(arg, str) for arg in command.args):
        raise InvalidFunctionCode(f"the module's {SECTION} section names no entry Flux knows")
    return wasm[:start], command


def is_command(module: Module, command: Command | None) -> bool:
    """Whether a module runs on this ABI: it has a `flux.command` section, or a `_start` and no
    `flux_handle`."""
    exports = {export.name for export in module.exports}
    return command is not None or ("_start" in exports and "flux_handle" not in exports)


def command_linker(engine: Engine, module: Module, base: Any) -> Linker:
    """A linker for one command module: WASI, with Flux's clock, randomness and sleep (`base` defines them)
    and its own stdin and stdout; an interpreter's other imports (CRuby's JavaScript bridge, which no Flux
    function can use) trap when called, but for the handle table of its WIT bindings, which is an identity."""
    from flux.runtime.wasm import define_host

    linker = Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    base(linker)
    i32 = ValType.i32()
    io = FuncType([i32, i32, i32, i32], [i32])
    define_host(linker, _WASI, "fd_write", io, _fd_write, access_caller=True)
    define_host(linker, _WASI, "fd_read", io, _fd_read, access_caller=True)
    for item in module.imports:
        if item.module in (_WASI, "flux") or not isinstance(item.type, FuncType) or item.name is None:
            continue
        stub = _stub(item.module, item.name, item.type)
        define_host(linker, item.module, item.name, item.type, stub, access_caller=False)
    return linker


def _stub(module: str, name: str, kind: FuncType) -> Any:
    if module == "canonical_abi" and name.startswith(("resource_new_", "resource_get_")):
        return lambda handle: handle
    if module == "canonical_abi" and name.startswith("resource_drop_"):
        return lambda handle: None

    def refuse(*args: Any) -> Any:
        raise wasmtime.Trap(f"{module}.{name} is not available to a Flux function")

    del kind
    return refuse


# -- one run ---------------------------------------------------------------------------------------------


@dataclass
class Streams:
    """A command run's stdin (the request, then each answer) and stdout (its calls, then its response)."""

    stdin: bytearray
    limit: int
    stdout: bytearray = field(default_factory=bytearray)

    def perform_calls(self, host: Any, keep_last: bool) -> bytes | None:
        """Perform each complete line written since the last read as a host call, its answer a line of
        stdin; with `keep_last` (the run has ended), the last line is the response, returned, not called."""
        text = bytes(self.stdout)
        if keep_last:
            lines = [line for line in text.split(b"\n") if line.strip()]
            self.stdout.clear()
            if not lines:
                raise InvalidFunctionResponse(
                    "the command ended without writing its response on stdout",
                    hint="write the response as the last line on stdout (see docs/functions.md)",
                )
            calls, response = lines[:-1], lines[-1]
        else:
            complete, _, rest = text.rpartition(b"\n")
            self.stdout[:] = rest
            calls, response = [line for line in complete.split(b"\n") if line.strip()], None
        for line in calls:
            deadline = getattr(host, "run_deadline", None)
            if deadline is not None and time.monotonic() > deadline:  # host code: no epoch ends it
                raise FunctionTimedOut(
                    f"the function ran past its time limit with {len(calls)} host calls written at once",
                    hint="raise `timeout_ms`, or make fewer host calls",
                )
            self.stdin.extend(_answer(host, line) + b"\n")
        return response

    def write(self, data: bytes) -> None:
        self.stdout.extend(data)
        if len(self.stdout) > self.limit:
            raise InvalidFunctionResponse(
                f"the command wrote over {self.limit} bytes on stdout without reading an answer",
                hint="write one line per host call, then read its answer",
            )


def _answer(host: Any, line: bytes) -> bytes:
    try:
        message = jsontext.loads_bounded(line)
    except ValueError as exc:
        answer = not_json(exc)
    else:
        op = message.get("op") if isinstance(message, dict) else None
        args = message.get("args") if isinstance(message, dict) else None
        answer = host.answer(op, args)
    return bytes(jsontext.dumps(answer))


def start(store: Store, instance: wasmtime.Instance, command: Command) -> None:
    """Run the program: WASI's `_start`, or CRuby's reactor with the script. An uncaught Ruby error fails the
    run (its message is what the script wrote last on stderr)."""
    exports = instance.exports(store)
    if command.entry == "start":
        entry = exports.get("_start")
        if not isinstance(entry, wasmtime.Func):
            raise InvalidFunctionCode("the WASI command exports no _start")
        entry(store)
        return
    memory, realloc = exports.get("memory"), exports.get("cabi_realloc")
    functions = [exports.get(name) for name in ("_initialize", _RUBY_INIT, _RUBY_LOADPATH, _RUBY_EVAL)]
    if (
        not isinstance(memory, wasmtime.Memory)
        or not isinstance(realloc, wasmtime.Func)
        or not all(isinstance(function, wasmtime.Func) for function in functions)
    ):
        raise InvalidFunctionCode("the module is not CRuby's WASI build (its exports differ)")
    initialize, init, loadpath, evaluate = functions
    assert isinstance(initialize, wasmtime.Func) and isinstance(init, wasmtime.Func)
    assert isinstance(loadpath, wasmtime.Func) and isinstance(evaluate, wasmtime.Func)

    from flux.runtime.wasm import guest_bytes, guest_write

    def string(text: str) -> tuple[int, int]:
        data = text.encode()
        pointer = int(realloc(store, 0, 0, 1, max(len(data), 1))) & 0xFFFF_FFFF
        guest_write(memory, store, data, pointer, "cabi_realloc's pointer")
        return pointer, len(data)

    initialize(store)
    array = int(realloc(store, 0, 0, 4, 8 * len(command.args))) & 0xFFFF_FFFF
    for index, arg in enumerate(command.args):
        pointer, length = string(arg + "\0")  # ruby-init hands them to C as they are
        pair = pointer.to_bytes(4, "little") + length.to_bytes(4, "little")
        guest_write(memory, store, pair, array + 8 * index, "cabi_realloc's pointer")
    init(store, array, len(command.args))
    loadpath(store)
    pointer, length = string(command.script)
    result = int(evaluate(store, pointer, length))
    state = int.from_bytes(
        guest_bytes(memory, store, result + 4, 4, "rb-eval-string-protect's result"), "little"
    )
    if state != 0:
        raise CommandFailed(f"the Ruby script raised an error it did not rescue (state {state})")


class CommandFailed(Exception):
    """The interpreter reported an uncaught error; the run's stderr says which."""


def failure(said: str | None, fallback: str) -> FluxError:
    """A command that failed: its last line on stderr, else `fallback`."""
    return FunctionFailed(said[:1000] if said else fallback)


# -- host functions: fds 0, 1 and 2 ----------------------------------------------------------------------


IOV_MAX = 1024  # iovecs in one call, as Linux allows
IO_MAX = (
    1 << 20
)  # bytes one fd_write takes: the program writes the rest in its next call, as after any short write


def _iovecs(memory: wasmtime.Memory, caller: wasmtime.Caller, iovs: int, count: int) -> list[tuple[int, int]]:
    """The call's buffers, each within the memory, up to IO_MAX bytes in all (the last one shortened): however
    many times a program names its whole memory, the host copies at most that much."""
    from flux.runtime.wasm import guest_bytes, outside_memory

    raw = guest_bytes(memory, caller, iovs, 8 * (count & 0xFFFF_FFFF), "an iovec list")
    size, buffers, total = memory.data_len(caller), [], 0
    for i in range(0, len(raw), 8):
        at, length = int.from_bytes(raw[i : i + 4], "little"), int.from_bytes(raw[i + 4 : i + 8], "little")
        if at + length > size:
            raise outside_memory("an iovec", at, length)
        length = min(length, IO_MAX - total)
        buffers.append((at, length))
        total += length
        if total == IO_MAX:
            break
    return buffers


def _fd_write(caller: wasmtime.Caller, fd: int, iovs: int, count: int, written: int) -> int:
    from flux.runtime.wasm import _memory, active_run, capture_output, guest_write

    if fd not in (1, 2):
        return _ERRNO_BADF
    if not 0 <= count <= IOV_MAX:
        return _ERRNO_INVAL
    run, memory = active_run(), _memory(caller)
    data = b"".join(
        bytes(memory.read(caller, at, at + size)) for at, size in _iovecs(memory, caller, iovs, count)
    )
    if fd == 1 and run.streams is not None:
        run.streams.write(data)
    else:
        capture_output(run, "stdout" if fd == 1 else "stderr", data)
    guest_write(memory, caller, len(data).to_bytes(4, "little"), written, "fd_write a count")
    return _ERRNO_SUCCESS


def _fd_read(caller: wasmtime.Caller, fd: int, iovs: int, count: int, read: int) -> int:
    from flux.runtime.wasm import _memory, active_run, guest_write

    run, memory = active_run(), _memory(caller)
    if fd != 0 or run.streams is None:
        return _ERRNO_BADF
    if not 0 <= count <= IOV_MAX:
        return _ERRNO_INVAL
    streams: Streams = run.streams
    buffers = _iovecs(memory, caller, iovs, count)
    if not streams.stdin:
        streams.perform_calls(run.host, keep_last=False)
    total = 0
    for at, size in buffers:
        piece = bytes(streams.stdin[:size])
        if not piece:
            break
        guest_write(memory, caller, piece, at, "fd_read a buffer")
        del streams.stdin[: len(piece)]
        total += len(piece)
        if len(piece) < size:
            break
    guest_write(memory, caller, total.to_bytes(4, "little"), read, "fd_read a count")
    return _ERRNO_SUCCESS


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_leb128(data: bytes, offset: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, offset
