"""The driver SDK: everything a device driver may use, and nothing that does I/O.

A driver turns bytes into `Reading`s. It never opens a port, reads a clock, sleeps or logs health
values. This module imports only the standard library (enforced by import-linter), so a vendor
can depend on it without pulling in the hub.

What lives here: the value types (`Observation`, `Reading`), `DecodeError`, match rules, the
serial settings a driver asks for, the driver protocol, the table of well-known observation
types with their UCUM units and MDC / LOINC codes, and the IEEE 11073 SFLOAT/FLOAT helpers.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

SDK_VERSION = (1, 2)
"""(major, minor). A driver declares the version it was written for; the hub refuses one that
needs another major version or a newer minor one. Additions bump the minor version, changes
that could break a driver bump the major. 1.2 added `category`, `BleSession` and
`SerialSession`."""

TRACE = 5
"""Log level for raw bytes and health values: they never appear above it."""
logging.addLevelName(TRACE, "TRACE")

ClockStatus = Literal["set", "not-set", "unknown"]
StatusValue = bool | int | float | str
Absent = Literal[
    "not-a-number", "not-at-this-resolution", "positive-infinity", "negative-infinity", "error"
]


class DecodeError(ValueError):
    """Input bytes that the driver cannot turn into a reading. The only exception a decoder
    may raise on bad input."""


class OptionError(ValueError):
    """A device's driver options are wrong. `path` is relative to the device's `options` table."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class ObservationType:
    """A well-known observation type: its fixed name, UCUM unit and standard codes."""

    name: str
    unit: str
    mdc: int | None = None
    loinc: str | None = None


OBSERVATION_TYPES: Mapping[str, ObservationType] = {
    t.name: t
    for t in (
        ObservationType("spo2", "%", 150456, "59408-5"),
        ObservationType("pulse_rate", "/min", 149530, "8867-4"),
        ObservationType("perfusion_index", "%", 150448, None),
        ObservationType("heart_rate", "/min", 147842, "8867-4"),
        ObservationType("respiratory_rate", "/min", 151562, "9279-1"),
        ObservationType("peak_expiratory_flow", "L/min", 152584, "19935-6"),
        ObservationType("fev1", "L", 152586, "20150-9"),
        ObservationType("body_temperature", "Cel", 150364, "8310-5"),
        ObservationType("body_weight", "kg", 188736, "29463-7"),
        ObservationType("steps", "{steps}", None, "55423-8"),
    )
}
"""Observation type names are snake_case and fixed once chosen: platforms key on them."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One measured value. `value` is None exactly when `absent` says why (NaN, NRes, ...)."""

    type: str
    value: float | int | None
    unit: str
    mdc: int | None = None
    loinc: str | None = None
    absent: Absent | None = None

    @classmethod
    def known(
        cls, type_name: str, value: float | int | None, absent: Absent | None = None
    ) -> Observation:
        """An observation of a well-known type, with its unit and codes filled in."""
        known = OBSERVATION_TYPES[type_name]
        return cls(type_name, value, known.unit, known.mdc, known.loinc, absent)

    def wire(self) -> dict[str, object]:
        """The JSON shape on the wire: codes only where they exist, `absent` only when set."""
        out: dict[str, object] = {"type": self.type, "value": self.value, "unit": self.unit}
        if self.mdc is not None:
            out["mdc"] = self.mdc
        if self.loinc is not None:
            out["loinc"] = self.loinc
        if self.absent is not None:
            out["absent"] = self.absent
        return out


@dataclass(frozen=True, slots=True)
class Reading:
    """What a driver produces from one frame or record.

    `status` holds the device's status flags decoded to names (`{"finger_out": True}`) and any
    other non-observation values the device reported. `raw` is the bytes it was decoded from.
    """

    observations: tuple[Observation, ...]
    raw: bytes
    status: Mapping[str, StatusValue] = field(default_factory=dict)
    device_time: datetime | None = None
    device_clock: ClockStatus = "unknown"

    def wire(self) -> dict[str, object]:
        """The reading's part of the wire payload (DESIGN.md "Wire contract"): observations,
        status, raw, and the device's clock. The hub adds identity, time and the signature."""
        return {
            "observations": [o.wire() for o in self.observations],
            "status": dict(self.status),
            "raw": base64.b64encode(self.raw).decode("ascii"),
            "device_time": _rfc3339(self.device_time),
            "device_clock": self.device_clock,
        }


