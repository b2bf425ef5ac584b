"""One client session: its login's database, its per-session options, transaction state and queries.

The protocol layer (server.py) hands statements here and sends back what comes out; nothing here
touches sockets. Queries run under a watch that interrupts DuckDB when the statement timeout passes,
when the client goes away (the socket reports a hang-up) or when the client sends a CancelRequest.
"""

from __future__ import annotations

import math
import os
import re
import select
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from medlake_assets.errors import MedlakeError
from medlake_assets.lake import Lake
from medlake_assets.serving.audit import AuditEntry, AuditLog
from medlake_assets.serving.catalog_info import AsOfError, parse_as_of
from medlake_assets.serving.pgwire import pgtypes, statements
from medlake_assets.serving.pgwire.catalog import server_parameters
from medlake_assets.serving.pgwire.config import ServeSettings
from medlake_assets.serving.pgwire.database import LoginDatabase, open_login_database
from medlake_assets.serving.pgwire.protocol import Field
from medlake_assets.serving.pgwire.statements import Refused, Statement
from medlake_assets.spec.access import Access, Login
from medlake_assets.spec.descriptions import TableDescription

AS_OF = "medlake.as_of"
# PostgreSQL client options a session may set; they change nothing here (names are schema-qualified,
# results are UTF-8, ISO, UTC), so they are accepted as PostgreSQL would accept them.
ACCEPTED_OPTIONS = frozenset(
    {
        "application_name",
        "extra_float_digits",
        "datestyle",
        "intervalstyle",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "default_transaction_isolation",
        "transaction_isolation",
        "default_transaction_read_only",
        "transaction_read_only",
        "search_path",
        "client_min_messages",
        "row_security",
        "jit",
        "geqo",
        "transaction",
    }
)
_FIXED_OPTIONS = {"client_encoding": ("utf8", "utf-8", "unicode"), "timezone": ("utc", "etc/utc", "gmt", "z")}
_FIXED_OPTIONS.update({"standard_conforming_strings": ("on",), "bytea_output": ("hex",)})


class QueryInterrupted(MedlakeError):
    """DuckDB was interrupted; `sqlstate` and the message say why."""

    def __init__(self, reason: str):
        messages = {
            "timeout": ("57014", "canceling statement due to statement timeout"),
            "cancel": ("57014", "canceling statement due to user request"),
            "client_gone": ("08006", "the client closed the connection"),
            "server_stopped": ("57P01", "terminating connection due to administrator command"),
        }
        self.reason = reason
        self.sqlstate, text = messages[reason]
        super().__init__(text)


class TransactionError(MedlakeError):
    def __init__(self, message: str, sqlstate: str):
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass
class Result:
    """What one statement gives back: its columns (None: no rows) and rows, then a command tag."""

    tag: str
    schema: pa.Schema | None = None
    batches: Iterator[pa.RecordBatch] | None = None
    names: list[str] = field(default_factory=list)
    rows_sent: int = 0

    def fields(self, formats: tuple[int, ...] = ()) -> list[Field]:
        if self.schema is None:
            return []
        return [
            pgtypes.field_for(self.names[index], column.type, _format(formats, index))
            for index, column in enumerate(self.schema)
        ]


def _format(formats: tuple[int, ...], index: int) -> int:
    if not formats:
        return 0
    return formats[0] if len(formats) == 1 else formats[index]


