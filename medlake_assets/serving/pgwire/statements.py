"""The statement allow-list of `medlake serve-sql`, from real parsers, never from regular expressions.

Every statement a client sends is split and classified with DuckDB's own tokenizer (comments and string
literals are tokens, so `/* x */ SET GLOBAL ...` is still a SET), then:
- session commands the server answers itself: transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT,
  RELEASE, ROLLBACK TO), `SET`/`RESET` of a short list of per-session options, `SHOW` of a PostgreSQL
  parameter, `DISCARD`/`DEALLOCATE`/`CLOSE`;
- queries: DuckDB's parser must find exactly one SELECT (plain, WITH, VALUES, SHOW/DESCRIBE/SUMMARIZE of
  a relation), optionally under a plain `EXPLAIN`. Its parse tree (`json_serialize_sql`) is walked: every
  relation must be in a schema the login may read (or a PostgreSQL catalog relation the server emulates),
  every table function on a short allow-list (no `read_*`, `query`, `iceberg_scan`, `glob`,
  `postgres_*`, ...), every other function a DuckDB built-in not on the deny-list (`current_setting`,
  `getvariable`, ...) or one of the emulated PostgreSQL catalog functions.
Anything else is refused with a `Refused` error naming what and why; nothing reaches DuckDB.

The tree also gives what the audit log records (the relations a query touches) and PostgreSQL's column
names (`count(*)` is named `count`), and catalog queries are rewritten on the tree (`pg_catalog.pg_class`
to the emulated relation) and turned back into SQL with `json_deserialize_sql`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb

from medlake_assets.errors import MedlakeError

# Table functions a query may call: none reads a file, a URL, a database or a SQL string.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {"range", "generate_series", "unnest", "repeat", "json_each", "json_tree", "pg_timezone_names"}
)
# Built-in scalar functions that reveal or change server state.
DENIED_FUNCTIONS = frozenset(
    {"getenv", "getvariable", "current_setting", "write_log", "which_secret", "set_config"}
)
# PostgreSQL's multi-word SHOW spellings and the parameter each shows.
SHOW_ALIASES = {"transaction_isolation_level": "transaction_isolation", "time_zone": "timezone"}
# Functions DuckDB's parser produces that its function list does not name (special forms).
PARSER_FUNCTIONS = frozenset(
    {
        "unnest",
        "unlist",
        "grouping",
        "grouping_id",
        "coalesce",
        "ifnull",
        "try",
        "extract",
        "current_timestamp",
    }
)
TRANSACTION_WORDS = frozenset(
    {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"}
)
NOOP_WORDS = frozenset({"DISCARD", "DEALLOCATE", "CLOSE", "UNLISTEN"})
PRIVATE_SCHEMA = "medlake_pg"  # the emulated pg_catalog, inside the client's database
PRIVATE_INFORMATION_SCHEMA = "medlake_information_schema"
PUBLIC_CATALOG = "medlake"
# Statements DuckDB parses but cannot serialize: named in the refusal.
_WRITE_KINDS = {"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "COPY", "ATTACH", "DETACH", "PRAGMA"}
_WRITE_KINDS |= {"CALL", "CHECKPOINT", "LOAD", "INSTALL", "EXPORT", "IMPORT", "VACUUM", "USE", "PREPARE"}
_WRITE_KINDS |= {"EXECUTE", "MERGE", "TRUNCATE", "GRANT", "REVOKE", "COMMENT", "UPDATE_EXTENSIONS"}


class Refused(MedlakeError):
    """A statement the endpoint does not run; `sqlstate` says which class of refusal."""

    def __init__(self, message: str, sqlstate: str = "42501"):
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Catalog:
    """What one login's database exposes, for checking and rewriting its queries."""

    readable_schemas: frozenset[str]
    pg_relations: frozenset[str]
    information_schema_relations: frozenset[str]
    pg_functions: frozenset[str]
    builtin_functions: frozenset[str]
    empty_relations: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Statement:
    """One classified statement."""

    kind: str  # query | explain | set | reset | show | transaction | noop
    sql: str = ""
    words: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    column_names: dict[int, str] = field(default_factory=dict)
    setting: str = ""
    value: str | None = None
    parameter_count: int = 0


# --- tokens ---

