"""Stored-record sync: which records a device is asked for, which of its readings are new, and
the position the hub keeps so that nothing is fetched twice or skipped.

What lives here (pure: no I/O, no driver imported): `RecordSync`, which runs a driver's
`StoredRecords` declaration (gateway.sdk): the same one for the built-in profiles (Glucose,
Pulse Oximeter spot-checks) and for vendors' devices. The BLE session (sessions/ble.py) holds
the conversation, forward only: request, records (each through `accept`), the answer that ends
the transfer (`ended`), then, once the journal has committed every kept record, the driver's
after-commit step (`after_commit`, e.g. a delete on the device) and its position reset
(`forget`).

Positions, kept in the outbox under `ble.<name>:<device id>`:

- a cursor (Glucose sequence numbers, a vendor's event counters): the highest one stored; the
  hub asks for the records after it and drops any at or below it;
- digests (`position="digest"`, Pulse Oximeter spot-checks, whose records carry no number): the
  digests of the last `MAX_DIGESTS` stored records' bytes, one per record, so a digest appears
  as often as records with those bytes were stored; the hub asks for all records and, of the
  records with one digest in a transfer, drops as many as the list holds that digest (two
  identical spot-checks without a time stamp are two measurements: both are kept, and both
  are known on the next transfer).

Each record a sync keeps comes with that position (key, value), which the journal writes in the
same outbox transaction as the reading: the position can never run ahead of what is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable

from gateway.hub.outbox_file import MetaValue
from gateway.sdk import TRACE, AfterCommit, GattDriver, Reading, StoredRecords

log = logging.getLogger(__name__)

MAX_DIGESTS = 2000

Cursor = tuple[str, MetaValue]


class RecordSync:
    """One connection's stored-record transfer, as a driver's `StoredRecords` declares it."""

    def __init__(self, spec: StoredRecords, key: str, stored: MetaValue | None) -> None:
        self.spec = spec
        self.key = key
        self.control = spec.control.lower()
        self._companions = frozenset(c.lower() for c in spec.companions)
        self.records = frozenset({spec.records.lower(), *self._companions})
        """The characteristics whose readings go through `accept`."""
        self.done_on = frozenset({self.control, spec.records.lower()})
        """The characteristics whose values may end a transfer."""
        self.abort = spec.abort
        self.after_commit: AfterCommit | None = spec.after_commit
        self.high: int | None = None
        """The highest position stored; None before the first (numbers may start at 0)."""
        self.digests: list[str] | None = None
        self._unmatched = Counter[str]()
        """Digest -> stored records with it that this transfer has not met again yet."""
        if spec.position == "digest":
            self.digests = _digest_list(stored)
            self._unmatched.update(self.digests)
        elif isinstance(stored, int | float) and not isinstance(stored, bool):
            self.high = int(stored)
        self.arrived = 0
        """Records that arrived in this transfer, new or already stored."""
        self._kept: set[int] = set()

    def request(self) -> bytes | None:
        """What to write to ask for the records; None if the driver cannot say (a bug)."""
        try:
            return bytes(self.spec.request(None if self.digests is not None else self.high))
        except Exception:  # a driver bug: live values only on this connection
            driver_failed("StoredRecords.request")
            return None

    def done(self, value: bytes) -> bool:
        try:
            return bool(self.spec.done(value))
        except Exception:  # a driver bug: end the transfer rather than wait for ever
            driver_failed("StoredRecords.done")
            return True

    def accept(self, uuid: str, reading: Reading) -> tuple[bool, Cursor | None]:
        """(sign and store it?, the position to store with it)."""
        companion = uuid.lower() in self._companions
        if self.digests is not None:
            return (True, None) if companion else self._accept_digest(self.digests, reading)
        try:
            position = self.spec.cursor(reading)
        except Exception:  # a driver bug: keep the reading (a duplicate beats a loss)
            driver_failed("StoredRecords.cursor")
            return True, None
        if companion:  # follows its record: kept if that was kept
            return position is None or position in self._kept, None
        self.arrived += 1
        if position is None:
            return True, None
        if self.high is not None and position <= self.high:
            return False, None  # already stored (the device ignored the filter, or a replay)
        self.high = position
        self._kept.add(position)
        return True, (self.key, position)

    def _accept_digest(self, digests: list[str], reading: Reading) -> tuple[bool, Cursor | None]:
        self.arrived += 1
        digest = hashlib.sha256(reading.raw).hexdigest()[:16]
        # The n-th record with these bytes in a transfer is already stored if the list held the
        # digest n times when the transfer began: equal bytes are equal values, not the same
        # measurement (a spot-check without a time stamp repeats 97 % and 72 /min).
        if self._unmatched[digest] > 0:
            self._unmatched[digest] -= 1
            return False, None
        digests.append(digest)
        del digests[:-MAX_DIGESTS]  # bounded: the oldest records are forgotten
        return True, (self.key, json.dumps(digests, separators=(",", ":")))

    def ended(self, final: bytes) -> str:
        """The answer that ended the transfer, in words for the log."""
        describe = self.spec.describe
        if describe is None:
            return "finished"
        try:
            return describe(final)
        except Exception:  # a driver bug: the log line only
            driver_failed("StoredRecords.describe")
            return "finished"

    def forget(self) -> Cursor | None:
        """After the device deleted its records: the digests to store instead (none)."""
        if self.digests is None:
            return None
        self.digests = []
        self._unmatched.clear()
        return (self.key, "[]")


def driver_failed(what: str) -> None:
    """Log a driver callback's failure, from its `except` block: the exception's type only, the
    traceback at TRACE (the exception's text and the frames' locals may carry the device's
    values)."""
    error = sys.exc_info()[1]
    log.error(
        "the driver's %s raised %s; report this to the driver's maintainer",
        what,
        type(error).__name__,
    )
    log.log(TRACE, "the driver's %s failed", what, exc_info=True)


def _digest_list(stored: MetaValue | None) -> list[str]:
    try:
        loaded = json.loads(stored) if isinstance(stored, str) else []
    except ValueError:
        loaded = []
    return [d for d in loaded if isinstance(d, str)] if isinstance(loaded, list) else []


def record_sync_for(
    driver: GattDriver,
    has: Callable[..., bool],
    device_id: str,
    stored: Callable[[str], MetaValue | None],
) -> RecordSync | None:
    """The transfer for this device, if its driver declares stored records and the device
    offers what fetching them takes. `has(uuid, *properties)` tells whether the connected
    device has a characteristic (with one of the properties)."""
    info = driver.info
    spec = info.ble_session.stored if info.ble_session else None
    if spec is None:
        return None
    if not has(spec.records) or not has(spec.control):  # a profile's optional storage
        log.info("device %s: it keeps no stored records; live values only", device_id)
        return None
    if not has(spec.control, "write", "write-without-response"):
        log.warning(
            "device %s: it lacks the characteristics its stored records need; "
            "only live values are read",
            device_id,
        )
        return None
    name = spec.position_key or ("stored-digests" if spec.position == "digest" else "cursor")
    key = f"ble.{name}:{device_id}"
    return RecordSync(spec, key, stored(key))


async def all_committed(records: list[asyncio.Future[bool]], timeout: float) -> bool:
    """Whether the journal committed every one of `records` (the futures `Journal.submit` sets)
    within `timeout`. `asyncio.wait` leaves them alone on a timeout: only the journal sets them."""
    if not records:
        return True
    done, pending = await asyncio.wait(records, timeout=timeout)
    return not pending and all(future.result() for future in done)
