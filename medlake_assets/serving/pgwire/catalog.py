"""A PostgreSQL-shaped catalog of one login's relations, for psql, JDBC, ODBC, SQLAlchemy and Npgsql.

DuckDB's own `pg_catalog` lists every relation of every attached database with DuckDB type ids and
cannot be replaced (it is a system schema). Each client database therefore gets `medlake_pg`, tables
shaped like PostgreSQL's catalog relations (`pg_class`, `pg_attribute`, `pg_type`, `pg_description`,
...) holding only what the login may read, and `medlake_information_schema`, views over DuckDB's
information schema limited the same way. The statement checker sends `pg_catalog.*` and
`information_schema.*` there. Lake relations appear as tables (relkind `r`, `BASE TABLE`), since they
are tables to a BI tool, whatever DuckDB builds them from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from medlake_assets.serving.pgwire import pgtypes
from medlake_assets.serving.pgwire.statements import PRIVATE_INFORMATION_SCHEMA, PRIVATE_SCHEMA
from medlake_assets.spec.descriptions import TableDescription

SERVER_VERSION = "16.0"
# PostgreSQL's oids of the catalog relations clients name in `'pg_class'::regclass`.
SYSTEM_RELATION_OIDS = {"pg_class": 1259, "pg_proc": 1255, "pg_type": 1247, "pg_attribute": 1249}
SYSTEM_RELATION_OIDS |= {"pg_namespace": 2615, "pg_constraint": 2606, "pg_database": 1262}
PG_CATALOG_OID, INFORMATION_SCHEMA_OID, FIRST_SCHEMA_OID, FIRST_RELATION_OID = 11, 13000, 16384, 20000
PG_CLASS_OID, PG_PROC_OID, OWNER_OID = 1259, 1255, 10
# (oid, name, length, category, element oid for arrays); arrays are named _<element>.
_BASE_TYPES = [
    (16, "bool", 1, "B"),
    (17, "bytea", -1, "U"),
    (18, "char", 1, "S"),
    (19, "name", 64, "S"),
    (20, "int8", 8, "N"),
    (21, "int2", 2, "N"),
    (23, "int4", 4, "N"),
    (24, "regproc", 4, "N"),
    (25, "text", -1, "S"),
    (26, "oid", 4, "N"),
    (114, "json", -1, "U"),
    (700, "float4", 4, "N"),
    (701, "float8", 8, "N"),
    (1042, "bpchar", -1, "S"),
    (1043, "varchar", -1, "S"),
    (1082, "date", 4, "D"),
    (1083, "time", 8, "D"),
    (1114, "timestamp", 8, "D"),
    (1184, "timestamptz", 8, "D"),
    (1186, "interval", 16, "T"),
    (1700, "numeric", -1, "N"),
    (2205, "regclass", 4, "N"),
    (2206, "regtype", 4, "N"),
    (2950, "uuid", 16, "U"),
    (3802, "jsonb", -1, "U"),
]
_ARRAY_TYPES = {16: 1000, 17: 1001, 18: 1002, 19: 1003, 20: 1016, 21: 1005, 23: 1007, 25: 1009, 26: 1028}
_ARRAY_TYPES.update({114: 199, 700: 1021, 701: 1022, 1042: 1014, 1043: 1015, 1082: 1182, 1083: 1183})
_ARRAY_TYPES.update({1114: 1115, 1184: 1185, 1186: 1187, 1700: 1231, 2950: 2951, 3802: 3807})
_SPECIAL_TYPES = [(2249, "record", -1, "P", "p"), (2278, "void", 4, "P", "p")]
_PROCS = {"array_recv": 2400, "record_recv": 2402}  # the receive functions Npgsql tells arrays apart by

_DUCKDB_TYPES = {
    "BOOLEAN": 16,
    "BLOB": 17,
    "TINYINT": 21,
    "SMALLINT": 21,
    "UTINYINT": 21,
    "INTEGER": 23,
    "USMALLINT": 23,
    "BIGINT": 20,
    "UINTEGER": 20,
    "HUGEINT": 1700,
    "UBIGINT": 1700,
    "FLOAT": 700,
    "DOUBLE": 701,
    "VARCHAR": 1043,
    "DATE": 1082,
    "TIME": 1083,
    "TIMESTAMP": 1114,
    "TIMESTAMP_NS": 1114,
    "TIMESTAMP_MS": 1114,
    "TIMESTAMP_S": 1114,
    "TIMESTAMP WITH TIME ZONE": 1184,
    "INTERVAL": 1186,
    "UUID": 2950,
    "JSON": 114,
}


def duckdb_type_oid(data_type: str) -> tuple[int, int]:
    """(PostgreSQL type oid, typmod) of a DuckDB column type name."""
    if data_type.startswith("DECIMAL"):
        precision, scale = (int(part) for part in data_type[8:-1].split(","))
        return 1700, ((precision << 16) | scale) + 4
    if data_type.endswith("[]"):
        element, _ = duckdb_type_oid(data_type[:-2])
        return _ARRAY_TYPES.get(element, 1009), -1
    return _DUCKDB_TYPES.get(data_type, 25), -1


@dataclass(frozen=True)
class Relation:
    """One relation a login may read, as its database exposes it."""

    schema: str
    name: str
    columns: tuple[tuple[str, str, bool], ...]  # (name, DuckDB type, nullable)


def _table(con: duckdb.DuckDBPyConnection, name: str, columns: Sequence[tuple[str, str]], rows: list) -> None:
    """`medlake_pg.<name>` with the given (column, DuckDB type) list and rows (tuples)."""
    arrow_types = {
        "BIGINT": pa.int64(),
        "INTEGER": pa.int32(),
        "SMALLINT": pa.int16(),
        "VARCHAR": pa.string(),
        "BOOLEAN": pa.bool_(),
        "REAL": pa.float32(),
        "BIGINT[]": pa.list_(pa.int64()),
        "VARCHAR[]": pa.list_(pa.string()),
        "SMALLINT[]": pa.list_(pa.int16()),
    }
    schema = pa.schema([(column, arrow_types[kind]) for column, kind in columns])
    data = pa.Table.from_pylist([dict(zip(schema.names, row, strict=True)) for row in rows], schema)
    con.register("medlake_catalog_rows", data)
    try:
        con.execute(f"CREATE TABLE {PRIVATE_SCHEMA}.{name} AS SELECT * FROM medlake_catalog_rows")
    finally:
        con.unregister("medlake_catalog_rows")


def _columns(spec: str) -> list[tuple[str, str]]:
    """'name TYPE, name TYPE' as a list of pairs."""
    return [tuple(part.strip().rsplit(" ", 1)) for part in spec.split(",")]  # type: ignore[misc]


_PG_CLASS = _columns(
    "oid BIGINT, relname VARCHAR, relnamespace BIGINT, reltype BIGINT, reloftype BIGINT, relowner BIGINT, "
    "relam BIGINT, relfilenode BIGINT, reltablespace BIGINT, relpages INTEGER, reltuples REAL, "
    "relallvisible INTEGER, reltoastrelid BIGINT, relhasindex BOOLEAN, relisshared BOOLEAN, "
    "relpersistence VARCHAR, relkind VARCHAR, relnatts SMALLINT, relchecks SMALLINT, relhasrules BOOLEAN, "
    "relhastriggers BOOLEAN, relhassubclass BOOLEAN, relrowsecurity BOOLEAN, relforcerowsecurity BOOLEAN, "
    "relispopulated BOOLEAN, relreplident VARCHAR, relispartition BOOLEAN, relrewrite BIGINT, "
    "relfrozenxid BIGINT, relminmxid BIGINT, relacl VARCHAR[], reloptions VARCHAR[], relpartbound VARCHAR, "
    "relhasoids BOOLEAN"
)
_PG_ATTRIBUTE = _columns(
    "attrelid BIGINT, attname VARCHAR, atttypid BIGINT, attstattarget INTEGER, attlen SMALLINT, "
    "attnum SMALLINT, attndims INTEGER, attcacheoff INTEGER, atttypmod INTEGER, attbyval BOOLEAN, "
    "attalign VARCHAR, attstorage VARCHAR, attcompression VARCHAR, attnotnull BOOLEAN, atthasdef BOOLEAN, "
    "atthasmissing BOOLEAN, attidentity VARCHAR, attgenerated VARCHAR, attisdropped BOOLEAN, "
    "attislocal BOOLEAN, attinhcount INTEGER, attcollation BIGINT, attacl VARCHAR[], attoptions VARCHAR[], "
    "attfdwoptions VARCHAR[], attmissingval VARCHAR"
)
_PG_TYPE = _columns(
    "oid BIGINT, typname VARCHAR, typnamespace BIGINT, typowner BIGINT, typlen SMALLINT, typbyval BOOLEAN, "
    "typtype VARCHAR, typcategory VARCHAR, typispreferred BOOLEAN, typisdefined BOOLEAN, typdelim VARCHAR, "
    "typrelid BIGINT, typsubscript BIGINT, typelem BIGINT, typarray BIGINT, typinput VARCHAR, "
    "typoutput VARCHAR, typreceive BIGINT, typsend BIGINT, typmodin BIGINT, typmodout BIGINT, "
    "typanalyze BIGINT, typalign VARCHAR, typstorage VARCHAR, typnotnull BOOLEAN, typbasetype BIGINT, "
    "typtypmod INTEGER, typndims INTEGER, typcollation BIGINT, typdefaultbin VARCHAR, typdefault VARCHAR, "
    "typacl VARCHAR[]"
)
_PG_NAMESPACE = _columns("oid BIGINT, nspname VARCHAR, nspowner BIGINT, nspacl VARCHAR[]")
_PG_DESCRIPTION = _columns("objoid BIGINT, classoid BIGINT, objsubid INTEGER, description VARCHAR")
_PG_PROC = _columns(
    "oid BIGINT, proname VARCHAR, pronamespace BIGINT, proowner BIGINT, prolang BIGINT, procost REAL, "
    "prorows REAL, provariadic BIGINT, prosupport BIGINT, prokind VARCHAR, prosecdef BOOLEAN, "
    "proleakproof BOOLEAN, proisstrict BOOLEAN, proretset BOOLEAN, provolatile VARCHAR, proparallel VARCHAR, "
    "pronargs SMALLINT, pronargdefaults SMALLINT, prorettype BIGINT, proargtypes VARCHAR, "
    "proallargtypes BIGINT[], proargmodes VARCHAR[], proargnames VARCHAR[], proargdefaults VARCHAR, "
    "protrftypes BIGINT[], prosrc VARCHAR, probin VARCHAR, prosqlbody VARCHAR, proconfig VARCHAR[], "
    "proacl VARCHAR[], proisagg BOOLEAN, proiswindow BOOLEAN"
)
# Relations a lake has none of (no indexes, constraints, sequences, ...): present, shaped, and empty.
_EMPTY = {
    "pg_index": "indexrelid BIGINT, indrelid BIGINT, indnatts SMALLINT, indnkeyatts SMALLINT, "
    "indisunique BOOLEAN, indnullsnotdistinct BOOLEAN, indisprimary BOOLEAN, indisexclusion BOOLEAN, "
    "indimmediate BOOLEAN, indisclustered BOOLEAN, indisvalid BOOLEAN, indcheckxmin BOOLEAN, "
    "indisready BOOLEAN, indislive BOOLEAN, indisreplident BOOLEAN, indkey SMALLINT[], "
    "indcollation BIGINT[], indclass BIGINT[], indoption SMALLINT[], indexprs VARCHAR, indpred VARCHAR",
    "pg_constraint": "oid BIGINT, conname VARCHAR, connamespace BIGINT, contype VARCHAR, "
    "condeferrable BOOLEAN, condeferred BOOLEAN, convalidated BOOLEAN, conrelid BIGINT, contypid BIGINT, "
    "conindid BIGINT, conparentid BIGINT, confrelid BIGINT, confupdtype VARCHAR, confdeltype VARCHAR, "
    "confmatchtype VARCHAR, conislocal BOOLEAN, coninhcount INTEGER, connoinherit BOOLEAN, "
    "conkey SMALLINT[], confkey SMALLINT[], conpfeqop BIGINT[], conppeqop BIGINT[], conffeqop BIGINT[], "
    "conexclop BIGINT[], conbin VARCHAR",
    "pg_attrdef": "oid BIGINT, adrelid BIGINT, adnum SMALLINT, adbin VARCHAR",
    "pg_inherits": "inhrelid BIGINT, inhparent BIGINT, inhseqno INTEGER, inhdetachpending BOOLEAN",
    "pg_enum": "oid BIGINT, enumtypid BIGINT, enumsortorder REAL, enumlabel VARCHAR",
    "pg_range": "rngtypid BIGINT, rngsubtype BIGINT, rngmultitypid BIGINT, rngcollation BIGINT, "
    "rngsubopc BIGINT, rngcanonical BIGINT, rngsubdiff BIGINT",
    "pg_depend": "classid BIGINT, objid BIGINT, objsubid INTEGER, refclassid BIGINT, refobjid BIGINT, "
    "refobjsubid INTEGER, deptype VARCHAR",
    "pg_trigger": "oid BIGINT, tgrelid BIGINT, tgname VARCHAR, tgfoid BIGINT, tgtype SMALLINT, "
    "tgenabled VARCHAR, tgisinternal BOOLEAN, tgconstraint BIGINT",
    "pg_rewrite": "oid BIGINT, rulename VARCHAR, ev_class BIGINT, ev_type VARCHAR, ev_enabled VARCHAR, "
    "is_instead BOOLEAN",
    "pg_policy": "oid BIGINT, polname VARCHAR, polrelid BIGINT, polcmd VARCHAR, polpermissive BOOLEAN",
    "pg_statistic_ext": "oid BIGINT, stxrelid BIGINT, stxname VARCHAR, stxnamespace BIGINT, stxowner BIGINT, "
    "stxstattarget INTEGER, stxkeys SMALLINT[], stxkind VARCHAR[], stxexprs VARCHAR",
    "pg_partitioned_table": "partrelid BIGINT, partstrat VARCHAR, partnatts SMALLINT",
    "pg_foreign_table": "ftrelid BIGINT, ftserver BIGINT",
    "pg_sequence": "seqrelid BIGINT, seqtypid BIGINT, seqstart BIGINT, seqincrement BIGINT, "
    "seqmax BIGINT, seqmin BIGINT, seqcache BIGINT, seqcycle BOOLEAN",
    "pg_extension": "oid BIGINT, extname VARCHAR, extowner BIGINT, extnamespace BIGINT, "
    "extrelocatable BOOLEAN, extversion VARCHAR",
    "pg_collation": "oid BIGINT, collname VARCHAR, collnamespace BIGINT",
    "pg_am": "oid BIGINT, amname VARCHAR, amhandler BIGINT, amtype VARCHAR",
    "pg_publication": "oid BIGINT, pubname VARCHAR, pubowner BIGINT, puballtables BOOLEAN, "
    "pubinsert BOOLEAN, pubupdate BOOLEAN, pubdelete BOOLEAN, pubtruncate BOOLEAN, pubviaroot BOOLEAN",
    "pg_publication_rel": "oid BIGINT, prpubid BIGINT, prrelid BIGINT, prqual VARCHAR, prattrs SMALLINT[]",
    "pg_publication_namespace": "oid BIGINT, pnpubid BIGINT, pnnspid BIGINT",
    "pg_event_trigger": "oid BIGINT, evtname VARCHAR",
    "pg_opclass": "oid BIGINT, opcmethod BIGINT, opcname VARCHAR, opcnamespace BIGINT",
}


EMPTY_RELATIONS = frozenset(_EMPTY)


def _types() -> list[tuple]:
    rows = []
    element_of = {array: element for element, array in _ARRAY_TYPES.items()}
    for oid, name, length, category in _BASE_TYPES:
        rows.append((oid, name, length, "b", category, 0, _ARRAY_TYPES.get(oid, 0), oid + 100000))
    for array, element in element_of.items():
        name = next(base[1] for base in _BASE_TYPES if base[0] == element)
        rows.append((array, "_" + name, -1, "b", "A", element, 0, _PROCS["array_recv"]))
    for oid, name, length, category, kind in _SPECIAL_TYPES:
        rows.append((oid, name, length, kind, category, 0, 0, _PROCS["record_recv"]))
    return [
        (
            oid,
            name,
            PG_CATALOG_OID,
            OWNER_OID,
            length,
            0 < length <= 8,
            kind,
            category,
            False,
            True,
            ",",
            0,
            0,
            element,
            array,
            f"{name}in",
            f"{name}out",
            receive,
            receive + 1,
            0,
            0,
            0,
            "i",
            "p" if length == -1 else "p",
            False,
            0,
            -1,
            0,
            0,
            None,
            None,
            None,
        )
        for oid, name, length, kind, category, element, array, receive in rows
    ]


def _procs() -> list[tuple]:
    names = {**_PROCS, **{f"{name}recv": oid + 100000 for oid, name, _, _ in _BASE_TYPES}}
    return [
        (
            oid,
            name,
            PG_CATALOG_OID,
            OWNER_OID,
            12,
            1.0,
            0.0,
            0,
            0,
            "f",
            False,
            False,
            True,
            False,
            "i",
            "s",
            1,
            0,
            0,
            "",
            None,
            None,
            None,
            None,
            None,
            "",
            None,
            None,
            None,
            None,
            False,
            False,
        )
        for name, oid in sorted(names.items())
    ]


def build(
    con: duckdb.DuckDBPyConnection,
    relations: Sequence[Relation],
    descriptions: Mapping[str, TableDescription],
    user: str,
) -> None:
    """Create `medlake_pg` and `medlake_information_schema` for these relations in the current catalog."""
    con.execute(f"CREATE SCHEMA {PRIVATE_SCHEMA}")
    schemas = sorted({relation.schema for relation in relations})
    schema_oid = {schema: FIRST_SCHEMA_OID + index for index, schema in enumerate(schemas)}
    namespaces = [(PG_CATALOG_OID, "pg_catalog", OWNER_OID, None)]
    namespaces.append((INFORMATION_SCHEMA_OID, "information_schema", OWNER_OID, None))
    namespaces += [(oid, schema, OWNER_OID, None) for schema, oid in schema_oid.items()]
    _table(con, "pg_namespace", _PG_NAMESPACE, namespaces)
    classes, attributes, comments = [], [], []
    for index, relation in enumerate(sorted(relations, key=lambda item: (item.schema, item.name))):
        oid = FIRST_RELATION_OID + index
        classes.append(
            (
                oid,
                relation.name,
                schema_oid[relation.schema],
                0,
                0,
                OWNER_OID,
                2,
                oid,
                0,
                1,
                -1.0,
                0,
                0,
                False,
                False,
                "p",
                "r",
                len(relation.columns),
                0,
                False,
                False,
                False,
                False,
                False,
                True,
                "d",
                False,
                0,
                0,
                0,
                None,
                None,
                None,
                False,
            )
        )
        description = descriptions.get(f"{relation.schema}.{relation.name}")
        if description is not None:
            comments.append((oid, PG_CLASS_OID, 0, description.text))
        for number, (column, data_type, nullable) in enumerate(relation.columns, start=1):
            type_oid, typmod = duckdb_type_oid(data_type)
            attributes.append(
                (
                    oid,
                    column,
                    type_oid,
                    -1,
                    pgtypes.SIZES.get(type_oid, -1),
                    number,
                    0,
                    -1,
                    typmod,
                    False,
                    "i",
                    "p",
                    None,
                    not nullable,
                    False,
                    False,
                    "",
                    "",
                    False,
                    True,
                    0,
                    0,
                    None,
                    None,
                    None,
                    None,
                )
            )
            if description is not None and column in description.columns:
                comments.append((oid, PG_CLASS_OID, number, description.columns[column]))
    _table(con, "pg_class", _PG_CLASS, classes)
    names = [(name, oid) for name, oid in SYSTEM_RELATION_OIDS.items()]
    names += [(f"pg_catalog.{name}", oid) for name, oid in SYSTEM_RELATION_OIDS.items()]
    for row in classes:
        schema = next(name for name, oid in schema_oid.items() if oid == row[2])
        names += [(f"{schema}.{row[1]}", row[0]), (f'"{schema}"."{row[1]}"', row[0])]
    _table(con, "medlake_regclass", _columns("name VARCHAR, oid BIGINT"), names)
    _table(con, "pg_attribute", _PG_ATTRIBUTE, attributes)
    _table(con, "pg_description", _PG_DESCRIPTION, comments)
    _table(con, "pg_type", _PG_TYPE, _types())
    _table(con, "pg_proc", _PG_PROC, _procs())
    con.execute("; ".join(f"CREATE TABLE {PRIVATE_SCHEMA}.{name} ({spec})" for name, spec in _EMPTY.items()))
    _table(
        con,
        "pg_database",
        _columns(
            "oid BIGINT, datname VARCHAR, datdba BIGINT, encoding INTEGER, datlocprovider VARCHAR, "
            "datistemplate BOOLEAN, datallowconn BOOLEAN, datconnlimit INTEGER, datcollate VARCHAR, "
            "datctype VARCHAR, daticulocale VARCHAR, datacl VARCHAR[], dattablespace BIGINT"
        ),
        [(16383, "medlake", OWNER_OID, 6, "c", False, True, -1, "C.UTF-8", "C.UTF-8", None, None, 1663)],
    )
    _table(
        con,
        "pg_roles",
        _columns(
            "oid BIGINT, rolname VARCHAR, rolsuper BOOLEAN, rolinherit BOOLEAN, rolcreaterole BOOLEAN, "
            "rolcreatedb BOOLEAN, rolcanlogin BOOLEAN, rolconnlimit INTEGER, rolvaliduntil VARCHAR"
        ),
        [(OWNER_OID, user, False, True, False, False, True, -1, None)],
    )
    _table(
        con,
        "pg_settings",
        _columns("name VARCHAR, setting VARCHAR, unit VARCHAR, category VARCHAR, short_desc VARCHAR"),
        [(name, value, None, "medlake", None) for name, value in server_parameters(user).items()],
    )
    _table(
        con,
        "pg_tablespace",
        _columns("oid BIGINT, spcname VARCHAR, spcowner BIGINT"),
        [(1663, "pg_default", 10)],
    )
    con.execute(
        f"CREATE VIEW {PRIVATE_SCHEMA}.pg_user AS SELECT rolname AS usename, oid AS usesysid, "
        f"false AS usesuper FROM {PRIVATE_SCHEMA}.pg_roles"
    )
    con.execute(
        f"CREATE VIEW {PRIVATE_SCHEMA}.pg_tables AS SELECT n.nspname AS schemaname, c.relname AS tablename, "
        f"'{user}' AS tableowner, NULL AS tablespace, false AS hasindexes, false AS hasrules, "
        f"false AS hastriggers, false AS rowsecurity FROM {PRIVATE_SCHEMA}.pg_class c "
        f"JOIN {PRIVATE_SCHEMA}.pg_namespace n ON n.oid = c.relnamespace"
    )
    con.execute(
        f"CREATE VIEW {PRIVATE_SCHEMA}.pg_views AS SELECT NULL::VARCHAR AS schemaname, "
        "NULL::VARCHAR AS viewname, NULL::VARCHAR AS viewowner, NULL::VARCHAR AS definition WHERE false"
    )
    con.execute(
        f"CREATE VIEW {PRIVATE_SCHEMA}.pg_matviews AS SELECT NULL::VARCHAR AS schemaname, "
        "NULL::VARCHAR AS matviewname, NULL::VARCHAR AS definition WHERE false"
    )
    con.execute(
        f"CREATE VIEW {PRIVATE_SCHEMA}.pg_indexes AS SELECT NULL::VARCHAR AS schemaname, "
        "NULL::VARCHAR AS tablename, NULL::VARCHAR AS indexname, NULL::VARCHAR AS indexdef WHERE false"
    )
    con.execute("; ".join(_macros(user)))
    _information_schema(con, sorted(relations, key=lambda item: (item.schema, item.name)))


def server_parameters(user: str) -> dict[str, str]:
    """What `SHOW` and `current_setting` answer, and what clients get as ParameterStatus."""
    return {
        "server_version": SERVER_VERSION,
        "server_version_num": "160000",
        "server_encoding": "UTF8",
        "client_encoding": "UTF8",
        "datestyle": "ISO, MDY",
        "timezone": "UTC",
        "intervalstyle": "postgres",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
        "transaction_isolation": "read committed",
        "default_transaction_isolation": "read committed",
        "transaction_read_only": "on",
        "default_transaction_read_only": "on",
        "search_path": "main",
        "max_identifier_length": "63",
        "is_superuser": "off",
        "session_authorization": user,
        "application_name": "",
        "lc_collate": "C.UTF-8",
        "lc_ctype": "C.UTF-8",
        "max_index_keys": "32",
        "block_size": "8192",
        "bytea_output": "hex",
    }


def _macros(user: str) -> list[str]:
    schema = PRIVATE_SCHEMA
    settings = ", ".join(f"'{name}': '{value}'" for name, value in server_parameters(user).items())
    return [
        f"CREATE TYPE {schema}.regclass AS BIGINT",
        f"CREATE TYPE {schema}.regtype AS BIGINT",
        f"CREATE TYPE {schema}.regproc AS VARCHAR",
        f"CREATE TYPE {schema}.regnamespace AS BIGINT",
        f"CREATE TYPE {schema}.regrole AS BIGINT",
        f"CREATE TYPE {schema}.oid AS BIGINT",
        f"CREATE TYPE {schema}.name AS VARCHAR",
        f"CREATE TYPE {schema}.text AS VARCHAR",
        f"CREATE TYPE {schema}.int2vector AS VARCHAR",
        f"CREATE TYPE {schema}.oidvector AS VARCHAR",
        f'CREATE TYPE {schema}."char" AS VARCHAR',
        f"CREATE MACRO {schema}.version() AS 'PostgreSQL {SERVER_VERSION} (medlake serve-sql on DuckDB "
        f"{duckdb.__version__}), 64-bit'",
        f"CREATE MACRO {schema}.current_setting(name) AS MAP {{{settings}}}[lower(name)]",
        f"CREATE MACRO {schema}.current_schema() AS 'main'",
        f"CREATE MACRO {schema}.current_schemas(implicit) AS ['main']",
        f"CREATE MACRO {schema}.current_user() AS '{user}'",
        f"CREATE MACRO {schema}.session_user() AS '{user}'",
        f"CREATE MACRO {schema}.format_type(type_oid, typemod) AS (SELECT CASE WHEN t.typname = 'numeric' "
        "AND typemod > 4 THEN concat('numeric(', (typemod - 4) >> 16, ',', (typemod - 4) & 65535, ')') "
        "WHEN t.typname = 'varchar' THEN 'character varying' WHEN t.typname = 'timestamptz' "
        "THEN 'timestamp with time zone' WHEN t.typname = 'timestamp' THEN 'timestamp without time zone' "
        "WHEN t.typname = 'int8' THEN 'bigint' WHEN t.typname = 'int4' THEN 'integer' "
        "WHEN t.typname = 'int2' THEN 'smallint' WHEN t.typname = 'float8' THEN 'double precision' "
        "WHEN t.typname = 'float4' THEN 'real' WHEN t.typname = 'bool' THEN 'boolean' "
        f"ELSE t.typname END FROM {schema}.pg_type t WHERE t.oid = type_oid)",
        f"CREATE MACRO {schema}.pg_get_userbyid(role_oid) AS '{user}'",
        f"CREATE MACRO {schema}.pg_encoding_to_char(encoding) AS 'UTF8'",
        f"CREATE MACRO {schema}.pg_char_to_encoding(encoding) AS 6",
        f"CREATE MACRO {schema}.obj_description(object_oid) AS (SELECT d.description FROM "
        f"{schema}.pg_description d WHERE d.objoid = object_oid AND d.objsubid = 0), "
        f"(object_oid, catalog) AS (SELECT d.description FROM {schema}.pg_description d "
        "WHERE d.objoid = object_oid AND d.objsubid = 0)",
        f"CREATE MACRO {schema}.col_description(table_oid, column_number) AS (SELECT d.description FROM "
        f"{schema}.pg_description d WHERE d.objoid = table_oid AND d.objsubid = column_number)",
        f"CREATE MACRO {schema}.shobj_description(object_oid, catalog) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_expr(expression, relation) AS NULL::VARCHAR, "
        "(expression, relation, pretty) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_serial_sequence(table_name, column_name) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_table_is_visible(relation_oid) AS true",
        f"CREATE MACRO {schema}.pg_type_is_visible(type_oid) AS true",
        f"CREATE MACRO {schema}.pg_function_is_visible(function_oid) AS true",
        f"CREATE MACRO {schema}.has_table_privilege(a) AS true, (a, b) AS true, (a, b, c) AS true",
        f"CREATE MACRO {schema}.has_schema_privilege(a) AS true, (a, b) AS true, (a, b, c) AS true",
        f"CREATE MACRO {schema}.has_database_privilege(a) AS true, (a, b) AS true, (a, b, c) AS true",
        f"CREATE MACRO {schema}.has_column_privilege(a, b) AS true, (a, b, c) AS true, (a, b, c, d) AS true",
        f"CREATE MACRO {schema}.pg_get_indexdef(index_oid) AS NULL::VARCHAR, "
        "(index_oid, column_number, pretty) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_constraintdef(constraint_oid) AS NULL::VARCHAR, "
        "(constraint_oid, pretty) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_viewdef(view_oid) AS NULL::VARCHAR, "
        "(view_oid, pretty) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_function_result(function_oid) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_function_arguments(function_oid) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_function_identity_arguments(function_oid) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_partkeydef(relation_oid) AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_get_triggerdef(trigger_oid) AS NULL::VARCHAR, (trigger_oid, pretty) "
        "AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.pg_tablespace_location(tablespace_oid) AS ''",
        f"CREATE MACRO {schema}.pg_is_in_recovery() AS false",
        f"CREATE MACRO {schema}.pg_relation_is_publishable(relation) AS false",
        f"CREATE MACRO {schema}.regclass_oid(relation_name) AS (SELECT r.oid "
        f"FROM {schema}.medlake_regclass r WHERE r.name = relation_name)",
        f"CREATE MACRO {schema}.pg_backend_pid() AS 0",
        f"CREATE MACRO {schema}.pg_relation_size(relation) AS NULL::BIGINT, (relation, fork) AS NULL::BIGINT",
        f"CREATE MACRO {schema}.pg_total_relation_size(relation) AS NULL::BIGINT",
        f"CREATE MACRO {schema}.pg_postmaster_start_time() AS TIMESTAMPTZ '2000-01-01 00:00:00+00'",
        f"CREATE MACRO {schema}.txid_current() AS 1::BIGINT",
        f"CREATE MACRO {schema}.inet_server_addr() AS NULL::VARCHAR",
        f"CREATE MACRO {schema}.inet_server_port() AS NULL::INTEGER",
        f"CREATE MACRO {schema}.quote_ident(name) AS CASE WHEN regexp_full_match(name, '[a-z_][a-z0-9_$]*') "
        "THEN name ELSE '\"' || replace(name, '\"', '\"\"') || '\"' END",
        f"CREATE MACRO {schema}.array_lower(list, dimension) AS CASE WHEN len(list) > 0 THEN 1 END",
        f"CREATE MACRO {schema}.array_upper(list, dimension) AS CASE WHEN len(list) > 0 THEN len(list) END",
        f"CREATE MACRO {schema}.json_build_object"
        + ", ".join(
            "({}) AS json_object({})".format(
                ", ".join(f"a{i}" for i in range(count)),
                ", ".join(f"a{i}::VARCHAR" if i % 2 == 0 else f"a{i}" for i in range(count)),
            )
            for count in range(2, 17, 2)
        ),
        f"CREATE MACRO {schema}.pg_get_keywords() AS TABLE SELECT keyword_name AS word, 'U' AS catcode, "
        "keyword_category AS catdesc FROM duckdb_keywords()",
    ]


def pg_function_names() -> frozenset[str]:
    """Every function `medlake_pg` defines (the checker sends calls of these there)."""
    names = set()
    for macro in _macros("x"):
        if macro.startswith("CREATE MACRO"):
            names.add(macro.split(".", 1)[1].split("(", 1)[0])
    return frozenset(names)


def pg_relation_names() -> frozenset[str]:
    return frozenset(
        {"pg_namespace", "pg_class", "pg_attribute", "pg_description", "pg_type", "pg_proc", "pg_database"}
        | set(_EMPTY)
        | {
            "pg_roles",
            "pg_settings",
            "pg_tablespace",
            "pg_user",
            "pg_tables",
            "pg_views",
            "pg_matviews",
            "pg_indexes",
        }
    )


INFORMATION_SCHEMA_VIEWS = ("schemata", "tables", "columns", "views", "key_column_usage")
INFORMATION_SCHEMA_VIEWS += ("table_constraints", "referential_constraints", "character_sets")


def _information_schema(con: duckdb.DuckDBPyConnection, relations: Sequence[Relation]) -> None:
    """DuckDB's information schema, limited to this database's relations (views show as tables).

    `tables` and `columns` are materialized from what was just built: DuckDB's own views bind every
    relation (reading each Iceberg table's metadata) on every query.
    """
    target = PRIVATE_INFORMATION_SCHEMA
    schemas = sorted({relation.schema for relation in relations})
    listed = ", ".join("'" + schema.replace("'", "''") + "'" for schema in schemas) or "NULL"
    con.execute(f"CREATE SCHEMA {target}")
    con.execute(
        f"CREATE VIEW {target}.schemata AS SELECT * FROM system.information_schema.schemata "
        f"WHERE catalog_name = current_database() AND schema_name IN ({listed})"
    )
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    tables = pa.table(
        {
            "table_catalog": [catalog] * len(relations),
            "table_schema": [relation.schema for relation in relations],
            "table_name": [relation.name for relation in relations],
            "table_type": ["BASE TABLE"] * len(relations),
            "is_insertable_into": ["NO"] * len(relations),
        }
    )
    rows = [
        (relation, position, column)
        for relation in relations
        for position, column in enumerate(relation.columns, start=1)
    ]
    columns = pa.table(
        {
            "table_catalog": [catalog] * len(rows),
            "table_schema": [relation.schema for relation, _, _ in rows],
            "table_name": [relation.name for relation, _, _ in rows],
            "column_name": [column[0] for _, _, column in rows],
            "ordinal_position": pa.array([position for _, position, _ in rows], pa.int32()),
            "is_nullable": ["YES" if column[2] else "NO" for _, _, column in rows],
            "data_type": [column[1] for _, _, column in rows],
        }
    )
    for name, data in (("tables", tables), ("columns", columns)):
        con.execute(
            f"CREATE TABLE {target}.{name} AS SELECT * FROM system.information_schema.{name} WHERE false"
        )
        con.register("medlake_information_rows", data)
        try:
            con.execute(f"INSERT INTO {target}.{name} BY NAME SELECT * FROM medlake_information_rows")
        finally:
            con.unregister("medlake_information_rows")
    con.execute(f"CREATE VIEW {target}.views AS SELECT * FROM system.information_schema.views WHERE false")
    for view in ("key_column_usage", "table_constraints", "referential_constraints"):
        con.execute(
            f"CREATE VIEW {target}.{view} AS SELECT * FROM system.information_schema.{view} WHERE false"
        )
    con.execute(
        f"CREATE VIEW {target}.character_sets AS SELECT * FROM system.information_schema.character_sets"
    )
