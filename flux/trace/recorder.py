"""The record of one request: its spans, buffered in memory in execution order, then written with the request
row in one statement at the end of the request's transaction (never a round trip per span), which a second
statement announces to whoever follows new requests.

Secret values a function read are replaced by `[secret:<name>]` everywhere in the record before it is written:
the value in any letter case, its URL, hex, base64 and base64url encodings (also as part of an encoded longer
text, such as `user:secret` in a basic `authorization`), and any run of 8 or more of their characters (a
truncated key in a log line).
"""

from __future__ import annotations

import base64
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flux import db, jsontext, randomness
from flux.errors import FluxError, InvalidFunctionResponse
from flux.pipeline import Statement

Json = Any

# One statement for request rows and all their spans, and their announcement to followers
# (flux.announce_requests: a statement trigger did that before, at the cost of keeping every inserted row in a
# transition table; a statement of its own after this one cost a record about 20 µs more of Postgres,
# bench/request_cost.py). Postgres runs each data-modifying WITH to its end, read or not; a follower reads the
# ids announced once the transaction commits. Each set of rows is bound as one JSON array, each row an array
# of its values by position (Postgres parses no keys: a tenth of its work on a record when they were
# objects). It is prepared once per connection, and no value is ever in its text. `started_us` (µs since the
# epoch) becomes `started_at`. A value that is never null is cast from jsonb directly, with no text between.
# Every type is named with its schema: a request may leave a type named `uuid` in pg_temp, found first.
# No RETURNING: the role that writes records (flux_authenticator) may insert them but not read them back.
_REQUEST_COLUMNS = (
    "id", "tenant_id", "kind", "method", "path", "route_id", "function", "deployment_id", "code_sha",
    "status", "ok", "started_us", "duration_us", "input", "output", "error", "trace_id", "parent_request_id",
    "replay_of",
)  # fmt: skip
_WRITE_RECORDS = b"""
WITH request AS (
    INSERT INTO flux.requests (id, tenant_id, kind, method, path, route_id, function, deployment_id, code_sha,
                               status, ok, started_at, duration_us, input, output, error, trace_id,
                               parent_request_id, replay_of)
    SELECT (r->>0)::pg_catalog.uuid, (r->>1)::pg_catalog.uuid, r->>2, r->>3, r->>4, (r->>5)::pg_catalog.int8,
           r->>6, (r->>7)::pg_catalog.int8, r->>8, (r->>9)::pg_catalog.int4, (r->10)::pg_catalog.bool,
           'epoch'::pg_catalog.timestamptz + (r->11)::pg_catalog.int8 * '1 microsecond'::pg_catalog.interval,
           (r->>12)::pg_catalog.int8, NULLIF(r->13, 'null'), NULLIF(r->14, 'null'), NULLIF(r->15, 'null'),
           r->>16, (r->>17)::pg_catalog.uuid, (r->>18)::pg_catalog.uuid
      FROM pg_catalog.jsonb_array_elements($1::pg_catalog.jsonb) AS r
), span AS (
    INSERT INTO flux.spans (request_id, seq, span_id, parent_seq, tenant_id, module, name, started_at,
                            duration_us, ok, attributes, input, output, error)
    SELECT (s->>0)::pg_catalog.uuid, (s->1)::pg_catalog.int4, s->>2, (s->>3)::pg_catalog.int4,
           (s->>4)::pg_catalog.uuid, s->>5, s->>6,
           'epoch'::pg_catalog.timestamptz + (s->7)::pg_catalog.int8 * '1 microsecond'::pg_catalog.interval,
           (s->>8)::pg_catalog.int8, (s->9)::pg_catalog.bool,
           NULLIF(s->10, 'null'), NULLIF(s->11, 'null'), NULLIF(s->12, 'null'), NULLIF(s->13, 'null')
      FROM pg_catalog.jsonb_array_elements($2::pg_catalog.jsonb) AS s
)
SELECT flux.announce_requests($3::pg_catalog.uuid[])
"""
# What a request row's text may hold that a secret could be in (its ids, codes and numbers are Flux's own).
_SCRUBBED_COLUMNS = ("method", "path", "function", "input", "output", "error")


@dataclass(frozen=True)
class Record:
    """One request's record, ready to write: its row (the columns of flux.requests) and its spans, with every
    secret it read already replaced; `then`, a statement to run in the same transaction if it can (a queue
    worker marks its job done there)."""

    request: dict[str, Json]
    spans: list[list[Json]]  # each span's values in the order of flux.spans' columns in _WRITE_RECORDS
    then: Statement | None = None


def records_statements(records: list[Record]) -> list[Statement]:
    """The statement that inserts every request row and span of `records` and announces their ids to whoever
    follows new requests (`flux tail`); it runs as the connecting role, not the request's."""
    requests = [[record.request.get(name) for name in _REQUEST_COLUMNS] for record in records]
    spans = [span for record in records for span in record.spans]
    ids = [record.request["id"] for record in records]
    return [Statement(_WRITE_RECORDS, [_jsonb_text(requests), _jsonb_text(spans), ids])]


