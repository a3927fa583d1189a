"""Resolve a parsed request against the catalog and the column policies of the caller's role.

The result is a hashable plan whose values are `Param`s (their Python values are collected in order beside
it), so `sql.py` can compile each plan shape once. Every name problem is added to the same `Problems` as the
request's shape problems, and all are raised together.
"""

from __future__ import annotations

import base64
import difflib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from flux import jsontext
from flux.data.catalog import Catalog, Column, Relation, Table
from flux.data.request import (
    DeleteRequest,
    Embed,
    InsertRequest,
    InsertRow,
    OrderBy,
    Problems,
    Request,
    SelectRequest,
    UpdateRequest,
    escape_pointer,
)
from flux.db import JsonParam
from flux.errors import (
    ColumnNotReadable,
    ColumnNotWritable,
    InvalidOperator,
    InvalidQueryShape,
    InvalidValue,
    QueryTooDeep,
    TooManyColumns,
    TooManyRows,
    UnknownColumn,
    UnknownRelation,
    UnknownTable,
)

Role = Literal["anon", "user", "service"]
COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS = (
    *COMPARISONS,
    "in",
    "nin",
    "like",
    "ilike",
    "is",
    "contains",
    "contained_by",
    "overlaps",
    "match",
    "fts",
    "plfts",
    "phfts",
    "wfts",
)
# Full-text search, as PostgREST names it: each operator parses its text with one tsquery function.
TEXT_SEARCHES = {
    "fts": "to_tsquery",
    "plfts": "plainto_tsquery",
    "phfts": "phraseto_tsquery",
    "wfts": "websearch_to_tsquery",
    "match": "websearch_to_tsquery",
}
MAX_COLUMNS = 1664  # Postgres's limit on the entries of one select list (MaxTupleAttributeNumber)
_CONTAINERS = ("jsonb", "json", "tsvector")  # besides arrays and ranges
MAX_WHERE_DEPTH = 16
_NUMERIC_TYPES = ("smallint", "integer", "bigint", "numeric", "real", "double precision", "money", "interval")
_TEXT_TYPES = ("text", "character varying", "character", "citext", "name")


@dataclass(frozen=True)
class Limits:
    """Guards against runaway queries; each breach is a clear FX11x error, never a silently cut answer.

    `statement_timeouts_ms` is per role; whoever opens the request's transaction applies it
    (`db.request_transaction(statement_timeout_ms=limits.timeout_for(role))`), and a breach is FX112."""

    max_depth: int = 4
    max_rows: int = 1000
    # one answer, embedded rows included (FX114): its rows counted by the engine, its bytes in the statement
    max_answer_rows: int = 100_000
    max_answer_bytes: int = 16 * 1024 * 1024
    statement_timeouts_ms: tuple[tuple[str, int], ...] = (
        ("anon", 5_000),
        ("user", 15_000),
        ("service", 60_000),
    )

    def timeout_for(self, role: str) -> int | None:
        return dict(self.statement_timeouts_ms).get(role)


# -- the plan ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    index: int  # 1-based, as in $1
    type: str  # the Postgres type it is cast to


@dataclass(frozen=True)
class Col:
    alias: str
    name: str
    type: str


@dataclass(frozen=True)
class Compare:
    column: Col
    op: str  # eq neq gt gte lt lte in nin like ilike contains contained_by overlaps, or a TEXT_SEARCHES key
    value: Param
    config: Param | None = None  # a text search's configuration (regconfig), when the query names one


@dataclass(frozen=True)
class IsTest:
    column: Col
    test: Literal["null", "not null", "true", "false"]


@dataclass(frozen=True)
class Junction:
    op: Literal["and", "or"]
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Negation:
    item: Condition


@dataclass(frozen=True)
class Source:
    """A table in FROM, and how it joins its parent (pairs of parent column, own column)."""

    schema: str
    name: str
    alias: str
    join: tuple[tuple[Col, str], ...] = ()


@dataclass(frozen=True)
class Exists:
    source: Source
    where: Condition | None


Condition = Compare | IsTest | Junction | Negation | Exists


@dataclass(frozen=True)
class OrderItem:
    column: Col
    desc: bool
    nulls: str | None


@dataclass(frozen=True)
class Output:
    """One key of each result row: a column, a masked value, an embedded relation or an aggregate."""

    key: str
    column: Col | None = None
    mask: Param | None = None
    embed: SelectPlan | None = None
    many: bool = False
    aggregate: str | None = None  # count sum avg min max; column None means count(*)


@dataclass(frozen=True)
class SelectPlan:
    source: Source
    outputs: tuple[Output, ...]
    where: Condition | None = None
    order: tuple[OrderItem, ...] = ()
    limit: Param | None = None
    offset: Param | None = None
    group_by: tuple[Col, ...] = ()
    count: str | None = None
    cursor_keys: tuple[Col, ...] = ()  # order columns not among the outputs: hidden outputs __k0, __k1, ...
    cursor_fields: tuple[str, ...] = ()  # the row keys whose values make the `after` cursor of the next page
    cursor_names: tuple[str, ...] = ()  # the keys of the hidden outputs, chosen not to collide with real ones
    count_where: Condition | None = None  # the where without the cursor's keyset: what "count" counts
    answer_bytes: Param | None = None  # the top level's bound on the bytes of all its rows (max_answer_bytes)


