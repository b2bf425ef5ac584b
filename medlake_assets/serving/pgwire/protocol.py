"""PostgreSQL frontend/backend protocol v3: pure encode and decode functions, no sockets.

Only the framing and the message layouts live here (https://www.postgresql.org/docs/current/protocol-message-formats.html),
so each is testable on bytes alone. Lengths are checked against a limit before anything is allocated:
a peer that claims a 4 GB message is refused from the 4-byte length, never served.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from medlake_assets.errors import MedlakeError

PROTOCOL_3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
# PostgreSQL's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_BYTES = 10_000


class ProtocolError(MedlakeError):
    """The peer broke the protocol (bad length, unknown layout); the connection is closed after saying so."""

    sqlstate = "08P01"


class MessageTooLarge(ProtocolError):
    """A length prefix above the limit in force (smaller before authentication)."""

    sqlstate = "54000"


def check_length(length: int, limit: int, what: str) -> int:
    """The body length after a 4-byte length prefix, or `MessageTooLarge` / `ProtocolError`."""
    if length < 4:
        raise ProtocolError(f"invalid {what} length {length}")
    if length - 4 > limit:
        raise MessageTooLarge(f"{what} of {length} bytes is over the limit of {limit} bytes")
    return length - 4


@dataclass(frozen=True)
class Startup:
    code: int
    parameters: dict[str, str]
    cancel_pid: int = 0
    cancel_secret: int = 0


def decode_startup(body: bytes) -> Startup:
    """A startup-phase packet body (after its length): protocol version or SSL/GSS/cancel request."""
    if len(body) < 4:
        raise ProtocolError("startup packet too short")
    (code,) = struct.unpack_from("!i", body)
    if code == CANCEL_REQUEST:
        if len(body) != 12:
            raise ProtocolError("cancel request of the wrong length")
        pid, secret = struct.unpack_from("!ii", body, 4)
        return Startup(code, {}, pid, secret)
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        return Startup(code, {})
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: 3.0 is served")
    parts = body[4:].split(b"\x00")
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolError("startup packet parameters are not terminated")
    names_values = parts[:-2]
    if len(names_values) % 2:
        raise ProtocolError("startup packet has a parameter without a value")
    text = [part.decode("utf-8", "replace") for part in names_values]
    return Startup(code, dict(zip(text[::2], text[1::2], strict=True)))


class Reader:
    """Reads fields out of one message body; running past its end is a `ProtocolError`."""

    def __init__(self, body: bytes):
        self.body = body
        self.offset = 0

    def _take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.body):
            raise ProtocolError("message shorter than its fields")
        chunk = self.body[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def int16(self) -> int:
        return struct.unpack("!h", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack("!i", self._take(4))[0]

    def byte(self) -> bytes:
        return self._take(1)

    def cstring(self) -> str:
        end = self.body.find(b"\x00", self.offset)
        if end < 0:
            raise ProtocolError("string not terminated")
        text = self.body[self.offset : end].decode("utf-8")
        self.offset = end + 1
        return text

    def raw(self, size: int) -> bytes:
        return self._take(size)

    def rest(self) -> bytes:
        return self._take(len(self.body) - self.offset)


@dataclass(frozen=True)
class Parse:
    statement: str
    query: str
    parameter_types: tuple[int, ...]


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    parameter_formats: tuple[int, ...]
    parameters: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True)
class Describe:
    kind: str  # "S" statement or "P" portal
    name: str


@dataclass(frozen=True)
class Execute:
    portal: str
    max_rows: int


@dataclass(frozen=True)
class Close:
    kind: str
    name: str


def decode_parse(body: bytes) -> Parse:
    reader = Reader(body)
    statement, query = reader.cstring(), reader.cstring()
    count = reader.int16()
    return Parse(statement, query, tuple(reader.int32() & 0xFFFFFFFF for _ in range(max(count, 0))))


def decode_bind(body: bytes) -> Bind:
    reader = Reader(body)
    portal, statement = reader.cstring(), reader.cstring()
    formats = tuple(reader.int16() for _ in range(max(reader.int16(), 0)))
    values: list[bytes | None] = []
    for _ in range(max(reader.int16(), 0)):
        size = reader.int32()
        values.append(None if size == -1 else reader.raw(size))
    results = tuple(reader.int16() for _ in range(max(reader.int16(), 0)))
    return Bind(portal, statement, formats, tuple(values), results)


def decode_describe(body: bytes) -> Describe:
    reader = Reader(body)
    kind = reader.byte().decode("ascii", "replace")
    if kind not in ("S", "P"):
        raise ProtocolError("Describe of neither a statement nor a portal")
    return Describe(kind, reader.cstring())


def decode_execute(body: bytes) -> Execute:
    reader = Reader(body)
    return Execute(reader.cstring(), reader.int32())


def decode_close(body: bytes) -> Close:
    reader = Reader(body)
    kind = reader.byte().decode("ascii", "replace")
    if kind not in ("S", "P"):
        raise ProtocolError("Close of neither a statement nor a portal")
    return Close(kind, reader.cstring())


def decode_query(body: bytes) -> str:
    return Reader(body).cstring()


def decode_sasl_initial(body: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse: mechanism name and the client-first message."""
    reader = Reader(body)
    mechanism = reader.cstring()
    size = reader.int32()
    return mechanism, b"" if size == -1 else reader.raw(size)


