"""The ids a request has in its W3C trace, derived from its request id so the gateway (which hands the
`traceparent` on) and the trace export (which names the request's span) agree."""

from __future__ import annotations


def request_span_id(request_id: str) -> str:
    """The request's span id in its W3C trace: the last 8 bytes of its id, so an exported trace
    (`flux trace export`) names the same parent as the `traceparent` its outbound calls carried."""
    return request_id.replace("-", "")[16:].lower()  # as uuid.UUID(request_id).bytes[8:].hex()