@dataclass(frozen=True)
class WritePlan:
    kind: Literal["insert", "update", "delete"]
    source: Source
    columns: tuple[str, ...] = ()  # insert: the column list; update: the SET columns
    rows: tuple[tuple[Param | None, ...], ...] = ()  # insert: one tuple per row, None = DEFAULT
    where: Condition | None = None
    returning: tuple[Output, ...] = ()
    conflict_columns: tuple[str, ...] = ()
    conflict_action: str | None = None
    conflict_update: tuple[str, ...] = ()


Plan = SelectPlan | WritePlan


@dataclass(frozen=True)
class ValueSource:
    """Where a parameter's value comes from, so a cached plan can be bound to another query of its shape:
    a JSON path into the query and the column type its value is bound for, or a constant."""

    path: tuple[str, ...] = ()
    base: str = ""  # the column's type, for `bindable`
    constant: Any = None
    is_constant: bool = True

    def extract(self, query: Any) -> Any:
        if self.is_constant:
            return self.constant
        node = query
        for token in self.path:
            if isinstance(node, list):
                node = node[int(token)]
            elif token in node:
                node = node[token]
            elif token != "0":  # a single insert row written as an object is row 0
                raise KeyError(token)
        try:
            return bindable(node, self.base)
        except ValueError as exc:
            raise InvalidValue(f"{exc} at /{'/'.join(map(escape_pointer, self.path))}") from None


@dataclass
class Planned:
    """A plan, its parameter values in order, and what a caller needs besides (cursor, policies applied).

    `request` is the parsed request the plan was made from: for a plan taken from the cache it has the
    query's shape (kind, limit, count, aggregates) but another query's values."""

    plan: Plan
    params: list[Any]
    table: Table
    role: Role
    request: Request
    page_size: int | None = None
    policies: list[str] = field(default_factory=list)
    sources: list[ValueSource] = field(default_factory=list)
    sql: str = ""  # the compiled statement, filled by engine.prepare
    count_sql: str = ""  # for "count": "planned", the EXPLAIN of the statement without its page

    def bound(self, params: list[Any]) -> Planned:
        """This plan with another query's values (of the same shape) as its parameters."""
        return Planned(
            self.plan, params, self.table, self.role, self.request, self.page_size, self.policies,
            self.sources, self.sql, self.count_sql,
        )  # fmt: skip


# -- planning ---------------------------------------------------------------------------------------------


