"""What the tests need beyond the code is installed by `.ci/run` and pinned: the Python packages whose exact
output a test asserts have an upper bound that holds the installed version, the AssemblyScript compiler comes
from a committed npm lock, and no test runs a program that `.ci/run` does not make sure of."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# Packages whose exact output (SQL text, parse trees and errors, lint and type verdicts) tests or CI assert.
OUTPUT_PINNED = ("sqlglot", "pglast", "deno", "ruff", "mypy")
SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call"}


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    listed = project["dependencies"] + [dep for deps in extras for dep in deps]
    return {Requirement(text).name.lower(): Requirement(text) for text in listed}


def test_packages_whose_output_tests_assert_have_an_upper_bound() -> None:
    requirements = _requirements()
    for name in OUTPUT_PINNED:
        specifier = requirements[name].specifier
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in specifier), (
            f"{name}{specifier} has no upper bound"
        )


def test_the_installed_packages_are_in_their_pinned_ranges() -> None:
    for name, requirement in _requirements().items():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        installed = version(name)
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{name} {installed} is outside {requirement}"
        )


def test_the_assemblyscript_compiler_is_pinned_by_a_committed_lock() -> None:
    packages = [
        path for path in REPO.glob("examples/**/package.json")
        if "node_modules" not in path.parts
        and "assemblyscript" in json.loads(path.read_text()).get("devDependencies", {})
    ]  # fmt: skip
    assert packages, "no AssemblyScript example found"
    for package in packages:
        wanted = json.loads(package.read_text())["devDependencies"]["assemblyscript"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", wanted), f"{package}: assemblyscript {wanted!r} is not exact"
        lock = json.loads((package.parent / "package-lock.json").read_text())
        assert lock["packages"][""]["devDependencies"]["assemblyscript"] == wanted
        assert lock["packages"]["node_modules/assemblyscript"]["version"] == wanted
        for name, entry in lock["packages"].items():
            assert not name or entry.get("integrity"), f"{package.parent}: {name} has no hash in its lock"


def test_ci_installs_every_program_a_test_runs() -> None:
    """The programs tests start by name (the first item of a literal argument list) are ones `.ci/run` checks
    for with `command -v` and installs when missing."""
    ensured = set(re.findall(r"command -v ([\w.+-]+)", (REPO / ".ci" / "run").read_text()))
    started: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in SUBPROCESS_CALLS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "subprocess"
                and node.args
                and isinstance(node.args[0], ast.List)
                and node.args[0].elts
            ):
                continue
            program = node.args[0].elts[0]
            if isinstance(program, ast.Constant) and isinstance(program.value, str):
                started.setdefault(program.value, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert started, "found no program started by a test: the scan is broken"
    unchecked = {program: where for program, where in started.items() if program not in ensured}
    assert not unchecked, f"tests run programs .ci/run does not install: {unchecked}"
