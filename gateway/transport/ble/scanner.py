"""The adapter's one Bluetooth LE scanner, and the advertisements it keeps.

What lives here: `BleScanner` and `Advert`. There is one scanner per adapter (parallel scanners
make BlueZ answer InProgress). It scans passively when BlueZ offers advertisement monitors
(`bluetoothd --experimental`), actively otherwise, with a short active window now and then for
the scan responses passive scanning never hears. It keeps the last advertisement of the devices
it heard most recently (at most `max_adverts`, so a flood of random addresses costs bounded
memory), hands each new one to whoever waits for one like it, and runs a watchdog: no
advertisement for `watchdog` seconds restarts the scan (every third restart power-cycles the
adapter first), and when the air is quiet it asks BlueZ whether the adapter is still powered and
discovering, so a power cut or a bluetoothd restart is caught in seconds. An adapter that is off
or missing is retried with backoff and named in the log. What may not: connecting (that is
`connector`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bleak import BleakScanner
from bleak.args.bluez import OrPattern, OrPatternLike
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError

from gateway.transport.ble.bluez_watch import AdapterProbe, BluezWatch, reset_bleak
from gateway.transport.ble.errors import BleUnavailable

log = logging.getLogger(__name__)

# Passive scanning reports only advertisements matching a monitor's patterns. These match the
# Flags every connectable LE advertisement carries (LE general/limited discoverable, BR/EDR not
# supported, with or without simultaneous LE + BR/EDR), so all devices are heard, as in active.
_PASSIVE_PATTERNS: list[OrPatternLike] = [
    OrPattern(0, AdvertisementDataType.FLAGS, bytes((flags,))) for flags in (0x02, 0x06, 0x1A, 0x05)
]
_RESTART_BACKOFF_MAX = 10.0
MAX_ADVERTS = 2000
"""Devices remembered at once. A radio sending random addresses would otherwise grow the store
by ~1 KB an address for as long as they are kept; the oldest heard goes first."""
UNKNOWN_EXPIRE = 30.0
"""Seconds an address no session has wanted is remembered (BlueZ's own temporary-device
timeout): a flood of random addresses leaves within this long, not `expire`."""
MAX_WANTED = 256
"""Addresses a session's predicate accepted, remembered for the long `expire`."""


@dataclass(slots=True)
class Advert:
    """The last advertisement heard from one device."""

    address: str
    name: str | None
    rssi: int
    service_uuids: tuple[str, ...]
    manufacturer_data: Mapping[int, bytes]
    service_data: Mapping[str, bytes]
    seen: float
    """`time.monotonic()` when it was heard."""
    device: BLEDevice = field(repr=False)


def _advert(device: BLEDevice, data: AdvertisementData) -> Advert:
    return Advert(
        device.address.upper(),
        data.local_name or device.name,
        data.rssi,
        tuple(u.lower() for u in data.service_uuids),
        {k: bytes(v) for k, v in data.manufacturer_data.items()},
        {k.lower(): bytes(v) for k, v in data.service_data.items()},
        time.monotonic(),
        device,
    )