class Planner:
    def __init__(self, catalog: Catalog, role: Role, problems: Problems, limits: Limits) -> None:
        self.catalog = catalog
        self.role = role
        self.problems = problems
        self.limits = limits
        self.params: list[Any] = []
        self.sources: list[ValueSource] = []
        self.policies: list[str] = []
        self._aliases = 0

    # names

    def table(self, name: str, pointer: str) -> Table | None:
        table = self.catalog.table(name)
        if table is None:
            self.problems.add(
                UnknownTable.code,
                pointer,
                f"no table or view named {name!r}",
                _nearest(name, self.catalog.tables),
            )
        return table

    def column(
        self, table: Table, name: str, pointer: str, *, alias: str, purpose: str = "read"
    ) -> Col | None:
        column = table.columns.get(name)
        if column is None:
            self.problems.add(
                UnknownColumn.code,
                pointer,
                f"{table.key} has no column {name!r}",
                _nearest(name, table.columns),
            )
            return None
        rule = table.rule(name, self.role)
        if purpose == "read" and (not rule.readable or rule.mask is not None):
            self.problems.add(
                ColumnNotReadable.code, pointer, f"role {self.role} may not read {table.key}.{name}",
                "leave the column out, or change flux.column_policies",
            )  # fmt: skip
            return None
        if purpose == "write" and not rule.writable:
            self.problems.add(
                ColumnNotWritable.code, pointer, f"role {self.role} may not write {table.key}.{name}",
                "leave the column out, or change flux.column_policies",
            )  # fmt: skip
            return None
        return Col(alias, name, column.type)

    def relation(self, table: Table, name: str, pointer: str) -> tuple[Relation, Table] | None:
        relation = table.relations.get(name)
        if relation is None:
            if name in table.ambiguous_relations:
                choices = [
                    r
                    for r, rel in table.relations.items()
                    if rel.constraint in table.ambiguous_relations[name]
                ]
                self.problems.add(
                    UnknownRelation.code, pointer, f"{name!r} is ambiguous from {table.key}",
                    f"name the relation by its key column: {', '.join(sorted(choices))}",
                )  # fmt: skip
            else:
                self.problems.add(
                    UnknownRelation.code, pointer, f"no foreign key joins {table.key} and {name!r}",
                    _nearest(name, table.relations) or "embed a table with a foreign key to or from this one",
                )  # fmt: skip
            return None
        target = self.catalog.table(relation.target)
        return (relation, target) if target else None

    def param(self, value: Any, type_: str, source: ValueSource | None = None) -> Param:
        """Bind a value; `source` says where a cached plan finds it in the next query (else: constant)."""
        self.params.append(value)
        self.sources.append(source or ValueSource(constant=value))
        return Param(len(self.params), type_)

    def value(self, table: Table, column: str, value: Any, pointer: str) -> Param | None:
        """A value written to a column, cast to the column's type (without its modifier)."""
        return self.bound(value, _base(table.columns[column].type), pointer, pointer)

    def bound(self, value: Any, base: str, pointer: str, value_pointer: str) -> Param | None:
        """Bind a JSON value for a column of type `base` (see `bindable`); a misfit is a problem."""
        try:
            converted = bindable(value, base)
        except ValueError as exc:
            self.problems.add(InvalidOperator.code, pointer, str(exc), "send a value of the column's type")
            return None
        return self.param(converted, base, ValueSource(_tokens(value_pointer), base, is_constant=False))

    def planned(self, plan: Plan, table: Table, request: Request, page_size: int | None = None) -> Planned:
        return Planned(plan, self.params, table, self.role, request, page_size, self.policies, self.sources)

    def alias(self) -> str:
        self._aliases += 1
        return f"t{self._aliases}"

    # select

    def select(self, request: SelectRequest) -> Planned | None:
        table = self.table(request.table, "/select")
        if table is None:
            return None
        source = Source(table.schema, table.name, self.alias())
        outputs = self.outputs(table, source.alias, request.columns, "/columns", depth=1)
        group_by = tuple(
            col for i, name in enumerate(request.group_by)
            if (col := self.column(table, name, f"/group_by/{i}", alias=source.alias))
        )  # fmt: skip
        listed = {o.column for o in outputs if o.aggregate is None}
        # Each group answers its key, whether or not columns names it (a group without its key says nothing).
        outputs += tuple(Output(col.name, column=col) for col in dict.fromkeys(group_by) if col not in listed)
        group_keys = {col.name for col in group_by}
        for aggregate in request.aggregates:
            column = None
            if aggregate.column != "*":
                column = self.column(table, aggregate.column, aggregate.pointer, alias=source.alias)
                if column is None:
                    continue
                problem = _aggregate_misfit(aggregate.function, _base(column.type))
                if problem:
                    self.problems.add(
                        InvalidOperator.code, aggregate.pointer, problem, "aggregate another column"
                    )
                    continue
            elif aggregate.function != "count":
                message = f'{aggregate.function}("*") is not defined'
                self.problems.add(InvalidOperator.code, aggregate.pointer, message, "name a column")
                continue
            if aggregate.output in group_keys:
                hint = (
                    f'name it in a list, {{"{aggregate.function}": ["{aggregate.column}"]}}, to answer it as '
                    f'"{aggregate.function}_{aggregate.column}"' if aggregate.output == aggregate.function
                    else "group a view that renames the column"
                )  # fmt: skip
                message = f"{aggregate.function} and the group_by column {aggregate.output!r} share one key"
                self.problems.shape(aggregate.pointer, message, hint)
            outputs += (Output(aggregate.output, column=column, aggregate=aggregate.function),)
        if request.aggregates:
            plain = [o.key for o in outputs if o.aggregate is None and o.column and o.column not in group_by]
            if plain or any(o.embed for o in outputs):
                self.problems.shape("/columns", "with aggregates, columns must be group_by columns",
                                    f"add {', '.join(plain)} to group_by")  # fmt: skip
        where = self.where(table, source.alias, request.where, "/where")
        order = self.order(table, source.alias, request.order)
        cursor_keys: tuple[Col, ...] = ()
        cursor_fields: tuple[str, ...] = ()
        cursor_names: tuple[str, ...] = ()
        count_where = where
        key = table.primary_key
        if request.aggregates:
            grouped = set(group_by)
            for item in order:
                if item.column not in grouped:
                    self.problems.shape(
                        "/order", f"with aggregates, order by group_by columns, not {item.column.name}"
                    )
        elif key and all(
            table.rule(k, self.role).readable and table.rule(k, self.role).mask is None for k in key
        ):
            # A stable order (primary key last) makes pages and cursors well defined.
            order += tuple(
                OrderItem(Col(source.alias, k, table.columns[k].type), False, None)
                for k in key if k not in {item.column.name for item in order}
            )  # fmt: skip
            shown = {o.column: o.key for o in outputs if o.column is not None and o.aggregate is None}
            hidden = [item.column for item in order if item.column not in shown]
            cursor_keys = tuple(hidden)
            cursor_names = _hidden_names(len(hidden), {o.key for o in outputs})
            cursor_fields = tuple(
                shown.get(item.column) or cursor_names[hidden.index(item.column)] for item in order
            )
        self.check_width(len(outputs) + len(cursor_keys), "/columns")
        if request.after is not None:
            if cursor_fields:
                where = self.keyset(request.after, order, where)
            else:
                message = f"{table.key} has no primary key {self.role} may read, so no cursor"
                self.problems.shape("/after", message, "page with offset instead")
        page_size = request.limit
        limit_rows = self.limits.max_rows if page_size is None else min(page_size, self.limits.max_rows)
        if page_size is not None and page_size > self.limits.max_rows:
            self.problems.add(TooManyRows.code, "/limit", f"limit {page_size} is above the maximum of "
                              f"{self.limits.max_rows} rows", "page through the rows with after")  # fmt: skip
        if _pins_primary_key(where, source.alias, table.primary_key) and not (
            request.aggregates
            or request.order
            or request.limit is not None
            or request.offset
            or request.after
        ):
            # At most one row: no order, no page, no cursor (the cheapest statement for a lookup by key).
            plan = SelectPlan(source=source, outputs=outputs, where=where, count=request.count,
                              answer_bytes=self.answer_bytes(outputs))  # fmt: skip
            return self.planned(plan, table, request, page_size=limit_rows)
        plan = SelectPlan(
            source=source,
            outputs=outputs,
            where=where,
            order=order,
            limit=self.param(limit_rows + 1, "bigint"),  # one more, to know whether another page exists
            offset=self.bound(request.offset, "bigint", "/offset", "/offset") if request.offset else None,
            group_by=group_by,
            count=request.count,
            cursor_keys=cursor_keys,
            cursor_fields=cursor_fields,
            cursor_names=cursor_names,
            count_where=count_where,
            answer_bytes=self.answer_bytes(outputs),  # last: `_planned_count` leaves it out with the page's
        )
        return self.planned(plan, table, request, page_size=limit_rows)

    def answer_bytes(self, outputs: tuple[Output, ...]) -> Param | None:
        """The statement's bound on its answer's bytes, for a select with embedded relations: their lists
        multiply (each capped at max_rows), where a plain select is at most max_rows rows of one table."""
        if not any(output.embed is not None for output in outputs):
            return None
        return self.param(self.limits.max_answer_bytes, "bigint")

    def outputs(
        self, table: Table, alias: str, columns: tuple[str | Embed, ...], pointer: str, depth: int
    ) -> tuple[Output, ...]:
        found: list[Output] = []
        for i, item in enumerate(columns):
            at = f"{pointer}/{i}"
            if isinstance(item, Embed):
                embedded = self.embed(table, alias, item, depth)
                if embedded:
                    found.append(embedded)
            elif item == "*":
                found.extend(self.star(table, alias))
            elif (output := self.readable_output(table, alias, item, at)) is not None:
                found.append(output)
        return tuple(found)

    def star(self, table: Table, alias: str) -> list[Output]:
        found = []
        for name, column in table.columns.items():
            rule = table.rule(name, self.role)
            if rule.mask is not None:
                found.append(Output(name, mask=self.param(rule.mask, "text")))
                self.policies.append(f"{table.key}.{name}: masked for {self.role}")
            elif rule.readable:
                found.append(Output(name, column=Col(alias, name, column.type)))
            else:
                self.policies.append(f"{table.key}.{name}: hidden from {self.role}")
        return found

    def readable_output(self, table: Table, alias: str, name: str, pointer: str) -> Output | None:
        rule = table.rule(name, self.role)
        if name in table.columns and rule.mask is not None and rule.readable:
            self.policies.append(f"{table.key}.{name}: masked for {self.role}")
            return Output(name, mask=self.param(rule.mask, "text"))
        column = self.column(table, name, pointer, alias=alias)
        return Output(name, column=column) if column else None

    def embed(self, table: Table, alias: str, item: Embed, depth: int) -> Output | None:
        if depth >= self.limits.max_depth:
            message = f"relations nest deeper than {self.limits.max_depth}"
            self.problems.add(
                QueryTooDeep.code, item.pointer, message, "fetch the deeper level in a second query"
            )
            return None
        found = self.relation(table, item.name, item.pointer)
        if found is None:
            return None
        relation, target = found
        if not self.join_readable(table, relation, target, item.pointer):
            return None
        source = Source(target.schema, target.name, self.alias(), self._join(alias, table, relation))
        outputs = self.outputs(target, source.alias, item.columns, f"{item.pointer}/columns", depth + 1)
        where = self.where(target, source.alias, item.where, f"{item.pointer}/where")
        order = self.order(target, source.alias, item.order)
        # Order columns the select list lacks are entries of it too, as far as Postgres's limit goes.
        unlisted = {o.column for o in order} - {o.column for o in outputs if o.aggregate is None}
        self.check_width(len(outputs) + len(unlisted), item.pointer)
        sub = SelectPlan(
            source=source,
            outputs=outputs,
            where=where,
            order=order,
            limit=self.embed_limit(item, relation.many),
            offset=self.param(item.offset, "bigint") if item.offset else None,
        )
        return Output(item.name, embed=sub, many=relation.many)

    def check_width(self, width: int, pointer: str) -> None:
        """Refuse a select list longer than Postgres takes (names repeated, or "*" many times, make one)."""
        if width > MAX_COLUMNS:
            message = f"the query asks for {width} columns at one level; Postgres takes {MAX_COLUMNS} at most"
            hint = "name each column once, or split the query"
            self.problems.add(TooManyColumns.code, pointer, message, hint)

    def embed_limit(self, item: Embed, many: bool) -> Param | None:
        """A list of related rows is capped like a page: past max_rows it is an error, never a silent cut
        (without a limit one more row is fetched, and the engine refuses a list that reaches it)."""
        if not many:
            return None
        if item.limit is None:
            return self.param(self.limits.max_rows + 1, "bigint")
        if item.limit > self.limits.max_rows:
            message = f"limit {item.limit} is above the maximum of {self.limits.max_rows} rows"
            self.problems.add(TooManyRows.code, f"{item.pointer}/limit", message, "query them on their own")
        return self.param(item.limit, "bigint")

    def join_readable(self, table: Table, relation: Relation, target: Table, pointer: str) -> bool:
        """A join reads the key columns on both sides: the role must be allowed to read them all."""
        readable = [
            self.column(side, name, pointer, alias="") is not None
            for side, names in ((table, relation.columns), (target, relation.target_columns))
            for name in names
        ]
        return all(readable)

    def _join(self, parent_alias: str, parent: Table, relation: Relation) -> tuple[tuple[Col, str], ...]:
        return tuple(
            (Col(parent_alias, mine, parent.columns[mine].type), theirs)
            for mine, theirs in zip(relation.columns, relation.target_columns, strict=True)
        )

    def order(self, table: Table, alias: str, order: tuple[OrderBy, ...]) -> tuple[OrderItem, ...]:
        found = []
        for item in order:
            column = self.column(table, item.column, item.pointer, alias=alias)
            if column:
                found.append(OrderItem(column, item.desc, item.nulls))
        return tuple(found)

    def keyset(self, cursor: str, order: tuple[OrderItem, ...], where: Condition | None) -> Condition | None:
        """Rows after the cursor's key in the order, nulls where the order puts them: (a after x) or (a = x
        and b after y) ..., so no row is skipped or repeated from one page to the next."""
        values = decode_cursor(cursor)
        if values is None or len(values) != len(order):
            self.problems.shape(
                "/after", "after is not a cursor this query returned", "pass the after of a page"
            )
            return where
        branches: list[Condition] = []
        for i, item in enumerate(order):
            parts = [self._same(o, values[j]) for j, o in enumerate(order[:i])] + [
                self._after(item, values[i])
            ]
            found = [part for part in parts if part is not None]
            if len(found) != len(parts):
                return where  # a value that cannot fit: its problem is recorded
            branches.append(Junction("and", tuple(found)))
        keyset: Condition = Junction("or", tuple(branches))
        return keyset if where is None else Junction("and", (where, keyset))

    def _same(self, item: OrderItem, value: Any) -> Condition | None:
        if value is None:
            return IsTest(item.column, "null")
        param = self.bound(value, _base(item.column.type), "/after", "/after")
        return Compare(item.column, "eq", param) if param else None

    def _after(self, item: OrderItem, value: Any) -> Condition | None:
        nulls_first = (item.nulls == "first") if item.nulls else item.desc  # Postgres's default placement
        if value is None:  # in the block of nulls: what follows is the non-null rows only if nulls come first
            return IsTest(item.column, "not null") if nulls_first else Junction("or", ())
        param = self.bound(value, _base(item.column.type), "/after", "/after")
        if param is None:
            return None
        beyond = Compare(item.column, "lt" if item.desc else "gt", param)
        return beyond if nulls_first else Junction("or", (beyond, IsTest(item.column, "null")))

    # where

    def where(self, table: Table, alias: str, spec: Any, pointer: str, depth: int = 0) -> Condition | None:
        if spec is None:
            return None
        if depth > MAX_WHERE_DEPTH:
            self.problems.add(QueryTooDeep.code, pointer, f"conditions nest deeper than {MAX_WHERE_DEPTH}",
                              "flatten the and/or/not nesting")  # fmt: skip
            return None
        if not isinstance(spec, dict):
            self.problems.shape(pointer, "where is an object", 'e.g. {"status": {"eq": "paid"}}')
            return None
        items: list[Condition] = []
        for key, value in spec.items():
            at = f"{pointer}/{escape_pointer(key)}"
            if key in ("and", "or"):
                if not isinstance(value, list) or not value:
                    self.problems.shape(at, f"{key} takes a non-empty list of conditions")
                    continue
                parts = [self.where(table, alias, v, f"{at}/{i}", depth + 1) for i, v in enumerate(value)]
                items.append(Junction(key, tuple(p for p in parts if p is not None)))
            elif key == "not":
                if isinstance(value, list):  # not(and(...)), as `and` takes it
                    if not value:
                        self.problems.shape(at, "not takes a condition or a non-empty list of them")
                        continue
                    parts = [self.where(table, alias, v, f"{at}/{i}", depth + 1) for i, v in enumerate(value)]
                    kept = tuple(p for p in parts if p is not None)
                    inner = None if not kept else kept[0] if len(kept) == 1 else Junction("and", kept)
                else:
                    inner = self.where(table, alias, value, at, depth + 1)
                if inner is not None:
                    items.append(Negation(inner))
            elif key in table.columns:
                items.extend(self.column_filter(table, alias, key, value, at))
            elif key in table.relations:
                found = self.relation(table, key, at)
                if found and self.join_readable(table, found[0], found[1], at):
                    relation, target = found
                    source = Source(
                        target.schema, target.name, self.alias(), self._join(alias, table, relation)
                    )
                    items.append(Exists(source, self.where(target, source.alias, value, at, depth + 1)))
            else:
                self.problems.add(
                    UnknownColumn.code, at, f"{table.key} has no column or relation {key!r}",
                    _nearest(key, [*table.columns, *table.relations, "and", "or", "not"]),
                )  # fmt: skip
        if not items:
            return None
        return items[0] if len(items) == 1 else Junction("and", tuple(items))

    def column_filter(self, table: Table, alias: str, name: str, spec: Any, pointer: str) -> list[Condition]:
        column = self.column(table, name, pointer, alias=alias)
        if column is None:
            return []
        shorthand = not isinstance(spec, dict)
        if shorthand:
            spec = {"is": None} if spec is None else {"eq": spec}  # shorthand: {"status": "paid"}
        if not spec:
            self.problems.add(
                InvalidOperator.code, pointer, f"no operator for {name}", f"operators: {', '.join(OPERATORS)}"
            )
        found = []
        for op, value in spec.items():
            if op not in OPERATORS:
                self.problems.add(InvalidOperator.code, f"{pointer}/{op}", f"unknown operator {op!r}",
                                  _nearest(op, OPERATORS))  # fmt: skip
            else:
                at = f"{pointer}/{escape_pointer(op)}"
                condition = self.operator(column, op, value, at, pointer if shorthand else at)
                if condition is not None:
                    found.append(condition)
        return found

    def operator(
        self, column: Col, op: str, value: Any, pointer: str, value_pointer: str
    ) -> Condition | None:
        base = _base(column.type)
        is_array = base.endswith("[]")
        if op == "is":
            tests: dict[Any, Literal["null", "not null", "true", "false"]] = {
                None: "null",
                "null": "null",
                "not_null": "not null",
                True: "true",
                False: "false",
            }
            if isinstance(value, (bool, type(None), str)) and value in tests:
                return IsTest(column, tests[value])
            return self._refuse(pointer, 'is takes null, true, false or "not_null"')
        if value is None:
            return self._refuse(pointer, f'{op} needs a value; to find missing values use {{"is": null}}')
        param: Param | None
        if op in COMPARISONS:
            param = self.bound(value, base, pointer, value_pointer)
        elif op in ("in", "nin"):
            if not isinstance(value, list) or is_array:
                return self._refuse(pointer, f"{op} takes a list of values, on a column that is not an array")
            param = self.bound(value, f"{base}[]", pointer, value_pointer)
        elif op in ("like", "ilike"):
            if not isinstance(value, str):
                return self._refuse(pointer, f'{op} takes text, such as "%smith%"')
            param = self.bound(value, "text", pointer, value_pointer)
        elif op in TEXT_SEARCHES:
            return self.text_search(column, op, value, pointer, value_pointer)
        else:  # contains, contained_by, overlaps: arrays, jsonb and ranges
            if not (is_array or base in _CONTAINERS or base.endswith("range")):
                return self._refuse(
                    pointer, f"{op} works on array, jsonb and range columns, not {column.type}"
                )
            if op == "overlaps" and base in ("jsonb", "json"):
                return self._refuse(pointer, "overlaps works on arrays and ranges")
            if is_array and not isinstance(value, list):
                return self._refuse(pointer, f"{op} on an array column takes a list")
            param = self.bound(value, base, pointer, value_pointer)
        return Compare(column, op, param) if param is not None else None

    def text_search(
        self, column: Col, op: str, value: Any, pointer: str, value_pointer: str
    ) -> Condition | None:
        """A full-text search, its text (and configuration, when named) bound as parameters. The configuration
        must be one the catalog lists: a misspelt one is a problem naming the nearest, not a later error."""
        example = 'e.g. "quick fox" or {"query": "quick fox", "config": "english"}'
        config_name = None
        if isinstance(value, dict):
            text, config_name = value.get("query"), value.get("config")
            if set(value) - {"query", "config"} or not isinstance(config_name, (str, type(None))):
                text = None
            value_pointer = f"{value_pointer}/query"
        else:
            text = value
        if not isinstance(text, str):
            self.problems.add(InvalidOperator.code, pointer, f"{op} takes text, or an object of query and "
                              "config", example)  # fmt: skip
            return None
        if _base(column.type) not in (*_TEXT_TYPES, "tsvector"):
            return self._refuse(pointer, f"{op} searches text and tsvector columns, not {column.type}")
        config = None
        if config_name is not None:
            configs = self.catalog.text_search_configs
            if config_name not in configs:
                message = f"no text search configuration named {config_name!r}"
                hint = _nearest(config_name, configs)
                self.problems.add(InvalidOperator.code, f"{pointer}/config", message, hint)
                return None
            config = self.param(configs[config_name], "regconfig")
        param = self.bound(text, "text", pointer, value_pointer)
        return Compare(column, op, param, config) if param is not None else None

    def _refuse(self, pointer: str, message: str) -> Condition | None:
        """Record an operator problem; the condition is dropped (None) and planning goes on to the rest."""
        self.problems.add(InvalidOperator.code, pointer, message, f"operators: {', '.join(OPERATORS)}")
        return None

    # writes

    def insert(self, request: InsertRequest) -> Planned | None:
        table = self.writable_table(request.table, "/insert")
        if table is None:
            return None
        source = Source(table.schema, table.name, self.alias())
        columns: list[str] = []
        for row in request.rows:
            for name in row_values(table, row):
                if name not in columns:
                    columns.append(name)
        for name in columns:
            self.writable_column(table, name, _pointer_of(request.rows, name))
        rows = []
        for row in request.rows:
            values = row_values(table, row)
            rows.append(tuple(
                self.value(table, name, values[name], f"{row.pointer}/{escape_pointer(name)}")
                if name in values and name in table.columns else None
                for name in columns
            ))  # fmt: skip
            for relation_name in row_children(table, row):
                self.child_relation(table, relation_name, row)
        conflict = request.on_conflict
        if conflict:
            for name in (*conflict.columns, *conflict.update):
                self.writable_column(table, name, "/on_conflict")
        returning = self.returning(table, source.alias, request.returning)
        plan = WritePlan(
            "insert", source, tuple(c for c in columns if c in table.columns), tuple(rows),
            returning=returning,
            conflict_columns=conflict.columns if conflict else (),
            conflict_action=conflict.action if conflict else None,
            conflict_update=conflict.update if conflict else (),
        )  # fmt: skip
        return self.planned(plan, table, request)

    def child_relation(self, table: Table, name: str, row: InsertRow) -> Relation | None:
        pointer = f"{row.pointer}/{escape_pointer(name)}"
        found = self.relation(table, name, pointer)
        if found is None:
            return None
        relation, _ = found
        if not relation.many:
            self.problems.shape(pointer, f"{name!r} is not a child table of {table.key}",
                                "nest only tables whose foreign key points at this one")  # fmt: skip
            return None
        return relation

    def update(self, request: UpdateRequest) -> Planned | None:
        table = self.writable_table(request.table, "/update")
        if table is None:
            return None
        source = Source(table.schema, table.name, self.alias())
        names = [n for n in request.values if self.writable_column(table, n, f"/set/{escape_pointer(n)}")]
        row = tuple(self.value(table, n, request.values[n], f"/set/{escape_pointer(n)}") for n in names)
        where = self.where(table, source.alias, request.where, "/where")
        plan = WritePlan("update", source, tuple(names), (row,), where=where,
                         returning=self.returning(table, source.alias, request.returning))  # fmt: skip
        return self.planned(plan, table, request)

    def delete(self, request: DeleteRequest) -> Planned | None:
        table = self.writable_table(request.table, "/delete")
        if table is None:
            return None
        source = Source(table.schema, table.name, self.alias())
        where = self.where(table, source.alias, request.where, "/where")
        plan = WritePlan(
            "delete", source, where=where, returning=self.returning(table, source.alias, request.returning)
        )
        return self.planned(plan, table, request)

    def writable_table(self, name: str, pointer: str) -> Table | None:
        table = self.table(name, pointer)
        if table is not None and not table.writable:
            self.problems.shape(pointer, f"{table.key} is a {table.kind} and cannot be written")
            return None
        return table

    def writable_column(self, table: Table, name: str, pointer: str) -> bool:
        column: Column | None = table.columns.get(name)
        if column is not None and column.generated:
            self.problems.add(
                InvalidQueryShape.code, pointer, f"{table.key}.{name} is generated and cannot be written"
            )
            return False
        return self.column(table, name, pointer, alias="", purpose="write") is not None

    def returning(self, table: Table, alias: str, names: tuple[str, ...] | None) -> tuple[Output, ...]:
        if names is None:
            return ()
        outputs = self.outputs(table, alias, names, "/returning", depth=1)
        self.check_width(len(outputs), "/returning")
        return outputs


