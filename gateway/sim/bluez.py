"""A virtual BlueZ on a private D-Bus bus, for running the real bleak without a radio.

What lives here: `VirtualBluez`, a D-Bus service owning `org.bluez` with one adapter (`hci0`),
the virtual peripherals it hosts (`VirtualPeripheral`, `CharSpec`), and `BluezThread`, the same
service running on its own event loop in a background thread (bleak runs in the caller's loop).
The bus itself comes from `gateway.sim.dbus_bus`. Nothing here imports bleak or the gateway.

It models what bleak relies on, the way bluetoothd 5.66 behaves (../shared/reference/
ble-testing.md): devices appear only when they advertise during a discovery, advertising ticks
change RSSI so PropertiesChanged fires, Connect sets Connected, exports the GATT objects, then
ServicesResolved; Disconnect does the reverse; notifications are PropertiesChanged on `Value`.
Not modelled: AcquireNotify/AcquireWrite, pairing agents, advertisement monitors, ATT timing.

Fault injection, modelled on bluetoothd:

- `VirtualPeripheral.fail_connects(count, error, message)`: the next `count` Connect calls fail
  with that D-Bus error. For `le-connection-abort-by-local` (the default) Connected goes True then
  False before the error, as BlueZ >= 5.62 does, so bleak retries it inside `connect()`; any other
  message (e.g. "No available connection slots") fails without touching Connected, and bleak
  raises it as `BleakDBusError`. `VirtualPeripheral.connect_calls` counts Connect calls.
- `VirtualPeripheral.connect_delay`: seconds before Connect answers. A Disconnect meanwhile (what
  bleak sends when its connect times out) cancels it with `le-connection-abort-by-local`.
- `drop_link(peripheral)` (on `VirtualBluez` and `BluezThread`): link loss of a connected
  peripheral: ServicesResolved False, GATT objects removed, Connected False.
- `vanish(peripheral)`: the peripheral stops advertising and its Device1 object is removed
  (InterfacesRemoved), dropping the link first if connected; `add` it again to bring it back.

The two fields and `fail_connects` are plain data read when Connect arrives, so a test may set
them from its own thread; `drop_link` and `vanish` run on the service's loop.
"""

# No `from __future__ import annotations`: dbus-fast reads these annotations at import time,
# and would take a postponed `-> None` for a D-Bus signature.
import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from dbus_fast import DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusBytes, DBusDict, DBusObjectPath, DBusSignature
from dbus_fast.annotations import DBusStr as Str
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

_LOGGER = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ADAPTER1 = "org.bluez.Adapter1"
DEVICE1 = "org.bluez.Device1"
GATT_SERVICE1 = "org.bluez.GattService1"
GATT_CHARACTERISTIC1 = "org.bluez.GattCharacteristic1"
GATT_DESCRIPTOR1 = "org.bluez.GattDescriptor1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
CALL_TIMEOUT = 5.0

StrList = Annotated[list[str], DBusSignature("as")]
Int16 = Annotated[int, DBusSignature("n")]
ManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]

_T = TypeVar("_T")

ABORT_BY_LOCAL = "le-connection-abort-by-local"


class VirtualBluezError(Exception):
    """The virtual BlueZ could not start, or was used from the wrong thread or loop."""


@dataclass(frozen=True, slots=True)
class CharSpec:
    """A characteristic of a virtual peripheral: BlueZ flags ("read", "notify", ...) and value."""

    flags: tuple[str, ...]
    value: bytes = b""


@dataclass(eq=False, slots=True)
class VirtualPeripheral:
    """A device that advertises and, once connected, serves GATT. Define it, then `add` it."""

    address: str
    name: str | None = None
    services: Mapping[str, Mapping[str, CharSpec]] = field(default_factory=dict)
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)
    service_data: Mapping[str, bytes] = field(default_factory=dict)
    service_uuids: Sequence[str] = ()
    rssi: int = -60
    advertise_interval: float = 0.05
    address_type: str = "public"
    connect_delay: float = 0.0
    """Seconds before a Connect call answers (fault injection)."""
    writes: list[tuple[str, bytes]] = field(default_factory=list)
    """Every value a central wrote, as (characteristic UUID, bytes), oldest first."""
    on_write: Callable[[str, bytes], None] | None = None
    """Called on the service's loop after each write with (characteristic UUID, bytes): the
    peripheral's behaviour (a control point answering with indications) hangs here. It may
    raise `DBusError` to refuse the write, as a device's ATT error would."""
    connect_calls: int = field(default=0, init=False)
    """How many Connect calls reached this peripheral, failed ones included."""
    _bluez: "VirtualBluez | None" = None
    _connect_failures: list[tuple[str, str]] = field(default_factory=list, init=False,
                                                     repr=False)

    def fail_connects(self, count: int, error: str = "org.bluez.Error.Failed",
                      message: str = ABORT_BY_LOCAL) -> None:
        """Make the next `count` Connect calls fail with D-Bus `error` and `message`."""
        if count < 0:
            raise ValueError("count must not be negative")
        self._connect_failures = [(error, message)] * count

    async def notify(self, char_uuid: str, data: bytes) -> None:
        """Send a notification, as the peripheral would; dropped unless connected and enabled."""
        if self._bluez is None:
            raise VirtualBluezError(f"{self.address} is not hosted by a VirtualBluez")
        self._bluez.notify(self, char_uuid, bytes(data))