def _rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # a device's local wall clock: say so by leaving the offset out
        return moment.isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- match rules -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsbMatch:
    """Matches a USB serial adapter by vendor and product id (and optionally product string)."""

    vid: int
    pid: int
    product: str | None = None

    def describe(self) -> str:
        text = f"usb {self.vid:04x}:{self.pid:04x}"
        return f"{text} product={self.product!r}" if self.product else text


BLUETOOTH_BASE_UUID = "0000{:04x}-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """The full lower-case UUID of a Bluetooth SIG 16-bit UUID (0x180D -> 0000180d-...)."""
    if not 0 <= short <= 0xFFFF:
        raise ValueError(f"not a 16-bit UUID: {short:#x}")
    return BLUETOOTH_BASE_UUID.format(short)


@dataclass(frozen=True, slots=True)
class BleMatch:
    """Matches a BLE advertisement. Every field given must match; None means "any".

    `service_uuid` is a full lower-case UUID (use `uuid16` for SIG services); `local_name` is a
    regular expression matched at the start of the advertised name; `data_prefix` is matched
    against the manufacturer data of `manufacturer_id`.
    """

    service_uuid: str | None = None
    manufacturer_id: int | None = None
    data_prefix: bytes = b""
    local_name: str | None = None
    connectable: bool | None = None

    def describe(self) -> str:
        parts = []
        if self.service_uuid:
            parts.append(f"service {self.service_uuid}")
        if self.manufacturer_id is not None:
            prefix = f" data {self.data_prefix.hex()}..." if self.data_prefix else ""
            parts.append(f"manufacturer {self.manufacturer_id:#06x}{prefix}")
        if self.local_name:
            parts.append(f"name ~ {self.local_name!r}")
        if self.connectable is not None:
            parts.append("connectable" if self.connectable else "not connectable")
        return "ble " + (", ".join(parts) or "(anything)")


MatchRule = UsbMatch | BleMatch


@dataclass(frozen=True, slots=True)
class Characteristic:
    """A GATT characteristic a BLE driver uses, and how the hub gets its values."""

    uuid: str
    name: str
    mode: Literal["notify", "indicate", "read"]
    optional: bool = False
    """The profile lets a device leave it out: a connection goes on without it."""


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """How to open a serial device. Defaults are 8N1 without flow control."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    xonxoff: bool = False

    def describe(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}" + (
            " xon/xoff" if self.xonxoff else ""
        )


# --- conversations: what the transport does for a driver that needs more than listening ------


@dataclass(frozen=True, slots=True)
class GattWrite:
    """A value the hub writes to a characteristic (a start or stop command, say)."""

    uuid: str
    data: bytes
    response: bool = True
    """Write with response (the device acknowledges); False for write-without-response."""


@dataclass(frozen=True, slots=True)
class AfterCommit:
    """A request the hub writes to `StoredRecords.control` once every record a transfer delivered
    is committed to its outbox (delete them on the device, say). Nothing is acknowledged to a
    device before that commit. Added in SDK 1.3.

    - `request`: the bytes to write.
    - `answer(value)`: for a value arriving on `control`, None while it is not the answer to
      `request`; True when the device did it, False when it refused.

    After a True answer the hub forgets the digests of the records (`position="digest"`): the
    device no longer holds them.
    """

    request: bytes
    answer: Callable[[bytes], bool | None]


