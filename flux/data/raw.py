"""Raw SQL for the service role: pglast checks it is exactly one statement the request may run,
classifies it as read, write, DDL or other, lists the tables it names and gives its span a name.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pglast import parser
from pglast.stream import maybe_double_quote_name

from flux.errors import InvalidRawSql, RawSqlForbidden

Kind = Literal["read", "write", "ddl", "other"]

# libpg_query's JSON tree: a node is `{"SelectStmt": {fields}}`, except where the C field has a struct
# type (`relation`, `withClause`, `setstmt`, ...), which holds the fields bare.
Fields = dict[str, Any]

_MODIFYING = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_WRITES = _MODIFYING | {"TruncateStmt", "RefreshMatViewStmt"}
_DDL = frozenset(
    {
        "CommentStmt",
        "CompositeTypeStmt",
        "DefineStmt",
        "GrantRoleStmt",
        "GrantStmt",
        "ImportForeignSchemaStmt",
        "IndexStmt",
        "ReassignOwnedStmt",
        "RenameStmt",
        "RuleStmt",
        "SecLabelStmt",
        "ViewStmt",
    }
)
# Session-wide prepared statements and resets: Flux prepares its own statements on the connection.
_SESSION_STATEMENTS = {
    "PrepareStmt": "prepare statements",
    "ExecuteStmt": "execute prepared statements",
    "DeallocateStmt": "deallocate prepared statements",
    "DiscardStmt": "discard session state",
    "ListenStmt": "listen to channels",
    "UnlistenStmt": "unlisten channels",
    "LoadStmt": "load libraries",  # a loaded library stays for the session's life: no reset unloads it
}
# Statements that make code Flux cannot check (a function's body is text to this parser): it could leave the
# request's role and come back to it inside one statement, prepare statements under the names of Flux's, take
# session locks or change session settings. Functions come from migrations.
_MAKES_CODE = {
    "CreateFunctionStmt": "CREATE FUNCTION",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CreateExtensionStmt": "CREATE EXTENSION",
}
_CURSOR_OPT_HOLD = 0x0020  # DECLARE ... WITH HOLD: the cursor outlives the transaction
_TRUE_WORDS = frozenset({"true", "on", "t", "yes", "y", "1"})
_ROLE_SETTINGS = frozenset({"role", "session_authorization"})
# Built-in functions that run SQL given to them as text, which no check here sees (so they could change the
# role or Flux's own settings), and session-level advisory locks, which outlive the request's transaction on a
# connection other requests (and replays) use next. Refused by name, however qualified.
# Statements that name existing functions for new objects to call (an aggregate's SFUNC, a cast's function).
_NAMES_FUNCTIONS = frozenset(
    {"DefineStmt", "CreateCastStmt", "CreateOpClassStmt", "AlterOpFamilyStmt", "CreateConversionStmt",
     "CreateTransformStmt", "AlterOperatorStmt"}
)  # fmt: skip
_RUNS_TEXT = "runs SQL given as text"
_SESSION_LOCK = "takes a session lock that outlives the request; use pg_{}advisory_xact_lock{}"
_REFUSED_FUNCTIONS = {
    "query_to_xml": _RUNS_TEXT,
    "query_to_xmlschema": _RUNS_TEXT,
    "query_to_xml_and_xmlschema": _RUNS_TEXT,
    "ts_stat": _RUNS_TEXT,
    "pg_advisory_lock": _SESSION_LOCK.format("", ""),
    "pg_advisory_lock_shared": _SESSION_LOCK.format("", "_shared"),
    "pg_try_advisory_lock": _SESSION_LOCK.format("try_", ""),
    "pg_try_advisory_lock_shared": _SESSION_LOCK.format("try_", "_shared"),
    "setseed": "sets the session's random seed, which outlives the request",
}
_TRANSACTION_COMMAND_SETTINGS = frozenset({"transaction", "session characteristics"})
_TRANSACTION_SETTINGS = _TRANSACTION_COMMAND_SETTINGS | frozenset(
    {
        "transaction_isolation",
        "transaction_read_only",
        "transaction_deferrable",
    }
)
# The limits Flux (or the operator) puts on a request's time: a request may not lift or change them, in its
# transaction or beyond (SET LOCAL, RESET, set_config(..., true), or a write to pg_settings: set_config too).
_TIMEOUT_SETTINGS = frozenset(
    {
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "transaction_timeout",
        "idle_session_timeout",
    }
)
_PG_SETTINGS = frozenset({"pg_settings", "pg_catalog.pg_settings"})
_RELATION_OBJECTS = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_FOREIGN_TABLE",
        "OBJECT_SEQUENCE",
        "OBJECT_INDEX",
    }
)
_TRANSACTION_COMMANDS = {
    "START": "START TRANSACTION",
    "ROLLBACK_TO": "ROLLBACK TO SAVEPOINT",
    "PREPARE": "PREPARE TRANSACTION",
}
_TOO_DEEP = ("stack depth limit exceeded", "memory exhausted")
_TOO_DEEP_MESSAGE = "raw SQL is nested too deeply to check; simplify the statement"
_FALSE_WORDS = frozenset({"false", "off"})
_VERBS = {
    "AlterSeqStmt": "alter_sequence",
    "CheckPointStmt": "checkpoint",
    "ClosePortalStmt": "close",
    "CompositeTypeStmt": "create_type",
    "ConstraintsSetStmt": "set_constraints",
    "CreateEnumStmt": "create_type",
    "CreateRangeStmt": "create_type",
    "CreateSeqStmt": "create_sequence",
    "CreateStmt": "create_table",
    "CreateTrigStmt": "create_trigger",
    "CreatedbStmt": "create_database",
    "DeclareCursorStmt": "declare",
    "DropdbStmt": "drop_database",
    "IndexStmt": "create_index",
    "RefreshMatViewStmt": "refresh_materialized_view",
    "RuleStmt": "create_rule",
    "SecLabelStmt": "security_label",
    "VariableShowStmt": "show",
    "ViewStmt": "create_view",
}


@dataclass(frozen=True)
class RawStatement:
    """One checked raw statement: its kind, its span name and the tables it names, as SQL spells them."""

    sql: str
    kind: Kind
    span_name: str
    tables: tuple[str, ...]


def require_service_role(role: str) -> None:
    """Refuse raw SQL unless the request runs as the service role."""
    if role != "service":
        raise RawSqlForbidden(
            f"raw SQL is for the service role only, and this request runs as {role!r}",
            details={"role": role},
            hint="use the JSON query language, or call from a function that runs as the service role",
        )


@functools.lru_cache(maxsize=1024)  # a function sends the same statements request after request
def inspect_raw_sql(sql: str) -> RawStatement:
    """Check that `sql` is one statement the request may run, and classify it.

    - read: SELECT, VALUES, TABLE, SHOW and EXPLAIN (EXPLAIN ANALYZE takes the kind of what it runs);
    - write: INSERT, UPDATE, DELETE, MERGE, and TRUNCATE and REFRESH MATERIALIZED VIEW because they change
      rows; a SELECT with a data-modifying WITH or a locking clause (FOR UPDATE/SHARE);
    - ddl: CREATE, ALTER, DROP, GRANT, REVOKE, COMMENT, SECURITY LABEL, and SELECT ... INTO (a new table);
    - other: SET LOCAL, RESET, CALL, NOTIFY, LOCK, VACUUM, ...

    `tables` lists the relations named, the target first and then in the order written, each spelled as
    SQL spells it (`public."Orders"`), schema-qualified where the statement qualifies it; the span name is
    `sql:<verb>(<first table>)` or `sql:<verb>`.

    Refused with InvalidRawSql: a syntax error, no statement or more than one, transaction control
    (BEGIN, COMMIT, SAVEPOINT, SET TRANSACTION: the request owns its transaction), anything that changes the
    role (SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE or ALL, a literal `set_config('role', ...)`), any of
    Flux's own settings (`flux.claims`, which row-level security reads, `flux.request_id`, ...), any COPY
    (to or from a server file or program, to STDOUT or from STDIN: the host call carries no copy stream),
    built-ins that run SQL given as text (query_to_xml, ts_stat, ...) and an aggregate or cast that would
    call one of those or set_config under another name, CREATE FUNCTION, PROCEDURE, LANGUAGE and EXTENSION
    (code no check here sees). And what would outlive the request on its pooled connection: a session-wide
    SET (SET LOCAL only), set_config unless its third argument is a literal true, session advisory locks,
    setseed, a cursor WITH HOLD, LISTEN, UNLISTEN and LOAD, and PREPARE, EXECUTE, DEALLOCATE and DISCARD (the
    session is Flux's). Nor may it change a limit on the request's time (statement_timeout, lock_timeout,
    idle_in_transaction_session_timeout, transaction_timeout, idle_session_timeout) in any form, SET LOCAL,
    RESET or set_config(..., true) included, nor write pg_settings (set_config in another form). The kind is
    what the statement says; a function it calls may still write, so the role's grants remain the fence.
    """
    statement = _parse_one(sql)
    node_type, fields = _unwrap(statement)
    _refuse_escapes(node_type, fields)
    tables = _tables(node_type, fields)
    kind = _kind(node_type, fields)
    if kind != "read" and not _PG_SETTINGS.isdisjoint(tables):
        raise InvalidRawSql(
            "raw SQL may only read pg_settings: a write to it (or a view over it) is set_config, for the"
            " session; read settings with current_setting()",
            details={"table": "pg_settings"},
        )
    verb = _verb(node_type, fields)
    span_name = f"sql:{verb}({tables[0]})" if tables else f"sql:{verb}"
    return RawStatement(sql=sql, kind=kind, span_name=span_name, tables=tables)


def _parse_one(sql: str) -> Any:
    if "\x00" in sql:
        # libpg_query reads a C string, so it would check only the text before the NUL.
        raise InvalidRawSql(
            "raw SQL contains a NUL character; remove it", details=_position(sql, sql.index("\x00"))
        )
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except parser.ParseError as exc:
        message, index = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        where = _position(sql, len(sql) if index is None else index)
        if message.startswith(_TOO_DEEP):
            raise InvalidRawSql(_TOO_DEEP_MESSAGE, details={**where, "error": message}) from exc
        raise InvalidRawSql(
            f"raw SQL does not parse ({message}) at line {where['line']}, column {where['column']}; fix it",
            details={**where, "error": message},
        ) from exc
    except UnicodeEncodeError as exc:
        raise InvalidRawSql(
            "raw SQL is not valid Unicode text (it holds a lone surrogate); send UTF-8 text",
            details=_position(sql, exc.start),
        ) from exc
    except RecursionError as exc:
        # pglast's own tree builder recurses in C and crashes the process on such input; the JSON tree
        # is built by libpg_query with a stack check and decoded by json with a recursion check.
        raise InvalidRawSql(_TOO_DEEP_MESSAGE) from exc
    statements = tree.get("stmts", [])
    if not statements:
        raise InvalidRawSql("raw SQL holds no statement; send exactly one SQL statement")
    if len(statements) > 1:
        second = len(sql.encode()[: statements[1].get("stmt_location", 0)].decode(errors="ignore"))
        raise InvalidRawSql(
            f"raw SQL must be one statement, not {len(statements)}; send each statement on its own",
            details={"statements": len(statements), **_position(sql, second)},
        )
    return statements[0]["stmt"]


def _position(sql: str, index: int) -> dict[str, int]:
    line_start = sql.rfind("\n", 0, index) + 1
    return {"line": sql.count("\n", 0, index) + 1, "column": index - line_start + 1}


def _unwrap(node: Any) -> tuple[str, Fields]:
    ((node_type, fields),) = node.items()
    return node_type, fields


def _nodes(root: Any) -> Iterator[tuple[str | None, Fields]]:
    """Every dict in the tree, depth first, with its node type when the JSON names it."""
    stack: list[tuple[str | None, Any]] = [(None, root)]
    while stack:
        node_type, value = stack.pop()
        if isinstance(value, list):
            stack.extend((None, item) for item in reversed(value))
        elif isinstance(value, dict):
            if len(value) == 1:
                ((key, inner),) = value.items()
                if key[:1].isupper() and isinstance(inner, dict):
                    stack.append((key, inner))
                    continue
            yield node_type, value
            stack.extend((None, item) for item in reversed(value.values()))


def _refuse_escapes(node_type: str, fields: Fields) -> None:
    if node_type == "TransactionStmt":
        kind = str(fields.get("kind", "")).removeprefix("TRANS_STMT_")
        command = _TRANSACTION_COMMANDS.get(kind, kind.replace("_", " "))
        raise InvalidRawSql(
            f"raw SQL may not control the transaction ({command}); the request commits or rolls back itself",
            details={"statement": command},
        )
    if node_type in _SESSION_STATEMENTS:
        command = _SESSION_STATEMENTS[node_type]
        raise InvalidRawSql(
            f"raw SQL may not {command}: the connection's session is Flux's, shared by requests",
            details={"statement": command.split()[0].upper()},
        )
    if node_type == "DoStmt":
        raise InvalidRawSql(
            "raw SQL may not run a DO block (its body could change the role); send plain statements",
            details={"statement": "DO"},
        )
    if node_type == "CopyStmt" and ("filename" in fields or fields.get("is_program")):
        raise InvalidRawSql(
            "raw SQL may not COPY to or from a server file or program; select or insert the rows instead",
            details={"statement": "COPY"},
        )
    if node_type == "CopyStmt":  # to STDOUT or from STDIN: the host call carries no copy stream
        way = "FROM STDIN" if fields.get("is_from") else "TO STDOUT"
        raise InvalidRawSql(
            f"raw SQL may not COPY {way}; select the rows, or insert them (INSERT ... SELECT * FROM"
            " jsonb_to_recordset($1) takes many at once)",
            details={"statement": f"COPY {way}"},
        )
    if node_type == "DeclareCursorStmt" and int(fields.get("options", 0)) & _CURSOR_OPT_HOLD:
        raise InvalidRawSql(
            "raw SQL may not DECLARE a cursor WITH HOLD: it would outlive the request on a shared connection;"
            " declare it WITHOUT HOLD",
            details={"statement": "DECLARE WITH HOLD"},
        )
    if node_type in _NAMES_FUNCTIONS:  # CREATE AGGREGATE ... (SFUNC = set_config) calls it under another name
        for inner_type, inner in _nodes(fields):
            name = str(inner.get("sval", "")) if inner_type == "String" else ""
            if name == "set_config" or name in _REFUSED_FUNCTIONS:
                raise InvalidRawSql(
                    f"raw SQL may not make {name} callable under another name", details={"function": name}
                )
    # A SET can also sit inside CREATE FUNCTION ... SET or ALTER ROLE ... SET, where its fields are bare.
    for inner_type, inner in _nodes(fields):
        if inner_type == "FuncCall":
            _refuse_call(inner)
            _refuse_set_config(inner)
        elif inner.get("kind") == "VAR_RESET_ALL":
            _refuse_setting("role")  # RESET ALL drops the request's role with every other setting
        elif str(inner.get("kind", "")).startswith("VAR_"):
            _refuse_setting(str(inner.get("name", "")).lower())
    if node_type in _MAKES_CODE:
        command = _MAKES_CODE[node_type]
        if node_type == "CreateFunctionStmt" and fields.get("is_procedure"):
            command = "CREATE PROCEDURE"
        raise InvalidRawSql(
            f"raw SQL may not {command}: no check here sees what its code runs; create it in a migration",
            details={"statement": command},
        )
    if (
        node_type == "VariableSetStmt"
        and str(fields.get("kind", "")).startswith("VAR_SET")
        and (not fields.get("is_local"))
    ):
        name = str(fields.get("name", "")).lower()
        raise InvalidRawSql(
            f"raw SQL may SET {name} only for the request's transaction: use SET LOCAL (a session-wide SET"
            " would hold for the next requests on the connection)",
            details={"setting": name},
        )


def _refuse_setting(name: str) -> None:
    if name.startswith("flux."):
        raise InvalidRawSql(
            f"raw SQL may not change {name}; Flux sets the request's id, claims and tenant itself",
            details={"setting": name},
        )
    if name in _ROLE_SETTINGS:
        raise InvalidRawSql(
            f"raw SQL may not change the role ({name}); it runs as the request's role",
            details={"setting": name},
        )
    if name in _TIMEOUT_SETTINGS:
        raise InvalidRawSql(
            f"raw SQL may not change {name}: it bounds the request's time; make the statement faster, or"
            " split its work over requests or jobs",
            details={"setting": name},
        )
    if name in _TRANSACTION_SETTINGS:
        shown = f"SET {name.upper()}" if name in _TRANSACTION_COMMAND_SETTINGS else name
        raise InvalidRawSql(
            f"raw SQL may not change the transaction ({shown}); the request owns its transaction",
            details={"setting": name},
        )


def _refuse_call(call: Fields) -> None:
    funcname = call.get("funcname", [])
    name = _sval(funcname[-1]) if funcname else ""
    # ts_rewrite(query, select) runs its second argument as SQL; its three-argument form does not.
    why = _RUNS_TEXT if name == "ts_rewrite" and len(call.get("args", [])) == 2 else None
    why = _REFUSED_FUNCTIONS.get(name, why)
    if why is not None:
        raise InvalidRawSql(
            f"raw SQL may not call {name}: it {why}",
            details={"function": name},
            hint="send the statement itself",
        )


def _refuse_set_config(call: Fields) -> None:
    funcname, args = call.get("funcname", []), call.get("args", [])
    if funcname and _sval(funcname[-1]) == "set_config" and args:
        setting = args[0].get("A_Const", {}).get("sval", {}).get("sval")
        if not isinstance(setting, str):  # a computed name ('ro' || 'le') could be the role
            raise InvalidRawSql(
                "raw SQL may call set_config only with a literal setting name",
                details={"function": "set_config"},
            )
        _refuse_setting(setting.lower())
        if len(args) != 3 or not _literal_true(args[2]):  # false, or computed: the session's, for good
            raise InvalidRawSql(
                f"raw SQL may call set_config only for the request's transaction: pass true, literally, as"
                f" its third argument (set_config('{setting}', ..., true))",
                details={"function": "set_config", "setting": setting.lower()},
            )


def _literal_true(node: Any) -> bool:
    """Whether `node` is the constant true as a literal (`true`, `'on'`, ...), not an expression."""
    constant = node.get("A_Const") if isinstance(node, dict) else None
    if not isinstance(constant, dict):
        return False
    if "boolval" in constant:
        return bool(constant["boolval"].get("boolval"))
    text = constant.get("sval", {}).get("sval")
    return isinstance(text, str) and text.strip().lower() in _TRUE_WORDS


def _kind(node_type: str, fields: Fields) -> Kind:
    if node_type == "SelectStmt":
        if "intoClause" in fields:
            return "ddl"
        for inner_type, _ in _nodes(fields):
            if inner_type in _MODIFYING or inner_type == "LockingClause":
                return "write"
        return "read"
    if node_type == "ExplainStmt":
        return _kind(*_unwrap(fields["query"])) if _explain_analyzes(fields) else "read"
    if node_type == "VariableShowStmt":
        return "read"
    if node_type in _WRITES:
        return "write"
    if node_type in _DDL or node_type.startswith(("Create", "Alter", "Drop")):
        return "ddl"
    return "other"


def _explain_analyzes(fields: Fields) -> bool:
    for option in fields.get("options", []):
        element = option["DefElem"]
        if element.get("defname") != "analyze":
            continue
        if "arg" not in element:
            return True
        # The JSON tree leaves out false and zero values.
        arg_type, arg = _unwrap(element["arg"])
        if arg_type == "String":
            return str(arg.get("sval", "")).lower() not in _FALSE_WORDS
        if arg_type == "Integer":
            return bool(arg.get("ival", 0))
        if arg_type == "Boolean":
            return bool(arg.get("boolval", False))
        return True
    return False


def _tables(node_type: str, fields: Fields) -> tuple[str, ...]:
    """The relations the statement names: its target first, then the others in the order written."""
    cte_names = {inner["ctename"] for kind, inner in _nodes(fields) if kind == "CommonTableExpr"}
    found: list[tuple[int, str]] = []
    for _, inner in _nodes(fields):
        if "relname" in inner and "relpersistence" in inner:
            if "schemaname" in inner or inner["relname"] not in cte_names:
                found.append((inner.get("location", 0), _range_var_name(inner)))
    found.sort(key=lambda item: item[0])
    names = [name for _, name in found]
    target = _target(node_type, fields)
    if target is not None:
        names.insert(0, _range_var_name(target))
    if node_type == "DropStmt" and fields.get("removeType") in _RELATION_OBJECTS:
        names.extend(_qualified(_items(obj)) for obj in fields.get("objects", []))
    if node_type == "CommentStmt":
        objtype, parts = fields.get("objtype"), _items(fields.get("object", {}))
        if objtype in _RELATION_OBJECTS:
            names.append(_qualified(parts))
        elif objtype == "OBJECT_COLUMN" and len(parts) > 1:
            names.append(_qualified(parts[:-1]))
    return tuple(dict.fromkeys(names))


def _target(node_type: str, fields: Fields) -> Fields | None:
    if node_type == "ExplainStmt":
        return _target(*_unwrap(fields["query"]))
    target: Fields | None = None
    if node_type in _MODIFYING:
        target = fields["relation"]
    elif node_type == "SelectStmt" and "intoClause" in fields:
        target = fields["intoClause"]["rel"]
    elif node_type == "CreateTableAsStmt":
        target = fields["into"]["rel"]
    return target


def _range_var_name(range_var: Fields) -> str:
    parts = [range_var.get(part) for part in ("catalogname", "schemaname", "relname")]
    return ".".join(maybe_double_quote_name(part) for part in parts if part)


def _items(node: Any) -> list[Any]:
    """The items of a `List` node, or the list itself."""
    if isinstance(node, dict):
        items: list[Any] = node.get("List", {}).get("items", [])
        return items
    return list(node)


def _sval(node: Any) -> str:
    return str(node.get("String", {}).get("sval", ""))


def _qualified(items: list[Any]) -> str:
    return ".".join(maybe_double_quote_name(_sval(item)) for item in items)


def _verb(node_type: str, fields: Fields) -> str:
    if node_type in _VERBS:
        return _VERBS[node_type]
    if node_type == "SelectStmt" and "intoClause" in fields:
        return "create_table"
    if node_type in ("DropStmt", "AlterTableStmt", "CreateTableAsStmt", "DefineStmt"):
        action = {"DropStmt": "drop", "AlterTableStmt": "alter"}.get(node_type, "create")
        objtype = fields.get("removeType") or fields.get("objtype") or fields.get("kind") or ""
        return f"{action}_{_object_name(objtype)}"
    if node_type in ("GrantStmt", "GrantRoleStmt"):
        return "grant" if fields.get("is_grant") else "revoke"
    if node_type == "CreateFunctionStmt":
        return "create_procedure" if fields.get("is_procedure") else "create_function"
    if node_type == "VariableSetStmt":
        return "reset" if str(fields.get("kind", "")).startswith("VAR_RESET") else "set"
    if node_type == "VacuumStmt":
        return "vacuum" if fields.get("is_vacuumcmd") else "analyze"
    if node_type == "FetchStmt":
        return "move" if fields.get("ismove") else "fetch"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", node_type.removesuffix("Stmt")).lower()


def _object_name(objtype: str) -> str:
    name = objtype.removeprefix("OBJECT_").lower()
    return "materialized_view" if name == "matview" else name