def _hidden_names(count: int, taken: set[str]) -> tuple[str, ...]:
    names = []
    for i in range(count):
        name = f"__k{i}"
        while name in taken:
            name = "_" + name
        names.append(name)
    return tuple(names)


def _aggregate_misfit(function: str, base: str) -> str | None:
    """Why `function` cannot aggregate a column of type `base`, or None when it can."""
    if function in ("sum", "avg") and base not in _NUMERIC_TYPES:
        return f"{function} adds numbers, and this column is {base}"
    if function in ("min", "max") and base in ("json", "jsonb", "boolean", "point"):
        return f"{function} needs values that sort, and {base} values do not"
    return None


def _pins_primary_key(where: Condition | None, alias: str, key: tuple[str, ...]) -> bool:
    """True when the where ANDs an `eq` on every primary-key column, so it matches one row at most."""
    items = where.items if isinstance(where, Junction) and where.op == "and" else (where,)
    pinned = {
        c.column.name for c in items if isinstance(c, Compare) and c.op == "eq" and c.column.alias == alias
    }
    return bool(key) and pinned.issuperset(key)


def row_values(table: Table, row: InsertRow) -> dict[str, Any]:
    """The row's column values: every key but those naming a relation (and not a column)."""
    return {k: v for k, v in row.values.items() if k in table.columns or k not in table.relations}


