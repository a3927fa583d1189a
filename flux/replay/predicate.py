"""`flux bug bisect --expect`: a predicate on a replay's response (`status == 200 && body.items.length > 0`),
read by a small tokenizer and a recursive-descent parser into a tree that is evaluated by walking it; nothing
is ever handed to `eval`. What does not parse is FX512, with the column where reading stopped."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flux.errors import InvalidExpectation

Json = Any
ROOTS = ("status", "headers", "body")  # what a path starts with: the response's parts
COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
_EXAMPLES = 'e.g. status == 200, body.total >= 42, body.items.length > 0, body.items[0].id == "a1"'
# One token: a number, a string (JSON's escapes), an operator or punctuation, or a name. A name may hold `-`
# (`headers.content-type`): the language has no arithmetic, so a minus is never an operator.
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<string>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")
    | (?P<operator>==|!=|<=|>=|&&|\|\||[<>!()\[\].])
    | (?P<name>[A-Za-z_$][\w$-]*)
    )""",
    re.VERBOSE,
)
_LITERALS: dict[str, Json] = {"true": True, "false": False, "null": None}
_BLANK_TO_END = re.compile(r"\s*\Z")
SHOWN_CHARACTERS = 200  # a longer --expect is not repeated in its error, only its length and the column
MAX_NESTING = (
    100  # `(` and `!` inside each other: deeper is no predicate a person writes, and would exhaust the stack
)


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, operator, name, end
    text: str
    column: int  # 1-based, for the message


@dataclass(frozen=True)
class Path:
    """`body.items[0].id`: the root, then keys and indexes."""

    root: str
    steps: tuple[str | int, ...]
    text: str

    def value(self, response: Mapping[str, Json]) -> Json:
        """The value at this path, or None where there is none. `.length` is a list's or string's length
        (or an object's key `length`, when it has one); headers are matched without regard to case."""
        found: Json = response.get(self.root)
        if self.root == "headers" and isinstance(found, Mapping):
            found = {str(name).lower(): value for name, value in found.items()}
        for number, step in enumerate(self.steps):
            if self.root == "headers" and number == 0 and isinstance(step, str):
                step = step.lower()
            if isinstance(found, Mapping) and isinstance(step, str) and step in found:
                found = found[step]
            elif step == "length" and isinstance(found, (list, str, Mapping)):
                found = len(found)
            elif isinstance(found, list) and isinstance(step, int) and -len(found) <= step < len(found):
                found = found[step]
            else:
                return None
        return found


@dataclass(frozen=True)
class Literal:
    value: Json


@dataclass(frozen=True)
class Compare:
    left: Path | Literal
    operator: str
    right: Path | Literal


