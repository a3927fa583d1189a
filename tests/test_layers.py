"""The layers (DESIGN.md, STYLE.md): a request flows `gateway → runtime → data → trace`, and a module imports
only modules at its own level or to its right. Every import in `flux/` and `cli/` is read with `ast` (lazy
ones and type-only ones too) and checked against the order below."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom. A module may import its own package (and, in a shared tier, the tier's other modules) and
# anything in a lower tier, never a higher one. Every module of flux/ must be named here.
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("cli", frozenset({"cli"})),
    # host every module in one process
    ("process", frozenset({"flux.app", "flux.server", "flux.devloop", "flux.httpworker"})),
    ("dashboard", frozenset({"flux.dashboard"})),  # the web pages, over the management API's functions
    ("api", frozenset({"flux.api"})),
    ("replay", frozenset({"flux.replay"})),  # runs recorded requests again, as gateway and queue ran them
    ("gateway", frozenset({"flux.gateway"})),
    ("queue", frozenset({"flux.queue"})),  # the other way in: a job runs like a request
    ("runtime", frozenset({"flux.runtime"})),
    ("data", frozenset({"flux.data"})),
    ("trace", frozenset({"flux.trace"})),
    # Shared by every layer: what runs a project's Postgres and its migrations, and the caches kept fresh by
    # NOTIFY, above the base every module may use.
    (
        "services",
        frozenset({"flux.migrate", "flux.postgres", "flux.maintenance", "flux.scaffold", "flux.listen"}),
    ),
    (
        "base",
        frozenset(
            {
                "flux",
                "flux.db",
                "flux.pipeline",
                "flux.errors",
                "flux.config",
                "flux.jsontext",
                "flux.randomness",
                "flux.cpus",
            }
        ),
    ),
]


def _unit(module: str) -> str:
    """The layer unit a dotted module belongs to: `cli`, `flux`, or `flux.<first part>`."""
    parts = module.split(".")
    return parts[0] if parts[0] == "cli" or len(parts) == 1 else ".".join(parts[:2])


def _rank(unit: str) -> int | None:
    return next((rank for rank, (_, units) in enumerate(LAYERS) if unit in units), None)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool, root: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every flux or cli module that `module` imports."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (root / Path(*sub.split("."))).is_dir() or (
                    root / Path(*sub.split("."))
                ).with_suffix(".py").is_file()
                found.append((node.lineno, sub if is_module else base))
    return [(line, name) for line, name in found if name.split(".")[0] in ("flux", "cli")]


def layer_violations(root: Path) -> list[str]:
    """Every import under `root`'s flux/ and cli/ that runs against LAYERS, as `file:line: …`."""
    problems = []
    for path in sorted([*(root / "flux").rglob("*.py"), *(root / "cli").rglob("*.py")]):
        module = _module_name(path, root)
        unit = _unit(module)
        rank = _rank(unit)
        where = path.relative_to(root)
        if rank is None:
            problems.append(f"{where}: {unit} is in no layer; add it to LAYERS in tests/test_layers.py")
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, name in _imported(tree, module, path.name == "__init__.py", root):
            target = _unit(name)
            target_rank = _rank(target)
            if target_rank is None:
                problems.append(f"{where}:{line}: imports {name}, which is in no layer")
            elif target_rank < rank:
                above = f"{name} ({LAYERS[target_rank][0]})"
                problems.append(f"{where}:{line}: imports {above}, above {module} ({LAYERS[rank][0]})")
    return problems


def test_no_module_imports_against_the_layers() -> None:
    assert layer_violations(ROOT) == []


def test_an_import_against_the_layers_is_found(tmp_path: Path) -> None:
    # The checker itself: an upward import (absolute, relative, lazy or `from flux import x`) is reported,
    # one to the right is not.
    (tmp_path / "cli").mkdir()
    for package in ("flux", "flux/api", "flux/gateway", "flux/runtime", "flux/trace"):
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "flux/db.py").write_text("")
    (tmp_path / "flux/api/secrets.py").write_text("from flux.runtime.secrets import SecretCache\n")
    (tmp_path / "flux/runtime/secrets.py").write_text("from flux import db\nfrom ..trace import ids\n")
    (tmp_path / "flux/trace/ids.py").write_text("")
    (tmp_path / "flux/gateway/ids.py").write_text("from flux.trace.ids import request_span_id\n")
    lazy = "def f():\n    from flux.api.secrets import SecretCache\n"
    (tmp_path / "flux/gateway/handler.py").write_text(lazy)
    (tmp_path / "flux/trace/otlp.py").write_text("from ..gateway import ids\nimport flux.runtime\n")
    assert layer_violations(tmp_path) == [
        "flux/gateway/handler.py:2: imports flux.api.secrets (api), above flux.gateway.handler (gateway)",
        "flux/trace/otlp.py:1: imports flux.gateway.ids (gateway), above flux.trace.otlp (trace)",
        "flux/trace/otlp.py:2: imports flux.runtime (runtime), above flux.trace.otlp (trace)",
    ]
