"""A virtual BlueZ on a private D-Bus bus, for running the real bleak without a radio.

What lives here: `VirtualBluez`, the `org.bluez` service (bluetoothd's D-Bus side) with one
adapter (`hci0`), and `BluezThread`, the same service on its own event loop in a background
thread (bleak runs in the caller's loop). The D-Bus object classes are in
`gateway.sim.bluez_objects`, the peripherals (`VirtualPeripheral`, `CharSpec`) in
`gateway.sim.bluez_peripheral`, advertisement monitors in `gateway.sim.bluez_monitor`; the bus
comes from `gateway.sim.dbus_bus`. Nothing here imports bleak or the gateway.

Modelled on bluetoothd 5.66 (the team's BLE testing notes; Debian's real `bluetoothctl`
drives it too, see tests/test_bluetoothctl.py):

- Discovery sessions per client: a second StartDiscovery from one client is InProgress, a
  StopDiscovery without one is Failed "No discovery started", a client leaving the bus ends its
  session. Devices appear only when they advertise during a discovery (or match a monitor);
  each advertising tick changes RSSI, so PropertiesChanged keeps firing. Heard data merges into
  Device1 as bluetoothd merges it (a name is kept once heard; manufacturer data, service data
  and UUIDs update per key and are never dropped); properties never heard are absent.
- Connect sets Connected, exports the GATT objects (paths and Handle with a real server's
  handle layout), then ServicesResolved; Disconnect and link loss do the reverse; notifications
  are PropertiesChanged on `Value`. At most `max_connections` links at once (default 5, like
  typical controllers); one more Connect fails with Failed "No available connection slots".
- Adapter power: Powered is writable over D-Bus, or `set_powered`. Off: links drop, discovery
  sessions end, Discovering is False, StartDiscovery, StopDiscovery, SetDiscoveryFilter,
  Connect and RemoveDevice fail with NotReady. Device objects stay.
- bluetoothd exiting and starting again (`stop_daemon`, `start_daemon`): a graceful exit powers
  the adapter off, removes every object (InterfacesRemoved), releases `org.bluez` and leaves the
  bus; `graceful=False` is a crash: the bus only reports NameOwnerChanged. A start is a new
  process: a new bus connection owning the name, the adapter powered, no devices until they
  advertise during a discovery again, no sessions, no monitors.
- Passive scanning (bluetoothd --experimental): `org.bluez.AdvertisementMonitorManager1` with
  "or_patterns" monitors, see `gateway.sim.bluez_monitor`. Monitors need no discovery:
  Discovering stays False.

Not modelled: AcquireNotify/AcquireWrite, pairing agents (no AgentManager1), monitor RSSI
thresholds and lost timeouts, expiry of temporary devices, UUIDs from service resolution,
BR/EDR, more than one adapter, ATT timing.

Fault injection, modelled on bluetoothd:

- `VirtualPeripheral.fail_connects(count, error, message)`: the next `count` Connect calls fail
  with that D-Bus error. For `le-connection-abort-by-local` (the default) Connected goes True then
  False before the error, as BlueZ >= 5.62 does, so bleak retries it inside `connect()`; any other
  message (e.g. "No available connection slots") fails without touching Connected, and bleak
  raises it as `BleakDBusError`. `VirtualPeripheral.connect_calls` counts Connect calls.
- `VirtualPeripheral.connect_delay`: seconds before Connect answers. A Disconnect meanwhile (what
  bleak sends when its connect times out) cancels it with `le-connection-abort-by-local`.
- `drop_link(peripheral)`: link loss of a connected peripheral: ServicesResolved False, GATT
  objects removed, Connected False.
- `vanish(peripheral)`: the peripheral stops advertising and its Device1 object is removed
  (InterfacesRemoved), dropping the link first if connected; `add` it again to bring it back.
- `set_advertisement(peripheral, name=..., manufacturer_data=..., ...)`: the peripheral
  advertises something else from its next tick on (only the arguments given change).
- `mute_scanner()`: a wedged controller scan: Discovering stays True but nothing is heard
  until a StopDiscovery (any client; a new StartDiscovery then scans again), an
  UnregisterMonitor, a power cycle or a bluetoothd restart.
- `set_powered`, `stop_daemon`, `start_daemon` (and `BluezThread.restart_daemon`) above;
  `max_connections` when constructing or starting.

All of these exist on `VirtualBluez` (call them on its loop, `BluezThread.loop`) and on
`BluezThread` (async, from any loop). `connect_delay` and `fail_connects` are plain data read
when Connect arrives, so a test may set them from its own thread. Simulated devices may ask
`VirtualBluez.link_state(peripheral)` whether a central is connected and listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dbus_fast import DBusError, Message, MessageType

from gateway.sim.bluez_monitor import Monitors
from gateway.sim.bluez_objects import (
    ADAPTER1,
    BLUEZ,
    MONITOR_MANAGER1,
    OBJECT_MANAGER,
    Adapter,
    BluezBus,
    BluezObject,
    Device,
    GattCharacteristic,
    MonitorManager,
    gatt_objects,
)
from gateway.sim.bluez_peripheral import (
    ABORT_BY_LOCAL,
    CharSpec,
    VirtualBluezError,
    VirtualPeripheral,
    advertising_data,
)

__all__ = [
    "ABORT_BY_LOCAL",
    "BluezThread",
    "CharSpec",
    "VirtualBluez",
    "VirtualBluezError",
    "VirtualPeripheral",
]

CALL_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 5
NO_SLOTS = "No available connection slots"
_NOT_READY = ("org.bluez.Error.NotReady", "Resource Not Ready")
# Signals bluetoothd listens to: clients leaving the bus (sessions and monitors end with them).
_NAME_OWNER_CHANGED = "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"

_T = TypeVar("_T")


@dataclass(eq=False, slots=True)
class _Hosted:
    peripheral: VirtualPeripheral
    task: asyncio.Task[None] | None = None
    device: Device | None = None
    gatt: list[BluezObject] = field(default_factory=list)
    pending_connect: asyncio.Future[None] | None = None


@dataclass(eq=False, slots=True)
class _Daemon:
    """One bluetoothd lifetime: its bus connection and what lives and dies with it."""

    bus: BluezBus
    adapter: Adapter
    monitors: Monitors
    discovery_clients: set[str] = field(default_factory=set)


class VirtualBluez:
    """The `org.bluez` service with adapter `hci0`. Use it inside one event loop."""

    def __init__(
        self,
        bus_address: str,
        adapter: str = "hci0",
        address: str = "00:00:5E:00:53:00",
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._bus_address = bus_address
        self.adapter_path = f"/org/bluez/{adapter}"
        self._address = address
        self.max_connections = max_connections
        self._daemon: _Daemon | None = None
        self._hosted: dict[str, _Hosted] = {}
        self._muted = False

    @classmethod
    async def start(
        cls, bus_address: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> VirtualBluez:
        """Connect to the bus at `bus_address`, own `org.bluez` and export the adapter."""
        bluez = cls(bus_address, max_connections=max_connections)
        await bluez.start_daemon()
        return bluez

    async def start_daemon(self) -> None:
        """bluetoothd starts: a new bus connection owns `org.bluez`, then the adapter appears."""
        if self._daemon is not None:
            raise VirtualBluezError("bluetoothd is already running")
        bus = BluezBus(bus_address=self._bus_address)
        try:
            await asyncio.wait_for(bus.connect(), CALL_TIMEOUT)
            daemon = _Daemon(bus, Adapter(self, self.adapter_path, self._address), Monitors(bus))
            self._daemon = daemon
            bus.add_message_handler(self._on_message)
            await asyncio.wait_for(
                bus.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="AddMatch",
                        signature="s",
                        body=[_NAME_OWNER_CHANGED],
                    )
                ),
                CALL_TIMEOUT,
            )
            await asyncio.wait_for(bus.request_name(BLUEZ), CALL_TIMEOUT)
        except BaseException:
            self._daemon = None
            bus.disconnect()
            raise
        bus.export(self.adapter_path, daemon.adapter)
        bus.export(self.adapter_path, MonitorManager(self.adapter_path))

    async def stop_daemon(self, *, graceful: bool = True) -> None:
        """bluetoothd exits: gracefully (SIGTERM) or by crashing (`graceful=False`)."""
        daemon = self._daemon
        if daemon is None:
            raise VirtualBluezError("bluetoothd is not running")
        if graceful:
            # What bluetoothd does on SIGTERM: power the adapter off (links drop, discovery
            # ends), unregister every object, leave the bus.
            self.set_powered(False)
            for hosted in self._hosted.values():
                if hosted.device is not None:
                    daemon.bus.unexport(hosted.device.path)
            daemon.bus.unexport(self.adapter_path)
            # The reply also proves that every signal sent before it has left.
            await asyncio.wait_for(daemon.bus.release_name(BLUEZ), CALL_TIMEOUT)
        self._daemon = None
        self._muted = False
        for hosted in self._hosted.values():
            if hosted.pending_connect is not None and not hosted.pending_connect.done():
                hosted.pending_connect.set_result(None)
            hosted.device = None
            hosted.gatt = []
        await daemon.monitors.close()
        daemon.bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(daemon.bus.wait_for_disconnect(), CALL_TIMEOUT)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Stop advertising, forget every device and leave the bus."""
        for hosted in self._hosted.values():
            if hosted.task is not None:
                hosted.task.cancel()
        tasks = [h.task for h in self._hosted.values() if h.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._daemon is not None:
            await self.stop_daemon(graceful=False)
        self._hosted.clear()

    @property
    def running(self) -> bool:
        """Whether bluetoothd is up (between `start_daemon` and `stop_daemon`)."""
        return self._daemon is not None

    @property
    def powered(self) -> bool:
        return self._daemon is not None and bool(self._daemon.adapter.props["Powered"])

    @property
    def discovering(self) -> bool:
        return self._daemon is not None and bool(self._daemon.adapter.props["Discovering"])

    def add(self, peripheral: VirtualPeripheral) -> None:
        """Host `peripheral`: it advertises from now on; seen only while a discovery runs."""
        if peripheral.address in self._hosted:
            raise VirtualBluezError(f"a peripheral with address {peripheral.address} exists")
        peripheral._bluez = self
        hosted = _Hosted(peripheral)
        hosted.task = asyncio.create_task(self._advertise(hosted))
        self._hosted[peripheral.address] = hosted

    def set_advertisement(
        self,
        peripheral: VirtualPeripheral,
        *,
        name: str | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        service_uuids: Sequence[str] | None = None,
        rssi: int | None = None,
    ) -> None:
        """Advertise something else from the next tick on; arguments left None stay as they are.

        Scanners see it as bluetoothd reports it: PropertiesChanged with what changed (a new
        name changes Name and Alias); data under a key no longer advertised is kept."""
        if name is not None:
            peripheral.name = name
        if manufacturer_data is not None:
            peripheral.manufacturer_data = {k: bytes(v) for k, v in manufacturer_data.items()}
        if service_data is not None:
            peripheral.service_data = {k: bytes(v) for k, v in service_data.items()}
        if service_uuids is not None:
            peripheral.service_uuids = list(service_uuids)
        if rssi is not None:
            peripheral.rssi = rssi

    def mute_scanner(self) -> None:
        """Wedge the controller's scan (see the module doc for what cures it)."""
        self._muted = True

    def notify(self, peripheral: VirtualPeripheral, char_uuid: str, data: bytes) -> None:
        hosted = self._hosted.get(peripheral.address)
        if hosted is None or hosted.device is None or not hosted.device.props["Connected"]:
            return
        for obj in hosted.gatt:
            if isinstance(obj, GattCharacteristic) and obj.props["UUID"] == char_uuid:
                obj.props["Value"] = data
                if obj.props["Notifying"]:
                    obj.update(force=True, Value=data)
                return
        raise VirtualBluezError(f"{peripheral.address} has no characteristic {char_uuid}")

    def link_state(self, peripheral: VirtualPeripheral) -> tuple[bool, frozenset[str]]:
        """(connected, UUIDs of the characteristics a central enabled notifications on)."""
        hosted = self._hosted.get(peripheral.address)
        if (
            hosted is None
            or hosted.peripheral is not peripheral
            or hosted.device is None
            or not hosted.device.props["Connected"]
        ):
            return False, frozenset()
        return True, frozenset(
            str(obj.props["UUID"]) for obj in hosted.gatt if obj.props.get("Notifying")
        )

    def set_powered(self, powered: bool) -> None:
        """Power the adapter on or off, as writing Adapter1.Powered does."""
        daemon = self._require_daemon()
        if not powered:
            # bluetoothd's adapter_stop: discovery sessions end, then the links go down.
            daemon.discovery_clients.clear()
            daemon.adapter.update(Discovering=False)
            for hosted in self._hosted.values():
                if hosted.device is not None:
                    self.disconnect(hosted.device)
            self._muted = False
        daemon.adapter.update(Powered=powered, PowerState="on" if powered else "off")

    def remove_device(self, path: str) -> bool:
        """Adapter1.RemoveDevice: False if no such device (NotReady raised when unpowered)."""
        daemon = self._require_daemon()
        for hosted in self._hosted.values():
            if hosted.device is not None and hosted.device.path == path:
                if not daemon.adapter.props["Powered"]:
                    raise DBusError(*_NOT_READY)
                self.disconnect(hosted.device)
                daemon.monitors.report_lost(path)
                daemon.bus.unexport(path)
                hosted.device = None
                return True
        return False

    def drop_link(self, peripheral: VirtualPeripheral) -> None:
        """Link loss: the reverse of a connect, as if the peripheral went out of range."""
        hosted = self._hosted.get(peripheral.address)
        if hosted is None or hosted.device is None or not hosted.device.props["Connected"]:
            raise VirtualBluezError(f"{peripheral.address} is not connected")
        self.disconnect(hosted.device)

    async def vanish(self, peripheral: VirtualPeripheral) -> None:
        """Stop advertising `peripheral` and remove its Device1 object (InterfacesRemoved)."""
        hosted = self._hosted.get(peripheral.address)
        if hosted is None or hosted.peripheral is not peripheral:
            raise VirtualBluezError(f"{peripheral.address} is not hosted here")
        if hosted.task is not None:
            hosted.task.cancel()
            await asyncio.gather(hosted.task, return_exceptions=True)
            hosted.task = None
        if hosted.device is not None and self._daemon is not None:
            self.disconnect(hosted.device)
            self._daemon.monitors.report_lost(hosted.device.path)
            self._daemon.bus.unexport(hosted.device.path)
        hosted.device = None
        del self._hosted[peripheral.address]
        peripheral._bluez = None

    async def connect(self, device: Device) -> None:
        peripheral = device.peripheral
        peripheral.connect_calls += 1
        if not self.powered:
            raise DBusError(*_NOT_READY)
        if device.props["Connected"]:
            return
        hosted = self._hosted.get(peripheral.address)
        if hosted is None or hosted.device is not device:
            raise DBusError(
                "org.freedesktop.DBus.Error.UnknownObject", f"Unknown object '{device.path}'"
            )
        if hosted.pending_connect is not None:
            raise DBusError("org.bluez.Error.InProgress", "In Progress")
        # A link being set up holds a controller slot as much as an established one.
        busy = sum(
            1
            for h in self._hosted.values()
            if h is not hosted
            and h.device is not None
            and (h.device.props["Connected"] or h.pending_connect is not None)
        )
        if busy >= self.max_connections:
            raise DBusError("org.bluez.Error.Failed", NO_SLOTS)
        if peripheral.connect_delay > 0:
            await self._connect_delay(hosted, device)
        failure = peripheral.take_connect_failure()
        if failure is not None:
            error, message = failure
            if message == ABORT_BY_LOCAL:
                # BlueZ >= 5.62: the link came up and was torn down before the reply.
                device.update(Connected=True)
                device.update(Connected=False)
            raise DBusError(error, message)
        daemon = self._require_daemon()
        device.update(Connected=True)
        hosted.gatt = list(gatt_objects(device))
        for obj in hosted.gatt:
            daemon.bus.export(obj.path, obj)
        device.update(ServicesResolved=True)

    async def _connect_delay(self, hosted: _Hosted, device: Device) -> None:
        """Wait out `connect_delay`, unless a Disconnect cancels the connect meanwhile."""
        cancelled = asyncio.get_running_loop().create_future()
        hosted.pending_connect = cancelled
        try:
            await asyncio.wait([cancelled], timeout=hosted.peripheral.connect_delay)
        finally:
            hosted.pending_connect = None
        if cancelled.done():
            raise DBusError("org.bluez.Error.Failed", ABORT_BY_LOCAL)
        if not self.powered:
            raise DBusError(*_NOT_READY)
        if self._hosted.get(device.peripheral.address) is not hosted or hosted.device is not device:
            raise DBusError(
                "org.freedesktop.DBus.Error.UnknownObject", f"Unknown object '{device.path}'"
            )

    def disconnect(self, device: Device) -> None:
        hosted = self._hosted.get(device.peripheral.address)
        if hosted is None:
            return
        if hosted.pending_connect is not None and not hosted.pending_connect.done():
            hosted.pending_connect.set_result(None)
        if not device.props["Connected"]:
            return
        device.update(ServicesResolved=False)
        if self._daemon is not None:
            for obj in reversed(hosted.gatt):
                self._daemon.bus.unexport(obj.path, obj)
        hosted.gatt = []
        device.update(Connected=False)

    def _require_daemon(self) -> _Daemon:
        if self._daemon is None:
            raise VirtualBluezError("bluetoothd is not running")
        return self._daemon

    async def _advertise(self, hosted: _Hosted) -> None:
        # Real RSSI wobbles; bluetoothd only signals a change, so each tick must differ.
        wobble = itertools.cycle((0, -1, -2, -1))
        while True:
            await asyncio.sleep(hosted.peripheral.advertise_interval)
            self._hear(hosted, hosted.peripheral.rssi + next(wobble))

    def _hear(self, hosted: _Hosted, rssi: int) -> None:
        """One advertisement on air: reported if a discovery runs or a monitor matches it."""
        daemon = self._daemon
        if daemon is None or self._muted or not daemon.adapter.props["Powered"]:
            return
        monitors = (
            daemon.monitors.matching(advertising_data(hosted.peripheral))
            if daemon.monitors.active
            else []
        )
        if not daemon.adapter.props["Discovering"] and not monitors:
            return
        if hosted.device is None:
            address = hosted.peripheral.address.upper().replace(":", "_")
            hosted.device = Device(
                self, hosted.peripheral, f"{self.adapter_path}/dev_{address}", self.adapter_path
            )
            daemon.bus.export(hosted.device.path, hosted.device)
        else:
            hosted.device.update(**hosted.device.heard(rssi))
        daemon.monitors.report_found(monitors, hosted.device.path)

    def _on_message(self, msg: Message) -> Message | bool:
        daemon = self._daemon
        if daemon is None:
            return False
        if msg.message_type is MessageType.SIGNAL:
            self._on_signal(daemon, msg)
            return False
        if (
            msg.message_type is not MessageType.METHOD_CALL
            or msg.path != self.adapter_path
            or msg.sender is None
        ):
            return False
        # Calls whose answer depends on who calls: dbus-fast's method handlers cannot see that.
        if msg.interface == ADAPTER1 and msg.member in ("StartDiscovery", "StopDiscovery"):
            self._on_discovery_call(daemon, msg.member, msg.sender)
            return Message.new_method_return(msg)
        if msg.interface == MONITOR_MANAGER1 and msg.member in (
            "RegisterMonitor",
            "UnregisterMonitor",
        ):
            if msg.signature != "o":
                raise DBusError(
                    "org.bluez.Error.InvalidArguments", "Invalid arguments in method call"
                )
            if msg.member == "RegisterMonitor":
                daemon.monitors.register(msg.sender, msg.body[0])
            else:
                daemon.monitors.unregister(msg.sender, msg.body[0])
                self._muted = False
            return Message.new_method_return(msg)
        return False

    def _on_discovery_call(self, daemon: _Daemon, member: str, sender: str) -> None:
        if not daemon.adapter.props["Powered"]:
            raise DBusError(*_NOT_READY)
        if member == "StartDiscovery":
            if sender in daemon.discovery_clients:
                raise DBusError("org.bluez.Error.InProgress", "Operation already in progress")
            daemon.discovery_clients.add(sender)
            daemon.adapter.update(Discovering=True)
            return
        if sender not in daemon.discovery_clients:
            raise DBusError("org.bluez.Error.Failed", "No discovery started")
        # Stopping restarts the controller's scan with the remaining sessions' filter, which
        # is what unwedges a muted scanner.
        self._muted = False
        self._stop_discovery(daemon, sender)

    def _on_signal(self, daemon: _Daemon, msg: Message) -> None:
        if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
            name, _old, new = msg.body
            if not new:
                if name in daemon.discovery_clients:
                    self._stop_discovery(daemon, name)
                daemon.monitors.forget_owner(name)
        elif msg.interface == OBJECT_MANAGER and msg.sender != daemon.bus.unique_name:
            daemon.monitors.handle_signal(msg)

    def _stop_discovery(self, daemon: _Daemon, client: str) -> None:
        daemon.discovery_clients.discard(client)
        if not daemon.discovery_clients:
            daemon.adapter.update(Discovering=False)


class BluezThread:
    """A `VirtualBluez` on its own event loop in a daemon thread; call `stop()` when done.

    Every async method runs the `VirtualBluez` method of the same name on the service's loop.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, bluez: VirtualBluez
    ) -> None:
        self._loop = loop
        self._thread = thread
        self.bluez = bluez

    @classmethod
    def start(
        cls, bus_address: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> BluezThread:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="virtual-bluez", daemon=True)
        thread.start()
        try:
            bluez = asyncio.run_coroutine_threadsafe(
                VirtualBluez.start(bus_address, max_connections=max_connections), loop
            ).result(CALL_TIMEOUT * 2)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(loop, thread, bluez)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The service's event loop: run code that touches `bluez` or peripherals there."""
        return self._loop

    async def add_peripheral(self, peripheral: VirtualPeripheral) -> None:
        await self._run(lambda: self.bluez.add(peripheral))

    async def notify(self, peripheral: VirtualPeripheral, char_uuid: str, data: bytes) -> None:
        await self._call(peripheral.notify(char_uuid, data))

    async def drop_link(self, peripheral: VirtualPeripheral) -> None:
        await self._run(lambda: self.bluez.drop_link(peripheral))

    async def vanish(self, peripheral: VirtualPeripheral) -> None:
        await self._call(self.bluez.vanish(peripheral))

    async def set_powered(self, powered: bool) -> None:
        await self._run(lambda: self.bluez.set_powered(powered))

    async def stop_daemon(self, *, graceful: bool = True) -> None:
        await self._call(self.bluez.stop_daemon(graceful=graceful))

    async def start_daemon(self) -> None:
        await self._call(self.bluez.start_daemon())

    async def restart_daemon(self, down_seconds: float = 0.0, *, graceful: bool = True) -> None:
        """`stop_daemon`, `down_seconds` without bluetoothd, then `start_daemon`."""
        await self.stop_daemon(graceful=graceful)
        await asyncio.sleep(down_seconds)
        await self.start_daemon()

    async def set_advertisement(
        self,
        peripheral: VirtualPeripheral,
        *,
        name: str | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        service_uuids: Sequence[str] | None = None,
        rssi: int | None = None,
    ) -> None:
        await self._run(
            lambda: self.bluez.set_advertisement(
                peripheral,
                name=name,
                manufacturer_data=manufacturer_data,
                service_data=service_data,
                service_uuids=service_uuids,
                rssi=rssi,
            )
        )

    async def mute_scanner(self) -> None:
        await self._run(self.bluez.mute_scanner)

    def stop(self) -> None:
        """Close the service, then end whatever else runs on its loop (simulated devices
        started on it, say) so that nothing is left pending when the loop closes."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.bluez.close(), self._loop).result(
                CALL_TIMEOUT * 2
            )
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(CALL_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT)
        self._loop.close()

    async def _run(self, fn: Callable[[], _T]) -> _T:
        async def call() -> _T:
            return fn()

        return await self._call(call())

    async def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), CALL_TIMEOUT)


async def _cancel_others() -> None:
    """Cancel every task on the running loop but this one, and wait for them to end."""
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
