"""Request ids and W3C trace context: every request gets a UUID v4; an incoming `traceparent` is continued."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flux import randomness
from flux.trace.ids import request_span_id

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class Trace:
    """The W3C trace a request belongs to, and the span id Flux gives the request in it."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None

    def traceparent(self) -> str:
        """The header to send on outbound calls, naming this request's span as their parent."""
        return f"00-{self.trace_id}-{self.span_id}-01"


def new_request_id() -> str:
    return randomness.uuid4()


def continue_trace(header: str | None, request_id: str) -> Trace:
    """The incoming `traceparent`'s trace, or a new trace when there is none (or it is not valid: all-zero
    ids and unknown versions are ignored, as the spec says); the request's span id comes from its id."""
    span_id = request_span_id(request_id)
    match = _TRACEPARENT.match(header.strip().lower()) if header else None
    if match and set(match[1]) != {"0"} and set(match[2]) != {"0"}:
        return Trace(match[1], span_id, match[2])
    return Trace(randomness.random_bytes(16).hex(), span_id)