@dataclass(frozen=True)
class Truthy:
    """A path or literal on its own: true unless null, false, 0, "" or empty."""

    operand: Path | Literal


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class Both:
    """`a && b && …`: one node for the whole chain, so that a long one is walked without recursion."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Either:
    """`a || b || …`, as Both."""

    parts: tuple[Node, ...]


Node = Compare | Truthy | Not | Both | Either


@dataclass(frozen=True)
class Predicate:
    """A parsed `--expect`: `holds(response)` on a response `{status, headers, body}`."""

    text: str
    tree: Node

    def holds(self, response: Mapping[str, Json]) -> bool:
        return _evaluate(self.tree, response)

    def paths(self) -> list[Path]:
        """Every path the predicate reads, once each, in the order written."""
        found: dict[str, Path] = {}
        _collect(self.tree, found)
        return list(found.values())

    def shown(self, response: Mapping[str, Json]) -> str:
        """What the predicate read: `status = 500, body.total = 41`."""
        return ", ".join(f"{path.text} = {_json(path.value(response))}" for path in self.paths())


def parse(text: str) -> Predicate:
    """`text` as a Predicate; FX512 naming the column where it stops making sense."""
    parser = _Parser(text, _tokens(text))
    tree = parser.disjunction()
    parser.expect_end()
    return Predicate(text, tree)


def _tokens(text: str) -> list[_Token]:
    tokens, position = [], 0
    while not _BLANK_TO_END.match(text, position):  # not `text[position:].strip()`: that is quadratic
        found = _TOKEN.match(text, position)
        if found is None or found.lastgroup is None:
            column = len(text) - len(text[position:].lstrip()) + 1
            raise _error(text, column, f"{text[column - 1]!r} is not part of the language")
        kind = found.lastgroup
        tokens.append(_Token(kind, found.group(kind), found.start(kind) + 1))
        position = found.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    """disjunction := conjunction ('||' conjunction)*;  conjunction := unary ('&&' unary)*;
    unary := '!' unary | '(' disjunction ')' | operand (COMPARISON operand)?;
    operand := literal | path;  path := ROOT ('.' name | '[' (number | string) ']')*."""

    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text, self.tokens, self.at, self.depth = text, tokens, 0, 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.at]

    def take(self, text: str) -> bool:
        if self.token.kind == "operator" and self.token.text == text:
            self.at += 1
            return True
        return False

    def fail(self, wanted: str) -> InvalidExpectation:
        token = self.token
        found = "the end" if token.kind == "end" else repr(token.text)
        return _error(self.text, token.column, f"expected {wanted}, found {found}")

    def expect_end(self) -> None:
        if self.token.kind != "end":
            raise self.fail("&&, || or the end")

    def disjunction(self) -> Node:
        parts = [self.conjunction()]
        while self.take("||"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Either(tuple(parts))

    def conjunction(self) -> Node:
        parts = [self.unary()]
        while self.take("&&"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else Both(tuple(parts))

    def unary(self) -> Node:
        if self.token.kind == "operator" and self.token.text in ("!", "("):
            if self.depth >= MAX_NESTING:
                raise _error(self.text, self.token.column, f"nests deeper than {MAX_NESTING} levels")
            self.depth += 1
            try:
                return self.inner()
            finally:
                self.depth -= 1
        return self.comparison()

    def inner(self) -> Node:
        if self.take("!"):
            return Not(self.unary())
        self.take("(")
        node = self.disjunction()
        if not self.take(")"):
            raise self.fail("')'")
        return node

    def comparison(self) -> Node:
        left = self.operand()
        if self.token.kind == "operator" and self.token.text in COMPARISONS:
            operator = self.token.text
            self.at += 1
            return Compare(left, operator, self.operand())
        return Truthy(left)

    def operand(self) -> Path | Literal:
        token = self.token
        if token.kind == "number":
            self.at += 1
            return Literal(_number(self.text, token))
        if token.kind == "string":
            self.at += 1
            return Literal(json.loads(token.text))
        if token.kind == "name" and token.text in _LITERALS:
            self.at += 1
            return Literal(_LITERALS[token.text])
        if token.kind == "name":
            if token.text not in ROOTS:
                raise _error(
                    self.text, token.column, f"{token.text!r} is not {', '.join(ROOTS)} nor a literal"
                )
            self.at += 1
            return self.path(token)
        raise self.fail("a path (status, headers…, body…) or a literal")

    def path(self, root: _Token) -> Path:
        steps: list[str | int] = []
        end = root.column - 1 + len(root.text)
        while True:
            if self.take("."):
                if self.token.kind != "name":
                    raise self.fail("a name after '.'")
                steps.append(self.token.text)
            elif self.take("["):
                token = self.token
                if token.kind == "number" and re.fullmatch(r"-?\d+", token.text):
                    steps.append(_number(self.text, token))
                elif token.kind == "string":
                    steps.append(json.loads(token.text))
                else:
                    raise self.fail("an index or a quoted key inside [ ]")
                self.at += 1
                if self.token.kind != "operator" or self.token.text != "]":
                    raise self.fail("']'")
            else:
                return Path(root.text, tuple(steps), self.text[root.column - 1 : end])
            end = self.token.column - 1 + len(self.token.text)
            self.at += 1


def _number(text: str, token: _Token) -> Json:
    """A number token's value; one too long for Python to read as a number (over 4300 digits) is FX512."""
    try:
        return json.loads(token.text)
    except ValueError:
        raise _error(text, token.column, f"the number has {len(token.text)} characters: too long") from None


def _evaluate(node: Node, response: Mapping[str, Json]) -> bool:
    if isinstance(node, Either):
        return any(_evaluate(part, response) for part in node.parts)
    if isinstance(node, Both):
        return all(_evaluate(part, response) for part in node.parts)
    if isinstance(node, Not):
        return not _evaluate(node.operand, response)
    if isinstance(node, Truthy):
        value = _value(node.operand, response)
        return value is not None and value is not False and value != 0 and value not in ("", [], {})
    return _compared(_value(node.left, response), node.operator, _value(node.right, response))


def _value(operand: Path | Literal, response: Mapping[str, Json]) -> Json:
    return operand.value if isinstance(operand, Literal) else operand.value(response)


def _compared(left: Json, operator: str, right: Json) -> bool:
    """== and != compare JSON by value (1 == 1.0; true is no number); <, <=, >, >= hold only between two
    numbers or two strings."""
    if operator in ("==", "!="):
        return _same(left, right) == (operator == "==")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
    if not numbers and not (isinstance(left, str) and isinstance(right, str)):
        return False
    if operator == "<":
        return bool(left < right)
    if operator == "<=":
        return bool(left <= right)
    if operator == ">":
        return bool(left > right)
    return bool(left >= right)


def _same(left: Json, right: Json) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_same(left[key], right[key]) for key in left)
    return type(left) is type(right) and bool(left == right)


def _collect(node: Node, found: dict[str, Path]) -> None:
    if isinstance(node, (Either, Both)):
        for part in node.parts:
            _collect(part, found)
    elif isinstance(node, Not):
        _collect(node.operand, found)
    else:
        operands = (node.left, node.right) if isinstance(node, Compare) else (node.operand,)
        for operand in operands:
            if isinstance(operand, Path):
                found.setdefault(operand.text, operand)


def _json(value: Json) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _error(text: str, column: int, what: str) -> InvalidExpectation:
    shown = repr(text) if len(text) <= SHOWN_CHARACTERS else f"({len(text)} characters)"
    return InvalidExpectation(f"--expect {shown}, column {column}: {what}", hint=_EXAMPLES)
