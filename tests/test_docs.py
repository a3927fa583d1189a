"""The docs stay true to the code where that is cheap to check: every repository path they cite exists, every
setting and `FLUX_*` variable the code reads is documented, every `flux.*` table, view and function of the
schema is in docs/sql.md, every management API route is in docs/projects.md, and docs/cli.md's migration
listings name every migration there is."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import falcon

from flux import config
from flux.api import resources

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP = "flux|cli|sql|tests|docs|examples|bench|wit|\\.ci"
# A repository path: a top-level folder, then names (a glob's `*` allowed), not inside a longer path or URL.
REPO_PATH = re.compile(rf"(?<![\w./:-])((?:{TOP})/[\w.*/-]*[\w*/])")
MARKDOWN_FILE = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)")
# not [server] keys: flux.toml's other sections ([deploy] and [dev] are in their own table of cli.md)
SERVER_SETTINGS_ELSEWHERE = {"project_dir", "routes", "cron", "name", "function_limits", "deploy_gate",
                             "dev_replay_last"}  # fmt: skip
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _text(path: Path) -> str:
    return path.read_text()


def _all_docs() -> str:
    return "\n".join(_text(path) for path in DOCS)


def test_every_repository_path_the_docs_cite_exists() -> None:
    missing = []
    for doc in DOCS:
        for number, line in enumerate(_text(doc).splitlines(), 1):
            for cited in REPO_PATH.findall(line):
                if "/.flux/" in cited or "node_modules" in cited:  # what a build or a run writes
                    continue
                found = list(REPO.glob(cited.rstrip("/"))) if "*" in cited else [REPO / cited]
                if not any(path.exists() for path in found):
                    missing.append(f"{doc.name}:{number}: {cited}")
            for name in MARKDOWN_FILE.findall(line):
                if not any((folder / name).exists() for folder in (REPO, REPO / "docs", doc.parent)):
                    missing.append(f"{doc.name}:{number}: {name}")
            for target in MARKDOWN_LINK.findall(line):
                if "://" not in target and not (doc.parent / target).exists():
                    missing.append(f"{doc.name}:{number}: link {target}")
    assert not missing, "the docs cite what the repository does not hold:\n" + "\n".join(missing)


def test_the_path_check_finds_paths() -> None:
    """The check above cannot pass by matching nothing."""
    line = "see `flux/trace/writer.py`, tests/cases/*.yaml and DESIGN.md, not https://x.io/flux/a.py"
    assert REPO_PATH.findall(line) == ["flux/trace/writer.py", "tests/cases/*.yaml"]
    assert MARKDOWN_FILE.findall(line) == ["DESIGN.md"]


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    docs = _all_docs()
    read = {name for names in config._ENV_NAMES.values() for name in names}
    for path in [*(REPO / "flux").rglob("*.py"), *(REPO / "cli").rglob("*.py")]:
        read |= set(re.findall(r"\bFLUX_[A-Z][A-Z_]*[A-Z]\b", _text(path)))
    assert "FLUX_DATABASE_URL" in read and "FLUX_URL" in read  # the scan works
    undocumented = sorted(name for name in read if not re.search(rf"\b{name}\b", docs))
    assert not undocumented, f"not in docs/ or the README: {undocumented}"


def test_every_setting_is_in_the_settings_tables_of_cli_md() -> None:
    """Every `[server]` and `[auth]` key of flux.toml is a row of docs/cli.md's settings tables, with the
    environment variables that set it."""
    rows = [line for line in _text(REPO / "docs" / "cli.md").splitlines() if line.startswith("| `")]
    auth_keys = {setting: key for key, setting in config._AUTH_KEYS.items()}
    problems = []
    for setting in (f.name for f in fields(config.Settings)):
        if setting in SERVER_SETTINGS_ELSEWHERE:
            continue
        key = auth_keys.get(setting, setting)
        row = next((row for row in rows if f"`{key}`" in row.split("|")[1]), None)
        if row is None:
            problems.append(f"{key}: no row")
            continue
        problems += [
            f"{key}: {env} not in its row" for env in config._ENV_NAMES[setting] if f"`{env}`" not in row
        ]
    assert not problems, problems


def test_every_flux_object_of_the_schema_is_in_sql_md() -> None:
    schema = _text(REPO / "sql" / "schema.sql")
    created = r"^CREATE (?:FUNCTION|PROCEDURE|TABLE|VIEW|MATERIALIZED VIEW) flux\.(\w+)"
    objects = set(re.findall(created, schema, re.MULTILINE))
    assert {"requests", "enqueue_jobs", "request_log"} <= objects  # the scan works
    sql_md = _text(REPO / "docs" / "sql.md")
    missing = sorted(name for name in objects if not re.search(rf"\b{name}\b", sql_md))
    assert not missing, f"flux objects not in docs/sql.md: {missing}"


def _management_routes() -> set[str]:
    """`METHOD /path` of every call the management API answers, each `{field}` as `{}`."""
    mounted: list[tuple[str, Any, str | None]] = []

    class Recording(falcon.App):
        def add_route(self, uri_template: str, resource: object, **kwargs: Any) -> None:
            mounted.append((uri_template, resource, kwargs.get("suffix")))

    resources.register(Recording(), pool=None, project_dir=REPO)
    routes = set()
    for path, resource, suffix in mounted:
        for method in HTTP_METHODS:
            if hasattr(resource, f"on_{method}_{suffix}" if suffix else f"on_{method}"):
                routes.add(f"{method.upper()} {re.sub(r'{[^}]*}', '{}', path)}")
    return routes


def test_every_management_api_route_is_in_the_api_docs() -> None:
    routes = _management_routes()
    assert "DELETE /flux/api/keys/{}" in routes and len(routes) > 20  # the scan works
    projects_md = _text(REPO / "docs" / "projects.md")
    cited = re.findall(r"\b(GET|POST|PUT|PATCH|DELETE) (/flux/api/(?:[^\s`?{]|\{[^}]*\})*)", projects_md)
    documented = {f"{method} {re.sub(r'{[^}]*}', '{}', path)}" for method, path in cited}
    assert not routes - documented, f"not in docs/projects.md: {sorted(routes - documented)}"


def _block_after(text: str, command: str) -> list[str]:
    """The lines of the first ``` block that starts with `$ command`, up to the next `$` line or its end."""
    lines = text.split(f"```\n$ {command}\n", 1)[1].split("```", 1)[0].splitlines()
    return lines[: next((i for i, line in enumerate(lines) if line.startswith("$ ")), len(lines))]


def _migrations(project: Path) -> list[tuple[str, str]]:
    """(kind, file) of every migration a fresh migrate of `project` applies, in order."""
    return [
        *(("flux", path.name) for path in sorted((REPO / "sql" / "migrations").glob("*.sql"))),
        *(("function", path.name) for path in sorted((REPO / "sql" / "functions").glob("*.sql"))),
        *(("project", f"migrations/{path.name}") for path in sorted((project / "migrations").glob("*.sql"))),
    ]


def test_cli_md_shows_every_migration_a_fresh_project_applies() -> None:
    cli_md = _text(REPO / "docs" / "cli.md")
    scaffold = _migrations(REPO / "flux" / "scaffold" / "project")
    migrated = _block_after(cli_md, "flux db migrate")
    assert [tuple(line.split()[1:]) for line in migrated[:-1]] == scaffold
    assert migrated[-1] == f"{len(scaffold)} applied"
    status = [line.split()[1:3] for line in _block_after(cli_md, "flux db status")]
    assert status == [
        [kind, file.removeprefix("migrations/").removesuffix(".sql")] for kind, file in scaffold
    ]
    quickstart = _migrations(REPO / "examples" / "quickstart")
    dev = _block_after(cli_md, "flux dev examples/quickstart")
    started = [line.removeprefix("flux: applied ") for line in dev if line.startswith("flux: applied ")]
    assert started == [file for _, file in quickstart]
