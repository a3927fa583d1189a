"""Compile a plan to one SQL statement, built as a sqlglot tree: identifiers come only from the catalog and
every value is a `$n` parameter cast to its column's type. The engine keeps each shape's SQL on its plan.

A select returns one JSON object per row, keyed by its outputs (and hidden `__k0…` keys for the order columns
the next page's cursor needs); with a count, one row `(rows json array, count)`. A write returns one row
`(returned rows json, affected count)`.
"""

from __future__ import annotations

from functools import lru_cache

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from flux.data.plan import (
    COMPARISONS,
    TEXT_SEARCHES,
    Col,
    Compare,
    Condition,
    Exists,
    IsTest,
    Junction,
    Negation,
    Output,
    Param,
    Plan,
    SelectPlan,
    Source,
    WritePlan,
)

# The dialect, loaded with this module. Named by a string, sqlglot loads it at the first compile, and threads
# compiling at once (a queue worker's) could get it half made: its `$1` came out as the default `@1`.
DIALECT = Postgres()
_EMPTY_ARRAY = exp.cast(exp.Literal.string("[]"), "json")


def compile_plan(plan: Plan) -> str:
    """The SQL text of a plan."""
    tree = _select_statement(plan) if isinstance(plan, SelectPlan) else _write_statement(plan)
    return tree.sql(dialect=DIALECT, identify=True)


# -- select -----------------------------------------------------------------------------------------------


_MAX_OBJECT_KEYS = 50  # json_build_object takes at most 100 arguments


def _select_statement(plan: SelectPlan) -> exp.Expr:
    query = _select(plan, hidden_keys=True)
    if plan.count is None and len(query.expressions) <= _MAX_OBJECT_KEYS:
        # One JSON object per row, built in the select list: no subquery, no row type to serialise.
        pairs: list[exp.Expr] = []
        for item in query.expressions:
            value = exp.Subquery(this=item.this) if isinstance(item, exp.Subquery) else item.this
            pairs += [exp.Literal.string(item.alias), value]
        query.set("expressions", [exp.func("json_build_object", *pairs)])
        return _within_answer_bytes(query, plan.answer_bytes)
    rows = query.subquery("r")
    if plan.count is None:
        return _within_answer_bytes(
            exp.select(exp.func("row_to_json", _whole_row("r"))).from_(rows), plan.answer_bytes
        )
    if plan.answer_bytes is not None:
        guarded = _within_answer_bytes(
            exp.select(exp.func("row_to_json", _whole_row("r"))).from_(rows), plan.answer_bytes
        )
        rows_json = exp.func(
            "coalesce", exp.func("json_agg", exp.column("j", table="g", quoted=True)), _EMPTY_ARRAY
        )
        return exp.select(rows_json, _count(plan)).from_(guarded.subquery("g"))
    rows_json = exp.func("coalesce", exp.func("json_agg", _whole_row("r")), _EMPTY_ARRAY)
    return exp.select(rows_json, _count(plan)).from_(rows)


def _count(plan: SelectPlan) -> exp.Expr:
    count: exp.Expr = exp.null()
    if plan.count == "exact":
        counted = exp.select(exp.Count(this=exp.Star())).from_(_table(plan.source))
        if plan.count_where is not None:
            counted = counted.where(_condition(plan.count_where))
        count = exp.Subquery(this=counted)
    return count