@dataclass(frozen=True, slots=True)
class StoredRecords:
    """Records a device keeps while the hub is away, fetched on every connection after the last
    one the hub has stored. The hub keeps that position (`cursor`) in the outbox, written in the
    same transaction as the reading it belongs to, so nothing is fetched twice or skipped, even
    across a power cut. All functions are pure.

    - `request(last)`: the bytes to write to `control` to ask for the records after `last`
      (None: the hub has stored none yet, so ask for all).
    - `cursor(reading)`: the position of a reading that arrived on `records` (a record number or
      event counter; later records have higher numbers), or None for a value that is not a
      record. A reading at or below the stored position is dropped as already stored.
    - `done(value)`: True when a value arriving on `control` (or `records`) ends the transfer.

    The device must send its records in increasing position within a connection, and no live
    value with a higher position before the stored ones it answers for: the hub keeps only the
    highest position, so a record arriving after a higher one is taken as already stored.

    Optional (SDK 1.3), for profiles such as Glucose and Pulse Oximeter spot-checks:

    - `companions`: characteristics whose values belong to a record (Glucose Measurement
      Context): such a value is kept when the record with the same `cursor` was kept in this
      transfer (or when it has no position), and moves no position itself.
    - `position="digest"`: the records carry no number. The hub asks for all of them
      (`request(None)`), drops those whose bytes' digest it has stored, and keeps the digests
      (the last 2000) instead of a position; `cursor` is not called.
    - `after_commit`: written once every record of a transfer that delivered records is
      committed (see `AfterCommit`); with digests, this is how the device's list is emptied.
    - `abort`: written to `control` when a transfer stalls (no record or answer for 30 s).
    - `describe(value)`: the value that ended a transfer, in words for the hub's log.
    - `position_key`: the name the hub keeps the position under in its outbox
      (`ble.<name>:<device id>`); empty means `cursor` (or `stored-digests` with digests).
      Leave it empty: it exists so built-in profiles keep the names older hubs used.
    """

    control: str
    records: str
    request: Callable[[int | None], bytes]
    cursor: Callable[[Reading], int | None]
    done: Callable[[bytes], bool]
    companions: tuple[str, ...] = ()
    position: Literal["cursor", "digest"] = "cursor"
    after_commit: AfterCommit | None = None
    abort: bytes | None = None
    describe: Callable[[bytes], str] | None = None
    position_key: str = ""


@dataclass(frozen=True, slots=True)
class BleSession:
    """The steps a BLE driver needs beyond subscribing to its characteristics, which the
    transport runs so that the driver itself stays pure."""

    on_connect: tuple[GattWrite, ...] = ()
    """Written after every subscription is in place (start a measurement stream, say)."""
    on_disconnect: tuple[GattWrite, ...] = ()
    """Written, best effort, when the hub closes the link itself (stop the stream)."""
    stored: StoredRecords | None = None


@dataclass(frozen=True, slots=True)
class SerialSession:
    """The steps a serial driver needs: bytes written each time the port is opened (a device
    that streams only after a start command)."""

    on_open: tuple[bytes, ...] = ()


Category = Literal["respiratory", "musculoskeletal", "other"]
"""The RTM category a driver's device serves (CPT 98976 respiratory, 98977 musculoskeletal)."""


# --- the driver protocol -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """What a driver declares about itself."""

    id: str
    version: str
    description: str
    transport: Literal["serial", "ble"]
    match: tuple[MatchRule, ...] = ()
    serial: SerialSettings = SerialSettings()
    service: str | None = None
    """BLE: the primary service the driver talks to (full UUID)."""
    characteristics: tuple[Characteristic, ...] = ()
    """BLE: the characteristics the hub subscribes to or reads, in the order to set them up."""
    produces: tuple[str, ...] = ()
    continuous: bool = False
    """A continuous stream (tens of frames a second): the hub summarises the values of its
    notify characteristics to one reading per configured interval instead of signing each."""
    sdk_version: tuple[int, int] = SDK_VERSION
    """The SDK version the driver was written for; vendors should spell it out."""
    category: Category = "other"
    ble_session: BleSession | None = None
    serial_session: SerialSession | None = None


@dataclass(slots=True)
class FeedResult:
    """What a stream decoder made of a chunk of bytes."""

    readings: list[Reading] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)


@runtime_checkable
class Flushable(Protocol):
    """A decoder that can hand over what it holds when its stream or connection ends (a frame
    left open, a record split over notifications): the hub calls `flush()` then, and at the
    end of a one-shot `rtm-gateway decode`."""

    def flush(self) -> FeedResult: ...


class StreamDecoder(Protocol):
    """Turns a byte stream into readings, keeping whatever framing state it needs.

    `feed` never raises on bad input: it resynchronises and reports each malformed frame as a
    `DecodeError` in the result, so the session can count it and go on.
    """

    def feed(self, data: bytes) -> FeedResult: ...


