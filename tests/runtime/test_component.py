"""Components (Python through componentize-py): limits and bad results fail clearly, the next call is fine;
each run starts from the component's snapshot and acts for its own request only."""

from __future__ import annotations

import base64
import ctypes
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.runtime import Caller, Function
from flux.runtime.build import build_function
from flux.runtime.limits import FunctionLimits
from flux.runtime.wasmtime_bytes import CHUNK, lower_bytes_at_once

# One function, several misbehaviours, chosen by the request (one build and compile serve every case).
MISBEHAVING = """
import json
import os
import sys

import wit_world
from wit_world.imports import host

count = 0
kept = []


class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        global count
        do = json.loads(request)["do"]
        if do == "count":  # what the previous run left: nothing, if each run starts from the snapshot
            count += 1
            kept.append(request)
            found = {"count": count, "kept": len(kept), "env": os.environ.get("LEFT"),
                     "global": globals().get("LEFT"), "argv": sys.argv[1:]}
            os.environ["LEFT"] = globals()["LEFT"] = "by an earlier run"
            try:
                open("left.txt", "w").write("by an earlier run")
                found["file"] = "written"
            except OSError as exc:
                found["file"] = type(exc).__name__
            print("unterminated output of one run", end="")
            return json.dumps(found)
        if do == "secret":
            return host.call("secrets.get", json.dumps({"name": "token"}))
        if do == "loop":
            while True:
                pass
        if do == "hoard":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if do == "urandom":  # WASI's random bytes, several host calls' worth
            return json.dumps({"bytes": os.urandom(700).hex()})
        if do == "not_json":
            return "{not json"
        if do == "unknown_op":
            return host.call("no.such.op", "{}")
        if do == "deep":  # past what Python's parser reads (a RecursionError, no ValueError)
            return host.call("log", "[" * 200_000 + "]" * 200_000)
        return json.dumps({"fine": True})
"""


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory: pytest.TempPathFactory) -> Function:
    folder = tmp_path_factory.mktemp("project") / "functions" / "misbehaving"
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(MISBEHAVING)
    return build_function(folder, folder.parent.parent / ".flux" / "build")


def _with(fn: Function, **limits: int) -> Function:
    return Function(fn.name, fn.runtime, fn.code, fn.sha256, FunctionLimits(**limits))


def test_component_limits_and_bad_results(call: Any, misbehaving: Function) -> None:
    cases = [
        ("loop", _with(misbehaving, fuel=200_000_000), "FX301"),
        ("loop", _with(misbehaving, timeout_ms=500), "FX301"),
        ("hoard", _with(misbehaving, memory_mb=64), "FX302"),  # CPython's MemoryError, not caught
        ("not_json", misbehaving, "FX303"),
    ]
    for do, fn, code in cases:
        outcome = call(fn, {"do": do})
        assert outcome.error is not None and outcome.error.code == code, (do, outcome.error)
        assert call(misbehaving, {"do": "nothing"}).response.body == {"fine": True}
    unknown = call(misbehaving, {"do": "unknown_op"})
    assert unknown.response.body["ok"] is False and unknown.response.body["error"]["code"] == "FX304"
    deep = call(misbehaving, {"do": "deep"})  # answered as not JSON, as the other ABIs answer it
    assert deep.error is None and deep.response.body["ok"] is False, deep.error
    assert deep.response.body["error"]["code"] == "FX305"


def test_a_component_gets_exactly_the_random_bytes_the_host_recorded(
    conn: Any, call: Any, misbehaving: Function
) -> None:
    """WASI's `get-random-bytes` is the host's recorded `random` (so a replay gives them again), lowered into
    the component in one copy (flux/runtime/wasmtime_bytes.py): the bytes the function read are the last ones
    recorded, in order."""
    outcome = call(misbehaving, {"do": "urandom"})
    assert outcome.error is None, outcome.error
    recorded = b"".join(
        base64.b64decode(output)
        for (output,) in conn.execute(
            "SELECT output FROM flux.spans WHERE request_id = %s AND name = 'clock:random' ORDER BY seq",
            [outcome.request_id],
        )
    )
    read = bytes.fromhex(outcome.response.body["bytes"])
    assert len(read) == 700 and recorded.endswith(read), (len(recorded), read[:8], recorded[-8:])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000))
