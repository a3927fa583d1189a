"""JSON as Flux reads and writes it: a number keeps every digit it was written with.

Postgres's numeric is exact, and a JSON number has no precision limit, but Python's float has 17 significant
digits: `loads` reads numbers with a fraction or an exponent as `Decimal`, and `dumps` writes a `Decimal` back
as the same JSON number, so a numeric(30,10) column crosses Flux unchanged (what a function's language then
makes of the number is up to it). `adapt` sets both on a psycopg connection or cursor, for json and jsonb.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson
from psycopg.abc import AdaptContext
from psycopg.types.json import set_json_dumps, set_json_loads

_DECODER = json.JSONDecoder(parse_float=Decimal)
# Where a number with a fraction or an exponent may be (orjson would read a float), or an integer past 64 bits
# (orjson reads a float for those too). A string holding the same characters only costs the slower decoder.
_NOT_ORJSON = re.compile(r"[0-9](?=[.eE]|[0-9]{18})")  # one branch, from a digit: 3x faster than two
_NOT_ORJSON_BYTES = re.compile(_NOT_ORJSON.pattern.encode())


def loads(text: str | bytes) -> Any:
    """Parse JSON; numbers with a fraction or an exponent become exact `Decimal`s."""
    found = _NOT_ORJSON.search(text) if isinstance(text, str) else _NOT_ORJSON_BYTES.search(text)
    if found is None:  # orjson reads it as the decoder below would, faster
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # what it refuses (NaN, a lone surrogate, text not in UTF-8), the decoder below may read
    if not isinstance(text, str):  # as json.loads reads bytes
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    return _DECODER.decode(text)


MAX_DEPTH = 128
"""How deeply a request body may nest (`[]` is 1 level). orjson writes at most 254 levels, and Flux writes
a body back inside its record (and a function's request): well under that, so what is read can be recorded."""


class TooDeep(ValueError):
    """JSON nested deeper than `loads_bounded` allows."""


def loads_bounded(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """`loads` for JSON from outside (a request body): raises TooDeep past `max_depth` levels of nesting."""
    refused = TooDeep(f"the JSON nests deeper than {max_depth} levels")
    try:
        value = loads(text)
    except RecursionError:  # past orjson's own limit (1024), the decoder above runs out of stack
        raise refused from None
    if isinstance(text, str):
        opening = text.count("[") + text.count("{")
    else:
        opening = text.count(b"[") + text.count(b"{")
    if opening > max_depth and _deeper_than(value, max_depth):  # fewer brackets cannot nest deeper
        raise refused
    return value


_CONTAINERS = (dict, list)


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` (parsed JSON) nests more than `limit` levels (`[]` is 1 level)."""
    return _deeper_than(value, limit)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests more than `limit` levels; level by level (3x faster than a stack of pairs)."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        add = below.append
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, _CONTAINERS):
                    add(child)
        level, depth = below, depth + 1
    return False


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; a `Decimal` is written as the number it is, digit for digit. Integers past 64 bits
    and strings with lone surrogates (both valid in JSON, refused by orjson) are written exactly too."""
    try:
        return orjson.dumps(value, default=_exact_number)
    except TypeError:
        return orjson.dumps(_portable(value), default=_exact_number)


def _portable(value: Any) -> Any:
    """`value` with what orjson refuses turned into ready-made JSON fragments."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value))
    if isinstance(value, str) and not _is_utf8(value):
        return orjson.Fragment(json.dumps(value))  # escapes each lone surrogate as \udXXX
    if isinstance(value, dict):
        return {valid_text(str(k)): _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (for a JSON key, which cannot be a fragment, or for
    storage that refuses them)."""
    return text if _is_utf8(text) else text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def dumps_text(value: Any) -> str:
    return dumps(value).decode()


def display(value: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON for people, as `json.dumps(value, ensure_ascii=False)` writes it, but with each `Decimal` written
    digit for digit and without an exponent, as Postgres prints a numeric (`12.50`, never `12.5`); anything
    else that is not JSON (a datetime, a UUID) is its text, quoted."""
    return _display(value, indent, sort_keys, 0)


def _display(value: Any, indent: int | None, sort_keys: bool, depth: int) -> str:
    if isinstance(value, Decimal) and value.is_finite():
        return f"{value:f}"
    if isinstance(value, dict) and value:
        pairs = sorted(value.items(), key=lambda pair: str(pair[0])) if sort_keys else value.items()
        items = [
            f"{json.dumps(str(key), ensure_ascii=False)}: {_display(item, indent, sort_keys, depth + 1)}"
            for key, item in pairs
        ]
        return _joined("{", items, "}", indent, depth)
    if isinstance(value, (list, tuple)) and value:
        return _joined(
            "[", [_display(item, indent, sort_keys, depth + 1) for item in value], "]", indent, depth
        )
    return json.dumps(value, ensure_ascii=False, default=str)


def _joined(opening: str, items: list[str], closing: str, indent: int | None, depth: int) -> str:
    if indent is None:
        return opening + ", ".join(items) + closing
    inner, outer = "\n" + " " * indent * (depth + 1), "\n" + " " * indent * depth
    return opening + inner + ("," + inner).join(items) + outer + closing


def _exact_number(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))  # str() of a finite Decimal is valid JSON number syntax
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON")


def adapt(context: AdaptContext) -> None:
    """Read and write json/jsonb on `context` (a connection or cursor) with `loads` and `dumps`."""
    set_json_loads(loads, context)
    set_json_dumps(dumps, context)