_TOKEN_TEXT = {
    duckdb.token_type.identifier: re.compile(r'"(?:[^"]|"")*"|[^\s(),;=.:\[\]]+'),
    duckdb.token_type.keyword: re.compile(r"[A-Za-z_][A-Za-z0-9_$]*"),
    duckdb.token_type.string_const: re.compile(r"[EeXxBb]?'(?:[^']|'')*'|\$([A-Za-z_]*)\$.*?\$\1\$", re.S),
    duckdb.token_type.numeric_const: re.compile(r"[0-9.][0-9.eE+-]*"),
    duckdb.token_type.operator: re.compile(r"::|<>|!=|<=|>=|\|\||[^\sA-Za-z0-9_]"),
}


def tokens(sql: str) -> list[tuple[int, str, Any]]:
    """(start, text, type) of each token; comments are not tokens."""
    found = []
    for start, kind in duckdb.tokenize(sql):
        pattern = _TOKEN_TEXT.get(kind)
        match = pattern.match(sql, start) if pattern else None
        found.append((start, match.group(0) if match else sql[start], kind))
    return found


def split(sql: str) -> list[str]:
    """The statements of `sql`, split on `;` tokens (never in literals or comments); empty ones dropped."""
    statements, start = [], 0
    for position, text, kind in tokens(sql):
        if kind == duckdb.token_type.operator and text == ";":
            statements.append(sql[start:position])
            start = position + 1
    statements.append(sql[start:])
    return [statement for statement in statements if tokens(statement)]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text


# --- session commands ---


def _set_statement(words: list[str], texts: list[str]) -> Statement:
    """SET [SESSION|LOCAL] name {TO|=} value | SET TIME ZONE value | RESET name|ALL."""
    upper = [word.upper() for word in words]
    if upper[0] == "RESET":
        name = ".".join(_unquote(text) for text in texts[1:] if text != ".").lower()
        return Statement("reset", words=tuple(upper), setting=name)
    position = 1
    if len(upper) > 1 and upper[1] == "GLOBAL":
        raise Refused("SET GLOBAL is refused: a client may only change its own session", "42501")
    if len(upper) > 1 and upper[1] in ("SESSION", "LOCAL"):
        position = 2
    rest = upper[position:]
    if rest[:2] == ["CHARACTERISTICS", "AS"] or rest[:1] == ["TRANSACTION"]:
        return Statement("set", words=tuple(upper), setting="transaction", value=" ".join(rest))
    if rest[:2] == ["TIME", "ZONE"]:
        return Statement("set", words=tuple(upper), setting="timezone", value=_unquote(texts[position + 2]))
    name_parts, index = [], position
    while index < len(texts) and upper[index] not in ("TO", "="):
        if texts[index] != ".":
            name_parts.append(_unquote(texts[index]))
        index += 1
    if index >= len(texts) or not name_parts:
        raise Refused("SET needs a name and a value (SET name = value)", "42601")
    value = " ".join(_unquote(text) for text in texts[index + 1 :])
    return Statement("set", words=tuple(upper), setting=".".join(name_parts).lower(), value=value)


def session_command(sql: str) -> Statement | None:
    """The statement if the server answers it itself, else None (it is a query for DuckDB)."""
    found = tokens(sql)
    texts = [text for _, text, _ in found]
    words = [text for _, text, kind in found if kind != duckdb.token_type.operator or text in ("=", ".")]
    if not texts:
        return None
    first = texts[0].upper()
    if first in TRANSACTION_WORDS:
        return Statement("transaction", words=tuple(text.upper() for text in texts), sql=sql)
    if first in ("SET", "RESET"):
        return _set_statement(words, [text for text in texts if text not in (",",)])
    if first in NOOP_WORDS:
        return Statement("noop", words=tuple(text.upper() for text in texts))
    if first == "SHOW" and len(texts) > 1:
        name = "_".join(_unquote(text) for text in texts[1:] if text != ".").lower()
        name = SHOW_ALIASES.get(name, name)
        if "." in texts:  # SHOW medlake.as_of
            name = ".".join(_unquote(text) for text in texts[1:] if text != ".").lower()
        return Statement("show", words=tuple(text.upper() for text in texts), setting=name)
    return None