@dataclass(slots=True)
class Span:
    """One step of a request. `output` and `error` are set while the step runs."""

    seq: int
    span_id: str
    parent_seq: int | None
    module: str
    name: str
    started_us: int
    input: Json = None
    output: Json = None
    error: Json = None
    attributes: Json = None
    duration_us: int | None = None
    ok: bool = True
    clock_ns: int = 0  # the monotonic clock at the start, for the duration


def error_record(exc: BaseException) -> dict[str, Json]:
    """An error as a record keeps it: the FX code and message (with details), or the exception's type."""
    if isinstance(exc, FluxError):
        return {k: v for k, v in exc.to_dict().items() if k != "request_id" and v is not None}
    return {"code": "FX900", "message": f"{type(exc).__name__}: {exc}"}


@dataclass
class Recorder:
    """Collects one request's spans; `write` stores them with the request row."""

    request_id: str
    tenant_id: str | None = None
    spans: list[Span] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # value -> name, for redaction
    _open: list[int] = field(default_factory=list)  # seqs of the spans running now, innermost last
    _redactor: Redactor | None = None  # built from `secrets` when first needed

    def start(self, module: str, name: str, input: Json = None, attributes: Json = None) -> Span:
        """Open a span as a child of the innermost open span; close it with `finish`."""
        span = Span(
            seq=len(self.spans),
            span_id=randomness.random_bytes(8).hex(),
            parent_seq=self.current,
            module=module,
            name=name,
            started_us=time.time_ns() // 1000,
            input=input,
            attributes=attributes,
            clock_ns=time.perf_counter_ns(),
        )
        self.spans.append(span)
        self._open.append(span.seq)
        return span

    @property
    def current(self) -> int | None:
        """The seq of the innermost span running now."""
        return self._open[-1] if self._open else None

    def finish(self, span: Span, *, output: Json = None, error: BaseException | Json | None = None) -> None:
        span.duration_us = (time.perf_counter_ns() - span.clock_ns) // 1000
        if error is not None:
            span.ok = False
            span.error = error_record(error) if isinstance(error, BaseException) else error
        else:
            span.output = output
        if self._open and self._open[-1] == span.seq:
            self._open.pop()
        elif span.seq in self._open:
            self._open.remove(span.seq)

    @contextmanager
    def span(self, module: str, name: str, input: Json = None) -> Iterator[Span]:
        """`with recorder.span(...) as span: span.output = ...`; an exception is recorded, then re-raised."""
        opened = self.start(module, name, input)
        try:
            yield opened
        except BaseException as exc:
            self.finish(opened, error=exc)
            raise
        self.finish(opened, output=opened.output)

    def event(self, module: str, name: str, *, input: Json = None, output: Json = None, ok: bool = True,
              error: Json = None, attributes: Json = None) -> Span:  # fmt: skip
        """A span that took no time of its own (a log line, a clock reading)."""
        span = self.start(module, name, input, attributes)
        self.finish(span, output=output, error=None if ok else (error or {}))
        return span

    def redact(self, name: str, value: str) -> None:
        """Never write `value`: it is the secret `name`."""
        if value and self.secrets.get(value) != name:
            self.secrets[value] = name
            self._redactor = None

    def scrub(self, value: Json) -> Json:
        """`value` with every secret read in this request, in any form the module's docstring names, replaced
        by `[secret:<name>]`."""
        if not self.secrets:
            return value
        if self._redactor is None:
            self._redactor = Redactor(self.secrets)
        return _map_text(value, self._redactor.redact)

    def record(self, request: dict[str, Json], then: Statement | None = None) -> Record:
        """The record to write: `request` (columns of flux.requests, with `started_us`) and every span."""
        # Each span's values in the order of flux.spans' columns in _WRITE_RECORDS.
        spans = [
            [self.request_id, s.seq, s.span_id, s.parent_seq, self.tenant_id, s.module, s.name, s.started_us,
             s.duration_us, s.ok, s.attributes, s.input, s.output, s.error]
            for s in self.spans
        ]  # fmt: skip
        row = {"id": self.request_id, "tenant_id": self.tenant_id, **request}
        if self.secrets:
            scrub = self.scrub
            for span in spans:
                span[6], span[10:] = scrub(span[6]), [scrub(value) for value in span[10:]]
            row |= {name: scrub(row[name]) for name in _SCRUBBED_COLUMNS if name in row}
        return Record(row, spans, then)

    def statements(self, request: dict[str, Json]) -> list[Statement]:
        """The statements that write this request's record (see `records_statements`)."""
        return records_statements([self.record(request)])

    def write(self, conn: Any, request: dict[str, Json], *, durable: bool = True) -> None:
        """Write the record now, in a transaction of its own (for a request whose own transaction failed or
        never began)."""
        db.write_alone(conn, self.statements(request), durable=durable)


