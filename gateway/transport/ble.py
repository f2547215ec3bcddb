"""Bluetooth LE through bleak and BlueZ: one shared scanner, and connections that survive.

What lives here (I/O only; nothing here knows drivers, readings or the journal):

- `BleScanner`: the one scanner of an adapter (parallel scanners make BlueZ answer InProgress).
  Passive when BlueZ offers advertisement monitors (`bluetoothd --experimental`), active
  otherwise. It keeps the last advertisement of every device it hears, wakes whoever waits for
  one, and runs a watchdog: no advertisement for `watchdog` seconds restarts the scan (every
  third restart power-cycles the adapter first), and when the air is quiet it asks BlueZ whether
  the adapter is still powered and discovering, so a power cut or a bluetoothd restart is caught
  in seconds. An adapter that is off or missing is retried with backoff and named in the log.
- `BleConnector`: connections through bleak-retry-connector (`establish_connection` retries by
  error class: a transient `le-connection-abort-by-local` at once, out-of-slot errors after ~4 s),
  with an outer safety timeout (a D-Bus call can stall), a per-adapter slot limit, stale-link
  clean-up at start (BlueZ keeps links up after the process that made them dies), and the
  service cache cleared when a connected device lacks services it must have.
- `GattLink`: one connected device: read, write, subscribe, and `lost` set on link loss.

The ways of BlueZ this follows are the ones Home Assistant's Bluetooth stack learned (summed up
in docs/bluetooth.md, "What the hub does to keep Bluetooth up for months").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import OrPattern, OrPatternLike
from bleak.assigned_numbers import AdvertisementDataType
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
_PASSIVE_PATTERNS: list[OrPatternLike] = [
    OrPattern(0, AdvertisementDataType.FLAGS, bytes((flags,))) for flags in (0x02, 0x06, 0x1A, 0x05)
]
_RESTART_BACKOFF_MAX = 10.0


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
        self.adverts: dict[str, Advert] = {}
        self.restarts = 0
        self.scanning = False
        self.mode: str | None = None
        """"passive" or "active" once a scan has started; None before."""
        self.last_error: str | None = None
        self._last_heard = time.monotonic()
        self._waiters: set[asyncio.Future[None]] = set()
        self._restart = asyncio.Event()
        self.watch = BluezWatch()
        self.watch.listen(self._restart.set)
        self._probe = AdapterProbe(adapter)

    def _on_advertisement(self, device: BLEDevice, data: AdvertisementData) -> None:
        advert = _advert(device, data)
        self.adverts[advert.address] = advert
        self._last_heard = advert.seen
        # Wake the waiters (if any) to re-check their predicate. Most adverts come while nobody
        # waits (devices connected, neighbours): then this costs a dict store and nothing else.
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(
        self, predicate: Callable[[Advert], bool], timeout: float | None = None
    ) -> Advert:
        """The newest advertisement for which `predicate` holds; waits for one to come."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                now = time.monotonic()
                found = [
                    a for a in self.adverts.values() if now - a.seen < self.expire and predicate(a)
                ]
                if found:
                    return max(found, key=lambda a: a.seen)
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)

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
                        _reset_bleak()
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

    def _expire_old(self) -> None:
        cutoff = time.monotonic() - self.expire
        for address in [a for a, advert in self.adverts.items() if advert.seen < cutoff]:
            del self.adverts[address]


async def _close_bus(bus: Any) -> None:
    """Disconnect and wait until dbus-fast has closed the socket (it closes it later)."""
    bus.disconnect()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await bus.wait_for_disconnect()


def _reset_bleak() -> None:
    """Make bleak forget what the dead bluetoothd told it. bleak resets its cached objects,
    and reports its clients disconnected, only when its own bus connection drops; so drop it
    (bleak connects again on next use). bleak has no public call for this."""
    from bleak.backends.bluezdbus import manager as bluez_manager

    instance = bluez_manager._global_instances.get(asyncio.get_running_loop())
    bus = getattr(instance, "_bus", None)
    if bus is not None and bus.connected:
        bus.disconnect()