# --- queries ---


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _cte_names(tree: Any) -> set[str]:
    names = set()
    for node in _walk(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            names |= {entry["key"].lower() for entry in cte_map.get("map", [])}
    return names


class Checker:
    """Checks (and, for catalog queries, rewrites) the parse tree of one SELECT for one login."""

    def __init__(self, catalog: Catalog, sql: str = ""):
        self.catalog = catalog
        self.sql = sql
        self.relations: set[str] = set()
        self.rewritten = False
        self.parameter_count = 0

    def _relation(self, node: dict[str, Any], ctes: set[str]) -> None:
        catalog_name = (node.get("catalog_name") or "").lower()
        schema = (node.get("schema_name") or "").lower()
        name = (node.get("table_name") or "").lower()
        if node.get("at_clause"):
            raise Refused("AT (VERSION/TIMESTAMP) is refused; use SET medlake.as_of = '<snapshot or time>'")
        if catalog_name not in ("", PUBLIC_CATALOG):
            raise Refused(f'database "{catalog_name}" is not available on medlake serve-sql')
        if not schema:
            if name in ctes:
                return
            if name in self.catalog.pg_relations:
                node["schema_name"], node["catalog_name"] = PRIVATE_SCHEMA, PUBLIC_CATALOG
                self.rewritten = True
                return
            raise Refused(
                f'relation "{name}" is not available: name it with its schema (e.g. silver.lab_results)',
                "42P01",
            )
        if schema == "pg_catalog":
            if name not in self.catalog.pg_relations:
                raise Refused(f"pg_catalog.{name} is not available on medlake serve-sql", "42P01")
            node["schema_name"], node["catalog_name"] = PRIVATE_SCHEMA, PUBLIC_CATALOG
            self.rewritten = True
            return
        if schema == "information_schema":
            if name not in self.catalog.information_schema_relations:
                raise Refused(f"information_schema.{name} is not available on medlake serve-sql", "42P01")
            node["schema_name"], node["catalog_name"] = PRIVATE_INFORMATION_SCHEMA, PUBLIC_CATALOG
            self.rewritten = True
            return
        if schema not in self.catalog.readable_schemas:
            raise Refused(f"permission denied for schema {schema}")
        self.relations.add(f"{schema}.{name}")

    def _function(self, node: dict[str, Any]) -> None:
        name = (node.get("function_name") or "").lower()
        schema = (node.get("schema") or "").lower()
        if node.get("catalog") not in (None, "", PUBLIC_CATALOG):
            raise Refused(f"function {name} is not available on medlake serve-sql")
        if name in self.catalog.pg_functions and schema in ("", "pg_catalog", PRIVATE_SCHEMA):
            node["schema"], node["catalog"] = PRIVATE_SCHEMA, PUBLIC_CATALOG
            self.rewritten = True
            return
        if schema not in ("", "pg_catalog", "main"):
            raise Refused(f"function {schema}.{name} is not available on medlake serve-sql")
        if name in DENIED_FUNCTIONS or name not in self.catalog.builtin_functions:
            raise Refused(f"function {name} is not available on medlake serve-sql")
        if schema:
            node["schema"] = ""
            self.rewritten = True

    def check(self, tree: Any) -> None:
        ctes = _cte_names(tree)
        for node in _walk(tree):
            kind = node.get("type")
            if kind == "BASE_TABLE":
                self._relation(node, ctes)
            elif kind == "TABLE_FUNCTION":
                function = node.get("function") or {}
                name = (function.get("function_name") or "").lower()
                if function.get("schema", "").lower() == "pg_catalog":
                    function["schema"] = ""
                    self.rewritten = True
                if name not in ALLOWED_TABLE_FUNCTIONS or function.get("schema"):
                    raise Refused(
                        f"table function {name} is not available on medlake serve-sql: tables are read "
                        "by their names (e.g. SELECT ... FROM silver.lab_results)"
                    )
                function["function_name"] = "__checked__" + name  # not checked again as a scalar
            elif kind == "SHOW_REF" and node.get("show_type") == "SHOW_UNQUALIFIED":
                if _unquote(node.get("table_name") or "").lower() != "tables":
                    raise Refused("only SHOW TABLES and SHOW of a PostgreSQL parameter are available")
            elif kind == "SHOW_REF" and (node.get("table_name") or node.get("schema_name")):
                self._relation(node, ctes)
            elif node.get("class") == "FUNCTION" and not node.get("is_operator"):
                if (node.get("function_name") or "").startswith("__checked__"):
                    node["function_name"] = node["function_name"].removeprefix("__checked__")
                    continue
                self._regex_operator(node)
                self._function(node)
            elif node.get("class") == "WINDOW" and node.get("type") == "WINDOW_AGGREGATE":
                self._function(node)
            elif kind == "UNBOUND" and isinstance(node.get("type_info"), dict):
                self._type(node["type_info"])
            elif node.get("class") == "PARAMETER":
                identifier = str(node.get("identifier") or "0")
                if identifier.isdigit():
                    self.parameter_count = max(self.parameter_count, int(identifier))
            elif node.get("class") == "CAST" and self._regclass_literal(node):
                continue
            elif node.get("class") == "COLUMN_REF":
                names = node.get("column_names") or []
                # pg_catalog.pg_class.relname: the table is renamed, so the column keeps its table only
                if len(names) >= 3 and names[0].lower() in ("pg_catalog", "information_schema"):
                    node["column_names"] = names[1:]
                    self.rewritten = True
        for node in _walk(tree):  # restore table function names
            if node.get("class") == "FUNCTION" and (node.get("function_name") or "").startswith(
                "__checked__"
            ):
                node["function_name"] = node["function_name"].removeprefix("__checked__")

    def simplify_empty(self, tree: Any) -> None:
        """A query over an always-empty emulated relation (pg_policy, pg_trigger, ...) returns no rows
        whatever its select list says: what is not a plain column becomes NULL, since some of it does not
        bind in DuckDB (psql's policy listing: `oid = ANY(SELECT unnest(pol.polroles))`) or names
        PostgreSQL functions nothing else needs (`pg_get_statisticsobjdef_columns`)."""
        for node in _walk(tree):
            source = node.get("from_table") if node.get("type") == "SELECT_NODE" else None
            if not any(
                (leaf.get("table_name") or "").lower() in self.catalog.empty_relations
                and (leaf.get("schema_name") or "").lower() in ("", "pg_catalog", PRIVATE_SCHEMA)
                for leaf in _inner_join_leaves(source)
            ):
                continue
            for index, item in enumerate(node.get("select_list") or []):
                if item.get("class") not in ("COLUMN_REF", "STAR"):
                    node["select_list"][index] = {
                        "class": "CONSTANT",
                        "type": "VALUE_CONSTANT",
                        "alias": item.get("alias", ""),
                        "query_location": item.get("query_location"),
                        "value": {"type": {"id": "NULL", "type_info": None}, "is_null": True},
                    }
                    self.rewritten = True

    def _regclass_literal(self, node: dict[str, Any]) -> bool:
        """`'pg_class'::regclass` (JDBC, psql): a relation name cast to its oid, looked up in the
        emulated catalog (`medlake_pg.regclass_oid`)."""
        info = (node.get("cast_type") or {}).get("type_info") or {}
        child = node.get("child") or {}
        if (info.get("name") or "").lower() != "regclass" or child.get("class") != "CONSTANT":
            return False
        if (child.get("value") or {}).get("type", {}).get("id") != "VARCHAR":
            return False
        replacement = {
            "class": "FUNCTION",
            "type": "FUNCTION",
            "alias": node.get("alias", ""),
            "query_location": node.get("query_location"),
            "function_name": "regclass_oid",
            "schema": PRIVATE_SCHEMA,
            "catalog": PUBLIC_CATALOG,
            "children": [child],
            "filter": None,
            "order_bys": {"type": "ORDER_MODIFIER", "orders": []},
            "distinct": False,
            "is_operator": False,
            "export_state": False,
        }
        node.clear()
        node.update(replacement)
        self.rewritten = True
        return True

    def _regex_operator(self, node: dict[str, Any]) -> None:
        """PostgreSQL's `~` matches anywhere in the text; DuckDB parses it as a full match. The operator
        (not an explicit regexp_full_match call) gets PostgreSQL's meaning."""
        if (node.get("function_name") or "").lower() != "regexp_full_match":
            return
        location = node.get("query_location", -1)
        at = self.sql[location] if 0 <= location < len(self.sql) else "~"
        if at in "~!":
            node["function_name"] = "regexp_matches"
            self.rewritten = True

    def _type(self, info: dict[str, Any]) -> None:
        if (info.get("schema") or "").lower() == "pg_catalog":
            info["schema"], info["catalog"] = PRIVATE_SCHEMA, PUBLIC_CATALOG
            self.rewritten = True


def _inner_join_leaves(source: Any) -> list[dict[str, Any]]:
    """The base tables of a FROM made of inner joins only (one empty table empties the result)."""
    if not isinstance(source, dict):
        return []
    if source.get("type") == "BASE_TABLE":
        return [source]
    if source.get("type") == "JOIN" and source.get("join_type") == "INNER":
        return _inner_join_leaves(source.get("left")) + _inner_join_leaves(source.get("right"))
    return []


def _pg_column_names(statement: dict[str, Any]) -> dict[int, str]:
    """PostgreSQL's names for unaliased function columns (`count(*)` is `count`, `max(x)` is `max`)."""
    node = statement.get("node") or {}
    while node.get("type") == "SET_OPERATION_NODE":
        node = node.get("left") or {}
    items = node.get("select_list") or []
    if any(item.get("class") in ("STAR", "COLUMNS") for item in items):
        return {}
    names = {}
    for index, item in enumerate(items):
        if item.get("alias") or item.get("class") not in ("FUNCTION", "WINDOW"):
            continue
        name = (item.get("function_name") or "").lower()
        if item.get("is_operator") or not name:
            continue
        names[index] = "count" if name == "count_star" else name
    return names


# PostgreSQL spellings DuckDB's parser reads differently, in catalog queries only (they name pg_catalog).
_CATALOG_SPELLINGS = (
    (re.compile(r"OPERATOR\(\s*pg_catalog\.([~!=<>]+)\s*\)", re.IGNORECASE), r"\1"),
    (re.compile(r"\s+COLLATE\s+pg_catalog\.\"?default\"?", re.IGNORECASE), ""),
    # `x::pg_catalog.text`: DuckDB does not parse a schema-qualified type after `::`; the emulated types
    # are first on the search path.
    (re.compile(r"::\s*pg_catalog\.", re.IGNORECASE), "::"),
)


def _serialized(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    result = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if result.get("error"):
        raise Refused(
            "medlake serve-sql is read-only: only SELECT queries (with WITH, VALUES, SHOW, DESCRIBE) run",
            "25006",
        )
    return result


def check_query(con: duckdb.DuckDBPyConnection, sql: str, catalog: Catalog) -> Statement:
    """A query the login may run, as a `Statement` with the SQL to execute; `Refused` otherwise."""
    found = tokens(sql)
    first = found[0][1].upper() if found else ""
    explain = first == "EXPLAIN"
    if explain:
        second = found[1][1].upper() if len(found) > 1 else ""
        if second in ("ANALYZE", "ANALYSE", "(") or "ANALYZE" in {text.upper() for _, text, _ in found[1:3]}:
            raise Refused("EXPLAIN ANALYZE runs its statement and is refused; EXPLAIN alone is available")
        sql = sql[found[1][0] :] if len(found) > 1 else ""
    if "pg_catalog" in sql.lower():
        for pattern, replacement in _CATALOG_SPELLINGS:
            sql = pattern.sub(replacement, sql)
    parsed = con.extract_statements(sql)
    if len(parsed) != 1:
        raise Refused("one statement at a time", "42601")
    kind = write_kind(sql) or parsed[0].type.name
    if kind != "SELECT":
        raise Refused(
            f"medlake serve-sql is read-only: {kind} statements are refused "
            "(SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, SET of session options and transactions run)",
            "25006",
        )
    tree = _serialized(con, sql)
    if len(tree["statements"]) != 1:
        raise Refused("one statement at a time", "42601")
    checker = Checker(catalog, sql)
    checker.simplify_empty(tree)
    checker.check(tree)
    if checker.rewritten:
        sql = con.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchone()[0]
    return Statement(
        "explain" if explain else "query",
        sql=("EXPLAIN " + sql) if explain else sql,
        relations=tuple(sorted(checker.relations)),
        column_names={} if explain else _pg_column_names(tree["statements"][0]),
        parameter_count=checker.parameter_count,
    )


def builtin_functions(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """DuckDB's own scalar, aggregate and macro functions (not table functions, not Python UDFs)."""
    rows = con.execute(
        "SELECT DISTINCT lower(function_name) FROM duckdb_functions() WHERE internal "
        "AND function_type IN ('scalar', 'aggregate', 'macro')"
    ).fetchall()
    return (frozenset(name for (name,) in rows) | PARSER_FUNCTIONS) - DENIED_FUNCTIONS


def write_kind(sql: str) -> str | None:
    """The first keyword when it names a write, for clear refusals of statements DuckDB cannot parse."""
    found = tokens(sql)
    word = found[0][1].upper() if found else ""
    return word if word in _WRITE_KINDS else None