@runtime_checkable
class Driver(Protocol):
    """A device driver: a declaration plus a factory for per-session stream decoders."""

    @property
    def info(self) -> DriverInfo:
        """What the driver declares (a plain attribute or a frozen dataclass field is fine)."""
        ...

    def decoder(self, options: Mapping[str, object]) -> StreamDecoder:
        """A new decoder for one device session. Raises `OptionError` for bad options."""
        ...


class GattDecoder(Protocol):
    """Turns characteristic values into readings for one BLE connection. It may keep state
    between values (a record split over notifications, counters to difference). Like a stream
    decoder it never raises on bad input: errors come back in the result.

    A decoder that holds partial results may also define `flush() -> FeedResult`: the hub
    calls it when the connection ends, and signs what it returns."""

    def value(self, uuid: str, data: bytes) -> FeedResult: ...


def no_options(driver_id: str, options: Mapping[str, object]) -> None:
    """For drivers that take no options: refuse any, naming the first."""
    if options:
        raise OptionError(next(iter(options)), f"{driver_id} takes no options; remove it")


class TableGattDecoder:
    """A `GattDecoder` for profiles whose values decode one by one, without state: each
    characteristic UUID maps to a pure function of the value's bytes."""

    __slots__ = ("_decoders", "_driver_id")

    def __init__(self, driver_id: str, decoders: Mapping[str, Callable[[bytes], Reading]]) -> None:
        self._driver_id = driver_id
        self._decoders = {uuid.lower(): decode for uuid, decode in decoders.items()}

    def value(self, uuid: str, data: bytes) -> FeedResult:
        decode = self._decoders.get(uuid.lower())
        if decode is None:
            return FeedResult(
                errors=[DecodeError(f"{self._driver_id} does not decode characteristic {uuid}")]
            )
        try:
            return FeedResult(readings=[decode(bytes(data))])
        except DecodeError as exc:
            return FeedResult(errors=[exc])


@runtime_checkable
class GattDriver(Protocol):
    """A BLE GATT driver: a declaration (`info.transport == "ble"`, `info.characteristics`) and
    a factory for per-connection decoders."""

    @property
    def info(self) -> DriverInfo:
        """What the driver declares."""
        ...

    def gatt_decoder(self, options: Mapping[str, object]) -> GattDecoder:
        """A new decoder for one connection. Raises `OptionError` for bad options."""
        ...


def parse_hex(text: str) -> bytes:
    """Bytes from hex text that may contain spaces, colons or a 0x prefix."""
    cleaned = text.strip().lower().removeprefix("0x")
    for sep in (" ", ":", "-", "\n", "\t"):
        cleaned = cleaned.replace(sep, "")
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise DecodeError(f"not hex: {exc}") from exc


# --- IEEE 11073-20601 SFLOAT / FLOAT -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Float11073:
    """A decoded IEEE 11073 SFLOAT or FLOAT: mantissa and base-10 exponent, or a special value.

    The exponent carries the precision (2, 2.0 and 2.00 are different encodings), so `value`
    is rounded to exactly the decimals the device sent.
    """

    mantissa: int
    exponent: int
    absent: Absent | None = None

    @property
    def value(self) -> float | int | None:
        if self.absent is not None:
            return None
        if self.exponent >= 0:
            return self.mantissa * int(10**self.exponent)
        return round(float(self.mantissa * 10.0**self.exponent), -self.exponent)

    @property
    def decimals(self) -> int:
        """Digits after the decimal point the device's encoding carries."""
        return max(0, -self.exponent)

    def observation(self, type_name: str) -> Observation:
        return Observation.known(type_name, self.value, self.absent)


_SFLOAT_SPECIAL: Mapping[int, Absent] = {
    0x07FF: "not-a-number",
    0x0800: "not-at-this-resolution",
    0x07FE: "positive-infinity",
    0x0802: "negative-infinity",
    0x0801: "error",  # reserved for future use: treat as an error, never a number
}
_FLOAT_SPECIAL: Mapping[int, Absent] = {
    0x007FFFFF: "not-a-number",
    0x00800000: "not-at-this-resolution",
    0x007FFFFE: "positive-infinity",
    0x00800002: "negative-infinity",
    0x00800001: "error",
}


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def sfloat(raw: int) -> Float11073:
    """Decode a 16-bit SFLOAT: 4-bit signed exponent, 12-bit signed mantissa."""
    if not 0 <= raw <= 0xFFFF:
        raise DecodeError(f"SFLOAT out of range: {raw:#x}")
    mantissa_bits = raw & 0x0FFF
    if mantissa_bits in (0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801):
        # Special values are defined with a zero exponent only.
        special = _SFLOAT_SPECIAL.get(raw)
        if special is not None:
            return Float11073(0, 0, special)
    return Float11073(_signed(mantissa_bits, 12), _signed(raw >> 12, 4))


