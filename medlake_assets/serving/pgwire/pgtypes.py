"""PostgreSQL types for Arrow result columns and query parameters: oids, text and binary encodings.

Results leave DuckDB as Arrow record batches; each column gets the PostgreSQL type a client expects
(VARCHAR as varchar, TIMESTAMP WITH TIME ZONE as timestamptz in UTC, INTERVAL as interval, ...) and is
encoded column by column. Anything without a PostgreSQL counterpart (lists of structs, maps) goes out
as text.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medlake_assets.serving.pgwire.protocol import Field, ProtocolError

BOOL, BYTEA, INT8, INT2, INT4, TEXT, OID = 16, 17, 20, 21, 23, 25, 26
FLOAT4, FLOAT8, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ = 700, 701, 1043, 1082, 1083, 1114, 1184
INTERVAL, NUMERIC, UUID, TEXT_ARRAY, UNKNOWN = 1186, 1700, 2950, 1009, 705
ARRAY_OF = {BOOL: 1000, INT2: 1005, INT4: 1007, INT8: 1016, FLOAT4: 1021, FLOAT8: 1022, VARCHAR: 1015}
ARRAY_OF.update({TEXT: 1009, DATE: 1182, TIMESTAMP: 1115, TIMESTAMPTZ: 1185, NUMERIC: 1231})
SIZES = {BOOL: 1, INT2: 2, INT4: 4, INT8: 8, FLOAT4: 4, FLOAT8: 8, DATE: 4, TIME: 8, TIMESTAMP: 8}
SIZES.update({TIMESTAMPTZ: 8, INTERVAL: 16, UUID: 16, OID: 4})
POSTGRES_EPOCH_DATE = date(2000, 1, 1)
POSTGRES_EPOCH = datetime(2000, 1, 1)
POSTGRES_EPOCH_TZ = datetime(2000, 1, 1, tzinfo=UTC)

Encoder = Callable[[Any], bytes]


def type_oid(arrow_type: pa.DataType) -> tuple[int, int]:
    """(PostgreSQL type oid, type modifier) of an Arrow column type."""
    if pa.types.is_boolean(arrow_type):
        return BOOL, -1
    if pa.types.is_int8(arrow_type) or pa.types.is_int16(arrow_type) or pa.types.is_uint8(arrow_type):
        return INT2, -1
    if pa.types.is_int32(arrow_type) or pa.types.is_uint16(arrow_type):
        return INT4, -1
    if pa.types.is_int64(arrow_type) or pa.types.is_uint32(arrow_type):
        return INT8, -1
    if pa.types.is_uint64(arrow_type):
        return NUMERIC, -1
    if pa.types.is_float16(arrow_type) or pa.types.is_float32(arrow_type):
        return FLOAT4, -1
    if pa.types.is_float64(arrow_type):
        return FLOAT8, -1
    if pa.types.is_decimal(arrow_type):
        return NUMERIC, ((arrow_type.precision << 16) | arrow_type.scale) + 4
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return VARCHAR, -1
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return BYTEA, -1
    if pa.types.is_fixed_size_binary(arrow_type) and arrow_type.byte_width == 16:
        return UUID, -1
    if pa.types.is_date(arrow_type):
        return DATE, -1
    if pa.types.is_time(arrow_type):
        return TIME, -1
    if pa.types.is_timestamp(arrow_type):
        return (TIMESTAMPTZ if arrow_type.tz else TIMESTAMP), -1
    if pa.types.is_interval(arrow_type) or pa.types.is_duration(arrow_type):
        return INTERVAL, -1
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        element, _ = type_oid(arrow_type.value_type)
        return ARRAY_OF.get(element, TEXT_ARRAY), -1
    if isinstance(arrow_type, pa.ExtensionType) and arrow_type.extension_name == "arrow.uuid":
        return UUID, -1
    return TEXT, -1


def field_for(name: str, arrow_type: pa.DataType, result_format: int) -> Field:
    oid, modifier = type_oid(arrow_type)
    return Field(name, oid, SIZES.get(oid, -1), modifier, result_format)


# --- text format ---


def _interval_text(months: int, days: int, micros: int) -> str:
    parts = []
    years, months = divmod(months, 12) if months >= 0 else (-((-months) // 12), -((-months) % 12))
    if years:
        parts.append(f"{years} year{'s' if abs(years) != 1 else ''}")
    if months:
        parts.append(f"{months} mon{'s' if abs(months) != 1 else ''}")
    if days:
        parts.append(f"{days} day{'s' if abs(days) != 1 else ''}")
    if micros or not parts:
        sign = "-" if micros < 0 else ""
        seconds, fraction = divmod(abs(micros), 1_000_000)
        hours, rest = divmod(seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        clock = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
        parts.append(clock + (f".{fraction:06d}".rstrip("0") if fraction else ""))
    return " ".join(parts)


def _interval_parts(value: Any) -> tuple[int, int, int]:
    """(months, days, microseconds) of an Arrow interval or duration value as Python gives it."""
    if isinstance(value, timedelta):
        return 0, value.days, value.seconds * 1_000_000 + value.microseconds
    # pyarrow's MonthDayNano tuple
    return int(value.months), int(value.days), int(value.nanoseconds) // 1000


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _array_item(value: Any) -> str:
    if value is None:
        return "NULL"
    text = _scalar_text(value)
    if text == "" or any(char in text for char in ' {},"\\') or text.upper() == "NULL":
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date | time | Decimal | int):
        return str(value)
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return "{" + ",".join(_array_item(item) for item in value) + "}"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, timedelta) or hasattr(value, "nanoseconds"):
        return _interval_text(*_interval_parts(value))
    return str(value)


def text_column(column: pa.Array) -> list[bytes | None]:
    """Every value of `column` in PostgreSQL's text format (None for NULL)."""
    arrow_type = column.type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return [None if value is None else value.encode("utf-8") for value in column.to_pylist()]
    if pa.types.is_integer(arrow_type) or pa.types.is_decimal(arrow_type):
        return [
            None if value is None else value.encode("ascii")
            for value in pc.cast(column, pa.string()).to_pylist()
        ]
    if pa.types.is_timestamp(arrow_type) and arrow_type.tz:
        # The session's time zone is UTC: timestamptz values go out as UTC with their offset.
        column = pc.cast(column, pa.timestamp(arrow_type.unit, "UTC"))
    if pa.types.is_fixed_size_binary(arrow_type) and arrow_type.byte_width == 16:
        return [
            None if value is None else str(uuid.UUID(bytes=value)).encode() for value in column.to_pylist()
        ]
    return [None if value is None else _scalar_text(value).encode("utf-8") for value in column.to_pylist()]