def test_bytes_lowered_at_once_are_what_wasmtime_py_lowers_a_byte_at_a_time(value: bytes) -> None:
    from wasmtime import _ffi as ffi
    from wasmtime.component import _types

    assert lower_bytes_at_once()

    class BytesList(_types.ListType):  # list<u8>, with no type of the C API behind it
        element = _types.U8()

    def lowered(convert: Any) -> list[tuple[int, int]]:
        val = ffi.wasmtime_component_val_t()
        convert(BytesList.__new__(BytesList), None, value, ctypes.pointer(val))
        assert val.kind == ffi.WASMTIME_COMPONENT_LIST.value and val.of.list.size == len(value)
        laid = [(val.of.list.data[i].kind, val.of.list.data[i].of.u8) for i in range(len(value))]
        ffi.wasmtime_component_vallist_delete(ctypes.byref(val.of.list))
        return laid

    at_once = lowered(_types.ListType.convert_to_c)
    by_the_byte = lowered(_types.ListType.convert_to_c.by_the_byte)
    assert at_once == by_the_byte == [(ffi.WASMTIME_COMPONENT_U8.value, b) for b in value]


@pytest.mark.parametrize("extra", [-1, 0, 1, CHUNK + 5])
def test_bytes_lowered_at_once_past_one_chunk_are_every_byte_in_order(extra: int) -> None:
    from wasmtime import _ffi as ffi
    from wasmtime.component import _types

    assert lower_bytes_at_once()

    class BytesList(_types.ListType):
        element = _types.U8()

    value = bytes(random.Random(extra).randbytes(CHUNK + extra))
    val = ffi.wasmtime_component_val_t()
    _types.ListType.convert_to_c(BytesList.__new__(BytesList), None, value, ctypes.pointer(val))
    try:
        size = ctypes.sizeof(ffi.wasmtime_component_val_t)
        assert val.kind == ffi.WASMTIME_COMPONENT_LIST.value and val.of.list.size == len(value)
        laid = ctypes.string_at(ctypes.cast(val.of.list.data, ctypes.c_void_p).value, len(value) * size)
        kind_at = ffi.wasmtime_component_val_t.kind.offset
        u8_at = ffi.wasmtime_component_val_t.of.offset + ffi.wasmtime_component_valunion_t.u8.offset
        assert laid[kind_at::size] == bytes((ffi.WASMTIME_COMPONENT_U8.value,)) * len(value)
        assert laid[u8_at::size] == value
    finally:
        ffi.wasmtime_component_vallist_delete(ctypes.byref(val.of.list))