class _Object(ServiceInterface):
    """An exported BlueZ interface whose properties live in one dict, signalled on change."""

    def __init__(self, name: str, path: str, props: dict[str, Any]) -> None:
        super().__init__(name)
        self.path = path
        self.props = props

    def update(self, *, force: bool = False, **changes: Any) -> None:
        # bluetoothd signals only properties whose value changed.
        changed = {k: v for k, v in changes.items() if force or self.props.get(k) != v}
        if changed:
            self.props.update(changed)
            self.emit_properties_changed(changed)


class _Adapter(_Object):
    def __init__(self, bluez: "VirtualBluez", path: str, address: str) -> None:
        super().__init__(ADAPTER1, path, {
            "Address": address, "AddressType": "public", "Name": "rtm-virtual",
            "Alias": "rtm-virtual", "Powered": True, "Discoverable": False, "Pairable": True,
            "Discovering": False, "UUIDs": [], "Roles": ["central", "peripheral"]})
        self._bluez = bluez

    # StartDiscovery and StopDiscovery are answered by VirtualBluez._on_message, which sees the
    # caller's bus name (sessions are per client); these declarations are for introspection.
    @dbus_method()
    def StartDiscovery(self) -> None:
        raise DBusError("org.bluez.Error.Failed", "not reached")

    @dbus_method()
    def StopDiscovery(self) -> None:
        raise DBusError("org.bluez.Error.Failed", "not reached")

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict) -> None:
        unknown = set(properties) - {"UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData",
                                     "Discoverable", "Pattern"}
        if unknown:
            raise DBusError("org.bluez.Error.InvalidArguments", "Invalid arguments in method call")

    @dbus_method()
    def RemoveDevice(self, device: DBusObjectPath) -> None:
        if not self._bluez.remove_device(device):
            raise DBusError("org.bluez.Error.DoesNotExist", "Does Not Exist")

    @dbus_property(PropertyAccess.READ)
    def Address(self) -> Str:
        return str(self.props["Address"])

    @dbus_property(PropertyAccess.READ)
    def AddressType(self) -> Str:
        return str(self.props["AddressType"])

    @dbus_property(PropertyAccess.READ)
    def Name(self) -> Str:
        return str(self.props["Name"])

    @dbus_property(PropertyAccess.READ)
    def Alias(self) -> Str:
        return str(self.props["Alias"])

    @dbus_property()
    def Powered(self) -> DBusBool:
        return bool(self.props["Powered"])

    @Powered.setter  # type: ignore[no-redef]  # dbus-fast's property setter reuses the name
    def Powered(self, value: DBusBool) -> None:
        self._bluez.set_powered(value)

    @dbus_property(PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return bool(self.props["Discoverable"])

    @dbus_property(PropertyAccess.READ)
    def Pairable(self) -> DBusBool:
        return bool(self.props["Pairable"])

    @dbus_property(PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return bool(self.props["Discovering"])

    @dbus_property(PropertyAccess.READ)
    def UUIDs(self) -> StrList:
        return list(self.props["UUIDs"])

    @dbus_property(PropertyAccess.READ)
    def Roles(self) -> StrList:
        return list(self.props["Roles"])


class _Device(_Object):
    """Device1 of a peripheral whose name is unknown: BlueZ then has no Name property at all."""

    def __init__(self, bluez: "VirtualBluez", peripheral: VirtualPeripheral, path: str,
                 adapter: str) -> None:
        super().__init__(DEVICE1, path, {
            "Address": peripheral.address, "AddressType": peripheral.address_type,
            "Alias": peripheral.name or peripheral.address.replace(":", "-"),
            "Paired": False, "Bonded": False, "Trusted": False, "Blocked": False,
            "LegacyPairing": False, "RSSI": peripheral.rssi, "Connected": False,
            "UUIDs": list(peripheral.service_uuids), "Adapter": adapter,
            "ManufacturerData": {k: Variant("ay", bytes(v))
                                 for k, v in peripheral.manufacturer_data.items()},
            "ServiceData": {k: Variant("ay", bytes(v))
                            for k, v in peripheral.service_data.items()},
            "ServicesResolved": False})
        self._bluez = bluez
        self.peripheral = peripheral

    @dbus_method()
    async def Connect(self) -> None:
        await self._bluez.connect(self)

    @dbus_method()
    async def Disconnect(self) -> None:
        self._bluez.disconnect(self)

    @dbus_method()
    async def Pair(self) -> None:
        if self.props["Paired"]:
            raise DBusError("org.bluez.Error.AlreadyExists", "Already Exists")
        await self._bluez.connect(self)
        self.update(Paired=True, Bonded=True)

    @dbus_property(PropertyAccess.READ)
    def Address(self) -> Str:
        return str(self.props["Address"])

    @dbus_property(PropertyAccess.READ)
    def AddressType(self) -> Str:
        return str(self.props["AddressType"])

    @dbus_property(PropertyAccess.READ)
    def Alias(self) -> Str:
        return str(self.props["Alias"])

    @dbus_property(PropertyAccess.READ)
    def Paired(self) -> DBusBool:
        return bool(self.props["Paired"])

    @dbus_property(PropertyAccess.READ)
    def Bonded(self) -> DBusBool:
        return bool(self.props["Bonded"])

    @dbus_property()
    def Trusted(self) -> DBusBool:
        return bool(self.props["Trusted"])

    @Trusted.setter  # type: ignore[no-redef]  # dbus-fast's property setter reuses the name
    def Trusted(self, value: DBusBool) -> None:
        self.update(Trusted=value)

    @dbus_property(PropertyAccess.READ)
    def Blocked(self) -> DBusBool:
        return bool(self.props["Blocked"])

    @dbus_property(PropertyAccess.READ)
    def LegacyPairing(self) -> DBusBool:
        return bool(self.props["LegacyPairing"])

    @dbus_property(PropertyAccess.READ)
    def RSSI(self) -> Int16:
        return int(self.props["RSSI"])

    @dbus_property(PropertyAccess.READ)
    def Connected(self) -> DBusBool:
        return bool(self.props["Connected"])

    @dbus_property(PropertyAccess.READ)
    def UUIDs(self) -> StrList:
        return list(self.props["UUIDs"])

    @dbus_property(PropertyAccess.READ)
    def Adapter(self) -> DBusObjectPath:
        return str(self.props["Adapter"])

    @dbus_property(PropertyAccess.READ)
    def ManufacturerData(self) -> ManufacturerData:
        return dict(self.props["ManufacturerData"])

    @dbus_property(PropertyAccess.READ)
    def ServiceData(self) -> DBusDict:
        return dict(self.props["ServiceData"])

    @dbus_property(PropertyAccess.READ)
    def ServicesResolved(self) -> DBusBool:
        return bool(self.props["ServicesResolved"])


class _NamedDevice(_Device):
    @dbus_property(PropertyAccess.READ)
    def Name(self) -> Str:
        return str(self.props["Name"])


class _GattService(_Object):
    def __init__(self, path: str, uuid: str, device: str) -> None:
        super().__init__(GATT_SERVICE1, path, {"UUID": uuid, "Primary": True, "Device": device})

    @dbus_property(PropertyAccess.READ)
    def UUID(self) -> Str:
        return str(self.props["UUID"])

    @dbus_property(PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return bool(self.props["Primary"])

    @dbus_property(PropertyAccess.READ)
    def Device(self) -> DBusObjectPath:
        return str(self.props["Device"])


class _GattCharacteristic(_Object):
    def __init__(self, path: str, uuid: str, service: str, spec: CharSpec,
                 peripheral: VirtualPeripheral) -> None:
        super().__init__(GATT_CHARACTERISTIC1, path, {
            "UUID": uuid, "Service": service, "Value": spec.value, "Notifying": False,
            "Flags": list(spec.flags)})
        self.peripheral = peripheral

    def _require(self, *flags: str) -> None:
        if not set(flags) & set(self.props["Flags"]):
            raise DBusError("org.bluez.Error.NotPermitted", f"{'/'.join(flags)} not permitted")

    @dbus_method()
    def ReadValue(self, options: DBusDict) -> DBusBytes:
        self._require("read")
        return bytes(self.props["Value"])

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        self._require("write", "write-without-response")
        uuid = str(self.props["UUID"])
        if self.peripheral.on_write is not None:
            self.peripheral.on_write(uuid, bytes(value))
        self.peripheral.writes.append((uuid, bytes(value)))
        self.props["Value"] = bytes(value)

    @dbus_method()
    def StartNotify(self) -> None:
        # bluetoothd tracks sessions per client; one central at a time is enough here.
        if not {"notify", "indicate"} & set(self.props["Flags"]):
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        self.update(Notifying=True)

    @dbus_method()
    def StopNotify(self) -> None:
        self.update(Notifying=False)

    @dbus_property(PropertyAccess.READ)
    def UUID(self) -> Str:
        return str(self.props["UUID"])

    @dbus_property(PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return str(self.props["Service"])

    @dbus_property(PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return bytes(self.props["Value"])

    @dbus_property(PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return bool(self.props["Notifying"])

    @dbus_property(PropertyAccess.READ)
    def Flags(self) -> StrList:
        return list(self.props["Flags"])


class _GattDescriptor(_Object):
    def __init__(self, path: str, uuid: str, characteristic: str) -> None:
        super().__init__(GATT_DESCRIPTOR1, path, {
            "UUID": uuid, "Characteristic": characteristic, "Value": b"\x00\x00"})

    @dbus_method()
    def ReadValue(self, options: DBusDict) -> DBusBytes:
        return bytes(self.props["Value"])

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        # BlueZ refuses CCCD writes (StartNotify is the way); other descriptors just store.
        if self.props["UUID"] == CCCD_UUID:
            raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")
        self.props["Value"] = bytes(value)

    @dbus_property(PropertyAccess.READ)
    def UUID(self) -> Str:
        return str(self.props["UUID"])

    @dbus_property(PropertyAccess.READ)
    def Characteristic(self) -> DBusObjectPath:
        return str(self.props["Characteristic"])

    @dbus_property(PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return bytes(self.props["Value"])


class _BluezBus(MessageBus):
    """bluetoothd emits InterfacesAdded/Removed from `/`; dbus-fast would use the object's path."""

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        def send(iface: ServiceInterface, values: Any, _data: Any, exc: Exception | None) -> None:
            if exc is not None:
                _LOGGER.error("cannot read properties of %s at %s: %s", iface.name, path, exc)
                return
            self.send(Message.new_signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}",
                                         [path, {iface.name: values}]))

        if self.connected:
            ServiceInterface._get_all_property_values(interface, send)

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if self.connected:
            self.send(Message.new_signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas",
                                         [path, removed_interfaces]))


@dataclass(eq=False, slots=True)
class _Hosted:
    peripheral: VirtualPeripheral
    task: asyncio.Task[None] | None = None
    device: _Device | None = None
    gatt: list[_Object] = field(default_factory=list)
    pending_connect: "asyncio.Future[None] | None" = None


class VirtualBluez:
    """The `org.bluez` service with adapter `hci0`. Use it inside one event loop."""

    def __init__(self, bus: _BluezBus, adapter: str = "hci0",
                 address: str = "00:00:5E:00:53:00") -> None:
        self._bus = bus
        self.adapter_path = f"/org/bluez/{adapter}"
        self._adapter = _Adapter(self, self.adapter_path, address)
        self._discovery_clients: set[str] = set()
        self._hosted: dict[str, _Hosted] = {}

    @classmethod
    async def start(cls, bus_address: str) -> "VirtualBluez":
        """Connect to the bus at `bus_address`, export the adapter and own `org.bluez`."""
        bus = _BluezBus(bus_address=bus_address)
        try:
            await asyncio.wait_for(bus.connect(), CALL_TIMEOUT)
            bluez = cls(bus)
            bus.export(bluez.adapter_path, bluez._adapter)
            bus.add_message_handler(bluez._on_message)
            await asyncio.wait_for(bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"],
            )), CALL_TIMEOUT)
            await asyncio.wait_for(bus.request_name(BLUEZ), CALL_TIMEOUT)
        except BaseException:
            bus.disconnect()
            raise
        return bluez

    async def close(self) -> None:
        """Stop advertising, forget every device and leave the bus."""
        for hosted in self._hosted.values():
            if hosted.task is not None:
                hosted.task.cancel()
        tasks = [h.task for h in self._hosted.values() if h.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._hosted.clear()
        self._bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._bus.wait_for_disconnect(), CALL_TIMEOUT)  # type: ignore[no-untyped-call]

    @property
    def discovering(self) -> bool:
        return bool(self._adapter.props["Discovering"])

    def add(self, peripheral: VirtualPeripheral) -> None:
        """Host `peripheral`: it advertises from now on; seen only while a discovery runs."""
        if peripheral.address in self._hosted:
            raise VirtualBluezError(f"a peripheral with address {peripheral.address} exists")
        peripheral._bluez = self
        hosted = _Hosted(peripheral)
        hosted.task = asyncio.create_task(self._advertise(hosted))
        self._hosted[peripheral.address] = hosted

    def notify(self, peripheral: VirtualPeripheral, char_uuid: str, data: bytes) -> None:
        hosted = self._hosted.get(peripheral.address)
        if hosted is None or hosted.device is None or not hosted.device.props["Connected"]:
            return
        for obj in hosted.gatt:
            if isinstance(obj, _GattCharacteristic) and obj.props["UUID"] == char_uuid:
                obj.props["Value"] = data
                if obj.props["Notifying"]:
                    obj.update(force=True, Value=data)
                return
        raise VirtualBluezError(f"{peripheral.address} has no characteristic {char_uuid}")

    def set_powered(self, powered: bool) -> None:
        if not powered:
            for hosted in self._hosted.values():
                if hosted.device is not None:
                    self.disconnect(hosted.device)
            self._discovery_clients.clear()
            self._adapter.update(Discovering=False)
        self._adapter.update(Powered=powered)

    def remove_device(self, path: str) -> bool:
        for hosted in self._hosted.values():
            if hosted.device is not None and hosted.device.path == path:
                self.disconnect(hosted.device)
                self._bus.unexport(path)
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
        if hosted.device is not None:
            self.disconnect(hosted.device)
            self._bus.unexport(hosted.device.path)
            hosted.device = None
        del self._hosted[peripheral.address]
        peripheral._bluez = None

    async def connect(self, device: _Device) -> None:
        peripheral = device.peripheral
        peripheral.connect_calls += 1
        if not self._adapter.props["Powered"]:
            raise DBusError("org.bluez.Error.NotReady", "Resource Not Ready")
        if device.props["Connected"]:
            return
        hosted = self._hosted.get(peripheral.address)
        if hosted is None or hosted.device is not device:
            raise DBusError("org.freedesktop.DBus.Error.UnknownObject",
                            f"Unknown object '{device.path}'")
        if hosted.pending_connect is not None:
            raise DBusError("org.bluez.Error.InProgress", "In Progress")
        if peripheral.connect_delay > 0:
            cancelled = asyncio.get_running_loop().create_future()
            hosted.pending_connect = cancelled
            try:
                await asyncio.wait([cancelled], timeout=peripheral.connect_delay)
            finally:
                hosted.pending_connect = None
            if cancelled.done():
                raise DBusError("org.bluez.Error.Failed", ABORT_BY_LOCAL)
            if not self._adapter.props["Powered"]:
                raise DBusError("org.bluez.Error.NotReady", "Resource Not Ready")
            if self._hosted.get(peripheral.address) is not hosted or hosted.device is not device:
                raise DBusError("org.freedesktop.DBus.Error.UnknownObject",
                                f"Unknown object '{device.path}'")
        if peripheral._connect_failures:
            error, message = peripheral._connect_failures.pop(0)
            if message == ABORT_BY_LOCAL:
                # BlueZ >= 5.62: the link came up and was torn down before the reply.
                device.update(Connected=True)
                device.update(Connected=False)
            raise DBusError(error, message)
        device.update(Connected=True)
        hosted.gatt = list(_gatt_objects(device))
        for obj in hosted.gatt:
            self._bus.export(obj.path, obj)
        device.update(ServicesResolved=True)

    def disconnect(self, device: _Device) -> None:
        hosted = self._hosted.get(device.peripheral.address)
        if hosted is None:
            return
        if hosted.pending_connect is not None and not hosted.pending_connect.done():
            hosted.pending_connect.set_result(None)
        if not device.props["Connected"]:
            return
        device.update(ServicesResolved=False)
        for obj in reversed(hosted.gatt):
            self._bus.unexport(obj.path, obj)
        hosted.gatt = []
        device.update(Connected=False)

    async def _advertise(self, hosted: _Hosted) -> None:
        peripheral = hosted.peripheral
        # Real RSSI wobbles; bluetoothd only signals a change, so each tick must differ.
        wobble = itertools.cycle((0, -1, -2, -1))
        while True:
            await asyncio.sleep(peripheral.advertise_interval)
            if not self.discovering:
                continue
            if hosted.device is None:
                device_cls = _Device if peripheral.name is None else _NamedDevice
                path = f"{self.adapter_path}/dev_{peripheral.address.upper().replace(':', '_')}"
                hosted.device = device_cls(self, peripheral, path, self.adapter_path)
                if peripheral.name is not None:
                    hosted.device.props["Name"] = peripheral.name
                self._bus.export(path, hosted.device)
            else:
                hosted.device.update(RSSI=peripheral.rssi + next(wobble))

    def _on_message(self, msg: Message) -> Message | bool:
        if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.sender == "org.freedesktop.DBus"):
            name, _old, new = msg.body
            if not new and name in self._discovery_clients:
                self._stop_discovery(name)
            return False
        if (msg.message_type is not MessageType.METHOD_CALL or msg.interface != ADAPTER1
                or msg.path != self.adapter_path or msg.sender is None):
            return False
        if msg.member == "StartDiscovery":
            if not self._adapter.props["Powered"]:
                raise DBusError("org.bluez.Error.NotReady", "Resource Not Ready")
            if msg.sender in self._discovery_clients:
                raise DBusError("org.bluez.Error.InProgress", "Operation already in progress")
            self._discovery_clients.add(msg.sender)
            self._adapter.update(Discovering=True)
            return Message.new_method_return(msg)
        if msg.member == "StopDiscovery":
            if msg.sender not in self._discovery_clients:
                raise DBusError("org.bluez.Error.Failed", "No discovery started")
            self._stop_discovery(msg.sender)
            return Message.new_method_return(msg)
        return False

    def _stop_discovery(self, client: str) -> None:
        self._discovery_clients.discard(client)
        if not self._discovery_clients:
            self._adapter.update(Discovering=False)


def _gatt_objects(device: _Device) -> Iterator[_Object]:
    """GATT objects in the order bluetoothd exports them; handles are in the paths, in hex."""
    handles = itertools.count(1)
    for service_uuid, chars in device.peripheral.services.items():
        service_path = f"{device.path}/service{next(handles):04x}"
        yield _GattService(service_path, service_uuid, device.path)
        for char_uuid, spec in chars.items():
            char_path = f"{service_path}/char{next(handles):04x}"
            yield _GattCharacteristic(char_path, char_uuid, service_path, spec, device.peripheral)
            if {"notify", "indicate"} & set(spec.flags):
                yield _GattDescriptor(f"{char_path}/desc{next(handles):04x}", CCCD_UUID,
                                      char_path)


class BluezThread:
    """A `VirtualBluez` on its own event loop in a daemon thread; call `stop()` when done."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 bluez: VirtualBluez) -> None:
        self._loop = loop
        self._thread = thread
        self.bluez = bluez

    @classmethod
    def start(cls, bus_address: str) -> "BluezThread":
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="virtual-bluez", daemon=True)
        thread.start()
        try:
            bluez = asyncio.run_coroutine_threadsafe(
                VirtualBluez.start(bus_address), loop).result(CALL_TIMEOUT * 2)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(loop, thread, bluez)

    async def add_peripheral(self, peripheral: VirtualPeripheral) -> None:
        await self._call(self._add(peripheral))

    async def notify(self, peripheral: VirtualPeripheral, char_uuid: str, data: bytes) -> None:
        await self._call(peripheral.notify(char_uuid, data))

    async def drop_link(self, peripheral: VirtualPeripheral) -> None:
        """`VirtualBluez.drop_link` on the service's loop."""
        await self._call(self._drop_link(peripheral))

    async def vanish(self, peripheral: VirtualPeripheral) -> None:
        """`VirtualBluez.vanish` on the service's loop."""
        await self._call(self.bluez.vanish(peripheral))

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.bluez.close(), self._loop).result(
                CALL_TIMEOUT * 2)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT)
        self._loop.close()

    async def _add(self, peripheral: VirtualPeripheral) -> None:
        self.bluez.add(peripheral)

    async def _drop_link(self, peripheral: VirtualPeripheral) -> None:
        self.bluez.drop_link(peripheral)

    async def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), CALL_TIMEOUT)