class BleScanner:
    """The adapter's one scanner; `run` it as a task for as long as the hub runs."""

    def __init__(
        self,
        adapter: str = "hci0",
        *,
        passive: bool = True,
        watchdog: float = 90.0,
        expire: float = 600.0,
        active_every: float = 300.0,
        active_window: float = 10.0,
        max_adverts: int = MAX_ADVERTS,
        unknown_expire: float = UNKNOWN_EXPIRE,
    ) -> None:
        self.adapter = adapter
        self.passive = passive
        self.active_every = active_every
        """Passive mode: seconds between short active windows (scan responses carry names and
        data that passive scanning never hears)."""
        self.active_window = active_window
        self._last_window = -float("inf")
        self.watchdog = watchdog
        self.expire = expire
        self.unknown_expire = unknown_expire
        self.max_adverts = max_adverts
        self._wanted: OrderedDict[str, None] = OrderedDict()
        """Addresses a waiter accepted (bounded, the most recent last): kept for `expire`."""
        self.adverts: OrderedDict[str, Advert] = OrderedDict()
        """By address, the least recently heard first."""
        self.restarts = 0
        self.scanning = False
        self.mode: str | None = None
        """"passive" or "active" once a scan has started; None before."""
        self.last_error: str | None = None
        self._last_heard = time.monotonic()
        self._waiters: dict[asyncio.Future[Advert], Callable[[Advert], bool]] = {}
        self._restart = asyncio.Event()
        self.watch = BluezWatch()
        self.watch.listen(self._restart.set)
        self._probe = AdapterProbe(adapter)

    def _on_advertisement(self, device: BLEDevice, data: AdvertisementData) -> None:
        advert = _advert(device, data)
        adverts = self.adverts
        adverts.pop(advert.address, None)
        adverts[advert.address] = advert  # the most recently heard last
        while len(adverts) > self.max_adverts:
            adverts.popitem(last=False)
        self._last_heard = advert.seen
        # Only the new advertisement can satisfy a waiter that the stored ones did not: check it
        # alone, so a flood costs each waiter one predicate call per advertisement, not one per
        # device remembered. Most adverts come while nobody waits: then this loop is empty.
        for waiter, predicate in self._waiters.items():
            if waiter.done():
                continue
            try:
                if predicate(advert):
                    self._want(advert.address)
                    waiter.set_result(advert)
            except Exception as exc:  # the waiter's bug is the waiter's, not bleak's callback's
                waiter.set_exception(exc)

    async def wait_for(
        self, predicate: Callable[[Advert], bool], timeout: float | None = None
    ) -> Advert:
        """The newest advertisement for which `predicate` holds; waits for one to come."""
        now = time.monotonic()
        for advert in reversed(self.adverts.values()):  # the newest first
            age = now - advert.seen
            if age >= self.expire:
                break  # all older ones expired too
            if age >= self.unknown_expire and advert.address not in self._wanted:
                continue
            if predicate(advert):
                self._want(advert.address)
                return advert
        waiter: asyncio.Future[Advert] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = predicate
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            self._waiters.pop(waiter, None)

    def forget(self, address: str) -> None:
        """Drop what is known of a device (it vanished, or its address rotated)."""
        self.adverts.pop(address.upper(), None)

    async def run(self) -> None:
        """Scan until cancelled: restart on silence, retry an unavailable adapter."""
        backoff = 1.0
        watch = asyncio.create_task(self.watch.run(), name="bluetoothd watch")
        window = False
        try:
            while True:
                try:
                    window = await self._scan_until_silent(window=window)
                    backoff = 1.0
                except BleUnavailable as exc:
                    self.last_error = str(exc)
                    if "not found" in str(exc):
                        # bleak's picture of BlueZ may be stale (read while bluetoothd was
                        # starting): have it read everything again before the next try.
                        reset_bleak()
                    log.warning("bluetooth: %s; retrying in %.0f s", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _RESTART_BACKOFF_MAX)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await self._probe.close()

    def _scanner(self, passive: bool) -> BleakScanner:
        if passive:
            return BleakScanner(
                self._on_advertisement,
                scanning_mode="passive",
                bluez={"adapter": self.adapter, "or_patterns": _PASSIVE_PATTERNS},
            )
        return BleakScanner(
            self._on_advertisement,
            scanning_mode="active",
            bluez={"adapter": self.adapter, "filters": {"Transport": "le", "DuplicateData": True}},
        )

    async def _start(self, *, window: bool = False) -> BleakScanner:
        if self.passive and not window:
            scanner = self._scanner(passive=True)
            try:
                await scanner.start()
            except BleakBluetoothNotAvailableError as exc:
                raise BleUnavailable(f"adapter {self.adapter} is not available ({exc})") from exc
            except (BleakError, BleakDBusError) as exc:
                # BlueZ without experimental features has no advertisement monitors.
                log.info(
                    "bluetooth: passive scanning is not available (%s); scanning actively", exc
                )
                self.passive = False
            else:
                self.mode = "passive"
                return scanner
        scanner = self._scanner(passive=False)
        try:
            await scanner.start()
        except BleakBluetoothNotAvailableError as exc:
            raise BleUnavailable(f"adapter {self.adapter} is not available ({exc})") from exc
        except (BleakError, BleakDBusError, OSError, EOFError) as exc:
            raise BleUnavailable(f"cannot start scanning on {self.adapter}: {exc}") from exc
        self.mode = "active"
        return scanner

    async def _scan_until_silent(self, *, window: bool = False) -> bool:
        """Scan until the scan must be restarted. True when the next scan should be a short
        active window (passive mode only)."""
        scanner = await self._start(window=window)
        self.scanning = True
        started = self._last_heard = time.monotonic()
        if window:
            self._last_window = started
        log.log(
            logging.DEBUG if window else logging.INFO,
            "bluetooth: scanning on %s (%s%s)",
            self.adapter,
            self.mode,
            ", a short window" if window else "",
        )
        try:
            tick = min(self.watchdog / 4, 5.0, self.active_window)
            self._restart.clear()
            while True:
                now = time.monotonic()
                if window and now - started >= self.active_window:
                    return False  # back to passive
                if (
                    not window
                    and self.mode == "passive"
                    and now - self._last_window >= self.active_every
                ):
                    return True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tick):
                        await self._restart.wait()
                if self._restart.is_set():
                    log.warning("bluetooth: restarting the scanner for the new bluetoothd")
                    await asyncio.sleep(0.5)  # let it register its adapter first
                    return False
                silent = time.monotonic() - self._last_heard
                if silent >= self.watchdog:
                    self.restarts += 1
                    log.warning(
                        "bluetooth: no advertisement for %.0f s; restarting the scanner "
                        "(restart %d)",
                        silent,
                        self.restarts,
                    )
                    if self.restarts % 3 == 0:
                        await self._probe.power_cycle()
                    return False
                if silent >= tick and not await self._still_scanning():
                    return False
                self._expire_old()
        finally:
            self.scanning = False
            with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError, TimeoutError):
                async with asyncio.timeout(5):
                    await scanner.stop()

    async def _still_scanning(self) -> bool:
        """Quiet air, or a scan that ended under us (adapter powered off, bluetoothd restarted)?
        Asked only when nothing was heard for a while, so it costs nothing on a busy adapter."""
        state = await self._probe.state()
        if state is None:
            log.warning("bluetooth: BlueZ does not answer; restarting the scanner")
            return False
        powered, discovering = state
        if not powered or (self.mode == "active" and not discovering):
            log.warning(
                "bluetooth: adapter %s stopped scanning (%s); restarting the scanner",
                self.adapter,
                "powered off" if not powered else "discovery ended",
            )
            return False
        return True

    def _want(self, address: str) -> None:
        wanted = self._wanted
        wanted.pop(address, None)
        wanted[address] = None
        while len(wanted) > MAX_WANTED:
            wanted.popitem(last=False)

    def _expire_old(self) -> None:
        """Forget devices not heard for `expire`, and addresses no session wanted for
        `unknown_expire`."""
        now = time.monotonic()
        wanted = self._wanted
        for address in [
            a
            for a, advert in self.adverts.items()
            if now - advert.seen >= (self.expire if a in wanted else self.unknown_expire)
        ]:
            del self.adverts[address]