def test_a_wasmtime_py_that_lowers_lists_otherwise_keeps_its_own_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-copy lowering relies on wasmtime-py's `ListType._is_bytes` (and its C API's list functions):
    a version without them (Flux asks for wasmtime >= 50) keeps its own lowering, rather than failing each
    component run that gets bytes."""
    from wasmtime.component import _types

    assert lower_bytes_at_once()
    monkeypatch.setattr(_types.ListType, "convert_to_c", _types.ListType.convert_to_c.by_the_byte)
    monkeypatch.delattr(_types.ListType, "_is_bytes")
    assert not lower_bytes_at_once()
    assert not getattr(_types.ListType.convert_to_c, "flux_at_once", False)


def test_bytes_lowered_at_once_take_no_copy_of_the_c_array_in_python() -> None:
    """The C API's array holds 32 bytes a byte (512 MiB for the 16 MiB get-random-bytes may hand over): the
    bytes are written into it, with no Python copy of its size beside it (which doubled the peak)."""
    import tracemalloc

    from wasmtime import _ffi as ffi
    from wasmtime.component import _types

    assert lower_bytes_at_once()

    class BytesList(_types.ListType):
        element = _types.U8()

    value = bytes(range(256)) * 4096  # 1 MiB
    val = ffi.wasmtime_component_val_t()
    tracemalloc.start()
    try:
        _types.ListType.convert_to_c(BytesList.__new__(BytesList), None, value, ctypes.pointer(val))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        data = val.of.list.data
        assert val.of.list.size == len(value)
        assert [(data[i].kind, data[i].of.u8) for i in (0, 1, 255, 256, len(value) - 1)] == [
            (ffi.WASMTIME_COMPONENT_U8.value, b) for b in (0, 1, 255, 0, 255)
        ]
    finally:
        ffi.wasmtime_component_vallist_delete(ctypes.byref(val.of.list))
    assert peak < 3 * len(value), peak


def test_a_components_host_error_stays_on_its_thread() -> None:
    """wasmtime-py hands what a component's host function raised to whichever thread next comes back from Wasm
    with an error (one variable for the process); Flux's host functions raise a bare WasmtimeError in its
    place, and keep theirs for their own thread's run (`host_errors`)."""
    from wasmtime.component import _enter

    from flux.errors import FunctionTimedOut
    from flux.runtime.wasm import host_errors, kept_on_this_thread

    def late(store: Any) -> None:
        raise FunctionTimedOut("this thread's run is late")

    host = kept_on_this_thread(late)
    other: list[BaseException] = []

    def another_thread() -> None:  # its own error, after this thread's host function failed
        try:
            with host_errors():
                raise wasmtime.WasmtimeError("its own trap")
        except BaseException as exc:
            other.append(exc)

    with pytest.raises(FunctionTimedOut, match="late"), host_errors():
        with pytest.raises(wasmtime.WasmtimeError):
            host(None)
        assert _enter.LAST_EXCEPTION is None
        thread = threading.Thread(target=another_thread)
        thread.start()
        thread.join()
        raise wasmtime.WasmtimeError("the call's error")
    assert len(other) == 1 and str(other[0]) == "its own trap"


FRESH = {"count": 1, "kept": 1, "env": None, "global": None, "argv": [], "file": "FileNotFoundError"}


def test_each_run_starts_from_the_components_snapshot(conn: Any, call: Any, misbehaving: Function) -> None:
    # componentize-py snapshots the module once initialized; a run that changes its globals, the environment
    # or WASI's output leaves nothing for the next run (its instance is dropped), of one tenant or another.
    outcomes = [
        call(misbehaving, {"do": "count"}, caller=Caller("user", {}, tenant))
        for tenant in (None, None, str(uuid.uuid4()), None)
    ]
    for outcome in outcomes:
        assert outcome.error is None, outcome.error
        assert outcome.response.body == FRESH
    limits = [("loop", {"fuel": 200_000_000}), ("loop", {"timeout_ms": 500}), ("hoard", {"memory_mb": 64})]
    for do, limit in limits:  # exhausting a limit leaves the next run, with the same limit, all of it
        exhausted = call(_with(misbehaving, **limit), {"do": do})
        assert exhausted.error is not None and exhausted.error.code in ("FX301", "FX302"), (
            do,
            exhausted.error,
        )
        after = call(_with(misbehaving, **limit), {"do": "count"})
        assert after.error is None and after.response.body["count"] == 1, (limit, after.error)
    for outcome in outcomes:  # the output a run did not end with a newline is its own last log line
        logs = conn.execute(
            "SELECT input->>'message' FROM flux.spans WHERE request_id = %s AND module = 'log'",
            (outcome.request_id,),
        ).fetchall()
        assert logs == [("unterminated output of one run",)]


def test_a_components_host_calls_act_for_its_own_request(call: Any, misbehaving: Function) -> None:
    first = call(misbehaving, {"do": "secret"}, caller=Caller("user", {}, str(uuid.uuid4())),
                 secrets={"token": "the first caller's"})  # fmt: skip
    second = call(misbehaving, {"do": "secret"}, caller=Caller("user", {}, str(uuid.uuid4())))
    assert first.response.body == {"ok": True, "value": "the first caller's"}
    assert second.response.body["ok"] is False and second.response.body["error"]["code"] == "FX308"


def test_a_component_that_is_not_one_is_fx307(call: Any, tmp_path: Path) -> None:
    bad = Function("bad", "component", b"\x00asm\x0d\x00\x01\x00", "0" * 64)
    outcome = call(bad)
    assert outcome.error is not None and outcome.error.code == "FX307"