def float32(raw: int) -> Float11073:
    """Decode a 32-bit FLOAT: 8-bit signed exponent, 24-bit signed mantissa."""
    if not 0 <= raw <= 0xFFFFFFFF:
        raise DecodeError(f"FLOAT out of range: {raw:#x}")
    special = _FLOAT_SPECIAL.get(raw)
    if special is not None:
        return Float11073(0, 0, special)
    return Float11073(_signed(raw & 0xFFFFFF, 24), _signed(raw >> 24, 8))


def sfloat_from(data: bytes | Sequence[int], offset: int) -> Float11073:
    """Decode the little-endian SFLOAT at `offset`, or raise `DecodeError` if it is cut short."""
    if offset < 0 or offset + 2 > len(data):
        raise DecodeError(f"SFLOAT at offset {offset} runs past the end ({len(data)} bytes)")
    return sfloat(data[offset] | data[offset + 1] << 8)


def float_from(data: bytes | Sequence[int], offset: int) -> Float11073:
    """Decode the little-endian FLOAT at `offset`, or raise `DecodeError` if it is cut short."""
    if offset < 0 or offset + 4 > len(data):
        raise DecodeError(f"FLOAT at offset {offset} runs past the end ({len(data)} bytes)")
    return float32(int.from_bytes(bytes(data[offset : offset + 4]), "little"))


def uint_from(data: bytes | Sequence[int], offset: int, size: int) -> int:
    """The little-endian unsigned integer of `size` bytes at `offset` (GATT byte order)."""
    if offset < 0 or offset + size > len(data):
        raise DecodeError(
            f"{size}-byte field at offset {offset} runs past the end ({len(data)} bytes)"
        )
    return int.from_bytes(bytes(data[offset : offset + size]), "little")


def sint_from(data: bytes | Sequence[int], offset: int, size: int) -> int:
    """The little-endian two's-complement integer of `size` bytes at `offset`."""
    return _signed(uint_from(data, offset, size), 8 * size)


def date_time_from(data: bytes | Sequence[int], offset: int) -> datetime | None:
    """A GATT Date Time (0x2A08, 7 bytes) at `offset`: the device's local wall clock, so the
    result has no time zone. None when the device says the date is not known (year, month or
    day 0); `DecodeError` for a date that cannot exist."""
    year = uint_from(data, offset, 2)
    month, day, hour, minute, second = (uint_from(data, offset + i, 1) for i in range(2, 7))
    if year == 0 or month == 0 or day == 0:
        return None
    try:
        return datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 (local clock)
    except ValueError as exc:
        raise DecodeError(f"Date Time at offset {offset} is not a date: {exc}") from exc


def timestamp_from(data: bytes | Sequence[int], offset: int) -> tuple[datetime | None, ClockStatus]:
    """A measurement's optional GATT time stamp at `offset`: (device time, clock status). A time
    stamp whose date is unknown (year, month or day 0) means the device clock was never set."""
    moment = date_time_from(data, offset)
    return moment, ("unknown" if moment is not None else "not-set")


def bit_names(value: int, masks: Iterable[tuple[str, int]]) -> dict[str, bool]:
    """Status flags by name from a bit field and a (name, mask) table."""
    return {name: bool(value & mask) for name, mask in masks}


def flags_reading(data: bytes, size: int, masks: Iterable[tuple[str, int]], what: str) -> Reading:
    """A reading with no observations whose status is a `size`-byte bit field by name: the
    shape of every profile's Feature characteristic."""
    if len(data) != size:
        raise DecodeError(f"{what} must be {size} bytes, got {len(data)}")
    return Reading((), bytes(data), bit_names(uint_from(data, 0, size), masks))


def finite_or_none(value: float) -> float | None:
    """None for NaN or infinity: JSON has no such numbers."""
    return value if math.isfinite(value) else None
