"""Replay: any recorded request run again on chosen code, side effects off, and compared with its recording.

how = Replay(executor, recorded_code(conn), catalog, mode="as-of")
result = replay(conn, recording_of(load_trace(conn, request_id)), how)   # result.verdict: same, diverged, ...
"""

from __future__ import annotations

from flux.replay.code import built_code, deployed_code, recorded_code
from flux.replay.divergence import Divergence
from flux.replay.engine import Replay, ReplayResult, replay
from flux.replay.recording import Recording, recording_of

__all__ = [
    "Divergence",
    "Recording",
    "Replay",
    "ReplayResult",
    "built_code",
    "deployed_code",
    "recorded_code",
    "recording_of",
    "replay",
]