def decode_password(body: bytes) -> str:
    return Reader(body).cstring()


def format_for(formats: Sequence[int], index: int) -> int:
    """The format code of item `index`: none given means text, one applies to all, else one each."""
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    if index >= len(formats):
        raise ProtocolError("fewer format codes than values")
    return formats[index]


# --- backend messages ---


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def authentication(code: int, data: bytes = b"") -> bytes:
    """AuthenticationOk (0), MD5Password (5, salt), SASL (10), SASLContinue (11), SASLFinal (12)."""
    return message(b"R", struct.pack("!i", code) + data)


def authentication_sasl(mechanisms: Iterable[str]) -> bytes:
    return authentication(10, b"".join(_cstring(name) for name in mechanisms) + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", _cstring(name) + _cstring(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!ii", pid, secret))


def ready_for_query(status: str) -> bytes:
    return message(b"Z", status.encode("ascii"))


@dataclass(frozen=True)
class Field:
    """One result column as RowDescription describes it."""

    name: str
    type_oid: int
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


def row_description(fields: Sequence[Field]) -> bytes:
    body = [struct.pack("!h", len(fields))]
    for field in fields:
        body.append(_cstring(field.name))
        body.append(
            struct.pack("!ihihih", 0, 0, field.type_oid, field.type_size, field.type_modifier, field.format)
        )
    return message(b"T", b"".join(body))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(struct.pack("!i", len(value)))
            parts.append(value)
    return message(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return message(b"C", _cstring(tag))


def error_response(sqlstate: str, text: str, severity: str = "ERROR", hint: str | None = None) -> bytes:
    fields = [b"S" + _cstring(severity), b"V" + _cstring(severity), b"C" + _cstring(sqlstate)]
    fields.append(b"M" + _cstring(text))
    if hint:
        fields.append(b"H" + _cstring(hint))
    return message(b"E", b"".join(fields) + b"\x00")


def parameter_description(type_oids: Sequence[int]) -> bytes:
    return message(b"t", struct.pack(f"!h{len(type_oids)}I", len(type_oids), *type_oids))


PARSE_COMPLETE = message(b"1")
BIND_COMPLETE = message(b"2")
CLOSE_COMPLETE = message(b"3")
NO_DATA = message(b"n")
PORTAL_SUSPENDED = message(b"s")
EMPTY_QUERY_RESPONSE = message(b"I")
