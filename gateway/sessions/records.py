"""Stored-record sync: which records a device is asked for, which of its readings are new, and
the position the hub keeps so that nothing is fetched twice or skipped.

What lives here (no I/O; the BLE session runs the conversation through `Transfer`):

- `SequenceSync` (Glucose, RACP): records carry a sequence number; ask for those after the
  highest one stored.
- `DigestSync` (Pulse Oximeter spot-checks, RACP): records carry no number; ask for all, skip
  those whose digest is stored, and delete them on the device once all are committed.
- `DeclaredSync`: a vendor driver's `StoredRecords` declaration (gateway.sdk), run the same way.

Each reading a strategy keeps comes with a *cursor* (key, value) that the journal writes in the
same outbox transaction as the reading: the position can never run ahead of what is stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Protocol

from gateway.drivers.gatt_gls import GLUCOSE_MEASUREMENT
from gateway.drivers.gatt_gls import MEASUREMENT_CONTEXT as GLUCOSE_CONTEXT
from gateway.drivers.gatt_plx import SPOT_CHECK as PLX_SPOT_CHECK
from gateway.hub.outbox_file import MetaValue
from gateway.sdk import GattDriver, Reading, StoredRecords, uuid16
from gateway.sessions import racp

log = logging.getLogger(__name__)

GLUCOSE_SERVICE = uuid16(0x1808)
PLX_SERVICE = uuid16(0x1822)
MAX_DIGESTS = 2000

Cursor = tuple[str, MetaValue]


class Transfer(Protocol):
    """What a strategy needs of the session running it."""

    device_id: str

    async def request(
        self, control: str, data: bytes, done: Callable[[bytes], bool], done_on: frozenset[str]
    ) -> bytes | None:
        """Write `data` to `control`; the first value on a `done_on` characteristic for which
        `done` holds, or None when the device stopped answering."""
        ...

    async def stored(self, key: str, value: MetaValue) -> bool:
        """Wait until the outbox holds `value` under `key`; False after a timeout."""
        ...

    def set_cursor(self, key: str, value: MetaValue) -> None: ...


class RecordSync(Protocol):
    control: str
    """The characteristic requests are written to."""
    records: frozenset[str]
    """The characteristics whose readings go through `accept`."""
    done_on: frozenset[str]
    """The characteristics whose values may end a transfer."""

    def request(self) -> bytes: ...
    def done(self, value: bytes) -> bool: ...
    def accept(self, uuid: str, reading: Reading) -> tuple[bool, Cursor | None]:
        """(sign and store it?, the cursor to store with it)."""
        ...

    async def finish(self, transfer: Transfer, final: bytes) -> None:
        """The transfer ended with `final` (the value `done` accepted)."""
        ...


class _Racp:
    """What the two RACP strategies share: the control point and its response."""

    control = racp.RACP
    done_on = frozenset({racp.RACP})

    def done(self, value: bytes) -> bool:
        response = racp.parse_response(value)
        return response is not None and response.request == racp.REPORT

    @staticmethod
    def refused(transfer: Transfer, final: bytes) -> bool:
        """Log the answer; True unless the records came (or there were none)."""
        response = racp.parse_response(final)
        if response is None:
            return True
        if response.code == racp.NO_RECORDS:
            log.info("device %s: no new stored records", transfer.device_id)
            return True
        if response.code != racp.SUCCESS:
            log.warning(
                "device %s: the device refused the stored-record request (%s)",
                transfer.device_id,
                response.describe(),
            )
            return True
        log.info("device %s: stored records received", transfer.device_id)
        return False


class SequenceSync(_Racp):
    """Glucose: records after the highest sequence number stored."""

    records = frozenset({GLUCOSE_MEASUREMENT, GLUCOSE_CONTEXT})

    def __init__(self, key: str, stored: MetaValue | None) -> None:
        self.key = key
        self.high: int | None = int(stored) if isinstance(stored, int | float) else None
        """The highest sequence number stored; None before the first (numbers may start at 0)."""
        self._accepted: set[int] = set()

    def request(self) -> bytes:
        if self.high is None or self.high >= 0xFFFF:
            # Nothing stored yet, or the 16-bit counter is at its end (a device that wraps
            # starts again at 0): ask for everything; stored ones are skipped below.
            return racp.report_all()
        return racp.report_from(self.high + 1)

    def accept(self, uuid: str, reading: Reading) -> tuple[bool, Cursor | None]:
        sequence = reading.status.get("sequence_number")
        if not isinstance(sequence, int):
            return True, None
        if uuid == GLUCOSE_CONTEXT:  # follows its measurement: keep it if that was kept
            return sequence in self._accepted, None
        if self.high is not None and sequence <= self.high:
            return False, None  # already stored (the device ignored the filter, or a replay)
        self.high = sequence
        self._accepted.add(sequence)
        return True, (self.key, sequence)

    async def finish(self, transfer: Transfer, final: bytes) -> None:
        self.refused(transfer, final)


class DigestSync(_Racp):
    """Pulse-oximeter spot-checks: all records, skip stored ones, then delete on the device."""

    records = frozenset({PLX_SPOT_CHECK})

    def __init__(self, key: str, stored: MetaValue | None) -> None:
        self.key = key
        try:
            loaded = json.loads(stored) if isinstance(stored, str) else []
        except ValueError:
            loaded = []
        self.digests: list[str] = [d for d in loaded if isinstance(d, str)]

    def request(self) -> bytes:
        return racp.report_all()

    def accept(self, uuid: str, reading: Reading) -> tuple[bool, Cursor | None]:
        digest = hashlib.sha256(reading.raw).hexdigest()[:16]
        if digest in self.digests:
            return False, None
        self.digests.append(digest)
        del self.digests[:-MAX_DIGESTS]
        return True, (self.key, json.dumps(self.digests, separators=(",", ":")))

    async def finish(self, transfer: Transfer, final: bytes) -> None:
        """Delete the device's records once all of them are stored here, then forget them."""
        if self.refused(transfer, final):
            return
        expected = json.dumps(self.digests, separators=(",", ":"))
        if self.digests and not await transfer.stored(self.key, expected):
            log.warning(
                "device %s: stored records not yet committed; they stay on the "
                "device until the next connection",
                transfer.device_id,
            )
            return

        def deleted(value: bytes) -> bool:
            response = racp.parse_response(value)
            return response is not None and response.request == racp.DELETE

        answer = await transfer.request(racp.RACP, racp.delete_all(), deleted, self.done_on)
        response = None if answer is None else racp.parse_response(answer)
        if response is not None and response.code == racp.SUCCESS:
            self.digests = []
            transfer.set_cursor(self.key, "[]")