# --- binary format ---


def _numeric_binary(value: Decimal | int) -> bytes:
    """PostgreSQL's numeric wire format: base-10000 digits, weight, sign and display scale."""
    number = Decimal(value)
    if number.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    sign, digits, exponent = number.as_tuple()
    scale = max(-int(exponent), 0)
    text = "".join(map(str, digits))
    if int(exponent) > 0:
        text += "0" * int(exponent)
        integer, fraction = text, ""
    else:
        cut = len(text) + int(exponent)
        integer, fraction = (text[:cut] if cut > 0 else "0"), ("0" * max(-cut, 0) + text[max(cut, 0) :])
    integer = integer.lstrip("0")
    integer = "0" * (-len(integer) % 4) + integer
    fraction = fraction + "0" * (-len(fraction) % 4)
    groups = [int(integer[i : i + 4]) for i in range(0, len(integer), 4)]
    weight = len(groups) - 1
    groups += [int(fraction[i : i + 4]) for i in range(0, len(fraction), 4)]
    while groups and groups[0] == 0:  # leading zero groups move the weight
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight, 0x4000 if sign else 0, scale, *groups)


def _timestamp_micros(value: datetime) -> int:
    if value.tzinfo is not None:
        return (value - POSTGRES_EPOCH_TZ) // timedelta(microseconds=1)
    return (value - POSTGRES_EPOCH) // timedelta(microseconds=1)


BINARY_ENCODERS: dict[int, Encoder] = {
    BOOL: lambda value: b"\x01" if value else b"\x00",
    INT2: lambda value: struct.pack("!h", value),
    INT4: lambda value: struct.pack("!i", value),
    INT8: lambda value: struct.pack("!q", value),
    OID: lambda value: struct.pack("!I", value),
    FLOAT4: lambda value: struct.pack("!f", value),
    FLOAT8: lambda value: struct.pack("!d", value),
    TEXT: lambda value: str(value).encode("utf-8"),
    VARCHAR: lambda value: str(value).encode("utf-8"),
    BYTEA: bytes,
    DATE: lambda value: struct.pack("!i", (value - POSTGRES_EPOCH_DATE).days),
    TIME: lambda value: struct.pack(
        "!q", ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    ),
    TIMESTAMP: lambda value: struct.pack("!q", _timestamp_micros(value)),
    TIMESTAMPTZ: lambda value: struct.pack("!q", _timestamp_micros(value)),
    INTERVAL: lambda value: (lambda m, d, u: struct.pack("!qii", u, d, m))(*_interval_parts(value)),
    NUMERIC: _numeric_binary,
    UUID: lambda value: value if isinstance(value, bytes) else uuid.UUID(str(value)).bytes,
}


