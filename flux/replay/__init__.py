"""Replay: any recorded request run again on chosen code, side effects off, and compared with its recording.

how = Replay(executor, recorded_code(conn), catalog, mode="as-of")
result = replay(conn, recording_of(load_trace(conn, request_id)), how)   # result.verdict: same, diverged, ...
with grants_ahead(conn): ...   # replays back to back: each writes the next one's grant with its record
"""

from __future__ import annotations

from flux.replay.code import built_code, deployed_code, recorded_code
from flux.replay.divergence import Divergence
from flux.replay.engine import Replay, ReplayResult, replay
from flux.replay.recording import Recording, recording_of
from flux.replay.requests import MODES, STORED_CODE, Replayed, check_options, replay_request, stored_code
from flux.replay.state import grants_ahead

__all__ = [
    "MODES",
    "STORED_CODE",
    "Divergence",
    "Recording",
    "Replay",
    "ReplayResult",
    "Replayed",
    "built_code",
    "check_options",
    "deployed_code",
    "grants_ahead",
    "recorded_code",
    "recording_of",
    "replay",
    "replay_request",
    "stored_code",
]
