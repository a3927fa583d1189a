"""Builds a function folder (`functions/<name>/`) into the code an executor runs, by its source file:

- `index.ts` / `index.js`: TypeScript or JavaScript for Deno, run as written (types are stripped at load);
- `index.ts` beside a `package.json` that names `assemblyscript`: AssemblyScript, compiled by its `asc`
  (installed by `npm ci` from the folder's `package-lock.json`);
- `index.wat`: WebAssembly text; `index.c`: C for wasm32-wasi (clang-14, wasi-libc);
- `lib.rs`: Rust for wasm32-unknown-unknown (Debian's rustc with its wasm32 standard library);
- `app.py`: Python, built by componentize-py into a component of the world in `wit/flux.wit`.

A build that fails is FX307 with the compiler's own message (file and line).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from flux.errors import InvalidFunctionCode
from flux.runtime.component import wit_dir
from flux.runtime.deno import deno_binary
from flux.runtime.invoke import Function, RuntimeKind
from flux.runtime.limits import FunctionLimits
from flux.runtime.wasm import compile_wat

BUILD_TIMEOUT_S = 300
NOT_SOURCES = {
    "node_modules",
    "__pycache__",
    "build",
}  # folders in a function's folder that are not its source
_RUSTC = "/usr/bin/rustc"  # Debian's: the rustup toolchain usually on PATH has no wasm32 target
_SOURCES = (
    ("index.js", "javascript"),
    ("index.wat", "wat"),
    ("index.c", "c"),
    ("lib.rs", "rust"),
    ("app.py", "python"),
)
_C_PACKAGES = "clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32"
_RUST_PACKAGES = "rustc libstd-rust-dev-wasm32"


def source_of(folder: Path) -> tuple[str, Path]:
    """The function's language and its source file."""
    if (folder / "index.ts").exists():
        package = folder / "package.json"
        if package.exists() and "assemblyscript" in json.loads(package.read_text()).get(
            "devDependencies", {}
        ):
            return "assemblyscript", folder / "index.ts"
        return "typescript", folder / "index.ts"
    for name, language in _SOURCES:
        if (folder / name).exists():
            return language, folder / name
    raise InvalidFunctionCode(
        f"{folder} has no function source",
        hint="add index.ts, index.js, index.wat, index.c, lib.rs or app.py (see docs/functions.md)",
    )


def build_function(folder: Path, out_dir: Path, limits: FunctionLimits | None = None) -> Function:
    """Build `folder` into `out_dir/<name>.wasm` (Wasm), or check that its source parses (Deno); the Function
    to run. A folder whose sources did not change since its last build is not built (or checked) again."""
    folder, out_dir = folder.resolve(), out_dir.resolve()
    language, source = source_of(folder)
    limits = limits or FunctionLimits()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{folder.name}.wasm"
    stamp, sources = out_dir / f"{folder.name}.sources", sources_sha256(folder)
    built = stamp.exists() and stamp.read_text() == sources
    if language in ("typescript", "javascript"):
        if not built:
            check_syntax(source)
            stamp.write_text(sources)
        code = source.read_bytes()
        return Function(folder.name, language, code, hashlib.sha256(code).hexdigest(), limits)  # type: ignore[arg-type]
    if not (built and output.exists()):
        if language == "wat":
            try:
                output.write_bytes(compile_wat(source.read_text()))
            except ValueError as exc:
                raise InvalidFunctionCode(f"{source}: {exc}") from None
        else:
            _run(_command(language, source, output), folder)
        stamp.write_text(sources)
    code = output.read_bytes()
    runtime: RuntimeKind = "component" if language == "python" else "wasm"
    return Function(folder.name, runtime, code, hashlib.sha256(code).hexdigest(), limits)


