"""The runtime: runs a function's code (Wasm modules and components on Wasmtime, TypeScript and JavaScript on
Deno) for one request, with
the host API (host.py) as its only way out, and records the run (invoke.py).

runtime = Runtime(cache_dir)
outcome = invoke(conn, runtime, function, {"method": "GET", "path": "/", "body": None}, catalog=catalog)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flux.runtime.component import ComponentRuntime, check_world, compile_component
from flux.runtime.deno import DenoPool
from flux.runtime.host import Host
from flux.runtime.invoke import Caller, Executor, Function, Outcome, invoke
from flux.runtime.limits import FunctionLimits
from flux.runtime.wasm import WasmRuntime, compile_ahead_module, new_engine

__all__ = [
    "Caller",
    "Function",
    "FunctionLimits",
    "Outcome",
    "Runtime",
    "compile_ahead",
    "invoke",
    "project_cache",
]


def project_cache(project_dir: Path) -> Path:
    """Where a project's processes keep compiled code (shared by the server's workers and `flux deploy`)."""
    return project_dir / ".flux" / "cache"


def compile_ahead(functions: Iterable[Function], cache_dir: Path) -> None:
    """Compile each component and Wasm module into `cache_dir` (as `Runtime(cache_dir)` reads it) unless it is
    there, and check that a component fits Flux's world: what `flux deploy` does before it activates a
    version, so that no request waits for a compile (FX307 for code that does not compile or fit)."""
    engine = None
    for function in functions:
        if function.runtime == "component":
            engine = engine or new_engine()
            check_world(engine, compile_component(engine, cache_dir / "wasm", function.sha256, function.code))
        elif function.runtime == "wasm":
            engine = engine or new_engine()
            compile_ahead_module(engine, cache_dir / "wasm", function.code)


class Runtime(Executor):
    """Every executor of one process, chosen by the function's runtime."""

    def __init__(self, cache_dir: Path, deno_workers: int = 2) -> None:
        self.wasm = WasmRuntime(cache_dir / "wasm")
        self.components = ComponentRuntime(self.wasm)
        self.deno = DenoPool(deno_workers, cache_dir / "deno")

    def execute(self, function: Function, request: Any, host: Host) -> Any:
        if function.runtime == "wasm":
            return self.wasm.run(
                self.wasm.load(function.code, function.sha256), request, host, function.limits
            )
        if function.runtime == "component":
            return self.components.load_and_run(
                function.code, function.sha256, request, host, function.limits
            )
        lang = "ts" if function.runtime == "typescript" else "js"
        return self.deno.run(function.code, function.sha256, lang, request, host, function.limits)

    def runs_apart(self, function: Function) -> bool:
        return function.runtime not in ("wasm", "component")  # Deno's processes

    def prepare(self, function: Function) -> None:
        if function.runtime == "component":
            self.components.prepare(function.code, function.sha256)
        elif function.runtime == "wasm":
            self.wasm.prepare(function.code, function.sha256)

    def descriptors(self) -> list[int]:
        """The file descriptors of its Deno processes (their pipes), for a forked child to let go of."""
        return self.deno.descriptors()

    def close(self) -> None:
        self.deno.close()