def row_children(table: Table, row: InsertRow) -> dict[str, tuple[InsertRow, ...]]:
    """The row's nested child rows: keys that name a relation rather than a column."""
    return {k: rows for k, rows in row.children.items() if k not in table.columns and k in table.relations}


def plan_request(
    request: Request, catalog: Catalog, role: Role, problems: Problems, limits: Limits
) -> Planned | None:
    planner = Planner(catalog, role, problems, limits)
    if isinstance(request, SelectRequest):
        return planner.select(request)
    if isinstance(request, InsertRequest):
        return planner.insert(request)
    if isinstance(request, UpdateRequest):
        return planner.update(request)
    return planner.delete(request)


# -- cursors and values -----------------------------------------------------------------------------------


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(jsontext.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any] | None:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = jsontext.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return values if isinstance(values, list) else None


# Types whose bare name means a length of 1 in a cast: named so the cast keeps the value whole.
_UNBOUNDED = {"character": "bpchar", "bit": "varbit", "bit varying": "varbit"}


def _base(type_: str) -> str:
    """The type without its modifier, as a cast target that never truncates: numeric(10,2) -> numeric,
    character varying(20) -> character varying, character(3) -> bpchar, bit(3) -> varbit."""
    head, _, rest = type_.partition("(")
    base = (head + rest.partition(")")[2]).strip() if rest else type_
    array = base.endswith("[]")
    element = base.removesuffix("[]")
    return _UNBOUNDED.get(element, element) + ("[]" if array else "")