def binary_column(column: pa.Array, oid: int) -> list[bytes | None]:
    encoder = BINARY_ENCODERS.get(oid)
    if encoder is None:
        raise ProtocolError(f"binary format is not supported for result type oid {oid}; ask for text")
    if pa.types.is_timestamp(column.type) and column.type.tz:
        column = pc.cast(column, pa.timestamp(column.type.unit, "UTC"))
    return [None if value is None else encoder(value) for value in column.to_pylist()]


def encode_batch(batch: pa.RecordBatch, fields: Sequence[Field]) -> list[list[bytes | None]]:
    """Rows of `batch` as encoded values, in each field's format (text or binary)."""
    columns = [
        binary_column(batch.column(index), field.type_oid)
        if field.format == 1
        else text_column(batch.column(index))
        for index, field in enumerate(fields)
    ]
    return (
        [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in range(batch.num_rows)]
    )


# --- parameters ---


def _parse_timestamp(text: str) -> datetime:
    text = text.strip()
    if text.endswith(("+00", "-00")) or (len(text) > 3 and text[-3] in "+-" and text[-2:].isdigit()):
        text += ":00"
    return datetime.fromisoformat(text)


def _bytea_text(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode("utf-8")


TEXT_PARAMETERS: dict[int, Callable[[str], Any]] = {
    BOOL: lambda text: text.strip().lower() in ("t", "true", "1", "on", "y", "yes"),
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    FLOAT4: float,
    FLOAT8: float,
    NUMERIC: Decimal,
    DATE: date.fromisoformat,
    TIMESTAMP: _parse_timestamp,
    TIMESTAMPTZ: _parse_timestamp,
    BYTEA: _bytea_text,
}


def _binary_timestamp(data: bytes, aware: bool) -> datetime:
    micros = struct.unpack("!q", data)[0]
    return (POSTGRES_EPOCH_TZ if aware else POSTGRES_EPOCH) + timedelta(microseconds=micros)


def _binary_numeric(data: bytes) -> Decimal:
    count, weight, sign, scale = struct.unpack_from("!hhHh", data)
    if sign == 0xC000:
        return Decimal("NaN")
    groups = struct.unpack_from(f"!{count}H", data, 8)
    value = sum(Decimal(group) * (Decimal(10000) ** (weight - index)) for index, group in enumerate(groups))
    value = -value if sign == 0x4000 else value
    return value.quantize(Decimal(1).scaleb(-scale)) if scale else value


BINARY_PARAMETERS: dict[int, Callable[[bytes], Any]] = {
    BOOL: lambda data: data != b"\x00",
    INT2: lambda data: struct.unpack("!h", data)[0],
    INT4: lambda data: struct.unpack("!i", data)[0],
    INT8: lambda data: struct.unpack("!q", data)[0],
    OID: lambda data: struct.unpack("!I", data)[0],
    FLOAT4: lambda data: struct.unpack("!f", data)[0],
    FLOAT8: lambda data: struct.unpack("!d", data)[0],
    TEXT: lambda data: data.decode("utf-8"),
    VARCHAR: lambda data: data.decode("utf-8"),
    UNKNOWN: lambda data: data.decode("utf-8"),
    0: lambda data: data.decode("utf-8"),
    BYTEA: bytes,
    DATE: lambda data: POSTGRES_EPOCH_DATE + timedelta(days=struct.unpack("!i", data)[0]),
    TIMESTAMP: lambda data: _binary_timestamp(data, aware=False),
    TIMESTAMPTZ: lambda data: _binary_timestamp(data, aware=True),
    NUMERIC: _binary_numeric,
    UUID: lambda data: str(uuid.UUID(bytes=data)),
}


def decode_parameter(data: bytes | None, oid: int, binary: bool) -> Any:
    """A Bind parameter as the Python value DuckDB binds: typed when the client named a type."""
    if data is None:
        return None
    try:
        if binary:
            decoder = BINARY_PARAMETERS.get(oid)
            if decoder is None:
                raise ProtocolError(f"binary parameters of type oid {oid} are not supported; send text")
            return decoder(data)
        text = data.decode("utf-8")
        return TEXT_PARAMETERS.get(oid, str)(text)
    except (ValueError, struct.error, ArithmeticError) as error:
        # The message names the type, never the value (it may be a patient's).
        raise ProtocolError(f"a parameter is not a valid value of type oid {oid}") from error


# DuckDB type of a typed NULL, used to describe a statement before its parameters arrive.
DUCKDB_TYPE_OF = {
    BOOL: "BOOLEAN",
    INT2: "SMALLINT",
    INT4: "INTEGER",
    INT8: "BIGINT",
    FLOAT4: "FLOAT",
    FLOAT8: "DOUBLE",
    NUMERIC: "DECIMAL(38, 10)",
    DATE: "DATE",
    TIMESTAMP: "TIMESTAMP",
    TIMESTAMPTZ: "TIMESTAMPTZ",
    BYTEA: "BLOB",
}