def check_syntax(source: Path) -> None:
    """A TypeScript or JavaScript source that does not parse is FX307 naming its file, line and column (Deno's
    own parser, through `deno fmt --check`; a file that parses but is not formatted is fine)."""
    env = {"PATH": os.environ.get("PATH", ""), "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"}
    try:
        command = [deno_binary(), "fmt", "--check", "--no-config", str(source)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise InvalidFunctionCode(f"checking {source} took over {BUILD_TIMEOUT_S} s") from None
    output = done.stdout + done.stderr
    error = re.search(r"SyntaxError: (.+)", output)
    if error is not None:
        where = re.search(r"at file://\S+?:(\d+):(\d+)\s*$", output, re.MULTILINE)
        location = f"{source}:{where[1]}:{where[2]}" if where else str(source)
        raise InvalidFunctionCode(f"{location}: {error[1].strip()}", hint="fix the syntax and deploy again")


def sources_sha256(folder: Path) -> str:
    """One hash of every source file in the function's folder (names and contents), to skip a rebuild."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not NOT_SOURCES & set(path.relative_to(folder).parts):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _command(language: str, source: Path, output: Path) -> list[str]:
    if language == "python":
        beside = Path(sys.executable).with_name("componentize-py")  # a dependency: in Flux's own environment
        tool = str(beside) if beside.exists() else shutil.which("componentize-py")
        if tool is None:
            raise InvalidFunctionCode(
                "no componentize-py to build Python", hint="pip install componentize-py"
            )
        world = ["-d", str(wit_dir()), "-w", "function"]
        return [tool, *world, "componentize", source.stem, "-o", str(output)]
    if language == "c":
        clang = shutil.which("clang-14") or shutil.which("clang")
        if clang is None:
            raise InvalidFunctionCode("no clang to build C", hint=f"apt-get install {_C_PACKAGES}")
        return [clang, "--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-nostartfiles", "-Wl,--no-entry",
                "-o", str(output), str(source)]  # fmt: skip
    if language == "rust":
        if not Path(_RUSTC).exists():
            raise InvalidFunctionCode(
                "no Debian rustc to build Rust", hint=f"apt-get install {_RUST_PACKAGES}"
            )
        return [_RUSTC, "--target", "wasm32-unknown-unknown", "--crate-type", "cdylib", "-O",
                "-C", "strip=symbols", "-o", str(output), str(source)]  # fmt: skip
    return [
        str(assemblyscript_compiler(source.parent)),
        source.name,
        "--outFile",
        str(output),
        "--runtime",
        "stub",
        "--optimize",
        "--use",
        "abort=",
    ]


def assemblyscript_compiler(folder: Path) -> Path:
    """`asc` from the function's `node_modules`, installed first when it is missing or is not the version its
    `package-lock.json` pins: with `npm ci` from that lock (exact versions and hashes, the same on every
    machine), or `npm install` for a folder without a lock."""
    asc = folder / "node_modules" / ".bin" / "asc"
    lock = folder / "package-lock.json"
    if asc.exists() and (not lock.exists() or _installed_as_locked(folder, lock)):
        return asc
    npm = shutil.which("npm")
    if npm is None:
        raise InvalidFunctionCode("no npm to install AssemblyScript", hint="install node and npm")
    install = "ci" if lock.exists() else "install"
    _run([npm, install, "--no-audit", "--no-fund", "--loglevel=error"], folder)
    return asc


def _installed_as_locked(folder: Path, lock: Path) -> bool:
    """Whether the AssemblyScript in `node_modules` is the version the lock pins."""
    try:
        locked = json.loads(lock.read_text())["packages"]["node_modules/assemblyscript"]["version"]
        installed = json.loads((folder / "node_modules" / "assemblyscript" / "package.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(installed.get("version") == locked)


def _run(command: list[str], folder: Path) -> None:
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InvalidFunctionCode(f"building {folder.name} took over {BUILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise InvalidFunctionCode(
            f"building {folder.name} failed: {_first_error(output)}", details={"output": output[-4000:]}
        )


def _first_error(output: str) -> str:
    """The compiler's first error line (it names the file and line), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "no output"
