"""`flux bug bisect` over a git history the test makes (31 commits of a small project: one commit changes what
a TypeScript function answers, one only renames a variable, one breaks the build), with requests recorded
through the gateway on the latest code, real Postgres and real Deno: it names the culprit within
ceil(log2 N) + 1 replays plus one per skip, reports the skipped commit (a range when the skip is next to the
culprit), judges by `--expect` on the status or a body path or by sameness with the replay at `--good`, takes
several requests (bad if any is), refuses endpoints that do not judge as given, builds each function source
once, and leaves the user's checkout, index, stash and worktrees as they were. The same over a Wasm function
in C. Without Postgres or git: the search itself, over every culprit position and patterns of skips, within
its bound; the candidates of a history with a merge, with and without --first-parent; the progress line."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli._code import commits_between
from cli.bug import _progress
from cli.main import app
from flux.api.deploy import deploy
from flux.config import load_settings
from flux.errors import BisectEndpointsRefused, GitRevisionUnusable, InvalidBisect, InvalidFunctionCode
from flux.replay import Divergence, ReplayResult
from flux.replay.bisect import Answer, Bisect, Commit, Judged, Step
from flux.runtime import Function
from tests.fixtures.gateway import gateway_client
from tests.fixtures.git import git, git_state

FLUX_TOML = """
[[routes]]
method = "GET"
path = "/total"
function = "total"
auth = "none"