def _within_answer_bytes(rows: exp.Select, max_bytes: Param | None) -> exp.Select:
    """`rows` (one JSON value each) as column `j`, while the bytes of the rows so far stay within `max_bytes`:
    a running sum checked by flux.check_answer_size, which raises FX114 past it. Rows are summed as they are
    made (a window that ends at the current row reads no further), so Postgres stops at the row that crosses
    the bound, and the worker never receives a too big answer."""
    if max_bytes is None:
        return rows
    (value,) = rows.expressions
    rows.set("expressions", [exp.alias_(value, "j", quoted=True)])
    row_json = exp.column("j", table="a", quoted=True)
    running = exp.Window(
        this=exp.func("sum", exp.func("octet_length", exp.cast(row_json, "text"))),
        spec=exp.WindowSpec(kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW"),
    )
    summed = exp.select(row_json, exp.alias_(running, "n", quoted=True)).from_(rows.subquery("a"))
    check = exp.Anonymous(
        this="check_answer_size", expressions=[exp.column("n", table="g", quoted=True), _param(max_bytes)]
    )
    within = exp.Dot(this=exp.to_identifier("flux", quoted=True), expression=check)
    return exp.select(exp.column("j", table="g", quoted=True)).from_(summed.subquery("g")).where(within)


def _select(plan: SelectPlan, *, hidden_keys: bool = False) -> exp.Select:
    columns = [_output(output) for output in plan.outputs]
    if hidden_keys:
        columns += [
            exp.alias_(_column(col), name, quoted=True)
            for col, name in zip(plan.cursor_keys, plan.cursor_names, strict=True)
        ]
    if not columns:
        columns = [exp.alias_(exp.null(), "__empty")]
    query = exp.select(*columns).from_(_table(plan.source))
    conditions = [_join_condition(plan.source)] if plan.source.join else []
    if plan.where is not None:
        conditions.append(_condition(plan.where))
    if conditions:
        query = query.where(exp.and_(*conditions) if len(conditions) > 1 else conditions[0])
    if plan.group_by:
        query = query.group_by(*(_column(col) for col in plan.group_by))
    if plan.order:
        query = query.order_by(
            *(
                exp.Ordered(
                    this=_column(item.column),
                    desc=item.desc,
                    nulls_first=(item.nulls == "first") if item.nulls else item.desc,
                )
                for item in plan.order
            )
        )
    if plan.limit is not None:
        query = query.limit(_param(plan.limit))
    if plan.offset is not None:
        query = query.offset(_param(plan.offset))
    return query


def _output(output: Output) -> exp.Expr:
    if output.mask is not None:
        return exp.alias_(_param(output.mask), output.key, quoted=True)
    if output.aggregate is not None:
        argument: exp.Expr = exp.Star() if output.column is None else _column(output.column)
        function = (
            exp.Count(this=argument) if output.aggregate == "count" else exp.func(output.aggregate, argument)
        )
        return exp.alias_(function, output.key, quoted=True)
    if output.embed is not None:
        inner = _select(output.embed).subquery("e")
        if output.many:
            value = exp.func("coalesce", exp.func("json_agg", _whole_row("e")), _EMPTY_ARRAY)
        else:
            value = exp.func("row_to_json", _whole_row("e"))
        return exp.alias_(exp.Subquery(this=exp.select(value).from_(inner)), output.key, quoted=True)
    assert output.column is not None
    return exp.alias_(_column(output.column), output.key, quoted=True)


def _join_condition(source: Source) -> exp.Expr:
    pairs = [
        exp.EQ(this=_column(parent), expression=exp.column(own, table=source.alias))
        for parent, own in source.join
    ]
    return exp.and_(*pairs) if len(pairs) > 1 else pairs[0]


# -- conditions -------------------------------------------------------------------------------------------


def _condition(condition: Condition) -> exp.Expr:
    if isinstance(condition, Compare):
        return _compare(condition)
    if isinstance(condition, IsTest):
        column = _column(condition.column)
        test: exp.Expr = {
            "null": exp.null(),
            "not null": exp.null(),
            "true": exp.true(),
            "false": exp.false(),
        }[condition.test]
        check = exp.Is(this=column, expression=test)
        return exp.Not(this=check) if condition.test == "not null" else check
    if isinstance(condition, Junction):
        parts = [exp.paren(_condition(item)) for item in condition.items]
        if not parts:
            return exp.true() if condition.op == "and" else exp.false()
        return exp.and_(*parts) if condition.op == "and" else exp.or_(*parts)
    if isinstance(condition, Negation):
        return exp.Not(this=exp.paren(_condition(condition.item)))
    assert isinstance(condition, Exists)
    inner = exp.select(exp.Literal.number(1)).from_(_table(condition.source))
    conditions = [_join_condition(condition.source)]
    if condition.where is not None:
        conditions.append(_condition(condition.where))
    return exp.Exists(this=inner.where(exp.and_(*conditions) if len(conditions) > 1 else conditions[0]))


def _compare(compare: Compare) -> exp.Expr:
    column, value = _column(compare.column), _param(compare.value)
    op = compare.op
    if op in COMPARISONS:
        classes: dict[str, type[exp.Binary]] = {
            "eq": exp.EQ, "neq": exp.NEQ, "gt": exp.GT, "gte": exp.GTE, "lt": exp.LT, "lte": exp.LTE,
        }  # fmt: skip
        return classes[op](this=column, expression=value)
    if op in ("in", "nin"):
        member = exp.EQ(this=column, expression=exp.Any(this=exp.paren(value)))
        return member if op == "in" else exp.Not(this=exp.paren(member))
    if op in ("like", "ilike"):
        text = (
            column
            if compare.column.type in ("text", "character varying", "citext")
            else exp.cast(column, "text")
        )
        return (exp.Like if op == "like" else exp.ILike)(this=text, expression=value)
    if op in TEXT_SEARCHES:
        config = [_param(compare.config)] if compare.config is not None else []
        document = column if compare.column.type == "tsvector" else exp.func("to_tsvector", *config, column)
        query = exp.func(TEXT_SEARCHES[op], *config, value)
        return exp.MatchAgainst(this=document, expressions=[query])
    if op == "contains":
        return exp.ArrayContainsAll(this=column, expression=value)
    if op == "contained_by":
        return exp.ArrayContainedBy(this=column, expression=value)
    return exp.ArrayOverlaps(this=column, expression=value)


# -- writes -----------------------------------------------------------------------------------------------


def _write_statement(plan: WritePlan) -> exp.Expr:
    table = _table(plan.source)
    returning = [_output(output) for output in plan.returning] or [exp.alias_(exp.Literal.number(1), "__one")]
    statement: exp.Expr
    if plan.kind == "insert":
        values = exp.Values(
            expressions=[
                exp.Tuple(expressions=[_param(p) if p is not None else exp.var("DEFAULT") for p in row])
                for row in plan.rows
            ]
        )
        conflict = None
        if plan.conflict_action is not None:
            conflict = exp.OnConflict(
                conflict_keys=[exp.to_identifier(c, quoted=True) for c in plan.conflict_columns] or None,
                action=exp.var("DO NOTHING") if plan.conflict_action == "nothing" else exp.var("DO UPDATE"),
                expressions=[
                    exp.EQ(
                        this=exp.column(c, quoted=True),
                        expression=exp.column(c, table="excluded", quoted=True),
                    )
                    for c in plan.conflict_update
                ]
                if plan.conflict_action == "update"
                else None,
            )
        statement = exp.Insert(
            this=exp.Schema(
                this=table, expressions=[exp.to_identifier(c, quoted=True) for c in plan.columns]
            ),
            expression=values,
            conflict=conflict,
            returning=exp.Returning(expressions=returning),
        )
    elif plan.kind == "update":
        (row,) = plan.rows
        assignments = [
            exp.EQ(this=exp.column(name, quoted=True), expression=_param(param))
            for name, param in zip(plan.columns, row, strict=True)
            if param is not None
        ]
        statement = exp.Update(
            this=table, expressions=assignments, returning=exp.Returning(expressions=returning)
        )
        if plan.where is not None:
            statement.set("where", exp.Where(this=_condition(plan.where)))
    else:
        statement = exp.Delete(this=table, returning=exp.Returning(expressions=returning))
        if plan.where is not None:
            statement.set("where", exp.Where(this=_condition(plan.where)))
    rows_json = (
        exp.func("coalesce", exp.func("json_agg", _whole_row("w")), _EMPTY_ARRAY)
        if plan.returning
        else exp.null()
    )
    return exp.select(rows_json, exp.Count(this=exp.Star())).from_("w").with_("w", as_=statement)


# -- leaves -----------------------------------------------------------------------------------------------


def _table(source: Source) -> exp.Table:
    return exp.Table(
        this=exp.to_identifier(source.name, quoted=True),
        db=exp.to_identifier(source.schema, quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier(source.alias)),
    )


def _whole_row(alias: str) -> exp.Column:
    """`"r".*`: the subquery's row, never a column that happens to share the subquery's name."""
    return exp.Column(this=exp.Star(), table=exp.to_identifier(alias, quoted=True))


def _column(col: Col) -> exp.Column:
    return exp.column(col.name, table=col.alias or None, quoted=True)


def _param(param: Param) -> exp.Expr:
    placeholder = exp.Parameter(this=exp.Literal.number(param.index))
    return exp.Cast(this=placeholder, to=_data_type(param.type))


@lru_cache(maxsize=1024)
def _data_type(type_: str) -> exp.DataType:
    return exp.DataType.build(type_, dialect=DIALECT, udt=True)
