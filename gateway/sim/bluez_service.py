"""The virtual BlueZ service: `VirtualBluez`, bluetoothd's D-Bus side with one adapter
(`hci0`), hosting virtual peripherals. It advertises them, connects and disconnects them,
exports their GATT objects and sends their notifications, with the faults of the module doc of
`gateway.sim.bluez`, where the whole model is described.

One bluetoothd lifetime (its bus connection, discovery sessions, monitors) is a `BluezDaemon`
(`gateway.sim.bluez_daemon`); the D-Bus objects are `gateway.sim.bluez_adapter`,
`bluez_device` and `bluez_gatt`; `BluezThread` (`gateway.sim.bluez`) runs this service on its
own event loop. Nothing here imports bleak or the gateway.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dbus_fast import DBusError

from gateway.sim.bluez_daemon import NOT_READY, BluezDaemon
from gateway.sim.bluez_device import Device
from gateway.sim.bluez_gatt import GattCharacteristic, gatt_objects
from gateway.sim.bluez_objects import BluezObject
from gateway.sim.bluez_peripheral import (
    ABORT_BY_LOCAL,
    VirtualBluezError,
    VirtualPeripheral,
    advertising_data,
)

DEFAULT_MAX_CONNECTIONS = 5
NO_SLOTS = "No available connection slots"


@dataclass(eq=False, slots=True)
class _Hosted:
    peripheral: VirtualPeripheral
    task: asyncio.Task[None] | None = None
    device: Device | None = None
    gatt: list[BluezObject] = field(default_factory=list)
    pending_connect: asyncio.Future[None] | None = None


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
        self._daemon: BluezDaemon | None = None
        self._hosted: dict[str, _Hosted] = {}
        self.scanner_muted = False
        """The controller's scan is wedged (`mute_scanner`): nothing is heard until a cure."""

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
        self._daemon = await BluezDaemon.start(
            self, self._bus_address, self.adapter_path, self._address
        )

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
            await daemon.release()
        self._daemon = None
        self.scanner_muted = False
        for hosted in self._hosted.values():
            if hosted.pending_connect is not None and not hosted.pending_connect.done():
                hosted.pending_connect.set_result(None)
            hosted.device = None
            hosted.gatt = []
        await daemon.close()

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
        return self._daemon is not None and self._daemon.powered

    @property
    def discovering(self) -> bool:
        return self._daemon is not None and self._daemon.discovering

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
        self.scanner_muted = True

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

    def set_bond(self, peripheral: VirtualPeripheral, *, paired: bool, bonded: bool) -> None:
        """Set the pairing state bluetoothd reports for `peripheral` (PropertiesChanged), as a
        pairing on the current link (`paired` without `bonded`) or a stored bond would."""
        if bonded and not paired:
            raise ValueError("a bonded device is paired")
        peripheral.bonded = bonded
        hosted = self._hosted.get(peripheral.address)
        if hosted is not None and hosted.device is not None:
            hosted.device.update(Paired=paired, Bonded=bonded)

    def set_powered(self, powered: bool) -> None:
        """Power the adapter on or off, as writing Adapter1.Powered does."""
        daemon = self._require_daemon()
        if not powered:
            # bluetoothd's adapter_stop: discovery sessions end, then the links go down.
            daemon.end_discovery()
            for hosted in self._hosted.values():
                if hosted.device is not None:
                    self.disconnect(hosted.device)
            self.scanner_muted = False
        daemon.adapter.update(Powered=powered, PowerState="on" if powered else "off")

    def remove_device(self, path: str) -> bool:
        """Adapter1.RemoveDevice: False if no such device (NotReady raised when unpowered)."""
        daemon = self._require_daemon()
        for hosted in self._hosted.values():
            if hosted.device is not None and hosted.device.path == path:
                if not daemon.adapter.props["Powered"]:
                    raise DBusError(*NOT_READY)
                self.disconnect(hosted.device)
                daemon.monitors.report_lost(path)
                daemon.bus.unexport(path)
                hosted.device = None
                hosted.peripheral.bonded = False  # RemoveDevice deletes the keys too
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
            raise DBusError(*NOT_READY)
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
            raise DBusError(*NOT_READY)
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
        if device.props["Paired"] and not device.props["Bonded"]:
            device.update(Paired=False)  # bluetoothd forgets a pairing it did not store
        device.update(Connected=False)

    def _require_daemon(self) -> BluezDaemon:
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
        if daemon is None or self.scanner_muted or not daemon.adapter.props["Powered"]:
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
