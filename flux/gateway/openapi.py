"""The OpenAPI document of the data engine's HTTP endpoints (`GET /db/openapi.json`)."""

from __future__ import annotations

from typing import Any

from flux import __version__

_ERROR = {
    "type": "object",
    "required": ["code", "message", "request_id"],
    "properties": {
        "code": {"type": "string", "pattern": "^FX[0-9]{3}$"},
        "message": {"type": "string"},
        "hint": {"type": "string"},
        "request_id": {"type": "string", "format": "uuid"},
        "problems": {
            "type": "array",
            "description": "A refused query's every problem; the error's code is the first one's.",
            "items": {
                "type": "object",
                "required": ["code", "pointer", "message"],
                "properties": {
                    "code": {"type": "string", "pattern": "^FX[0-9]{3}$"},
                    "pointer": {"type": "string", "description": "a JSON pointer into the query"},
                    "message": {"type": "string"},
                    "hint": {"type": "string"},
                },
            },
        },
    },
}
_QUERY = {
    "type": "object",
    "description": "One query of the JSON query language (docs/query-language.md): a select, insert, update "
    "or delete, with columns, where, order, limit, values, set, returning and the like.",
    "properties": {
        "select": {"type": "string"}, "insert": {"type": "string"}, "update": {"type": "string"},
        "delete": {"type": "string"}, "columns": {"type": "array"}, "where": {"type": "object"},
        "order": {}, "limit": {"type": "integer"}, "offset": {"type": "integer"}, "after": {"type": "string"},
        "count": {"type": "string", "enum": ["exact", "planned"]}, "values": {}, "set": {"type": "object"},
        "returning": {"type": "array"}, "all": {"type": "boolean"}, "explain_policies": {"type": "boolean"},
    },
}  # fmt: skip
_SELECT_RESULT = {
    "type": "object",
    "description": "A select answers rows, the next page's cursor and whether there is one (plus count, when "
    "asked); a write answers its count (plus rows, with returning).",
    "properties": {
        "rows": {"type": "array", "items": {"type": "object"}}, "after": {"type": "string", "nullable": True},
        "more": {"type": "boolean"}, "count": {"type": "integer"}, "policies": {"type": "object"},
    },
}  # fmt: skip
_EXPLANATION = {
    "type": "object",
    "required": ["sql", "params", "role", "column_rules", "row_level", "plan"],
    "properties": {
        "sql": {"type": "string"}, "params": {"type": "array"}, "role": {"type": "string"},
        "column_rules": {"type": "array", "items": {"type": "string"}}, "row_level": {"type": "array"},
        "plan": {"type": "array", "items": {"type": "string"}},
    },
}  # fmt: skip


def _operation(summary: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _QUERY}}},
        "responses": {
            "200": {"description": "done", "content": {"application/json": {"schema": result}}},
            "default": {
                "description": "refused: the FX code says why (docs/errors.md)",
                "content": {"application/json": {"schema": _ERROR}},
            },
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Flux data engine", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key or JWT"}
            }
        },
        "paths": {
            "/db/query": {"post": _operation("Run one JSON query as the caller", _SELECT_RESULT)},
            "/db/explain": {"post": _operation("Explain one JSON query without running it", _EXPLANATION)},
        },
    }
