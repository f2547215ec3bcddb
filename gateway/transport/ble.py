"""Bluetooth LE through bleak and BlueZ: one shared scanner, and connections that survive.

What lives here (I/O only; nothing here knows drivers, readings or the journal):

- `BleScanner`: the one scanner of an adapter (parallel scanners make BlueZ answer InProgress).
  Passive when BlueZ offers advertisement monitors (`bluetoothd --experimental`), active
  otherwise. It keeps the last advertisement of every device it hears, wakes whoever waits for
  one, and runs a watchdog: no advertisement for `watchdog` seconds restarts the scan, and a
  scan that cannot be restarted gets the adapter power-cycled. An adapter that is off or missing
  is retried with backoff and named in the log.
- `BleConnector`: connections through bleak-retry-connector (`establish_connection` retries by
  error class: a transient `le-connection-abort-by-local` at once, out-of-slot errors after ~4 s),
  with an outer safety timeout (a D-Bus call can stall), a per-adapter slot limit, stale-link
  clean-up at start (BlueZ keeps links up after the process that made them dies), and the
  service cache cleared when a connected device lacks services it must have.
- `GattLink`: one connected device: read, write, subscribe, and `lost` set on link loss.

The ways of BlueZ this follows are in ../shared/reference/ble-testing.md ("Keeping BLE stable").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bleak import BleakClient, BleakScanner
from bleak.assigned_numbers import AdvertisementDataType
from bleak.args.bluez import OrPattern
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError
from bleak_retry_connector import (
    BleakOutOfConnectionSlotsError,
    close_stale_connections_by_address,
    establish_connection,
)
from bleak_retry_connector import clear_cache as clear_bluez_cache

log = logging.getLogger(__name__)

# Passive scanning reports only advertisements matching a monitor's patterns. These match the
# Flags every connectable LE advertisement carries (LE general/limited discoverable, BR/EDR not
# supported, with or without simultaneous LE + BR/EDR), so all devices are heard, as in active.
_PASSIVE_PATTERNS = [OrPattern(0, AdvertisementDataType.FLAGS, bytes((flags,)))
                     for flags in (0x02, 0x06, 0x1A, 0x05)]
_RESTART_BACKOFF_MAX = 30.0


class BleUnavailable(Exception):
    """Bluetooth cannot be used now: the adapter is off or missing, or bluetoothd is not there."""


class BleConnectError(Exception):
    """A connection attempt failed after its retries. `out_of_slots` says the controller had no
    free connection: wait longer before the next try."""

    def __init__(self, message: str, *, out_of_slots: bool = False) -> None:
        super().__init__(message)
        self.out_of_slots = out_of_slots


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
    return Advert(device.address.upper(), data.local_name or device.name, data.rssi,
                  tuple(u.lower() for u in data.service_uuids),
                  {k: bytes(v) for k, v in data.manufacturer_data.items()},
                  {k.lower(): bytes(v) for k, v in data.service_data.items()},
                  time.monotonic(), device)


class BleScanner:
    """The adapter's one scanner; `run` it as a task for as long as the hub runs."""

    def __init__(self, adapter: str = "hci0", *, passive: bool = True,
                 watchdog: float = 90.0, expire: float = 600.0) -> None:
        self.adapter = adapter
        self.passive = passive
        self.watchdog = watchdog
        self.expire = expire
        self.adverts: dict[str, Advert] = {}
        self.restarts = 0
        self.scanning = False
        self.mode: str | None = None
        self._last_heard = time.monotonic()
        self._changed = asyncio.Condition()

    def _on_advertisement(self, device: BLEDevice, data: AdvertisementData) -> None:
        advert = _advert(device, data)
        self.adverts[advert.address] = advert
        self._last_heard = advert.seen
        # Waiters re-check their predicate; a Condition keeps this cheap with none waiting.
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Advert], bool],
                       timeout: float | None = None) -> Advert:
        """The newest advertisement for which `predicate` holds; waits for one to come."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                now = time.monotonic()
                found = [a for a in self.adverts.values()
                         if now - a.seen < self.expire and predicate(a)]
                if found:
                    return max(found, key=lambda a: a.seen)
                await self._changed.wait()

    def forget(self, address: str) -> None:
        """Drop what is known of a device (it vanished, or its address rotated)."""
        self.adverts.pop(address.upper(), None)

    async def run(self) -> None:
        """Scan until cancelled: restart on silence, retry an unavailable adapter."""
        backoff = 1.0
        while True:
            try:
                await self._scan_until_silent()
                backoff = 1.0
            except BleUnavailable as exc:
                log.warning("bluetooth: %s; retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RESTART_BACKOFF_MAX)

    def _scanner(self, passive: bool) -> BleakScanner:
        if passive:
            return BleakScanner(self._on_advertisement, scanning_mode="passive",
                                bluez={"adapter": self.adapter, "or_patterns": _PASSIVE_PATTERNS})
        return BleakScanner(self._on_advertisement, scanning_mode="active",
                            bluez={"adapter": self.adapter,
                                   "filters": {"Transport": "le", "DuplicateData": True}})

    async def _start(self) -> BleakScanner:
        if self.passive:
            scanner = self._scanner(passive=True)
            try:
                await scanner.start()
            except BleakBluetoothNotAvailableError as exc:
                raise BleUnavailable(f"adapter {self.adapter} is not available ({exc})") from exc
            except (BleakError, BleakDBusError) as exc:
                # BlueZ without experimental features has no advertisement monitors.
                log.info("bluetooth: passive scanning is not available (%s); scanning actively",
                         exc)
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

    async def _scan_until_silent(self) -> None:
        scanner = await self._start()
        self.scanning = True
        self._last_heard = time.monotonic()
        log.info("bluetooth: scanning on %s (%s)", self.adapter, self.mode)
        try:
            while True:
                await asyncio.sleep(min(self.watchdog / 4, 5.0))
                silent = time.monotonic() - self._last_heard
                if silent >= self.watchdog:
                    self.restarts += 1
                    log.warning("bluetooth: no advertisement for %.0f s; restarting the scanner "
                                "(restart %d)", silent, self.restarts)
                    if self.restarts % 3 == 0:
                        await power_cycle(self.adapter)
                    return
                self._expire_old()
        finally:
            self.scanning = False
            with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError,
                                     TimeoutError):
                async with asyncio.timeout(5):
                    await scanner.stop()

    def _expire_old(self) -> None:
        cutoff = time.monotonic() - self.expire
        for address in [a for a, advert in self.adverts.items() if advert.seen < cutoff]:
            del self.adverts[address]


async def power_cycle(adapter: str) -> None:
    """Turn the adapter off and on (a wedged controller scan recovers so): BlueZ's Powered."""
    from dbus_fast import BusType, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus

    log.warning("bluetooth: power-cycling adapter %s", adapter)
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, EOFError) as exc:
        log.warning("bluetooth: cannot reach the system bus to reset %s: %s", adapter, exc)
        return
    try:
        for powered in (False, True):
            reply = await bus.call(Message(
                destination="org.bluez", path=f"/org/bluez/{adapter}",
                interface="org.freedesktop.DBus.Properties", member="Set", signature="ssv",
                body=["org.bluez.Adapter1", "Powered", Variant("b", powered)]))
            if reply is None or reply.message_type is MessageType.ERROR:
                log.error("bluetooth: cannot power %s %s: %s", adapter,
                          "on" if powered else "off", reply.body if reply else "no reply")
                return
            await asyncio.sleep(0.2)
    finally:
        bus.disconnect()


