"""The entry module `flux build` wraps around a Python function's `app.py` (guest code, built into the
component): an exception the function does not catch comes back as Flux's error answer, with its type, its
message and the function's own file:line, instead of trapping as `unreachable`."""

from __future__ import annotations

MODULE = "_flux_entry"  # the module componentize-py builds; it imports the user's `app`
# What `handle` answers instead of JSON when the function failed: never valid JSON, so no function's own
# answer can be taken for it. JSON follows: {name, message, stack, file, line, response}.
ERROR_PREFIX = "\x00flux-error\x00"

SOURCE = f'''"""Flux's entry point around app.py: see flux/runtime/_python_entry.py."""

import json
import linecache
import os
import traceback

import wit_world


def _recorded_clocks() -> None:
    """Python's monotonic clocks read the host's recorded clock, as `time.time()` does: WASI's monotonic clock
    is not recorded, so a function timing itself would see other durations when it is replayed."""
    import time

    time.monotonic, time.perf_counter = time.time, time.time
    time.monotonic_ns, time.perf_counter_ns = time.time_ns, time.time_ns


_recorded_clocks()

import app as _app  # after the clocks: the function's module may keep `from time import monotonic`

_ROOT = os.path.dirname(os.path.abspath(_app.__file__))
_Function = _app.WitWorld  # app.py must define it: a build without it fails here, naming it
_ERROR_PREFIX = {ERROR_PREFIX!r}


def _keep_sources() -> None:
    """Read the function's sources into linecache now, while they are there: the component has no files when
    it runs, and a traceback quotes the failing line (an entry with no mtime is never checked again)."""
    for folder, _, names in os.walk(_ROOT):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                try:
                    with open(path, encoding="utf-8") as source:
                        lines = source.read().splitlines(keepends=True)
                except (OSError, UnicodeDecodeError):
                    continue
                linecache.cache[path] = (sum(map(len, lines)), None, lines, path)


_keep_sources()


def _error(exc: BaseException, response: bool = False) -> str:
    if isinstance(exc, MemoryError):  # let go of what the function held before describing it
        traceback.clear_frames(exc.__traceback__)
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename.startswith(_ROOT + os.sep)
    ]
    name = type(exc).__qualname__
    message = str(exc)
    where = [os.path.relpath(frame.filename, _ROOT) + ":" + str(frame.lineno) for frame in frames]
    stack = [name + (": " + message if message else "")]
    for frame, place in zip(frames, where):
        stack.append(place + " in " + frame.name + (": " + frame.line.strip() if frame.line else ""))
    error = {{
        "name": name,
        "message": message,
        "stack": "\\n".join(stack),
        "file": where[-1].rpartition(":")[0] if where else None,
        "line": frames[-1].lineno if frames else None,
        "response": response,
    }}
    return _ERROR_PREFIX + json.dumps(error)


class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        try:
            answer = _Function().handle(request)
        except BaseException as exc:
            return _error(exc)
        if not isinstance(answer, str):
            return _error(TypeError("handle returned " + type(answer).__name__ + ", not a str of JSON"), True)
        return answer
'''
