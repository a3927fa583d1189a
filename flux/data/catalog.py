"""The catalog: the tables, views, columns, keys and foreign-key relations the data engine may name.

Read from pg_catalog in one query per kind and cached per process; `CatalogCache` drops its copy when DDL runs
anywhere (an event trigger notifies channel `flux_catalog`), so a new column is usable without a restart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from flux import db
from flux.data._plans import PlanCache
from flux.listen import NotifiedCache

log = logging.getLogger("flux.data.catalog")

EXPOSED_SCHEMAS = ("public",)
NOTIFY_CHANNEL = "flux_catalog"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as format_type prints it: integer, text, numeric(10,2), timestamp with time zone, ...
    nullable: bool
    has_default: bool
    generated: bool  # GENERATED ALWAYS (identity or stored expression): never written by a query


@dataclass(frozen=True)
class Relation:
    """A foreign key seen from one table: `many` when the other table points at this one (one-to-many)."""

    name: str
    target: str  # the catalog key of the other table
    columns: tuple[str, ...]  # on this table
    target_columns: tuple[str, ...]  # on the other table, pairwise with `columns`
    many: bool
    constraint: str


@dataclass(frozen=True)
class ColumnRule:
    """What a column policy says about one column for one role."""

    readable: bool = True
    writable: bool = True
    mask: str | None = None


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    kind: str  # table, view, materialized view, partitioned table, foreign table
    columns: dict[str, Column]
    primary_key: tuple[str, ...]
    relations: dict[str, Relation] = field(default_factory=dict)
    ambiguous_relations: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> constraints
    rules: dict[tuple[str, str], ColumnRule] = field(default_factory=dict)  # (column, role) -> rule

    @property
    def key(self) -> str:
        return table_key(self.schema, self.name)

    @property
    def writable(self) -> bool:
        return self.kind in ("table", "partitioned table", "view")

    def rule(self, column: str, role: str) -> ColumnRule:
        return self.rules.get((column, role), _NO_RULE)


_NO_RULE = ColumnRule()


@dataclass(frozen=True)
class Catalog:
    tables: dict[str, Table]
    # Text search configurations a query may name (`english`, `pg_catalog.english`), each with the text that
    # binds it as a regconfig parameter (quoted where the name needs it).
    text_search_configs: dict[str, str] = field(default_factory=dict)
    plans: PlanCache = field(default_factory=PlanCache, compare=False, repr=False)  # see data/shape.py

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)


def table_key(schema: str, name: str) -> str:
    """How queries name a table: bare in `public`, schema-qualified elsewhere."""
    return name if schema == "public" else f"{schema}.{name}"


_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table"}

_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       a.atthasdef OR a.attidentity <> '', a.attidentity = 'a' OR a.attgenerated <> ''
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(%(schemas)s) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"""

_KEYS_SQL = """
SELECT con.contype, con.conname, con.conrelid, con.confrelid,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i)
  FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_namespace n ON n.oid = con.connamespace
 WHERE n.nspname = ANY(%(schemas)s) AND con.contype IN ('p', 'f') AND con.conparentid = 0
 ORDER BY con.conname
"""

_CONFIGS_SQL = """
SELECT n.nspname, c.cfgname
  FROM pg_catalog.pg_ts_config c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.cfgnamespace
 WHERE n.nspname = 'pg_catalog' OR n.nspname = ANY(%(schemas)s)
"""

_RULES_SQL = """
SELECT table_schema, table_name, column_name, role, readable, writable, mask
  FROM flux.column_policies
 WHERE table_schema = ANY(%(schemas)s)
"""


