"""CORS per route: the gateway answers preflights itself and marks the responses of allowed origins."""

from __future__ import annotations

from flux.errors import CorsOriginRefused
from flux.gateway.routes import Route

MAX_AGE_S = 600
_DEFAULT_HEADERS = "authorization, content-type, x-api-key, traceparent"


def allowed(route: Route, origin: str) -> bool:
    return "*" in route.cors_origins or origin in route.cors_origins


def response_headers(route: Route, origin: str | None) -> dict[str, str]:
    """Headers for an actual request: the origin echoed when the route allows it (else none: the browser
    then keeps the response from the page)."""
    if origin is None or not allowed(route, origin):
        return {}
    return {
        "access-control-allow-origin": origin,
        "vary": "origin",
        "access-control-expose-headers": "x-request-id",
    }


def preflight(routes: list[Route], origin: str, requested_headers: str | None) -> dict[str, str]:
    """The answer to an OPTIONS preflight for the routes of one path and the method asked for; FX014 when
    none of them allows the origin."""
    permitted = [route for route in routes if allowed(route, origin)]
    if not permitted:
        raise CorsOriginRefused(
            f"origin {origin} may not call this route", hint="add it to the route's cors list"
        )
    return {
        "access-control-allow-origin": origin,
        "access-control-allow-methods": ", ".join(sorted({route.method for route in permitted})),
        "access-control-allow-headers": requested_headers or _DEFAULT_HEADERS,
        "access-control-max-age": str(MAX_AGE_S),
        "vary": "origin",
    }