[[routes]]
method = "GET"
path = "/greet/{name}"
function = "greet"
auth = "none"
"""
ITEMS = (
    "CREATE TABLE items (id int PRIMARY KEY, price int NOT NULL);\n"
    "INSERT INTO items VALUES (1, 10), (2, 20), (3, 30);\n"
    "GRANT SELECT ON items TO flux_anon;\n"
)
TOTAL = """export default async (req, ctx) => {
  const found = await ctx.db.query({select: "items", columns: ["price"], order: [{col: "id"}]});
  const prices = found.rows.map((row) => row.price);
  return {status: 200, body: {total: prices.reduce((sum, price) => sum + price, 0), count: prices.length}};
};
"""
TOTAL_RENAMED = TOTAL.replace("prices", "amounts")
TOTAL_BROKEN = TOTAL.replace("=> {\n", "=> {{\n", 1)
TOTAL_CULPRIT = TOTAL_RENAMED.replace("amounts.reduce(", "amounts.slice(1).reduce(")  # forgets the first item
GREET = "export default async (req, ctx) => ({hello: req.params.name});\n"
GREET_STRICT = """export default async (req, ctx) => {
  if (req.params.name.length > 3) throw new Error("name too long");
  return {hello: req.params.name};
};
"""
CANDIDATES = 30  # commits after the first one
BROKEN, STRICT, RENAMED, CULPRIT = 14, 15, 16, 20  # candidate indexes (0: the commit after the first)


@dataclass(frozen=True)
class History:
    top: Path  # the repository and the project
    commits: list[str]  # oldest first: commits[0] is the first, commits[i + 1] candidate i
    subjects: list[str]


def _git(repo: Path, *args: str) -> str:
    return git(repo, *args, author="Ada Lovelace", email="ada@flux.invalid")


def _write(top: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(text)


def make_history(top: Path, first: dict[str, str], changes: dict[int, tuple[str, dict[str, str]]]) -> History:
    """A repository whose first commit holds `first`, then CANDIDATES commits: candidate i makes
    `changes[i]` (subject, files) or, when it has none, edits notes.txt only."""
    top.mkdir()
    _git(top, "init", "-q", "-b", "main")
    _write(top, {**first, ".gitignore": ".flux/\n", "notes.txt": "0\n"})
    _git(top, "add", ".")
    _git(top, "commit", "-q", "-m", "the project")
    subjects = ["the project"]
    for index in range(CANDIDATES):
        subject, files = changes.get(index, (f"notes {index + 1}", {"notes.txt": f"{index + 1}\n"}))
        _write(top, files)
        _git(top, "commit", "-q", "-am", subject, "--date", f"2026-01-{index % 28 + 1:02d}T10:00:00Z")
        subjects.append(subject)
    commits = _git(top, "rev-list", "--reverse", "HEAD").splitlines()
    return History(top, commits, subjects)


def mid_work(top: Path) -> None:
    """The user mid-work: a stash, a staged file, an edited file and an untracked one."""
    (top / "notes.txt").write_text("stashed edit\n")
    _git(top, "stash", "push", "-q", "-m", "work in progress")
    (top / "staged.txt").write_text("staged\n")
    _git(top, "add", "staged.txt")
    (top / "notes.txt").write_text("edited, not committed\n")
    (top / "untracked.txt").write_text("untracked\n")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    first = {"flux.toml": FLUX_TOML, "functions/total/index.ts": TOTAL, "functions/greet/index.ts": GREET,
             "migrations/0001_items.sql": ITEMS}  # fmt: skip
    changes = {
        BROKEN: ("total: start a refactor (does not build)", {"functions/total/index.ts": TOTAL_BROKEN}),
        STRICT: ("fix the build; greet refuses long names",
                 {"functions/total/index.ts": TOTAL, "functions/greet/index.ts": GREET_STRICT}),
        RENAMED: ("total: rename prices to amounts", {"functions/total/index.ts": TOTAL_RENAMED}),
        CULPRIT: ("total: skip the header row", {"functions/total/index.ts": TOTAL_CULPRIT}),
    }  # fmt: skip
    history = make_history(tmp_path_factory.mktemp("bisect") / "shop", first, changes)
    mid_work(history.top)
    return history


@pytest.fixture
def recorded(history: History, dsn: str) -> Iterator[dict[str, str]]:
    """The latest commit deployed, and requests recorded on it through the gateway: their ids by name."""
    settings = load_settings(history.top, env={})
    deploy(dsn, settings)
    with gateway_client(settings, dsn) as client:
        answers = {
            "total": client.simulate_get("/total"),
            "alice": client.simulate_get("/greet/alice"),
            "bob": client.simulate_get("/greet/bob"),
        }
    assert answers["total"].json == {"total": 50, "count": 3}  # the bug, in production
    assert (answers["alice"].status_code, answers["bob"].json) == (500, {"hello": "bob"})
    yield {name: answer.headers["x-request-id"] for name, answer in answers.items()}


def bisect(top: Path, dsn: str, *args: str) -> Any:
    return CliRunner().invoke(
        app, ["bug", "bisect", *args, "--project", str(top)], env={"DATABASE_URL": dsn, "FLUX_URL": None},
        catch_exceptions=False,
    )  # fmt: skip


def bound(skips: int) -> int:
    return math.ceil(math.log2(CANDIDATES)) + 1 + skips


def test_bisect_names_the_culprit_within_the_bound_and_reports_the_skip(
    history: History, dsn: str, recorded: dict[str, str], temporary: Path
) -> None:
    before = git_state(history.top)
    good, bad = history.commits[0], "HEAD"
    done = bisect(history.top, dsn, "--request", recorded["total"][:8], "--good", good[:10], "--bad", bad)
    assert done.exit_code == 0, done.output
    culprit = history.commits[CULPRIT + 1]
    lines = done.output.splitlines()
    assert lines[0] == f"first bad commit: {culprit[:12]}  total: skip the header row"
    assert lines[1] == "  Ada Lovelace <ada@flux.invalid>, 2026-01-21T10:00:00+00:00"
    # The request was recorded on the bad code: at the culprit it replays as recorded, and at --good (shown
    # for comparison) its total differs.
    assert lines[2] == f"replayed at {culprit[:12]}:"
    assert lines[3].startswith(f"  {recorded['total'][:8]}  GET /total  same  (replay "), lines[3]
    assert lines[4:8] == [
        f"replayed at --good {good[:12]}:",
        f"  {recorded['total'][:8]}  GET /total  diverged",
        "    first: output: the response differs at response.body.total",
        "      response.body.total: 50 → 60",
    ]
    assert re.fullmatch(r"  compare: flux trace diff [0-9a-f]{8} [0-9a-f]{8}", lines[8]), lines[8]

    answer = json.loads(bisect(history.top, dsn, "--request", recorded["total"], "--good", good, "--bad",
                               bad, "--json").output)  # fmt: skip
    assert answer["first_bad"]["sha"] == culprit and answer["range"] is None
    assert answer["db"] == "as-of" and answer["candidates"] == CANDIDATES
    assert [s["commit"]["sha"] for s in answer["skipped"]] == [history.commits[BROKEN + 1]]
    assert answer["skipped"][0]["reason"].startswith("FX307 ")
    judged = {step["commit"]["sha"]: step["judgement"] for step in answer["steps"]}
    assert judged[history.commits[BROKEN + 1]] == "skip"
    renamed_or_later = [i for i in range(RENAMED, CULPRIT) if history.commits[i + 1] in judged]
    assert renamed_or_later and all(judged[history.commits[i + 1]] == "good" for i in renamed_or_later)
    assert answer["replays"] <= bound(len(answer["skipped"])), answer["replays"]
    assert answer["endpoint_replays"] == 2
    # The commits judged hold two versions of greet (before and after STRICT) and three of total that build
    # (first, renamed, culprit): each is built once, and reused at every other commit that has it.
    built_commits = len(answer["steps"]) + 2 - len(answer["skipped"])
    assert answer["builds"] == 5
    assert answer["builds"] + answer["cache_hits"] == 2 * built_commits
    assert done.output.splitlines()[-2].startswith(f"{CANDIDATES} commits after --good: ")
    broken = history.commits[BROKEN + 1]
    assert f"  skipped {broken[:12]}: FX307 {broken}:functions/total/index.ts:5:1: " in done.output

    assert git_state(history.top) == before
    assert (history.top / "notes.txt").read_text() == "edited, not committed\n"
    assert list(temporary.iterdir()) == []
    assert len(_git(history.top, "worktree", "list").splitlines()) == 1


def test_expect_on_the_status_with_a_skip_next_to_the_culprit_leaves_a_range(
    history: History, dsn: str, recorded: dict[str, str]
) -> None:
    done = bisect(history.top, dsn, "--request", recorded["alice"], "--good", history.commits[0], "--bad",
                  "HEAD", "--expect", "status == 200", "--db", "recorded")  # fmt: skip
    assert done.exit_code == 0, done.output
    broken, strict = history.commits[BROKEN + 1], history.commits[STRICT + 1]
    lines = done.output.splitlines()
    assert (
        lines[0] == f"the first bad commit is one of 2: the commits before {strict[:12]} could not be judged"
    )
    assert lines[1].startswith(f"  {broken[:12]}  total: start a refactor (does not build)  (Ada Lovelace")
    assert "; skipped: FX307 " in lines[1]
    assert lines[2].startswith(f"  {strict[:12]}  fix the build; greet refuses long names  (")
    assert lines[2].endswith("; bad)")
    assert lines[3] == f"replayed at {strict[:12]}:"
    assert lines[4].startswith(f"  {recorded['alice'][:8]}  GET /greet/alice  same  (replay "), lines[4]
    assert lines[5] == "    --expect does not hold: status = 500"
    answer = json.loads(bisect(history.top, dsn, "--request", recorded["alice"], "--good", history.commits[0],
                               "--bad", "HEAD", "--expect", "status == 200", "--json").output)  # fmt: skip
    assert [commit["sha"] for commit in answer["range"]] == [broken, strict]
    assert answer["first_bad"]["sha"] == strict


def test_expect_on_a_body_path_and_several_requests_one_of_them_bad(
    history: History, dsn: str, recorded: dict[str, str]
) -> None:
    culprit = history.commits[CULPRIT + 1]
    on_body = bisect(history.top, dsn, "--request", recorded["total"], "--good", history.commits[0], "--bad",
                     "HEAD", "--expect", "body.total == 60 && body.count > 0", "--json")  # fmt: skip
    assert on_body.exit_code == 0, on_body.output
    answer = json.loads(on_body.output)
    assert answer["first_bad"]["sha"] == culprit
    run = answer["culprit"]["runs"][0]
    assert (run["good"], run["expect_read"]) == (False, "body.total = 50, body.count = 3")
    assert run["response"]["body"] == {"total": 50, "count": 3}

    # bob never misbehaves; total does from CULPRIT on: bad as soon as any is.
    several = bisect(history.top, dsn, "--request", recorded["bob"], "--request", recorded["total"], "--good",
                     history.commits[STRICT + 1], "--bad", "HEAD", "--json")  # fmt: skip
    assert several.exit_code == 0, several.output
    answer = json.loads(several.output)
    assert answer["first_bad"]["sha"] == culprit and answer["skipped"] == []
    bob, total = answer["culprit"]["runs"]
    assert (bob["good"], total["good"]) == (True, False)
    assert answer["endpoint_replays"] == 4
    candidates = CANDIDATES - STRICT - 1
    steps = len(answer["steps"])
    assert steps <= math.ceil(math.log2(candidates)) + 1
    assert steps <= answer["replays"] <= 2 * steps


def test_endpoints_that_do_not_judge_as_given_are_refused(
    history: History, dsn: str, recorded: dict[str, str]
) -> None:
    late = history.commits[CULPRIT + 2]
    already_bad = bisect(history.top, dsn, "--request", recorded["total"], "--good", late, "--bad", "HEAD",
                         "--expect", "body.total == 60")  # fmt: skip
    assert already_bad.exit_code == 2
    assert already_bad.output.splitlines()[0] == (
        f"error FX513: request {recorded['total']} is already bad at --good {late[:12]} (notes 22):"
        " --expect body.total == 60 does not hold (body.total = 50)"
    )
    alike = bisect(history.top, dsn, "--request", recorded["total"], "--good", late, "--bad", "HEAD")
    assert alike.exit_code == 2
    assert alike.output.startswith("error FX513: nothing to bisect: at --bad ")
    assert "every request replays as it does at --good" in alike.output
    broken = bisect(history.top, dsn, "--request", recorded["total"], "--good",
                    history.commits[BROKEN + 1], "--bad", "HEAD")  # fmt: skip
    assert broken.exit_code == 2 and broken.output.startswith("error FX513: --good ")
    assert "cannot be judged: FX307 " in broken.output


def test_what_bisect_cannot_run_exits_2_with_a_code(
    history: History, dsn: str, recorded: dict[str, str]
) -> None:
    first = history.commits[0]
    cases = {
        ("--good", "HEAD", "--bad", first): "FX514",  # --good is not an ancestor of --bad
        ("--good", "HEAD", "--bad", "HEAD"): "FX514",
        ("--good", "nope", "--bad", "HEAD"): "FX511",
        ("--good", first, "--bad", "HEAD", "--expect", "total = 60"): "FX512",
        ("--good", first, "--bad", "HEAD", "--db", "yesterday"): "FX514",
    }
    for args, code in cases.items():
        done = bisect(history.top, dsn, "--request", recorded["total"], *args)
        assert done.exit_code == 2 and done.output.startswith(f"error {code}: "), (args, done.output)
    unknown = bisect(history.top, dsn, "--request", "ffffffff", "--good", first, "--bad", "HEAD")
    assert unknown.exit_code == 2 and unknown.output.startswith("error FX503: "), unknown.output
    no_request = bisect(history.top, dsn, "--good", first, "--bad", "HEAD")
    assert no_request.exit_code == 2 and no_request.output.startswith("error FX514: no request to bisect")
    server_only = CliRunner().invoke(
        app, ["bug", "bisect", "--request", recorded["total"], "--good", first, "--bad", "HEAD", "--project",
              str(history.top)], env={"DATABASE_URL": None, "FLUX_URL": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert server_only.exit_code == 2
    assert server_only.output.startswith("error FX514: FLUX_URL is set, but bisect builds your git history")


PRICE_TOML = """
[[routes]]
method = "GET"
path = "/price"
function = "price"
auth = "none"
"""
PRICE_C = r"""#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((export_name("flux_alloc"))) void *flux_alloc(uint32_t len) { return malloc(len ? len : 1); }

