"""Conversations: the writes and stored-record transfers the transport makes for a driver that
needs more than listening (`GattWrite`, `StoredRecords`, `BleSession`, `SerialSession`). The
driver only declares them, so it stays pure.

Standard library only, no I/O; imported through `gateway.sdk`, never directly by drivers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.sdk.values import Reading


@dataclass(frozen=True, slots=True)
class GattWrite:
    """A value the hub writes to a characteristic (a start or stop command, say)."""

    uuid: str
    data: bytes
    response: bool = True
    """Write with response (the device acknowledges); False for write-without-response."""


@dataclass(frozen=True, slots=True)
class StoredRecords:
    """Records a device keeps while the hub is away, fetched on every connection after the last
    one the hub has stored. The hub keeps that position (`cursor`) in the outbox, written in the
    same transaction as the reading it belongs to, so nothing is fetched twice or skipped, even
    across a power cut. All three functions are pure.

    - `request(last)`: the bytes to write to `control` to ask for the records after `last`
      (None: the hub has stored none yet, so ask for all).
    - `cursor(reading)`: the position of a reading that arrived on `records` (a record number or
      event counter; later records have higher numbers), or None for a value that is not a
      record. A reading at or below the stored position is dropped as already stored.
    - `done(value)`: True when a value arriving on `control` (or `records`) ends the transfer.

    The device must send its records in increasing position within a connection, and no live
    value with a higher position before the stored ones it answers for: the hub keeps only the
    highest position, so a record arriving after a higher one is taken as already stored.
    """

    control: str
    records: str
    request: Callable[[int | None], bytes]
    cursor: Callable[[Reading], int | None]
    done: Callable[[bytes], bool]


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
