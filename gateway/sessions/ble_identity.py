"""Who a connected Bluetooth LE device is, and which advertisers a session tries.

What lives here: `read_identity` (the Device Information serial and model of a connected
device, its address, and `link`: whether BlueZ knows the link encrypted and the device bonded,
all of which go into every reading's signed `device` object) and `Candidates` (for a device
configured by serial number: the addresses that served before, always tried; rogues that
reported another serial, held off in a bounded list; and, while rogues keep failing, unknown
addresses tried only now and then, so the device that served before wins). What may not:
connecting, subscribing, or deciding what a reading holds beyond the identity.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from gateway.sdk import uuid16
from gateway.sessions.ble_ports import Link

SERIAL_NUMBER = uuid16(0x2A25)
MODEL_NUMBER = uuid16(0x2A24)
MAX_REJECTED = 256
"""Rogue addresses remembered; past that the one rejected longest ago is forgotten."""
REJECT_FOR = 600.0
"""Seconds a device that reported another serial is not tried again."""
HOLDOFF = (1.0, 60.0)
"""While rogues keep failing: seconds before an unknown address is tried, the first time and
at most (it doubles with each rogue in a row). Addresses that served are tried at once."""
MAX_SERVED = 8


async def read_identity(
    link: Link, base: dict[str, object], read: Callable[[str], Awaitable[bytes]]
) -> dict[str, object]:
    """`base` (id, driver, driver_version) with the device's address, its DIS serial number
    and model where it offers them, and `link` (`encrypted`, `bonded`). `read` reads a
    characteristic (the session's, which turns GATT failures into `DeviceUnavailable`)."""
    identity = dict(base, address=link.address)
    for uuid, key in ((SERIAL_NUMBER, "serial"), (MODEL_NUMBER, "model")):
        if link.has(uuid, "read"):
            text = (await read(uuid)).decode("utf-8", "replace").rstrip("\x00").strip()
            if text:
                identity[key] = text
    security = await link.security()
    identity["link"] = {"encrypted": bool(security.encrypted), "bonded": bool(security.bonded)}
    return identity


class Candidates:
    """Which advertisers a session that knows its device by serial number tries."""

    def __init__(
        self,
        *,
        max_rejected: int = MAX_REJECTED,
        reject_for: float = REJECT_FOR,
        holdoff: tuple[float, float] = HOLDOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_rejected < 1:
            raise ValueError("max_rejected must be at least 1")
        self._max_rejected = max_rejected
        self._reject_for = reject_for
        self.holdoff = holdoff
        """Seconds (first, most) unknown addresses wait while rogues keep failing."""
        self._clock = clock
        self.rejected: OrderedDict[str, float] = OrderedDict()
        """Address -> until when it is not tried; oldest rejection first."""
        self.served: OrderedDict[str, None] = OrderedDict()
        """Addresses that passed the serial check, most recent last."""
        self.rejections = 0
        """Rejections in all (a count, for status and tests)."""
        self._in_a_row = 0
        self._unknown_after = 0.0

    def verdict(self, address: str) -> bool | None:
        """True: served before, try it. False: a rogue still held off, or an unknown address
        while rogues keep failing. None: unknown; the driver's advertisement rule decides."""
        if address in self.served:
            return True
        now = self._clock()
        until = self.rejected.get(address)
        if until is not None:
            if until > now:
                return False
            del self.rejected[address]
        if self.served and now < self._unknown_after:
            return False
        return None

    def passed(self, address: str) -> None:
        """`address` reported the configured serial."""
        self.rejected.pop(address, None)
        self.served[address] = None
        self.served.move_to_end(address)
        while len(self.served) > MAX_SERVED:
            self.served.popitem(last=False)
        self._in_a_row = 0
        self._unknown_after = 0.0

    def failed(self, address: str) -> None:
        """`address` reported another serial (or none): hold it off."""
        now = self._clock()
        self.rejections += 1
        self.served.pop(address, None)
        self.rejected[address] = now + self._reject_for
        self.rejected.move_to_end(address)
        while len(self.rejected) > self._max_rejected:
            self.rejected.popitem(last=False)
        first, most = self.holdoff
        self._in_a_row += 1
        self._unknown_after = now + min(most, first * 2 ** min(self._in_a_row - 1, 30))