def _jsonb_text(value: Json) -> str:
    """JSON that jsonb accepts: a request may carry text jsonb cannot hold (U+0000, lone surrogates), and its
    record must be written all the same, so such text is kept as visible escapes."""
    try:
        text = jsontext.dumps(value)
    except (
        TypeError
    ) as exc:  # orjson writes at most 254 levels (a function may answer 253, and spans nest it)
        if "Recursion limit" not in str(exc):
            raise
        raise InvalidFunctionResponse(
            "the request's record nests JSON deeper than 254 levels, which cannot be written",
            hint="return and send JSON that nests less deeply",
        ) from exc
    return jsontext.dumps_text(storable(value)) if b"\\u0000" in text or b"\\ud" in text else text.decode()


def storable(value: Json) -> Json:
    """`value` as its record keeps it: U+0000 and lone surrogates as visible escapes (jsonb holds neither)."""
    return _map_text(value, lambda text: jsontext.valid_text(text.replace("\x00", "\\u0000")))


FRAGMENT = 8  # a run of this many characters of a secret's form is redacted: a truncated key still leaks
_MIN_DERIVED = 6  # an encoding shorter than this would redact common text, and tells little of the secret
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Redactor:
    """Finds the secrets of one request in text, in every form `secret_forms` lists and in any letter case,
    and replaces each with `[secret:<name>]`."""

    def __init__(self, secrets: dict[str, str]) -> None:  # value -> name
        self._forms = [
            (form.translate(_ASCII_LOWER), name)
            for value, name in secrets.items()
            for form in secret_forms(value)
        ]
        self._block = block = (FRAGMENT + 1) // 2  # a run of FRAGMENT characters holds a whole aligned block
        # One search for any whole form that is short, or any block of a longer one: most text has none.
        pieces = {
            form[i : i + block] if len(form) > FRAGMENT else form
            for form, _ in self._forms
            for i in (range(0, len(form) - block + 1, block) if len(form) > FRAGMENT else (0,))
        }
        self._any = re.compile("|".join(re.escape(piece) for piece in sorted(pieces, key=len, reverse=True)))

    def redact(self, text: str) -> str:
        if not text:
            return text
        folded = text.translate(_ASCII_LOWER)  # the same length: indexes stay those of `text`
        if len(folded) < 4096 and self._any.search(folded) is None:  # past that, `find` per block is faster
            return text
        found = [span for form, name in self._forms for span in self._find(folded, form, name)]
        if not found:
            return text
        found.sort()
        parts, end = [], 0
        for start, stop, name in found:
            if start < end:  # overlaps a run already replaced: widen it
                end = max(end, stop)
                continue
            parts += [text[end:start], f"[secret:{name}]"]
            end = stop
        parts.append(text[end:])
        return "".join(parts)

    def _find(self, text: str, form: str, name: str) -> list[tuple[int, int, str]]:
        """Where `form` is in `text`: whole, or (for a longer form) any run of FRAGMENT of its characters."""
        found = []
        if len(form) <= FRAGMENT:
            at = text.find(form)
            while at >= 0:
                found.append((at, at + len(form), name))
                at = text.find(form, at + len(form))
            return found
        block = self._block
        for offset in range(0, len(form) - block + 1, block):
            piece = form[offset : offset + block]
            at = text.find(piece)
            while at >= 0:
                start, stop, shift = at, at + block, offset - at  # text[k] lines up with form[k + shift]
                while start > 0 and start + shift > 0 and text[start - 1] == form[start - 1 + shift]:
                    start -= 1
                while stop < len(text) and stop + shift < len(form) and text[stop] == form[stop + shift]:
                    stop += 1
                if stop - start >= FRAGMENT:
                    found.append((start, stop, name))
                    at = text.find(piece, max(at + 1, stop - block + 1))  # not again within what it found
                else:
                    at = text.find(piece, at + 1)
        return found


def secret_forms(value: str) -> list[str]:
    """The texts `value` shows as in a record: itself, URL-encoded, hex, and its base64 and base64url
    encodings at each of the three alignments base64 can meet it at inside a longer text (`user:` before it),
    each without the characters at its ends that also depend on its neighbours."""
    forms = {value}
    if len(value) >= _MIN_DERIVED:
        data = value.encode()
        forms |= {urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), data.hex()}
        for alignment in range(3):
            encoded = base64.b64encode(bytes(alignment) + data + bytes(2)).decode()
            # character i carries bits 6i to 6i+6: keep those wholly within the value's bytes
            first, last = -(-8 * alignment // 6), 8 * (alignment + len(data)) // 6
            core = encoded[first:last]
            forms |= {core, core.replace("+", "-").replace("/", "_")}
    return [form for form in forms if form == value or len(form) >= _MIN_DERIVED]


def _map_text(value: Json, change: Callable[[str], str]) -> Json:
    """`value` with `change` applied to every string in it, keys included."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {change(str(k)): _map_text(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_text(v, change) for v in value]
    return value