def bindable(value: Any, base: str) -> Any:
    """A JSON value as the parameter for a column of type `base`: JSON for json/jsonb; for an array a list of
    texts; else text, which Postgres's cast parses (so 1.5 for an integer is refused, never rounded, and a
    parameter keeps one type whatever the JSON type). Raises ValueError for a value that cannot fit."""
    if value is None:
        return None  # SQL NULL, for every type (a JSON null in a jsonb column too)
    if base in ("json", "jsonb"):
        _check_json_text(value)
        return JsonParam(value)
    if base in ("json[]", "jsonb[]"):
        _check_json_text(value)
        return [jsontext.dumps_text(v) for v in value]
    if base.endswith("[]"):
        if not isinstance(value, list):
            raise ValueError(f"a {base} value is a list")
        return [None if v is None else _text(v, base[:-2]) for v in value]
    return _text(value, base)


def _text(value: Any, base: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Decimal):  # a number read with every digit (flux.jsontext)
        if not value.is_finite():
            raise ValueError(f"{value} is not a {base} value")
        return str(value)
    if isinstance(value, str):
        _check_text(value)
        return value
    kind = "an object" if isinstance(value, dict) else "a list"
    raise ValueError(f"{kind} cannot be a {base} value")


def _check_text(value: str) -> None:
    if "\x00" in value:
        raise ValueError("text cannot contain the NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (a lone surrogate)") from None


def _check_json_text(value: Any, depth: int = 0) -> None:
    if depth > 100:
        raise ValueError("the JSON value nests deeper than 100 levels")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, list):
        for item in value:
            _check_json_text(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(str(key))
            _check_json_text(item, depth + 1)


def _nearest(name: str, choices: Any) -> str | None:
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"one of: {', '.join(sorted(names)[:12])}" if names else None


def _tokens(pointer: str) -> tuple[str, ...]:
    """A JSON pointer's reference tokens, unescaped (RFC 6901)."""
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:])


def _pointer_of(rows: tuple[InsertRow, ...], name: str) -> str:
    for row in rows:
        if name in row.values:
            return f"{row.pointer}/{escape_pointer(name)}"
    return "/values"
