"""The serve-sql server loop: TCP (and TLS), startup and authentication, then simple and extended query
messages handed to the session layer. One thread per client connection, at most `max_connections`.

What the loop guarantees before a client is authenticated: messages are capped at a few kilobytes (a
startup packet that claims 4 GB is refused from its length prefix), the exchange must finish within the
authentication timeout, and an address with too many failed logins is refused without its password
being checked. After: messages are capped at `max_message_bytes`. Nothing here logs query text,
parameters or error messages (they can quote a patient's values): only events, addresses, logins and
kinds of errors.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from medlake_assets.errors import MedlakeError
from medlake_assets.lake import Lake
from medlake_assets.serving.audit import AuditLog
from medlake_assets.serving.pgwire import protocol as wire
from medlake_assets.serving.pgwire.auth import MD5, AuthFailed, LoginBackoff, ScramExchange, Secret, check_md5
from medlake_assets.serving.pgwire.config import MAX_UNAUTHENTICATED_BYTES, ServeSettings
from medlake_assets.serving.pgwire.database import lake_descriptions
from medlake_assets.serving.pgwire.pgtypes import decode_parameter, encode_batch
from medlake_assets.serving.pgwire.session import QueryInterrupted, Result, Session, TransactionError
from medlake_assets.serving.pgwire.statements import Refused, Statement
from medlake_assets.spec.access import Access

log = logging.getLogger(__name__)
CLOSE_WAIT_SECONDS = 30  # server_close waits this long for the connections to end
DATABASE = "medlake"
FLUSH_BYTES = 256 * 1024
STARTUP_PARAMETERS = ("server_version", "server_encoding", "client_encoding", "datestyle", "timezone")
STARTUP_PARAMETERS += ("integer_datetimes", "standard_conforming_strings", "intervalstyle", "is_superuser")
STARTUP_PARAMETERS += ("session_authorization", "application_name")
_PARAMETER_NAMES = {"datestyle": "DateStyle", "timezone": "TimeZone", "intervalstyle": "IntervalStyle"}


class ClientGone(MedlakeError):
    """The peer closed the connection."""


def sqlstate_of(error: BaseException) -> str:
    """The SQLSTATE a client gets for an error."""
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str):
        return state
    if isinstance(error, duckdb.ParserException):
        return "42601"
    if isinstance(error, duckdb.CatalogException):
        return "42P01"
    if isinstance(error, duckdb.BinderException):
        return "42703"
    if isinstance(error, duckdb.PermissionException):
        return "42501"
    if isinstance(error, duckdb.OutOfMemoryException):
        return "53200"
    if isinstance(error, duckdb.ConversionException | duckdb.InvalidInputException):
        return "22000"
    return "XX000"


@dataclass
class Prepared:
    statement: Statement | None  # None: an empty query
    parameter_oids: tuple[int, ...]


@dataclass
class Portal:
    prepared: Prepared
    parameters: list[Any]
    result_formats: tuple[int, ...]
    result: Result | None = None
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    pending: list[list[bytes | None]] = field(default_factory=list)


class Connection:
    """One client connection, from the first byte to the close."""

    def __init__(self, server: SqlServer, sock: socket.socket, address: str):
        self.server, self.sock, self.address = server, sock, address
        self.raw_fileno = sock.fileno()
        self.out: list[bytes] = []
        self.out_size = 0
        self.session: Session | None = None
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.pid = secrets.randbelow(2**31 - 1) + 1
        self.secret = secrets.randbelow(2**31 - 1) + 1
        self.failed_extended = False

    # --- I/O ---

    def recv_exact(self, size: int) -> bytes:
        chunks, remaining = [], size
        while remaining:
            chunk = self.sock.recv(min(remaining, 65536))
            if not chunk:
                raise ClientGone
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def read_message(self, limit: int) -> tuple[bytes, bytes]:
        head = self.recv_exact(5)
        kind, length = head[:1], struct.unpack("!i", head[1:])[0]
        return kind, self.recv_exact(wire.check_length(length, limit, f"message {kind!r}"))

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)
        if self.out_size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out, self.out_size = [], 0
            try:
                self.sock.sendall(data)
            except OSError as error:
                raise ClientGone from error

    def send_error(self, error: BaseException, severity: str = "ERROR") -> None:
        self.send(wire.error_response(sqlstate_of(error), str(error) or type(error).__name__, severity))

    # --- startup ---

    def startup(self) -> wire.Startup | None:
        tls = False
        while True:
            length = struct.unpack("!i", self.recv_exact(4))[0]
            body = self.recv_exact(wire.check_length(length, wire.MAX_STARTUP_BYTES, "startup packet"))
            packet = wire.decode_startup(body)
            if packet.code == wire.SSL_REQUEST and not tls:
                if self.server.tls is None:
                    self.sock.sendall(b"N")
                    continue
                self.sock.sendall(b"S")
                self.sock = self.server.tls.wrap_socket(self.sock, server_side=True)
                tls = True
                continue
            if packet.code in (wire.SSL_REQUEST, wire.GSSENC_REQUEST):
                self.sock.sendall(b"N")
                continue
            if packet.code == wire.CANCEL_REQUEST:
                self.server.cancel(packet.cancel_pid, packet.cancel_secret)
                return None
            if self.server.tls is not None and self.server.serve.tls_required and not tls:
                raise Refused("this server requires TLS (sslmode=require)", "28000")
            return packet

    def authenticate(self, packet: wire.Startup) -> str:
        user = packet.parameters.get("user", "")
        wait = self.server.backoff.wait_left(self.address)
        if wait > 0:
            raise Refused(
                f"too many failed logins from this address: try again in {int(wait) + 1} s", "28000"
            )
        secret = self.server.secrets.get(user)
        try:
            if self.server.serve.auth_method == MD5:
                salt = secrets.token_bytes(4)
                self.sock.sendall(wire.authentication(5, salt))
                kind, body = self.read_message(MAX_UNAUTHENTICATED_BYTES)
                if kind != b"p":
                    raise wire.ProtocolError("expected a password message")
                check_md5(secret, user, salt, wire.decode_password(body))
            else:
                self._scram(user)
        except AuthFailed:
            wait = self.server.backoff.failed(self.address)
            log.warning("serve-sql: failed login from %s (next try allowed in %.0f s)", self.address, wait)
            raise
        self.server.backoff.succeeded(self.address)
        database = packet.parameters.get("database") or user
        if database != DATABASE:
            raise Refused(
                f'database "{database}" does not exist (the lake is database "{DATABASE}")', "3D000"
            )
        return user

    def _scram(self, user: str) -> None:
        exchange = ScramExchange(self.server.secrets.get, user)
        self.sock.sendall(wire.authentication_sasl(["SCRAM-SHA-256"]))
        kind, body = self.read_message(MAX_UNAUTHENTICATED_BYTES)
        if kind != b"p":
            raise wire.ProtocolError("expected a SASL initial response")
        mechanism, first = wire.decode_sasl_initial(body)
        if mechanism != "SCRAM-SHA-256":
            raise AuthFailed(f"SASL mechanism {mechanism} is not offered")
        self.sock.sendall(wire.authentication(11, exchange.first(first)))
        kind, body = self.read_message(MAX_UNAUTHENTICATED_BYTES)
        if kind != b"p":
            raise wire.ProtocolError("expected a SASL response")
        self.sock.sendall(wire.authentication(12, exchange.final(body)))

    # --- the connection ---

    def run(self) -> None:
        try:
            self.sock.settimeout(self.server.serve.auth_timeout_seconds)
            packet = self.startup()
            if packet is None:
                return
            user = self.authenticate(packet)
            login = self.server.access.login(user)
            assert login is not None  # a secret exists only for a declared login
            self.session = Session(
                self.server.lake,
                self.server.access,
                login,
                self.server.serve,
                self.server.audit,
                self.address,
                self.raw_fileno,
                self.server.descriptions,
            )
            self.server.register(self)
            self.send(wire.authentication(0))
            parameters = self.session.parameters()
            parameters["application_name"] = packet.parameters.get("application_name", "")
            for name in STARTUP_PARAMETERS:
                self.send(wire.parameter_status(_PARAMETER_NAMES.get(name, name), parameters[name]))
            self.send(wire.backend_key_data(self.pid, self.secret))
            self.send(wire.ready_for_query("I"))
            self.flush()
            log.info("serve-sql: %s logged in from %s", user, self.address)
            self.sock.settimeout(self.server.serve.idle_timeout_seconds)
            self.loop()
        except (ClientGone, ConnectionError, TimeoutError, ssl.SSLError):
            pass
        except (Refused, AuthFailed, wire.ProtocolError) as error:
            self._say_and_close(error)
        except Exception as error:
            log.error("serve-sql: connection from %s ended by %s", self.address, type(error).__name__)
            self._say_and_close(error)
        finally:
            self.server.unregister(self)
            if self.session is not None:
                self.session.close()
            with contextlib.suppress(OSError):
                self.sock.close()

    def _say_and_close(self, error: BaseException) -> None:
        try:
            self.out = [wire.error_response(sqlstate_of(error), str(error), "FATAL")]
            self.flush()
        except (ClientGone, OSError):
            pass  # the client left: nothing to tell, and nothing about the error is logged

    def loop(self) -> None:
        limit = self.server.serve.max_message_bytes
        while True:
            kind, body = self.read_message(limit)
            if kind == b"X":
                return
            if kind == b"Q":
                self.simple_query(wire.decode_query(body))
                continue
            if kind == b"S":
                self.failed_extended = False
                self.send(wire.ready_for_query(self.session.status))
                self.flush()
                continue
            if kind == b"H":
                self.flush()
                continue
            if self.failed_extended:
                continue  # after an error, the extended protocol skips to the next Sync
            try:
                self.extended(kind, body)
            except ClientGone:
                raise
            except Exception as error:
                self.failed_extended = True
                self._fail_statement(error)

    def _fail_statement(self, error: BaseException) -> None:
        if isinstance(error, QueryInterrupted) and error.reason == "client_gone":
            raise ClientGone from None
        if not isinstance(
            error, Refused | TransactionError | QueryInterrupted | duckdb.Error | wire.ProtocolError
        ):
            log.error("serve-sql: statement from %s failed with %s", self.address, type(error).__name__)
        if self.session.status == "T":
            self.session.status = "E"
        self.send_error(error)

    # --- simple query protocol ---

    def simple_query(self, sql: str) -> None:
        started, started_at = time.monotonic(), datetime.now(UTC)
        try:
            classified = self.session.classify(sql)
        except Exception as error:
            self._audit_refusal(error, started, started_at)
            self._fail_statement(error)
            self.send(wire.ready_for_query(self.session.status))
            self.flush()
            return
        if not classified:
            self.send(wire.EMPTY_QUERY_RESPONSE)
        for statement in classified:
            portal = Portal(Prepared(statement, ()), [], ())
            try:
                portal.result = self.session.execute(statement)
                if portal.result.schema is not None:
                    self.send(wire.row_description(portal.result.fields()))
                self.send_rows(portal, 0)
            except ClientGone:
                raise
            except Exception as error:
                self._audit(portal, error)
                self._fail_statement(error)
                break
        self.send(wire.ready_for_query(self.session.status))
        self.flush()

    # --- extended query protocol ---

    def extended(self, kind: bytes, body: bytes) -> None:
        if kind == b"P":
            message = wire.decode_parse(body)
            classified = self.session.classify(message.query)
            if len(classified) > 1:
                raise Refused("cannot insert multiple commands into a prepared statement", "42601")
            self.statements[message.statement] = Prepared(
                classified[0] if classified else None, message.parameter_types
            )
            self.send(wire.PARSE_COMPLETE)
        elif kind == b"B":
            message = wire.decode_bind(body)
            prepared = self._prepared(message.statement)
            oids = prepared.parameter_oids
            values = [
                decode_parameter(
                    value,
                    oids[index] if index < len(oids) else 0,
                    wire.format_for(message.parameter_formats, index) == 1,
                )
                for index, value in enumerate(message.parameters)
            ]
            self.portals[message.portal] = Portal(prepared, values, message.result_formats)
            self.send(wire.BIND_COMPLETE)
        elif kind == b"D":
            message = wire.decode_describe(body)
            if message.kind == "S":
                self.describe_statement(self._prepared(message.name))
            else:
                self.describe_portal(self._portal(message.name))
        elif kind == b"E":
            message = wire.decode_execute(body)
            self.execute_portal(self._portal(message.portal), message.max_rows)
        elif kind == b"C":
            message = wire.decode_close(body)
            (self.statements if message.kind == "S" else self.portals).pop(message.name, None)
            self.send(wire.CLOSE_COMPLETE)
        elif kind == b"F":
            raise Refused("the function call protocol is not supported", "0A000")
        elif kind in (b"d", b"c", b"f"):
            raise Refused("COPY is not supported on medlake serve-sql", "0A000")
        else:
            raise wire.ProtocolError(f"unexpected message type {kind!r}")

    def _prepared(self, name: str) -> Prepared:
        if name not in self.statements:
            raise Refused(f'prepared statement "{name}" does not exist', "26000")
        return self.statements[name]

    def _portal(self, name: str) -> Portal:
        if name not in self.portals:
            raise Refused(f'portal "{name}" does not exist', "34000")
        return self.portals[name]

    def describe_statement(self, prepared: Prepared) -> None:
        statement = prepared.statement
        count = self.session.parameter_count(statement) if statement is not None else 0
        oids = [
            prepared.parameter_oids[i]
            if i < len(prepared.parameter_oids) and prepared.parameter_oids[i]
            else 25
            for i in range(count)
        ]
        self.send(wire.parameter_description(oids))
        schema = self.session.describe(statement, prepared.parameter_oids) if statement is not None else None
        if schema is None:
            self.send(wire.NO_DATA)
            return
        self.send(wire.row_description(Result("", schema, None, list(schema.names)).fields()))

    def describe_portal(self, portal: Portal) -> None:
        if portal.prepared.statement is None:
            self.send(wire.NO_DATA)
            return
        self._start(portal)
        if portal.result.schema is None:
            self.send(wire.NO_DATA)
        else:
            self.send(wire.row_description(portal.result.fields(portal.result_formats)))

    def _start(self, portal: Portal) -> None:
        if portal.result is None:
            try:
                portal.result = self.session.execute(portal.prepared.statement, portal.parameters)
            except Exception as error:
                self._audit(portal, error)
                raise

    def execute_portal(self, portal: Portal, max_rows: int) -> None:
        if portal.prepared.statement is None:
            self.send(wire.EMPTY_QUERY_RESPONSE)
            return
        self._start(portal)
        try:
            self.send_rows(portal, max_rows)
        except Exception as error:
            self._audit(portal, error)
            raise

    def send_rows(self, portal: Portal, max_rows: int) -> None:
        """Rows of the portal's result (all, or up to `max_rows`, then PortalSuspended)."""
        result = portal.result
        if result.batches is None:
            self._audit(portal, None)
            self.send(wire.command_complete(result.tag))
            return
        fields = result.fields(portal.result_formats)
        sent = 0
        while True:
            if not portal.pending:
                batch = next(result.batches, None)
                if batch is None:
                    break
                portal.pending = encode_batch(batch, fields)
            take = len(portal.pending) if max_rows <= 0 else min(len(portal.pending), max_rows - sent)
            for row in portal.pending[:take]:
                self.send(wire.data_row(row))
            del portal.pending[:take]
            sent += take
            result.rows_sent += take
            if 0 < max_rows <= sent and (portal.pending or self._has_more(result)):
                self.send(wire.PORTAL_SUSPENDED)
                return
        self._audit(portal, None)
        tag = f"SELECT {result.rows_sent}" if result.tag == "SELECT" else result.tag
        self.send(wire.command_complete(tag))

    @staticmethod
    def _has_more(result: Result) -> bool:
        batch = next(result.batches, None)
        if batch is None:
            return False
        result.batches = _prepend(batch, result.batches)
        return True

    # --- audit ---

    def _audit(self, portal: Portal, error: BaseException | None) -> None:
        statement = portal.prepared.statement
        if statement is None or statement.kind not in ("query", "explain", "show"):
            return
        rows = portal.result.rows_sent if portal.result is not None else 0
        outcome = "ok"
        if isinstance(error, QueryInterrupted):
            outcome = error.reason
        elif isinstance(error, Refused):
            outcome = "refused"
        elif error is not None:
            outcome = "error"
        kind = "select" if statement.kind == "query" else statement.kind
        self.session.audit_entry(
            kind,
            statement.relations,
            rows,
            outcome,
            portal.started,
            portal.started_at,
            sqlstate_of(error) if error is not None else None,
        )

    def _audit_refusal(self, error: BaseException, started: float, started_at: datetime) -> None:
        outcome = "refused" if isinstance(error, Refused) else "error"
        self.session.audit_entry(
            "refused" if outcome == "refused" else "invalid",
            (),
            0,
            outcome,
            started,
            started_at,
            sqlstate_of(error),
        )


