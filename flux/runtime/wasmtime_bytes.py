"""Bytes handed to a component a chunk at a time, not a byte at a time. wasmtime-py lowers a `list<u8>`
that a host function returns one byte at a time, through ctypes (each byte a value struct of the C API,
about 0.6 us apiece); WASI's `get-random-bytes` answers a Python component 2,496 bytes each time it starts
(its `random` module's seed), which took 1.5 ms of a 3 ms run. `lower_bytes_at_once` lays a `bytes` value
out as the C API's value array in Python (CHUNK values at a time) and copies it in; anything else, and any
wasmtime-py whose value struct is not the one this knows, goes the library's way."""

from __future__ import annotations

import ctypes
from typing import Any

from wasmtime import _ffi as ffi
from wasmtime.component import _types

# Values laid out in Python at a time, then copied into the C array: the array holds 32 bytes a byte (512 MiB
# for the 16 MiB get-random-bytes may hand over), so a copy of it whole would double that; 2 MiB at a time.
CHUNK = 1 << 16


def lower_bytes_at_once() -> bool:
    """Give wasmtime-py's `ListType` this lowering of `bytes`, a chunk at a time (once); whether it has it."""
    lists: Any = _types.ListType
    if getattr(lists.convert_to_c, "flux_at_once", False):
        return True
    value = getattr(ffi, "wasmtime_component_val_t", None)
    union = getattr(ffi, "wasmtime_component_valunion_t", None)
    u8_kind = getattr(ffi, "WASMTIME_COMPONENT_U8", None)
    list_kind = getattr(ffi, "WASMTIME_COMPONENT_LIST", None)
    if value is None or union is None or u8_kind is None or list_kind is None:
        return False
    needed = (hasattr(lists, "_is_bytes"), hasattr(ffi, "wasmtime_component_vallist_new_uninit"),
              hasattr(ffi, "wasmtime_component_vallist_delete"))  # fmt: skip
    if not all(needed):  # a wasmtime-py that lowers lists otherwise
        return False
    fields = dict(value._fields_)
    if fields.get("kind") is not ctypes.c_uint8 or dict(union._fields_).get("u8") is not ctypes.c_uint8:
        return False  # another layout than the one laid out below
    size = ctypes.sizeof(value)
    kind_at = value.kind.offset
    u8_at = value.of.offset + union.u8.offset
    one_kind = bytes((u8_kind.value,))
    by_the_byte = lists.convert_to_c

    def convert_to_c(self: Any, store: Any, val: Any, ptr: Any) -> None:
        if type(val) is not bytes or not self._is_bytes():
            by_the_byte(self, store, val, ptr)
            return
        count = len(val)
        chunk = min(count, CHUNK)
        laid_out = bytearray(chunk * size)
        laid_out[kind_at::size] = one_kind * chunk
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, count)
        if count:
            into: int = ctypes.cast(raw.data, ctypes.c_void_p).value or 0  # count > 0: never null
            try:
                source = (ctypes.c_char * len(laid_out)).from_buffer(laid_out)
                with memoryview(val) as each:
                    for first in range(0, count, chunk):
                        part = each[first : first + chunk]
                        laid_out[u8_at : len(part) * size : size] = part
                        ctypes.memmove(into + first * size, source, len(part) * size)
            except BaseException:  # each value a valid one (a boolean, zero) for the array's deletion
                ctypes.memset(into, 0, count * size)
                ffi.wasmtime_component_vallist_delete(ctypes.byref(raw))
                raise
        ptr.contents.kind = list_kind
        ptr.contents.of.list = raw

    convert_to_c.flux_at_once = True  # type: ignore[attr-defined]
    convert_to_c.by_the_byte = by_the_byte  # type: ignore[attr-defined]
    lists.convert_to_c = convert_to_c
    return True
