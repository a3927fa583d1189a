"""What a function returns, as the HTTP response it becomes: `{status, headers, body}` or a JSON body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flux.errors import FluxError, InvalidFunctionResponse

_RESPONSE_KEYS = {"status", "headers", "body"}


@dataclass(frozen=True)
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "headers": self.headers, "body": self.body}


def to_response(value: Any) -> Response:
    """An object with an integer `status` and no keys but status/headers/body is a response; anything else
    is the body of a 200."""
    if not (
        isinstance(value, dict) and isinstance(value.get("status"), int) and value.keys() <= _RESPONSE_KEYS
    ):
        return Response(body=value)
    status, headers = value["status"], value.get("headers") or {}
    if isinstance(status, bool) or not 100 <= status <= 599:
        raise InvalidFunctionResponse(f"the function returned status {status!r}; a status is 100 to 599")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidFunctionResponse("the function returned headers that are not an object of strings")
    return Response(status=status, headers=headers, body=value.get("body"))


def error_response(error: FluxError, request_id: str) -> Response:
    """What a client is told of a failed request: code, message, hint and request id, but not the details,
    which can hold a stack or internals and stay in the request's record."""
    body = {k: v for k, v in error.to_dict(request_id).items() if k != "details" and v is not None}
    return Response(status=error.http_status, body=body)
