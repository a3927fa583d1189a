"""`flux bug bisect`: the first commit at which recorded requests behave badly, found by replaying them on
commits between a good and a bad one. The endpoints are checked first; then a binary search, where a commit
that does not build or cannot run the request is skipped (and a skip next to the culprit leaves a range).

Judging: with an `--expect` predicate, a commit is good when the predicate holds on every request's replayed
response. Without one, the replay at `--good` is the reference: a commit is good when each request's replay
differs from its recording exactly as the reference does (the same divergences, both sides), so a request
recorded on broken code (whose replay at `--good` diverges) bisects as well as one recorded on good code."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from flux.errors import BisectEndpointsRefused, FluxError
from flux.replay.engine import ReplayResult
from flux.replay.predicate import Predicate
from flux.runtime.invoke import Function
from flux.trace.diff import canonical

Json = Any
Judgement = Literal["good", "bad", "skip"]
Build = Callable[["Commit"], Mapping[str, Function]]  # its functions; a FluxError when it does not build
ReplayAt = Callable[[str, Mapping[str, Function]], ReplayResult]  # one request replayed on those functions


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    author: str  # `Name <email>`
    date: str  # the author date, ISO 8601

    def to_json(self) -> dict[str, str]:
        return {"sha": self.sha, "subject": self.subject, "author": self.author, "date": self.date}


@dataclass(frozen=True)
class Run:
    """One request replayed at one commit, and how it judged."""

    request_id: str
    result: ReplayResult
    good: bool
    shown: str | None = None  # with --expect: what the predicate read (`status = 500`)

    def to_json(self) -> dict[str, Json]:
        return {"good": self.good, "expect_read": self.shown, "replay": self.result.to_json(),
                "response": self.result.response}  # fmt: skip


@dataclass(frozen=True)
class Judged:
    """A commit and its judgement: `skip` with the reason when it did not build or could not run a request."""

    commit: Commit
    judgement: Judgement
    runs: list[Run] = field(default_factory=list)
    reason: str | None = None

    def to_json(self) -> dict[str, Json]:
        return {"commit": self.commit.to_json(), "judgement": self.judgement, "reason": self.reason,
                "runs": [run.to_json() for run in self.runs]}  # fmt: skip


@dataclass
class Answer:
    good: Judged
    bad: Judged
    candidates: int  # commits after --good up to --bad
    steps: list[Judged]  # past the endpoint checks, in the order judged
    first_bad: Judged  # the culprit's judgement (the --bad endpoint's when that is the culprit)
    suspects: list[Commit]  # the culprit alone, or with the skipped commits just before it (a range)
    replays: int = 0  # past the endpoint checks
    endpoint_replays: int = 0
    builds: int = 0
    cache_hits: int = 0

    @property
    def skipped(self) -> list[Judged]:
        return [judged for judged in self.steps if judged.judgement == "skip"]

    def to_json(self) -> dict[str, Json]:
        return {
            "first_bad": self.first_bad.commit.to_json(),
            "range": [commit.to_json() for commit in self.suspects] if len(self.suspects) > 1 else None,
            "culprit": self.first_bad.to_json(),
            "good": self.good.to_json(),
            "bad": self.bad.commit.to_json(),
            "candidates": self.candidates,
            "steps": [judged.to_json() for judged in self.steps],
            "skipped": [{"commit": j.commit.to_json(), "reason": j.reason} for j in self.skipped],
            "replays": self.replays,
            "endpoint_replays": self.endpoint_replays,
            "builds": self.builds,
            "cache_hits": self.cache_hits,
        }


@dataclass(frozen=True)
class Step:
    """What progress shows after each commit judged: which, how, and about how many replays are left."""

    commit: Commit
    judged: Judged
    left: int


class Bisect:
    """Bisects `requests` (whole request ids) over commits: `build` makes a commit's functions, `replay_at`
    replays one request on them; `expect` judges a response, or (None) the replay at --good is the reference.
    `progress` hears of each commit judged."""

    def __init__(
        self,
        requests: Sequence[str],
        build: Build,
        replay_at: ReplayAt,
        expect: Predicate | None = None,
        progress: Callable[[Step], None] | None = None,
    ) -> None:
        self.requests = list(requests)
        self.build = build
        self.replay_at = replay_at
        self.expect = expect
        self.progress = progress
        self.reference: dict[str, str] = {}  # request id -> its replay's divergences at --good, canonical
        self.replays = 0

    def run(self, good: Commit, candidates: Sequence[Commit]) -> Answer:
        """The first bad commit of `candidates` (oldest first, --bad last), after checking that the requests
        judge good at `good` and bad at --bad (FX513 otherwise)."""
        at_good, at_bad = self._endpoints(good, candidates[-1])
        endpoint_replays, self.replays = self.replays, 0
        low, high = -1, len(candidates) - 1  # judged good at low (or --good), bad at high
        judged: dict[int, Judged] = {high: at_bad}
        steps: list[Judged] = []
        skipped: set[int] = set()
        while True:
            pending = [index for index in range(low + 1, high) if index not in skipped]
            if not pending:
                break
            middle = (low + high) / 2
            index = min(pending, key=lambda i: (abs(i - middle), i))
            commit = candidates[index]
            judged[index] = this = self._judge(commit)
            steps.append(this)
            if this.judgement == "good":
                low = index
            elif this.judgement == "bad":
                high = index
            else:
                skipped.add(index)
            if self.progress is not None:
                left = sum(1 for i in range(low + 1, high) if i not in skipped)
                self.progress(Step(commit, this, math.ceil(math.log2(left + 1))))
        answer = Answer(
            good=at_good,
            bad=at_bad,
            candidates=len(candidates),
            steps=steps,
            first_bad=judged[high],
            suspects=list(candidates[low + 1 : high + 1]),
            replays=self.replays,
            endpoint_replays=endpoint_replays,
        )
        return answer

    def _endpoints(self, good: Commit, bad: Commit) -> tuple[Judged, Judged]:
        at_good = self._judge(good, reference=True)
        if at_good.judgement == "skip":
            raise BisectEndpointsRefused(
                f"--good {good.sha[:12]} cannot be judged: {at_good.reason}",
                hint=f"give a --good whose code builds and runs the requests (flux incident replay ID --code"
                f" git:{good.sha[:12]} shows why it cannot), or another --db",
            )
        if at_good.judgement == "bad":
            run = next(run for run in at_good.runs if not run.good)
            raise BisectEndpointsRefused(
                f"request {run.request_id} is already bad at --good {good.sha[:12]} ({good.subject}):"
                f" --expect {self.expect.text if self.expect else ''} does not hold ({run.shown})",
                hint="give an older --good, where the request behaved as expected",
            )
        at_bad = self._judge(bad)
        if at_bad.judgement == "skip":
            raise BisectEndpointsRefused(
                f"--bad {bad.sha[:12]} cannot be judged: {at_bad.reason}",
                hint=f"give a --bad whose code builds and runs the requests (flux incident replay ID --code"
                f" git:{bad.sha[:12]} shows why it cannot), or another --db",
            )
        if at_bad.judgement == "good":
            said = (
                f"--expect {self.expect.text} holds for every request"
                if self.expect is not None
                else "every request replays as it does at --good"
            )
            raise BisectEndpointsRefused(
                f"nothing to bisect: at --bad {bad.sha[:12]} ({bad.subject}) {said}",
                hint="give a --bad where the request misbehaves (flux incident replay ID --code git:REV"
                " shows how it replays there)",
            )
        return at_good, at_bad

    def _judge(self, commit: Commit, *, reference: bool = False) -> Judged:
        """`commit` built and each request replayed on it, until one is bad. A build that fails, or a request
        it cannot run (no such function, say), makes it a skip, unless another request is bad there."""
        try:
            functions = self.build(commit)
        except FluxError as exc:
            return Judged(commit, "skip", reason=f"{exc.code} {exc.message}")
        runs: list[Run] = []
        could_not: str | None = None
        for request_id in self.requests:
            result = self.replay_at(request_id, functions)
            self.replays += 1
            if result.verdict == "error":  # it could not run here: not a judgement of the code's behaviour
                error = result.error or {}
                could_not = could_not or f"request {request_id}: {error.get('code')} {error.get('message')}"
                runs.append(Run(request_id, result, False))
                continue
            run = self._run(request_id, result, reference)
            runs.append(run)
            if not run.good:
                return Judged(commit, "bad", runs)
        if could_not is not None:
            return Judged(commit, "skip", runs, could_not)
        return Judged(commit, "good", runs)

    def _run(self, request_id: str, result: ReplayResult, reference: bool) -> Run:
        if self.expect is not None:
            response = result.response or {}
            return Run(request_id, result, self.expect.holds(response), self.expect.shown(response))
        behaviour = behaviour_of(result)
        if reference:
            self.reference[request_id] = behaviour
        return Run(request_id, result, behaviour == self.reference[request_id])


def behaviour_of(result: ReplayResult) -> str:
    """How a replay behaved, as comparable text: every divergence from its recording with both sides (a call's
    arguments, what it read, its writes, the error, status and response), so two replays that differ from the
    recording in the same way behaved alike. An error is compared by its code and message, not its details
    (a stack's line numbers change with any edit)."""
    divergences = []
    for divergence in result.divergences:
        shown = divergence.to_json()
        if divergence.kind == "error":
            shown["recorded"] = _no_details(shown["recorded"])
            shown["replayed"] = _no_details(shown["replayed"])
        divergences.append(shown)
    return canonical(divergences)


def _no_details(side: Json) -> Json:
    return {k: v for k, v in side.items() if k != "details"} if isinstance(side, dict) else side