def load_catalog(conn: Any, schemas: Iterable[str] = EXPOSED_SCHEMAS) -> Catalog:
    """Introspect the exposed schemas in five queries."""
    params = {"schemas": list(schemas)}
    with db.translate_errors():
        tables_rows = conn.execute(_TABLES_SQL, params).fetchall()
        columns_rows = conn.execute(_COLUMNS_SQL, params).fetchall()
        keys_rows = conn.execute(_KEYS_SQL, params).fetchall()
        configs_rows = conn.execute(_CONFIGS_SQL, params).fetchall()
        has_rules = conn.execute("SELECT to_regclass('flux.column_policies') IS NOT NULL").fetchone()[0]
        rules_rows = conn.execute(_RULES_SQL, params).fetchall() if has_rules else []

    names = {oid: (schema, name, _KINDS[kind]) for oid, schema, name, kind in tables_rows}
    columns: dict[int, dict[str, Column]] = {oid: {} for oid in names}
    for oid, name, type_, nullable, has_default, generated in columns_rows:
        if oid in columns:
            columns[oid][name] = Column(name, type_, nullable, has_default, generated)
    primary_keys: dict[int, tuple[str, ...]] = {}
    relations: dict[int, list[Relation]] = {oid: [] for oid in names}
    for contype, conname, relid, frelid, cols, fcols in keys_rows:
        if contype == "p":
            primary_keys[relid] = tuple(cols)
        elif relid in names and frelid in names:
            here, there = names[relid], names[frelid]
            relations[relid].append(
                Relation(
                    there[1], table_key(*there[:2]), tuple(cols), tuple(fcols), many=False, constraint=conname
                )
            )
            relations[frelid].append(
                Relation(
                    here[1], table_key(*here[:2]), tuple(fcols), tuple(cols), many=True, constraint=conname
                )
            )
    rules: dict[tuple[str, str], dict[tuple[str, str], ColumnRule]] = {}
    for schema, table, column, role, readable, writable, mask in rules_rows:
        rules.setdefault((schema, table), {})[(column, role)] = ColumnRule(readable, writable, mask)

    tables = {}
    for oid, (schema, name, kind) in names.items():
        named, ambiguous = _name_relations(relations[oid])
        tables[table_key(schema, name)] = Table(
            schema=schema,
            name=name,
            kind=kind,
            columns=columns[oid],
            primary_key=primary_keys.get(oid, ()),
            relations=named,
            ambiguous_relations=ambiguous,
            rules=rules.get((schema, name), {}),
        )
    configs = {}
    for schema, name in configs_rows:
        configs[f"{schema}.{name}"] = f"{_identifier(schema)}.{_identifier(name)}"
        configs[name] = _identifier(name)  # bare, Postgres finds it on the search path (pg_catalog first)
    return Catalog(tables, dict(sorted(configs.items())))


def _identifier(name: str) -> str:
    """A name as Postgres reads it back (regconfig input folds unquoted names to lower case)."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _name_relations(relations: list[Relation]) -> tuple[dict[str, Relation], dict[str, tuple[str, ...]]]:
    """Name each relation by the other table; where two foreign keys share that name, by the key column.

    `orders.customer_id -> customers` is `customers` from orders (and `orders` from customers); with a second
    key `orders.referrer_id -> customers`, the names become `customer` and `referrer` (the column without
    `_id`), and `customers` alone is ambiguous.
    """
    by_name: dict[str, list[Relation]] = {}
    for relation in relations:
        by_name.setdefault(relation.name, []).append(relation)
    named: dict[str, Relation] = {}
    ambiguous: dict[str, tuple[str, ...]] = {}
    for name, group in by_name.items():
        if len(group) == 1:
            named[name] = group[0]
            continue
        ambiguous[name] = tuple(r.constraint for r in group)
        for relation in group:
            column_stem = relation.columns[0].removesuffix("_id") if len(relation.columns) == 1 else ""
            alias = column_stem if not relation.many else f"{name}_by_{relation.target_columns[0]}"
            if alias and alias not in by_name:
                named[alias] = replace(relation, name=alias)
    return named, ambiguous


class CatalogCache(NotifiedCache[Catalog]):
    """One process's catalog: loaded on first use, dropped when `flux_catalog` is notified or on demand."""

    def __init__(self, schemas: Iterable[str] = EXPOSED_SCHEMAS) -> None:
        self.schemas = tuple(schemas)
        super().__init__(NOTIFY_CHANNEL, lambda conn: load_catalog(conn, self.schemas))
