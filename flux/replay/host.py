"""The host a replayed run calls: each call is matched to the recorded call of the same operation and
number (the 2nd `db.query` to the 2nd `db.query`), its arguments compared, and answered by mode: time,
randomness, fetches and queue pushes from the recording (a push is never enqueued, a fetch goes out only with
`live_fetch`); secrets with today's value (compared in the redacted form the record keeps); database calls
from the recording (`recorded`) or run for real in the replay's rolled-back transaction (`live`, `as-of`),
with the recorded generated values pinned to the rows they write again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from flux import db, jsontext
from flux.errors import FluxError, NotInRecording, error_for_code
from flux.replay.divergence import Divergence, changes_between
from flux.replay.recording import RecordedCall, Recording
from flux.runtime.host import Host, recorded_input
from flux.trace.diff import Change, canonical
from flux.trace.recorder import storable

Json = Any
Mode = Literal["recorded", "live", "as-of"]
_DATABASE_OPS = ("db.query", "db.sql")


@dataclass
class ReplayHost(Host):
    """A Host whose calls are matched to `recording` (see the module's docstring)."""

    recording: Recording | None = None
    mode: Mode = "recorded"
    live_fetch: bool = False
    divergences: list[Divergence] = field(default_factory=list)
    matched: dict[int, str] = field(default_factory=dict)  # replay span seq -> recorded call key
    cut_off: FluxError | None = None  # the recorded time limit, met where the original met it (`_unrecorded`)
    # Sets the replay's database up (live, as-of; `set_up`), and what stopped it
    setup: Callable[[], None] | None = None
    setup_error: FluxError | None = None
    _counts: dict[str, int] = field(default_factory=dict)
    _clock_ms: Json = None

    def run_started(self) -> None:
        """The run starts in its own process: the database is set up meanwhile."""
        self.set_up()

    def set_up(self) -> None:
        """Set the replay's database up (`setup`), once: when the run has started in a process of its own,
        else before it starts, and at the latest before its first database call. What stops it is kept
        (`setup_error`): the run's calls from then on fail with it, and the replay could not run."""
        setup, self.setup = self.setup, None
        if setup is None:
            return
        try:
            setup()
        except FluxError as exc:
            self.setup_error = exc
        except Exception as exc:  # a bug in Flux: FX900, as the engine reports any
            self.setup_error = db.as_flux_error(exc)

    def perform(self, op: str, args: Json) -> Json:
        assert self.recording is not None
        if self.cut_off is not None:  # the run is over, as the original's was: whatever it calls now fails
            raise self.cut_off
        if op in _DATABASE_OPS and self.mode != "recorded":
            self.set_up()
        if self.setup_error is not None:  # the replay could not run: nothing more goes out (a live fetch)
            raise self.setup_error
        number = self._counts[op] = self._counts.get(op, -1) + 1
        key = f"{op}#{number}"
        recorded = self.recording.by_key.get(key)
        seq = self.recorder.current
        assert seq is not None  # Host.call opened the call's span
        if recorded is None:
            return self._unrecorded(op, args, key, seq)
        self.matched[seq] = key
        self._clock_ms = recorded.clock_ms
        given = self.as_recorded(recorded_input(op, args))
        same_args = not changes_between("args", recorded.args, given)
        if not same_args:
            self._diverged(Divergence.of_call(recorded, seq, "args", recorded.args, given))
        if op in _DATABASE_OPS and self.mode != "recorded":
            return self._database(op, args, recorded, seq, same_args)
        if op in ("secrets.get", "log"):
            return super().perform(op, args)
        if same_args:
            if recorded.aborted:  # the run ends with it, however the function handles it, as the original did
                self.aborted = _recorded_error(recorded)
                raise self.aborted
            return _answer(recorded)
        if op in ("now", "random") or (op == "fetch" and self.live_fetch):
            return super().perform(op, args)
        raise NotInRecording(
            f"{op} with these arguments is not in the recording (it has other arguments at {key})",
            hint="the replay reports it as a divergence; --live-fetch sends fetches"
            if op == "fetch"
            else None,
        )

    def now(self, args: Json) -> Json:
        """The clock after the latest call, as the recording kept it (Deno reads it after each call)."""
        return self._clock_ms if self._clock_ms is not None else super().now(args)

    def _database(self, op: str, args: Json, recorded: RecordedCall, seq: int, same_args: bool) -> Json:
        """Run a database call for real; the rows it writes get their pins: every recorded value with the
        recorded arguments, and with others (a query that sets other values) those of the columns it does
        not set, so that a changed value shows as itself, not as a new id and a new timestamp too."""
        kept = None if same_args or op != "db.query" else columns_set(args)
        self.transaction.mark("flux.replay_call", recorded.key if same_args or kept else "")
        self.transaction.mark("flux.replay_keep", jsontext.dumps_text(kept) if kept else "")
        try:
            value = super().perform(op, args)
        except FluxError as exc:
            if recorded.ok or (recorded.error or {}).get("code") != exc.code:
                replayed = {"code": exc.code, "message": exc.message}
                self._diverged(
                    Divergence.of_call(recorded, seq, "error", recorded.error, replayed, state=same_args)
                )
            raise
        if not recorded.ok:
            self._diverged(Divergence.of_call(recorded, seq, "error", recorded.error, None, state=same_args))
            return value
        if not same_args:
            return value
        replayed = self.as_recorded(value)
        changes = changes_between("result", recorded.value, replayed)
        if not changes:
            return value
        if _same_rows_reordered(recorded.value, replayed):
            return recorded.value  # rows in no stated order: the recorded order is as good, and pins it
        state = not self._reads_itself(recorded, changes)
        self._diverged(
            Divergence.of_call(
                recorded, seq, "result", recorded.value, replayed, state=state, changes=changes
            )
        )
        return value

    def _reads_itself(self, recorded: RecordedCall, changes: list[Change]) -> bool:
        """Whether a read that differs (`changes`) holds the replay's own id or this call's key
        (`flux.request_id`, `flux.replay_call`): the code looked at the replay itself, which is no change in
        the data."""
        own = (self.recorder.request_id, recorded.key)
        return any(isinstance(change.b, str) and any(mark in change.b for mark in own) for change in changes)

    def _unrecorded(self, op: str, args: Json, key: str, seq: int) -> Json:
        """A call past the recording's: a divergence, unless the recording was cut off by its time limit
        there (then the replay is cut off at the same point)."""
        assert self.recording is not None
        if self.recording.timed_out and not self.divergences and self._all_recorded_calls_made():
            # The run ends here with the recorded error, however the function handles this call's failure
            # (the engine ends it so): the original was cut off by the clock, not by its own choice.
            error = self.recording.request["error"]
            self.cut_off = error_for_code(error["code"], error["message"])
            raise self.cut_off
        self._diverged(
            Divergence.added_call(
                key, seq, self.recorder.spans[seq].name, self.as_recorded(recorded_input(op, args))
            )
        )
        if op in ("now", "random", "secrets.get", "log") or (op == "fetch" and self.live_fetch):
            return super().perform(op, args)
        if op in _DATABASE_OPS and self.mode != "recorded":
            self.transaction.mark("flux.replay_call", "")
            return super().perform(op, args)
        raise NotInRecording(
            f"the recording has no {key}: its run made fewer {op} calls",
            hint="the replay reports it as a divergence",
        )

    def as_recorded(self, value: Json) -> Json:
        """`value` as the record would keep it, to compare with the recording: with the secrets read replaced
        by `[secret:NAME]`, and text jsonb cannot hold escaped."""
        return storable(self.recorder.scrub(value))

    def _all_recorded_calls_made(self) -> bool:
        assert self.recording is not None
        return len(self.matched) == len(self.recording.calls)

    def _diverged(self, divergence: Divergence) -> None:
        self.divergences.append(divergence)


def columns_set(args: Json) -> list[str] | None:
    """The columns a JSON insert or update sets (None for anything else: raw SQL, a delete)."""
    if not isinstance(args, dict):
        return None
    rows = args.get("values") if "insert" in args else [args.get("set")] if "update" in args else None
    rows = [rows] if isinstance(rows, dict) else rows
    if not isinstance(rows, list):
        return None
    return sorted({str(column) for row in rows if isinstance(row, dict) for column in row})


def _same_rows_reordered(recorded: Json, replayed: Json) -> bool:
    """Whether two query results hold the same rows, in another order (a query without `order` gets them in
    the order they lie on disk, which a rewind changes; a query with one gets the same order)."""
    if not (isinstance(recorded, dict) and isinstance(replayed, dict)):
        return False
    rows_a, rows_b = recorded.get("rows"), replayed.get("rows")
    if not (isinstance(rows_a, list) and isinstance(rows_b, list)) or len(rows_a) != len(rows_b):
        return False
    rest = not changes_between("", {**recorded, "rows": None}, {**replayed, "rows": None})
    return rest and sorted(map(canonical, rows_a)) == sorted(map(canonical, rows_b))


def _answer(recorded: RecordedCall) -> Json:
    """The recorded call's answer: its value, or its error raised again."""
    if recorded.ok:
        return recorded.value
    raise _recorded_error(recorded)


def _recorded_error(recorded: RecordedCall) -> FluxError:
    error = recorded.error or {}
    return error_for_code(
        str(error.get("code", "FX900")),
        str(error.get("message", "")),
        details=error.get("details"),
        hint=error.get("hint"),
    )