__attribute__((export_name("flux_handle"))) uint64_t flux_handle(const char *request, uint32_t len) {
    int price = 42;
    char *out = malloc(64);
    int written = snprintf(out, 64, "{\"price\":%d}", price);
    return ((uint64_t)(uintptr_t)out << 32) | (uint32_t)written;
}
"""
PRICE_RENAMED = PRICE_C.replace("price", "amount").replace('\\"amount\\"', '\\"price\\"')
PRICE_BROKEN = PRICE_C.replace("int price = 42;", "int price = 42")
PRICE_CULPRIT = PRICE_RENAMED.replace("amount = 42;", "amount = 41;")


def test_a_wasm_function_in_c_bisects_the_same_way(dsn: str, tmp_path: Path, temporary: Path) -> None:
    changes = {
        BROKEN: ("price: start a refactor (does not build)", {"functions/price/index.c": PRICE_BROKEN}),
        BROKEN + 1: ("price: fix the build", {"functions/price/index.c": PRICE_C}),
        RENAMED: ("price: rename price to amount", {"functions/price/index.c": PRICE_RENAMED}),
        CULPRIT: ("price: a discount for everyone", {"functions/price/index.c": PRICE_CULPRIT}),
    }
    history = make_history(tmp_path / "prices", {"flux.toml": PRICE_TOML, "functions/price/index.c": PRICE_C},
                           changes)  # fmt: skip
    mid_work(history.top)
    settings = load_settings(history.top, env={})
    deploy(dsn, settings)
    with gateway_client(settings, dsn) as client:
        answer = client.simulate_get("/price")
    assert answer.json == {"price": 41}
    before = git_state(history.top)

    done = bisect(history.top, dsn, "--request", answer.headers["x-request-id"], "--good", history.commits[0],
                  "--bad", "HEAD", "--json")  # fmt: skip
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["first_bad"]["sha"] == history.commits[CULPRIT + 1] and found["range"] is None
    assert [s["commit"]["sha"] for s in found["skipped"]] == [history.commits[BROKEN + 1]]
    assert found["skipped"][0]["reason"].startswith("FX307 building price failed: ")
    assert found["replays"] <= bound(1)
    assert found["builds"] == 3  # the first version, the renamed one, the culprit: clang ran once for each
    assert found["culprit"]["runs"][0]["response"]["body"] == {"price": 41}
    assert git_state(history.top) == before
    assert list(temporary.iterdir()) == []


def _commits(count: int) -> list[Commit]:
    return [Commit(f"{n:040x}", f"commit {n}", "A <a@b>", "2026-01-01T00:00:00+00:00") for n in range(count)]


def _search(
    count: int, culprit: int, unbuildable: set[int], cannot_run: set[int]
) -> tuple[Answer, list[int]]:
    """A bisect of commits 1..count after commit 0 where commit `culprit` and later ones answer otherwise;
    `unbuildable` do not build, and the request cannot run at `cannot_run`: no Postgres, no git."""
    commits = _commits(count + 1)
    number = {commit.sha: n for n, commit in enumerate(commits)}
    judged: list[int] = []

    def build(commit: Commit) -> dict[str, Function]:
        judged.append(number[commit.sha])
        if number[commit.sha] in unbuildable:
            raise InvalidFunctionCode("building total failed: syntax")
        return {"total": Function("total", "typescript", commit.sha.encode(), commit.sha)}

    def replay_at(request_id: str, functions: Mapping[str, Function]) -> ReplayResult:
        at = number[functions["total"].sha256]
        if at in cannot_run:
            return ReplayResult(request_id, None, "error", error={"code": "FX507", "message": "no total"})
        if at < culprit:
            return ReplayResult(request_id, "r", "same", response={"status": 200, "body": {"total": 60}})
        divergence = Divergence("output", "response", {"total": 60}, {"total": 50}, "the response differs")
        return ReplayResult(
            request_id, "r", "diverged", [divergence], response={"status": 200, "body": {"total": 50}}
        )

    answer = Bisect(["request"], build, replay_at).run(commits[0], commits[1:])
    return answer, judged[2:]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 8, 9, 30, 100])
def test_the_search_names_every_culprit_within_ceil_log2_n_plus_1(count: int) -> None:
    for culprit in range(1, count + 1):
        answer, _ = _search(count, culprit, set(), set())
        assert answer.first_bad.commit.subject == f"commit {culprit}" and len(answer.suspects) == 1
        assert answer.replays <= math.ceil(math.log2(count)) + 1, (count, culprit, answer.replays)
        assert answer.endpoint_replays == 2


def test_skips_cost_one_try_each_and_next_to_the_culprit_leave_a_range() -> None:
    for culprit in range(2, 31):
        for skipped in ({culprit - 1}, {culprit - 1, culprit - 2} - {0}, {15}, {14, 15, 16}):
            skipped -= {culprit}
            answer, tried = _search(30, culprit, skipped, set())
            bound = math.ceil(math.log2(30)) + 1 + len(answer.skipped)
            assert answer.replays <= bound, (culprit, skipped, tried)
            suspects = [int(commit.subject.split()[1]) for commit in answer.suspects]
            assert suspects[-1] == culprit
            assert set(suspects[:-1]) <= skipped and suspects == list(range(suspects[0], culprit + 1))
    answer, _ = _search(30, 20, set(), {19})  # the request cannot run at 19 (no such function there)
    assert [commit.subject for commit in answer.suspects] == ["commit 19", "commit 20"]
    assert answer.skipped[0].reason == "request request: FX507 no total"


def test_the_endpoints_are_checked_first() -> None:
    with pytest.raises(
        BisectEndpointsRefused, match=r"nothing to bisect: at --bad .* every request replays as"
    ):
        _search(10, 11, set(), set())  # the culprit is later than --bad
    with pytest.raises(
        BisectEndpointsRefused, match=r"^FX513: --good 0{12} cannot be judged: FX307 building total"
    ):
        _search(10, 5, {0}, set())
    with pytest.raises(
        BisectEndpointsRefused, match=r"^FX513: --bad 0{12} cannot be judged: request request: FX507"
    ):
        _search(10, 5, set(), {10})


def test_candidates_follow_the_ancestry_path_or_the_first_parent(tmp_path: Path) -> None:
    top = tmp_path / "merged"
    top.mkdir()
    _git(top, "init", "-q", "-b", "main")

    def commit(subject: str) -> str:
        (top / "notes.txt").write_text(subject)
        _git(top, "add", ".")
        _git(top, "commit", "-q", "-m", subject)
        return _git(top, "rev-parse", "HEAD")

    good = commit("good")
    commit("a")
    _git(top, "checkout", "-q", "-b", "feature", good)
    commit("b1")
    commit("b2")
    _git(top, "checkout", "-q", "main")
    _git(top, "merge", "-q", "--no-ff", "-X", "theirs", "-m", "merge feature", "feature")
    commit("c")
    first, every = commits_between(top, good, "main"), commits_between(top, good, "main", first_parent=False)
    assert first[0].sha == good and [c.subject for c in every[1]] == ["a", "b1", "b2", "merge feature", "c"]
    lined = commits_between(top, good[:8], "main", first_parent=True)[1]
    assert [c.subject for c in lined] == ["a", "merge feature", "c"]
    with pytest.raises(InvalidBisect, match="is not an ancestor of --bad"):
        commits_between(top, "feature", "main~1~1")
    with pytest.raises(GitRevisionUnusable, match=re.escape(f"FX511: --good nope names no commit in {top}")):
        commits_between(top, "nope", "main")
    with pytest.raises(GitRevisionUnusable, match=r"FX511: \S+ is not in a git repository, so there is no"):
        commits_between(tmp_path, good, "main")


def test_progress_is_one_line_a_commit(capsys: pytest.CaptureFixture[str]) -> None:
    commit = _commits(2)[1]
    _progress(Step(commit, Judged(commit, "skip", reason="FX307 building total failed\nmore"), 3))
    _progress(Step(commit, Judged(commit, "good"), 2))
    assert capsys.readouterr().err.splitlines() == [
        f"  {commit.sha[:12]}  skip (FX307 building total failed)  commit 1  (3 left)",
        f"  {commit.sha[:12]}  good   commit 1  (2 left)",
    ]
