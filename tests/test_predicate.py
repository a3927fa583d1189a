"""`flux bug bisect --expect`: the predicate language reads paths into the replay's response (status, headers
without regard to case, body keys, indexes and `.length`), compares JSON by value, joins with `&&`, `||`,
`!` and parentheses, and refuses what it cannot read with FX512 naming the column; nothing is evaluated as
Python."""

from __future__ import annotations

import pytest

from flux.errors import InvalidExpectation
from flux.replay.predicate import parse

RESPONSE = {
    "status": 200,
    "headers": {"Content-Type": "application/json"},
    "body": {"total": 42, "ratio": 0.5, "ok": True, "items": [{"id": "a1"}, {"id": "b2"}], "none": None,
             "name": "notes", "length": 7},
}  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "status == 200",
        "status != 500 && status < 300",
        "status >= 200 && status <= 299",
        "body.total == 42",
        "body.total == 42.0",
        "body.total > 41.5",
        "body.ratio < 1",
        "body.items.length > 0",
        "body.items.length == 2",
        'body.items[0].id == "a1"',
        'body.items[-1].id == "b2"',
        'body["total"] == 42',
        "body.ok == true",
        "body.ok",
        "!body.none",
        "body.none == null",
        "body.missing == null",
        "body.items[5] == null",
        'headers.content-type == "application/json"',
        'body.name > "alpha"',
        "body.name.length == 5",
        "body.length == 7",
        "body.items == null || true",
        "status == 500 || (body.total == 42 && !(status == 404))",
        "status==200&&body.ok",
    ],
)
def test_what_holds(text: str) -> None:
    assert parse(text).holds(RESPONSE), text


@pytest.mark.parametrize(
    "text",
    [
        "status == 500",
        "status == 200 && body.total == 41",
        "body.ok == 1",  # true is no number
        'body.total == "42"',  # a string is no number
        'body.total > "4"',  # <, > only between two numbers or two strings
        "body.missing > 0",
        "body.items.length == 0",
        "!body.ok",
        "body.none",
        "status == 500 || body.total < 42",
        "false",
    ],
)
def test_what_does_not_hold(text: str) -> None:
    assert not parse(text).holds(RESPONSE), text


def test_it_says_what_it_read() -> None:
    predicate = parse("status == 200 && body.items.length > 0 || status == 201")
    assert [path.text for path in predicate.paths()] == ["status", "body.items.length"]
    assert predicate.shown(RESPONSE) == "status = 200, body.items.length = 2"
    assert parse("body.items[0].id == 1").shown(RESPONSE) == 'body.items[0].id = "a1"'


@pytest.mark.parametrize(
    ("text", "column", "said"),
    [
        ("status = 200", 8, "'=' is not part of the language"),
        ("status ==", 10, "expected a path (status, headers…, body…) or a literal, found the end"),
        ("total == 42", 1, "'total' is not status, headers, body nor a literal"),
        ("(status == 200", 15, "expected ')', found the end"),
        ('body.name == "open', 14, "'\"' is not part of the language"),
        ("body.items[x] == 1", 12, "expected an index or a quoted key inside [ ], found 'x'"),
        ("body. == 1", 7, "expected a name after '.', found '=='"),
        ("status == 200 status", 15, "expected &&, || or the end, found 'status'"),
        ("__import__('os')", 12, '"\'" is not part of the language'),
        ("__import__", 1, "'__import__' is not status, headers, body nor a literal"),
        ("", 1, "expected a path (status, headers…, body…) or a literal, found the end"),
    ],
)
def test_what_it_cannot_read_is_fx512_with_the_column(text: str, column: int, said: str) -> None:
    with pytest.raises(InvalidExpectation) as refused:
        parse(text)
    assert refused.value.code == "FX512"
    assert refused.value.message == f"--expect {text!r}, column {column}: {said}"
    assert refused.value.hint and "status == 200" in refused.value.hint