NotifyCallback = Callable[[bytes], None]


class GattLink:
    """A connected device. `lost` is set when the link goes (or `close` ends it)."""

    def __init__(self, client: BleakClient, address: str,
                 release: Callable[[], None]) -> None:
        self._client = client
        self.address = address
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._release = release
        self._closed = False
        self.characteristics: dict[str, tuple[str, ...]] = {
            char.uuid.lower(): tuple(char.properties)
            for service in client.services for char in service.characteristics}
        self.services = frozenset(service.uuid.lower() for service in client.services)

    def on_disconnect(self, _client: BleakClient) -> None:
        """bleak's disconnected callback for this link."""
        if not self.lost.is_set():
            self.lost_reason = self.lost_reason or "link lost"
            self.lost.set()
        self._free()

    def _free(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def has(self, uuid: str, *properties: str) -> bool:
        """Whether the device offers this characteristic (with one of `properties`, if given)."""
        props = self.characteristics.get(uuid.lower())
        return props is not None and (not properties or bool(set(properties) & set(props)))

    async def read(self, uuid: str, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            return bytes(await self._client.read_gatt_char(uuid))

    async def write(self, uuid: str, data: bytes, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._client.write_gatt_char(uuid, data, response=True)

    async def subscribe(self, uuid: str, callback: NotifyCallback,
                        timeout: float = 10.0) -> None:
        def deliver(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            callback(bytes(data))

        async with asyncio.timeout(timeout):
            await self._client.start_notify(uuid, deliver)

    async def close(self) -> None:
        """Disconnect (bounded in time) and free the connection slot."""
        if not self.lost.is_set():
            self.lost_reason = "closed by the hub"
            self.lost.set()
        try:
            with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError,
                                     TimeoutError):
                async with asyncio.timeout(10):
                    await self._client.disconnect()
        finally:
            self._free()


class BleConnector:
    """Makes connections on one adapter, never more than `max_connections` at once."""

    def __init__(self, adapter: str = "hci0", *, max_connections: int = 5,
                 connect_timeout: float = 20.0, max_attempts: int = 3) -> None:
        self.adapter = adapter
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout = connect_timeout
        self._max_attempts = max_attempts
        self._in_use = 0

    @property
    def in_use(self) -> int:
        """Connections held now (or being made)."""
        return self._in_use

    async def close_stale(self, address: str) -> None:
        """Disconnect a link BlueZ still holds for `address` from an earlier run."""
        with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError, TimeoutError):
            async with asyncio.timeout(10):
                await close_stale_connections_by_address(address)

    async def clear_cache(self, address: str) -> None:
        """Forget BlueZ's cached services for `address` (Adapter1.RemoveDevice)."""
        with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError, TimeoutError):
            async with asyncio.timeout(10):
                await clear_bluez_cache(address)

    async def connect(self, advert: Advert, name: str) -> GattLink:
        """Connect with retries; `BleConnectError` when it cannot. Waits for a free slot."""
        await self._slots.acquire()
        self._in_use += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._in_use -= 1
                self._slots.release()

        link: GattLink | None = None

        def disconnected(client: BleakClient) -> None:
            if link is not None:
                link.on_disconnect(client)

        # establish_connection has its own per-attempt timeout (20 s); this one bounds the
        # whole call, since a stalled D-Bus call would otherwise hold the slot forever.
        outer = self._connect_timeout * self._max_attempts + 15.0
        try:
            async with asyncio.timeout(outer):
                client = await establish_connection(
                    BleakClient, advert.device, name, disconnected_callback=disconnected,
                    max_attempts=self._max_attempts)
        except BleakOutOfConnectionSlotsError as exc:
            release()
            raise BleConnectError(str(exc), out_of_slots=True) from exc
        except TimeoutError as exc:
            release()
            raise BleConnectError(f"connecting took longer than {outer:.0f} s") from exc
        except BleakBluetoothNotAvailableError as exc:
            release()
            raise BleUnavailable(f"adapter {self.adapter} is not available ({exc})") from exc
        except (BleakError, BleakDBusError, OSError, EOFError) as exc:
            release()
            raise BleConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            release()
            raise
        link = GattLink(client, advert.address, release)
        if not client.is_connected:  # lost between the connect and now
            link.on_disconnect(client)
        return link
