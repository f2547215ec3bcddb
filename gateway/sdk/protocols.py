"""The driver protocols: how the hub calls a serial driver (`Driver`, `StreamDecoder`) or a BLE
driver (`GattDriver`, `GattDecoder`), what a decoder returns (`FeedResult`), the optional
`Flushable`, and three helpers every driver may use (`no_options`, `TableGattDecoder`,
`parse_hex`).

Standard library only, no I/O; imported through `gateway.sdk`, never directly by drivers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gateway.sdk.declaration import DriverInfo
from gateway.sdk.values import DecodeError, OptionError, Reading


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
