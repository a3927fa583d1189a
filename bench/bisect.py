"""What `flux bug bisect` costs over a long history: a small TypeScript project with 1,000 commits (made with
`git fast-import`; each edits a notes file of the project, one changes what the function answers), a request
recorded on the latest code, then the bisect run as the CLI runs it: the replays past the endpoint checks
(at most ceil(log2 1000) + 1 = 11), its wall time, and the functions built against those reused from the
build cache (a commit that did not change a function does not build it again)."""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from flux.data import load_catalog
from flux.runtime import Caller, Runtime, invoke

COMMITS = 1000
CULPRIT = 637  # the commit (1-based, after the first) that changes the answer
FLUX_TOML = '[[routes]]\nmethod = "GET"\npath = "/total"\nfunction = "total"\nauth = "none"\n'
TOTAL = "export default async (req, ctx) => ({total: %d, items: [10, 20, 30]});\n"
OTHER = "export default async (req, ctx) => ({other: true});\n"


def _blob(path: str, text: str) -> str:
    data = text.encode()
    return f"M 100644 inline {path}\ndata {len(data)}\n{text}\n"


def _history(top: Path) -> None:
    """COMMITS + 1 commits on `main` in one `git fast-import` stream, and a checkout of the last."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(top)], check=True)
    parts = []
    for number in range(COMMITS + 1):
        message = "the project" if number == 0 else f"notes {number}"
        files = _blob("notes.txt", f"{number}\n")
        if number == 0:
            files += _blob("flux.toml", FLUX_TOML) + _blob(".gitignore", ".flux/\n")
            files += _blob("functions/total/index.ts", TOTAL % 60) + _blob("functions/other/index.ts", OTHER)
        if number == CULPRIT:
            message, files = "total: off by ten", files + _blob("functions/total/index.ts", TOTAL % 50)
        parent = f"from :{number}\n" if number else ""
        parts.append(
            f"commit refs/heads/main\nmark :{number + 1}\n"
            f"committer Bench <bench@flux.invalid> {1_700_000_000 + number * 60} +0000\n"
            f"data {len(message)}\n{message}\n{parent}{files}\n"
        )
    subprocess.run(["git", "fast-import", "--quiet"], cwd=top, input="".join(parts).encode(), check=True)
    subprocess.run(["git", "reset", "-q", "--hard", "main"], cwd=top, check=True)


def run(dsn: str) -> None:
    from cli._code import functions_from_folder
    from cli.bug import _bisect

    with tempfile.TemporaryDirectory(prefix="flux-bench-bisect-") as folder:
        top = Path(folder) / "project"
        clock = time.perf_counter()
        _history(top)
        made_s = time.perf_counter() - clock
        functions = functions_from_folder(top)
        with psycopg.connect(dsn, autocommit=True) as conn:
            runtime = Runtime(Path(folder) / "cache", deno_workers=1)
            try:
                request = {"method": "GET", "path": "/total"}
                outcome = invoke(conn, runtime, functions["total"], request, catalog=load_catalog(conn),
                                 caller=Caller("anon"))  # fmt: skip
            finally:
                runtime.close()
        before = os.environ.get("DATABASE_URL")
        os.environ["DATABASE_URL"] = dsn
        try:
            clock = time.perf_counter()
            answer, mode, _why, _rows = _bisect([outcome.request_id], "main~1000", "main", None, None, None,
                                                 False, top, progress=False)  # fmt: skip
            wall_s = time.perf_counter() - clock
        finally:
            if before is None:
                os.environ.pop("DATABASE_URL", None)
            else:
                os.environ["DATABASE_URL"] = before
    bound = math.ceil(math.log2(answer.candidates)) + 1
    found = answer.first_bad.commit.subject == "total: off by ten"
    print(f"bisect: {answer.candidates} commits of a TypeScript project ({made_s:.1f} s to make), one"
          f" request, {mode} db")  # fmt: skip
    print(f"  culprit found: {found}   replays past the endpoint checks: {answer.replays}"
          f" (+{answer.endpoint_replays} at the endpoints; target <= {bound}:"
          f" {'met' if answer.replays <= bound else 'NOT met'})")  # fmt: skip
    judged = answer.replays + answer.endpoint_replays
    print(f"  wall time {wall_s:.1f} s ({wall_s / judged:.2f} s a commit judged);"
          f" functions built {answer.builds}, reused from the cache {answer.cache_hits}")  # fmt: skip
