"""What a replay found different from its recording: each divergence with its kind, where it happened, both
sides (recorded → replayed) and the paths at which they differ; ordered as the run met them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from flux import jsontext
from flux.replay.recording import MAX_DEPTH, RecordedCall
from flux.trace.diff import Change, compare

Json = Any
Kind = Literal["output", "status", "call", "span", "mutation", "error"]
END = 1 << 30  # the order of what is compared once the run ended: after every call


def changes_between(path: str, recorded: Json, replayed: Json) -> list[Change]:
    """Every leaf at which `replayed` differs from `recorded` (key order and number spelling aside)."""
    return compare(path, recorded, replayed)


@dataclass(frozen=True)
class Divergence:
    kind: Kind
    at: str  # `db.query#1 db:select(notes)`, `response.body`, `public.notes {"id": 5}`
    recorded: Json
    replayed: Json
    message: str
    changes: list[Change] = field(default_factory=list)
    order: int = END  # the replay's span seq where it happened (END for the outcome)
    state: bool = False  # a difference in data read with the same arguments: the data changed, not the code

    @classmethod
    def of_call(
        cls,
        call: RecordedCall,
        seq: int,
        what: str,
        recorded: Json,
        replayed: Json,
        *,
        state: bool = False,
        changes: list[Change] | None = None,
    ) -> Divergence:
        """Call `call` (matched to the replay's span `seq`) differs in `what`: args, result or error (with
        its `changes`, when the caller has them already)."""
        where = f"{call.key} {call.name}"
        changes = changes_between(what, recorded, replayed) if changes is None else changes
        shown = ", ".join(change.path for change in changes[:3]) or what
        verb = {
            "args": "was called with other arguments",
            "result": "read other data",
            "error": "ended otherwise",
        }[what]
        return cls("call", where, recorded, replayed, f"{where} {verb} ({shown})", changes, seq, state)

    @classmethod
    def added_call(cls, key: str, seq: int, name: str, args: Json) -> Divergence:
        return cls(
            "span",
            f"{key} {name}",
            None,
            args,
            f"{key} {name} is new: the recording has no such call",
            order=seq,
        )

    @classmethod
    def missing_call(cls, call: RecordedCall) -> Divergence:
        return cls(
            "span",
            f"{call.key} {call.name}",
            call.args,
            None,
            f"{call.key} {call.name} was not made: the recording has it",
            order=END - 1,
        )

    def to_json(self) -> dict[str, Json]:
        return {
            "kind": self.kind,
            "at": self.at,
            "recorded": _shown(self.recorded),
            "replayed": _shown(self.replayed),
            "message": self.message,
            "state": self.state,
            "changes": [
                {"path": c.path, "recorded": _shown(c.a), "replayed": _shown(c.b)} for c in self.changes
            ],
        }


def _shown(value: Json) -> Json:
    """`value` as the report shows it: one that nests deeper than a recording may (a replayed function can
    answer anything) is named rather than shown, so that the report, which holds it a few levels down, can
    be written as JSON (orjson writes at most 254 levels)."""
    if isinstance(value, (dict, list)) and jsontext.nests_deeper_than(value, MAX_DEPTH):
        return f"[JSON nested deeper than {MAX_DEPTH} levels]"
    return value