def _prepend(first: Any, rest: Iterable[Any]) -> Any:
    yield first
    yield from rest


class SqlServer:
    """Listens, accepts, and runs a `Connection` per client in its own thread."""

    def __init__(
        self,
        lake: Lake,
        access: Access,
        secrets_by_user: dict[str, Secret],
        serve: ServeSettings,
        host: str,
        port: int,
        audit: AuditLog | None,
    ):
        self.lake, self.access, self.secrets, self.serve, self.audit = (
            lake,
            access,
            secrets_by_user,
            serve,
            audit,
        )
        self.descriptions = lake_descriptions(lake)
        self.backoff = LoginBackoff(
            serve.backoff_free_attempts, serve.backoff_base_seconds, serve.backoff_max_seconds
        )
        self.tls: ssl.SSLContext | None = None
        if serve.tls_cert is not None and serve.tls_key is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
            self.tls.load_cert_chain(str(serve.tls_cert), str(serve.tls_key))
        self.listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.server_address = self.listener.getsockname()
        self._connections: dict[int, Connection] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(serve.max_connections)
        self._stopped = threading.Event()
        self._threads: set[threading.Thread] = set()

    def register(self, connection: Connection) -> None:
        with self._lock:
            self._connections[connection.pid] = connection

    def unregister(self, connection: Connection) -> None:
        with self._lock:
            self._connections.pop(connection.pid, None)

    def cancel(self, pid: int, secret: int) -> None:
        with self._lock:
            connection = self._connections.get(pid)
        if connection is not None and connection.secret == secret and connection.session is not None:
            connection.session.interrupt("cancel")

    def serve_forever(self) -> None:
        self.listener.settimeout(0.5)
        while not self._stopped.is_set():
            try:
                sock, address = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopped.is_set():
                    return
                raise
            sock.settimeout(self.serve.auth_timeout_seconds)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._slots.acquire(blocking=False):
                try:
                    sock.sendall(wire.error_response("53300", "sorry, too many clients already", "FATAL"))
                finally:
                    sock.close()
                continue
            thread = threading.Thread(
                target=self._handle, args=(sock, address[0]), daemon=True, name="serve-sql"
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _handle(self, sock: socket.socket, address: str) -> None:
        try:
            Connection(self, sock, address).run()
        finally:
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self) -> None:
        self._stopped.set()

    def server_close(self) -> None:
        self._stopped.set()
        self.listener.close()
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            if connection.session is not None:
                connection.session.interrupt("server_stopped")
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        # Wait for every connection's thread to close its DuckDB database: a database still open when the
        # process exits is torn down under its running threads, and the process aborts.
        with self._lock:
            threads = list(self._threads)
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.audit is not None:
            self.audit.close()


__all__ = ["SqlServer"]