class DeclaredSync:
    """A vendor driver's `StoredRecords`: the driver says how to ask and what a record's
    position is; the hub keeps the position and drops what it already has."""

    def __init__(self, spec: StoredRecords, key: str, stored: MetaValue | None) -> None:
        self.spec = spec
        self.key = key
        self.control = spec.control.lower()
        self.records = frozenset({spec.records.lower()})
        self.done_on = frozenset({self.control, spec.records.lower()})
        self.high: int | None = int(stored) if isinstance(stored, int | float) else None

    def request(self) -> bytes:
        return bytes(self.spec.request(self.high))

    def done(self, value: bytes) -> bool:
        try:
            return bool(self.spec.done(value))
        except Exception:  # a driver bug: end the transfer rather than wait for ever
            log.exception("the driver's StoredRecords.done failed")
            return True

    def accept(self, uuid: str, reading: Reading) -> tuple[bool, Cursor | None]:
        try:
            position = self.spec.cursor(reading)
        except Exception:  # a driver bug: keep the reading (a duplicate beats a loss)
            log.exception("the driver's StoredRecords.cursor failed")
            return True, None
        if position is None:
            return True, None
        if self.high is not None and position <= self.high:
            return False, None
        self.high = position
        return True, (self.key, position)

    async def finish(self, transfer: Transfer, final: bytes) -> None:
        log.info("device %s: stored-record transfer finished", transfer.device_id)


def record_sync_for(
    driver: GattDriver,
    has: Callable[..., bool],
    device_id: str,
    stored: Callable[[str], MetaValue | None],
) -> RecordSync | None:
    """The strategy for this device, if it keeps records and offers what fetching them takes.
    `has(uuid, *properties)` tells whether the connected device has a characteristic."""
    info = driver.info
    declared = info.ble_session.stored if info.ble_session else None
    if declared is not None:
        if not has(declared.control, "write", "write-without-response") or not has(
            declared.records
        ):
            log.warning(
                "device %s: it lacks the characteristics its stored records need; "
                "only live values are read",
                device_id,
            )
            return None
        key = f"ble.cursor:{device_id}"
        return DeclaredSync(declared, key, stored(key))
    if not has(racp.RACP, "indicate") or not has(racp.RACP, "write"):
        return None
    if info.service == GLUCOSE_SERVICE:
        key = f"ble.last-record:{device_id}"
        return SequenceSync(key, stored(key))
    if info.service == PLX_SERVICE and has(PLX_SPOT_CHECK):
        key = f"ble.stored-digests:{device_id}"
        return DigestSync(key, stored(key))
    return None