class BluezWatch:
    """Tells listeners when bluetoothd goes away or comes back (the owner of `org.bluez` on the
    system bus changes). bleak does not: after a bluetoothd crash its clients still say they
    are connected and their disconnected callbacks never run, so links and the scan would stay
    dead without this."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    async def run(self) -> None:
        """Watch until cancelled; reconnects to the bus if it drops."""
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        def on_message(msg: Message) -> None:
            if (
                msg.message_type is MessageType.SIGNAL
                and msg.member == "NameOwnerChanged"
                and msg.body
                and msg.body[0] == "org.bluez"
            ):
                log.warning("bluetooth: bluetoothd %s", "started" if msg.body[2] else "went away")
                # Gone: every object it had is gone too. Started: bleak may have read the bus
                # while bluetoothd was half up; make it read afresh. (If it reads too early
                # again, the scanner's "adapter not found" makes it read once more.)
                _reset_bleak()
                for listener in self._listeners:
                    listener()

        while True:
            bus = None
            try:
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
                bus.add_message_handler(on_message)
                await bus.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="AddMatch",
                        signature="s",
                        body=[
                            "type='signal',sender='org.freedesktop.DBus',"
                            "member='NameOwnerChanged',arg0='org.bluez'"
                        ],
                    )
                )
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            except (OSError, EOFError, ValueError) as exc:
                log.debug("bluetooth: cannot watch bluetoothd on the system bus: %s", exc)
            finally:
                if bus is not None:
                    await _close_bus(bus)
            await asyncio.sleep(2.0)


class AdapterProbe:
    """Reads and sets the adapter's state over D-Bus (one connection, made when first needed):
    whether it is powered and discovering, and a power cycle."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self._bus: Any = None

    async def _call(self, member: str, signature: str, body: list[Any]) -> Any:
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        if self._bus is None:
            self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        reply = await self._bus.call(
            Message(
                destination="org.bluez",
                path=f"/org/bluez/{self.adapter}",
                interface="org.freedesktop.DBus.Properties",
                member=member,
                signature=signature,
                body=body,
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise BleUnavailable(
                f"adapter {self.adapter}: {reply.error_name if reply else 'no reply'}"
            )
        return reply.body

    async def state(self) -> tuple[bool, bool] | None:
        """(powered, discovering), or None when BlueZ cannot be asked."""
        try:
            async with asyncio.timeout(5):
                body = await self._call("GetAll", "s", ["org.bluez.Adapter1"])
        except (BleUnavailable, OSError, EOFError, TimeoutError) as exc:
            log.debug("bluetooth: cannot read the state of %s: %s", self.adapter, exc)
            await self.close()
            return None
        props = body[0]
        return bool(props["Powered"].value), bool(props["Discovering"].value)

    async def power_cycle(self) -> None:
        """Turn the adapter off and on (a wedged controller scan recovers so)."""
        from dbus_fast import Variant

        log.warning("bluetooth: power-cycling adapter %s", self.adapter)
        try:
            for powered in (False, True):
                async with asyncio.timeout(5):
                    await self._call(
                        "Set", "ssv", ["org.bluez.Adapter1", "Powered", Variant("b", powered)]
                    )
                await asyncio.sleep(0.2)
        except (BleUnavailable, OSError, EOFError, TimeoutError) as exc:
            log.warning("bluetooth: cannot power-cycle %s: %s", self.adapter, exc)
            await self.close()

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            await _close_bus(bus)


NotifyCallback = Callable[[bytes], None]


class GattLink:
    """A connected device. `lost` is set when the link goes (or `close` ends it)."""

    def __init__(self, client: BleakClient, address: str, release: Callable[[], None]) -> None:
        self._client = client
        self.address = address
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._release = release
        self._closed = False
        self._orphaned = False
        self.characteristics: dict[str, tuple[str, ...]] = {
            char.uuid.lower(): tuple(char.properties)
            for service in client.services
            for char in service.characteristics
        }
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

    async def write(
        self, uuid: str, data: bytes, timeout: float = 10.0, *, response: bool = True
    ) -> None:
        async with asyncio.timeout(timeout):
            await self._client.write_gatt_char(uuid, data, response=response)

    async def subscribe(self, uuid: str, callback: NotifyCallback, timeout: float = 10.0) -> None:
        def deliver(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            callback(bytes(data))

        async with asyncio.timeout(timeout):
            await self._client.start_notify(uuid, deliver)

    def orphan(self, reason: str) -> None:
        """The link died with bluetoothd: there is nobody left to ask for a disconnect."""
        self._orphaned = True
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def close(self) -> None:
        """Disconnect (bounded in time) and free the connection slot."""
        if not self.lost.is_set():
            self.lost_reason = "closed by the hub"
            self.lost.set()
        try:
            with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError, TimeoutError):
                # A new bluetoothd never answers for a link the old one had: do not wait
                # long (bleak still closes its own bus connection for the client).
                async with asyncio.timeout(2 if self._orphaned else 10):
                    await self._client.disconnect()
        finally:
            self._free()


class BleConnector:
    """Makes connections on one adapter, never more than `max_connections` at once."""

    def __init__(
        self,
        adapter: str = "hci0",
        *,
        max_connections: int = 5,
        connect_timeout: float = 20.0,
        max_attempts: int = 3,
    ) -> None:
        self.adapter = adapter
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout = connect_timeout
        self._max_attempts = max_attempts
        self._in_use = 0
        self._links: set[GattLink] = set()

    def bluez_restarted(self) -> None:
        """bluetoothd went away or came back: every link it held is gone."""
        for link in list(self._links):
            link.orphan("bluetoothd restarted")

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
                    BleakClient,
                    advert.device,
                    name,
                    disconnected_callback=disconnected,
                    max_attempts=self._max_attempts,
                )
        except BleakOutOfConnectionSlotsError as exc:
            release()
            raise BleConnectError(
                f"{advert.address}: the controller of {self.adapter} has no free connection "
                f"slot, or the device stopped answering ({exc.__cause__ or exc}); lower "
                "[ble] max_connections if this keeps happening",
                out_of_slots=True,
            ) from exc
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

        def release_link() -> None:
            self._links.discard(link)  # assigned just below, before any call
            release()

        link = GattLink(client, advert.address, release_link)
        self._links.add(link)
        if not client.is_connected:  # lost between the connect and now
            link.on_disconnect(client)
        return link