def _timeout_seconds(value: str | None) -> float:
    """PostgreSQL's statement_timeout spelling: milliseconds, or a number with a unit."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h)?\s*", value or "")
    if not match:
        raise Refused("statement_timeout must be a number of milliseconds or a duration like 30s", "22023")
    number, unit = float(match.group(1)), match.group(2) or "ms"
    return number * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[unit]


class Session:
    """A logged-in client's session; one at a time per connection thread."""

    def __init__(
        self,
        lake: Lake,
        access: Access,
        login: Login,
        serve: ServeSettings,
        audit: AuditLog | None,
        client_address: str,
        socket_fileno: int,
        descriptions: Mapping[str, TableDescription] | None = None,
    ):
        self.lake, self.access, self.login, self.serve = lake, access, login, serve
        self.audit, self.client_address, self.socket_fileno = audit, client_address, socket_fileno
        self.descriptions = descriptions
        self.database: LoginDatabase = open_login_database(
            lake, access, login, serve, descriptions=descriptions
        )
        self.as_of: str | None = None
        self.options: dict[str, str] = {}
        self.statement_timeout = serve.statement_timeout_seconds
        self.status = "I"  # I idle, T in a transaction block, E failed transaction block
        self.savepoints: list[str] = []
        self._interrupt_reason: str | None = None
        self._running = threading.Lock()

    # --- statements ---

    def classify(self, sql: str) -> list[Statement]:
        """Every statement of `sql`, checked (`Refused` for the first that is not allowed)."""
        classified = []
        for text in statements.split(sql):
            command = statements.session_command(text)
            if command is not None and not (
                command.kind == "show" and not self._is_parameter(command.setting)
            ):
                classified.append(command)
            else:
                classified.append(statements.check_query(self.database.con, text, self.database.catalog))
        return classified

    def _is_parameter(self, name: str) -> bool:
        return name in self.parameters() or name in ("all", AS_OF, "statement_timeout")

    def parameters(self) -> dict[str, str]:
        values = server_parameters(self.login.user)
        values.update({name: value for name, value in self.options.items() if name in values})
        return values

    def describe(self, statement: Statement, parameter_oids: tuple[int, ...]) -> pa.Schema | None:
        """The columns a statement will return, without running it (typed NULLs for its parameters)."""
        if statement.kind == "show":
            return pa.schema([(statement.setting, pa.string())])
        if statement.kind not in ("query", "explain"):
            return None
        count = self.parameter_count(statement)
        nulls = [None] * count
        sql = statement.sql
        if statement.kind == "query":
            casts = [pgtypes.DUCKDB_TYPE_OF.get(oid) for oid in parameter_oids]
            sql = f"SELECT * FROM ({statement.sql}) LIMIT 0"
            for index, cast in reversed(list(enumerate(casts[:count], start=1))):  # $12 before $1
                if cast:
                    sql = sql.replace(f"${index}", f"CAST(${index} AS {cast})")
        with self._watch():
            cursor = self.database.con.execute(sql, nulls or None)
            return _renamed(cursor.fetch_arrow_table().schema, statement.column_names)

    def parameter_count(self, statement: Statement) -> int:
        """How many parameters the statement takes (from its parse tree)."""
        return statement.parameter_count

    def execute(self, statement: Statement, parameters: list[Any] | None = None) -> Result:
        """Run one checked statement; queries return a Result whose batches are read under the watch."""
        if self.status == "E" and not (
            statement.kind == "transaction" and statement.words[0] in ("ROLLBACK", "ABORT", "COMMIT", "END")
        ):
            raise TransactionError(
                "current transaction is aborted, commands ignored until end of transaction block", "25P02"
            )
        if statement.kind == "transaction":
            return Result(self._transaction(statement.words))
        if statement.kind == "noop":
            return Result(statement.words[0] if statement.words[0] != "DEALLOCATE" else "DEALLOCATE")
        if statement.kind in ("set", "reset"):
            self._set(statement)
            return Result("SET" if statement.kind == "set" else "RESET")
        if statement.kind == "show":
            return self._show(statement.setting)
        with self._watch():
            cursor = self.database.con.execute(statement.sql, parameters or None)
            if cursor.description is None:
                return Result("SELECT 0")
            reader = cursor.fetch_record_batch(4096)
        schema = _renamed(reader.schema, statement.column_names)
        tag = "EXPLAIN" if statement.kind == "explain" else "SELECT"
        return Result(tag, schema, self._batches(reader), list(schema.names))

    def _batches(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        while True:
            with self._watch():
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
            yield batch

    # --- session commands ---

    def _transaction(self, words: tuple[str, ...]) -> str:
        first = words[0]
        if first in ("BEGIN", "START"):
            self.status = "T"
            return "BEGIN"
        if first in ("COMMIT", "END"):
            tag = "ROLLBACK" if self.status == "E" else "COMMIT"
            self.status, self.savepoints = "I", []
            return tag
        if first in ("ROLLBACK", "ABORT") and "TO" not in words:
            self.status, self.savepoints = "I", []
            return "ROLLBACK"
        name = words[-1].lower()
        if self.status == "I":
            raise TransactionError(f"{first} can only be used in transaction blocks", "25P01")
        if first == "SAVEPOINT":
            self.savepoints.append(name)
            return "SAVEPOINT"
        if name not in self.savepoints:
            raise TransactionError(f"savepoint {name} does not exist", "3B001")
        if first == "RELEASE":
            del self.savepoints[self.savepoints.index(name) :]
            return "RELEASE"
        del self.savepoints[self.savepoints.index(name) + 1 :]
        self.status = "T"  # ROLLBACK TO leaves a failed block usable again
        return "ROLLBACK"

    def _set(self, statement: Statement) -> None:
        name, value = statement.setting, statement.value
        if statement.kind == "reset":
            if name == "all":
                self.options.clear()
                self.statement_timeout = self.serve.statement_timeout_seconds
                self._time_travel(None)
            elif name == AS_OF:
                self._time_travel(None)
            elif name == "statement_timeout":
                self.statement_timeout = self.serve.statement_timeout_seconds
            else:
                self.options.pop(name, None)
            return
        if name == AS_OF:
            self._time_travel(None if (value or "").strip().lower() in ("", "default", "now") else value)
        elif name == "statement_timeout":
            seconds = _timeout_seconds(value)
            # A client may shorten its own timeout, never lengthen the server's.
            limit = self.serve.statement_timeout_seconds
            self.statement_timeout = limit if seconds == 0 else min(seconds, limit)
            self.options[name] = str(value)
        elif name in _FIXED_OPTIONS:
            if (value or "").strip().lower() not in _FIXED_OPTIONS[name]:
                raise Refused(f"{name} is fixed at {_FIXED_OPTIONS[name][0]} on medlake serve-sql", "22023")
        elif name in ACCEPTED_OPTIONS:
            self.options[name] = value or ""
        else:
            raise Refused(
                f"SET {name} is refused: a session may set medlake.as_of, statement_timeout and the "
                "PostgreSQL client options (application_name, search_path, DateStyle, ...), not "
                "server settings",
                "42501",
            )

    def _time_travel(self, value: str | None) -> None:
        """Rebuild the login's relations as of `value` (None: the present), filters included."""
        if value == self.as_of:
            return
        if value is not None:
            try:
                parse_as_of(value)
            except AsOfError as error:
                raise Refused(str(error), "22023") from None
        try:
            rebuilt = open_login_database(
                self.lake, self.access, self.login, self.serve, as_of=value, descriptions=self.descriptions
            )
        except AsOfError as error:
            raise Refused(str(error), "22023") from None
        self.database.close()
        self.database, self.as_of = rebuilt, value

    def _show(self, name: str) -> Result:
        if name == AS_OF:
            value = self.as_of or "now"
        elif name == "statement_timeout":
            value = f"{int(self.statement_timeout * 1000)}ms"
        elif name == "all":
            rows = sorted(self.parameters().items())
            table = pa.table({"name": [n for n, _ in rows], "setting": [v for _, v in rows]})
            return Result("SHOW", table.schema, iter(table.to_batches()), ["name", "setting"])
        else:
            value = self.parameters()[name]
        table = pa.table({name: [value]})
        return Result("SHOW", table.schema, iter(table.to_batches()), [name])

    # --- interruption ---

    def interrupt(self, reason: str) -> None:
        self._interrupt_reason = reason
        self.database.con.interrupt()

    def _watch(self) -> _Watch:
        return _Watch(self)

    def audit_entry(
        self,
        statement: str,
        relations: tuple[str, ...],
        rows: int,
        outcome: str,
        started: float,
        started_at: datetime,
        sqlstate: str | None = None,
    ) -> None:
        if self.audit is None:
            return
        self.audit.record(
            AuditEntry(
                login=self.login.user,
                role=self.login.role,
                client_address=self.client_address,
                started_at=started_at,
                duration_ms=int((time.monotonic() - started) * 1000),
                statement=statement,
                relations=relations,
                rows=rows,
                outcome=outcome,
                sqlstate=sqlstate,
                as_of=self.as_of,
            )
        )

    def close(self) -> None:
        self.database.close()


class _Watch:
    """While DuckDB works: interrupt it at the statement timeout or when the client hangs up.

    The watching thread sleeps in poll() on the client's socket and on a wake-up pipe that the statement's
    end writes to, so a statement is never held back waiting for the watch to notice it finished (a
    fixed poll interval cost every execute and every batch read that interval).
    """

    def __init__(self, session: Session):
        self.session = session
        self.deadline = time.monotonic() + session.statement_timeout

    def __enter__(self) -> _Watch:
        self.session._interrupt_reason = None
        self.wake_read, self.wake_write = os.pipe()
        self.thread = threading.Thread(target=self._run, name="serve-sql-watch", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        poller = select.poll()
        hangup = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
        poller.register(self.session.socket_fileno, hangup)
        poller.register(self.wake_read, select.POLLIN)
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.session.interrupt("timeout")
                return
            events = dict(poller.poll(math.ceil(left * 1000)))
            if self.wake_read in events:
                return  # the statement ended
            if events:
                self.session.interrupt("client_gone")
                return

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        os.write(self.wake_write, b"x")
        self.thread.join()
        os.close(self.wake_read)
        os.close(self.wake_write)
        if isinstance(error, duckdb.InterruptException) and self.session._interrupt_reason:
            raise QueryInterrupted(self.session._interrupt_reason) from None


def _renamed(schema: pa.Schema, names: dict[int, str]) -> pa.Schema:
    if not names:
        return schema
    fields = [
        schema.field(index).with_name(names.get(index, schema.field(index).name))
        for index in range(len(schema))
    ]
    return pa.schema(fields)


def now() -> datetime:
    return datetime.now(UTC)
