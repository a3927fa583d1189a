"""Replaying recorded requests by id, as `flux incident replay` and the management API ask for it: the options
checked once (FX508), the code a name picks (`recorded`, `active`, or deployment N's), and a request that
cannot be replayed (it ran no code of its own, or is itself a replay) answered as a result whose verdict is
`error`, like one whose code is gone, rather than as an exception."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from flux.errors import InvalidReplayOption, NotReplayable
from flux.replay.code import deployed_code, recorded_code
from flux.replay.engine import CodeFor, Replay, ReplayResult, replay
from flux.replay.recording import Recording, recording_of
from flux.runtime.invoke import Function
from flux.runtime.secrets import SealedSecrets
from flux.trace.recorder import error_record
from flux.trace.tree import load_trace, resolve_request_id

Row = dict[str, Any]
MODES = ("recorded", "live", "as-of")
STORED_CODE = ("recorded", "active")  # the code the database holds; anything else is built where it is
# A whole request id, which needs no look-up of the request it is a prefix of.
_WHOLE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def check_options(mode: str, code: str, version: int | None) -> None:
    """FX508 unless `mode` is a database mode and `version` goes with `code` (deployment N's code is that
    deployment's, so it goes only with `active`, the default)."""
    if mode not in MODES:
        raise InvalidReplayOption(f"--db {mode!r} is not a database mode", hint=f"one of {', '.join(MODES)}")
    if version is not None and not 1 <= version < 2**63:
        raise InvalidReplayOption(
            f"--version {version} is no deployment's number", hint="flux deployments ls"
        )
    if version is not None and code != "active":
        raise InvalidReplayOption(
            f"--version {version} picks a deployment's code, and --code {code} other code",
            hint="give one of them",
        )


def stored_code(conn: Any, code: str, version: int | None = None) -> CodeFor:
    """The code named `recorded` (what served each request) or `active` (the active deployment's, or
    deployment `version`'s)."""
    if code == "recorded":
        return _kept(recorded_code(conn), lambda r: (r.request.get("deployment_id"), r.request["function"],
                                                     r.request["code_sha"]))  # fmt: skip
    if code == "active":
        return _kept(deployed_code(conn, version), lambda r: r.request["function"])
    raise InvalidReplayOption(
        f"--code {code!r} is not code the database holds", hint="give --code recorded or --code active"
    )


def _kept(code_for: CodeFor, key: Callable[[Recording], Hashable]) -> CodeFor:
    """`code_for`, looked up once per `key` (a window of a thousand requests of one function reads its code
    once); what could not be found is looked up again."""
    found: dict[Hashable, Function] = {}

    def kept(recording: Recording) -> Function:
        if recording.builtin:
            return code_for(recording)
        at = key(recording)
        if at not in found:
            found[at] = code_for(recording)
        return found[at]

    return kept


@dataclass(frozen=True)
class Replayed:
    request: Row  # the original's row
    result: ReplayResult


def replay_request(conn: Any, given: str, how: Replay, runs_on: Any = None) -> Replayed:
    """Replay the request `given` names (its id, or a prefix only it has; FX503 otherwise) as `how` says, on
    the owner's connection `conn` and, in live and as-of mode, the request connection `runs_on`. With
    secrets decrypted as they are read (`SealedSecrets`), a key that cannot decrypt one makes the verdict
    `error`: the replay could not run as the request did, whatever its code."""
    request_id = given if _WHOLE_ID.match(given) else resolve_request_id(conn, given)
    try:
        trace = load_trace(conn, request_id, with_jobs=False)
    except RecursionError:  # JSON in its record nests past what can be read (no record Flux writes does)
        error = NotReplayable(
            f"request {request_id}'s record was not written by Flux: its JSON nests too deeply to read",
            hint="restore the record, or replay another request",
        )
        return Replayed(
            {"id": request_id}, ReplayResult(request_id, None, "error", error=error_record(error))
        )
    try:
        recording = recording_of(trace)
    except NotReplayable as exc:
        result = ReplayResult(str(trace.request["id"]), None, "error", error=error_record(exc))
        return Replayed(trace.request, result)
    sealed = how.secrets if isinstance(how.secrets, SealedSecrets) else None
    if sealed is not None:
        sealed.failure = None
    result = replay(conn, recording, how, runs_on)
    if not how.record:  # its id names no record
        result.replay_id = None
    if sealed is not None and sealed.failure is not None:
        result.verdict, result.error = "error", error_record(sealed.failure)
    return Replayed(trace.request, result)
