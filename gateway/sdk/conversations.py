"""Conversations: the writes and stored-record transfers the transport makes for a driver that
needs more than listening (`GattWrite`, `StoredRecords`, `AfterCommit`, `RecordCount`,
`BleSession`, `SerialSession`). The
driver only declares them, so it stays pure.

Standard library only, no I/O; imported through `gateway.sdk`, never directly by drivers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.sdk.values import Reading


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
class RecordCount:
    """How to ask a device how many records it holds (the RACP's "report number of stored
    records"), so the hub can tell a counter that restarted from a device with nothing new.
    Added in SDK 1.3.

    - `request`: the bytes to write to `StoredRecords.control`.
    - `answer(value)`: for a value arriving on `control`, None while it is not the answer to
      `request`; the number of records; False when the device refused.
    """

    request: bytes
    answer: Callable[[bytes], int | bool | None]


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
      (`request(None)`), skips a record whose bytes' digest it has stored as many times as it
      has stored that digest (two identical records stay two readings), and keeps the digests
      (the last 2000) instead of a position; `cursor` is not called.
    - `after_commit`: written once every record of a transfer that delivered records is
      committed (see `AfterCommit`); with digests, this is how the device's list is emptied.
    - `abort`: written to `control` when a transfer stalls (no record or answer for 30 s).
    - `describe(value)`: the value that ended a transfer, in words for the hub's log.
    - `position_key`: the name the hub keeps the position under in its outbox
      (`ble.<name>:<device id>`); empty means `cursor` (or `stored-digests` with digests).
      Leave it empty: it exists so built-in profiles keep the names older hubs used.

    Counter restarts (positions from `cursor`). The hub keeps with the position the device's
    Device Information serial and model and the digests of the last records it stored. A
    device that reports another serial or model under the same configured id is taken as
    replaced: the hub asks for all its records (`request(None)`) and skips only those whose
    digest it holds. Optional (SDK 1.3):

    - `count`: how to ask how many records the device holds (`RecordCount`). When the request
      for the records after the position brings none, the hub asks; a count other than the one
      it knows means the counter restarted (a cleared memory): all records are asked for, and
      de-duplicated by digest.
    - `oldest`: the request for the device's oldest record alone (the RACP's "first record").
      With a position stored, each connection asks it first: another record than the oldest
      the hub saw, at or before its position, means the memory was cleared or replaced, even
      when new records already passed the old position; all are asked for, de-duplicated.
    - `wrap`: the number of positions the counter has (65536 for a 16-bit sequence number), 0
      when it never wraps. Positions are then compared as serial numbers (RFC 1982): after
      65535 come 0 and 1. A transfer that ends at the last position asks for all records once
      more, to fetch those after the wrap (and after a forged record at the top).
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
    count: RecordCount | None = None
    oldest: bytes | None = None
    wrap: int = 0


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
