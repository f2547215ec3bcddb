"""The D-Bus objects of the virtual BlueZ, shaped like bluetoothd 5.66's: `org.bluez.Adapter1`,
`org.bluez.AdvertisementMonitorManager1`, `org.bluez.Device1` and the GATT client objects
(`GattService1`, `GattCharacteristic1`, `GattDescriptor1`), plus `BluezBus`, the connection
that emits InterfacesAdded/Removed from `/` as bluetoothd does.

These classes hold properties and answer calls; what a call does to the rest of the service
(connecting, discovery sessions, monitors) is `VirtualBluez`'s, reached through `owner`.
"""

# No `from __future__ import annotations`: dbus-fast reads these annotations at import time,
# and would take a postponed `-> None` for a D-Bus signature.
import asyncio
import itertools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast import DBusError, Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusBytes, DBusDict, DBusObjectPath, DBusSignature
from dbus_fast.annotations import DBusStr as Str
from dbus_fast.annotations import DBusUInt16 as UInt16
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from gateway.sim.bluez_peripheral import CharSpec, VirtualPeripheral

if TYPE_CHECKING:
    from gateway.sim.bluez import VirtualBluez

_LOGGER = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ADAPTER1 = "org.bluez.Adapter1"
DEVICE1 = "org.bluez.Device1"
MONITOR_MANAGER1 = "org.bluez.AdvertisementMonitorManager1"
GATT_SERVICE1 = "org.bluez.GattService1"
GATT_CHARACTERISTIC1 = "org.bluez.GattCharacteristic1"
GATT_DESCRIPTOR1 = "org.bluez.GattDescriptor1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"

StrList = Annotated[list[str], DBusSignature("as")]
Int16 = Annotated[int, DBusSignature("n")]
ManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]


class BluezObject(ServiceInterface):
    """An exported BlueZ interface whose properties live in one dict, signalled on change.

    A declared property whose name is missing from `props` is not exported at all, the way
    bluetoothd leaves out what it does not know (a Device1 without a name has no Name)."""

    def __init__(self, name: str, path: str, props: dict[str, Any]) -> None:
        super().__init__(name)
        self.path = path
        self.props = props
        # dbus-fast declares properties per class; its per-instance list (the one GetAll,
        # InterfacesAdded and PropertiesChanged read) is filtered to hide the absent ones.
        self._declared = list(ServiceInterface._get_properties(self))
        self._show_present()

    def _show_present(self) -> None:
        ServiceInterface._get_properties(self)[:] = [
            prop for prop in self._declared if prop.name in self.props
        ]

    def update(self, *, force: bool = False, **changes: Any) -> None:
        """Set properties (None removes one: PropertiesChanged lists it as invalidated)."""
        # bluetoothd signals only properties whose value changed.
        changed = {
            k: v for k, v in changes.items() if v is not None and (force or self.props.get(k) != v)
        }
        invalidated = [k for k, v in changes.items() if v is None and k in self.props]
        if not changed and not invalidated:
            return
        self.props.update(changed)
        for name in invalidated:
            del self.props[name]
        self._show_present()
        self.emit_properties_changed(changed, invalidated)


class Adapter(BluezObject):
    def __init__(self, owner: "VirtualBluez", path: str, address: str) -> None:
        super().__init__(
            ADAPTER1,
            path,
            {
                "Address": address,
                "AddressType": "public",
                "Name": "rtm-virtual",
                "Alias": "rtm-virtual",
                "Powered": True,
                "PowerState": "on",
                "Discoverable": False,
                "Pairable": True,
                "Discovering": False,
                "UUIDs": [],
                "Roles": ["central", "peripheral"],
            },
        )
        self._owner = owner

    # StartDiscovery and StopDiscovery are answered by VirtualBluez, which sees the caller's
    # bus name (sessions are per client); these declarations are for introspection.
    @dbus_method()
    def StartDiscovery(self) -> None:
        raise DBusError("org.bluez.Error.Failed", "not reached")

    @dbus_method()
    def StopDiscovery(self) -> None:
        raise DBusError("org.bluez.Error.Failed", "not reached")

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict) -> None:
        if not self.props["Powered"]:
            raise DBusError("org.bluez.Error.NotReady", "Resource Not Ready")
        unknown = set(properties) - {
            "UUIDs",
            "RSSI",
            "Pathloss",
            "Transport",
            "DuplicateData",
            "Discoverable",
            "Pattern",
        }
        if unknown:
            raise DBusError("org.bluez.Error.InvalidArguments", "Invalid arguments in method call")

    @dbus_method()
    def RemoveDevice(self, device: DBusObjectPath) -> None:
        if not self._owner.remove_device(device):
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
        self._owner.set_powered(value)

    @dbus_property(PropertyAccess.READ)
    def PowerState(self) -> Str:
        return str(self.props["PowerState"])

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


class MonitorManager(BluezObject):
    """AdvertisementMonitorManager1 (bluetoothd --experimental) on the adapter's path."""

    def __init__(self, path: str) -> None:
        super().__init__(
            MONITOR_MANAGER1,
            path,
            {"SupportedMonitorTypes": ["or_patterns"], "SupportedFeatures": []},
        )

    # Answered by VirtualBluez, which needs the caller's bus name to read its monitor objects.
    @dbus_method()
    def RegisterMonitor(self, application: DBusObjectPath) -> None:
        raise DBusError("org.bluez.Error.Failed", "not reached")

    @dbus_method()
    def UnregisterMonitor(self, application: DBusObjectPath) -> None:
        raise DBusError("org.bluez.Error.Failed", "not reached")

    @dbus_property(PropertyAccess.READ)
    def SupportedMonitorTypes(self) -> StrList:
        return list(self.props["SupportedMonitorTypes"])

    @dbus_property(PropertyAccess.READ)
    def SupportedFeatures(self) -> StrList:
        return list(self.props["SupportedFeatures"])


class Device(BluezObject):
    """Device1. Advertised properties merge as bluetoothd merges them: a name, once heard, is
    kept; manufacturer data, service data and UUIDs update per key and are never dropped.
    Name, ManufacturerData, ServiceData and UUIDs are absent until heard."""

    def __init__(
        self, owner: "VirtualBluez", peripheral: VirtualPeripheral, path: str, adapter: str
    ) -> None:
        super().__init__(
            DEVICE1,
            path,
            {
                "Address": peripheral.address,
                "AddressType": peripheral.address_type,
                "Alias": peripheral.address.replace(":", "-"),
                "Paired": False,
                "Bonded": False,
                "Trusted": False,
                "Blocked": False,
                "LegacyPairing": False,
                "Connected": False,
                "Adapter": adapter,
                "ServicesResolved": False,
            },
        )
        self._owner = owner
        self.peripheral = peripheral
        self.props.update(self.heard(peripheral.rssi))
        self._show_present()

    def heard(self, rssi: int) -> dict[str, Any]:
        """The properties after hearing the peripheral's current advertisement at `rssi`."""
        peripheral = self.peripheral
        heard: dict[str, Any] = {"RSSI": rssi}
        if peripheral.name is not None:
            heard["Name"] = heard["Alias"] = peripheral.name
        manufacturer = dict(self.props.get("ManufacturerData", {}))
        manufacturer.update(
            {k: Variant("ay", bytes(v)) for k, v in peripheral.manufacturer_data.items()}
        )
        if manufacturer:
            heard["ManufacturerData"] = manufacturer
        service_data = dict(self.props.get("ServiceData", {}))
        service_data.update(
            {k: Variant("ay", bytes(v)) for k, v in peripheral.service_data.items()}
        )
        if service_data:
            heard["ServiceData"] = service_data
        uuids = list(self.props.get("UUIDs", []))
        uuids += [u for u in peripheral.service_uuids if u not in uuids]
        if uuids:
            heard["UUIDs"] = uuids
        return heard

    @dbus_method()
    async def Connect(self) -> None:
        await self._owner.connect(self)

    @dbus_method()
    async def Disconnect(self) -> None:
        self._owner.disconnect(self)

    @dbus_method()
    async def Pair(self) -> None:
        if self.props["Paired"]:
            raise DBusError("org.bluez.Error.AlreadyExists", "Already Exists")
        await self._owner.connect(self)
        self.update(Paired=True, Bonded=True)

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


class GattService(BluezObject):
    def __init__(self, path: str, uuid: str, device: str, *, handle: int) -> None:
        super().__init__(
            GATT_SERVICE1, path, {"Handle": handle, "UUID": uuid, "Primary": True, "Device": device}
        )

    @dbus_property(PropertyAccess.READ)
    def Handle(self) -> UInt16:
        return int(self.props["Handle"])

    @dbus_property(PropertyAccess.READ)
    def UUID(self) -> Str:
        return str(self.props["UUID"])

    @dbus_property(PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return bool(self.props["Primary"])

    @dbus_property(PropertyAccess.READ)
    def Device(self) -> DBusObjectPath:
        return str(self.props["Device"])


class GattCharacteristic(BluezObject):
    def __init__(
        self,
        path: str,
        uuid: str,
        service: str,
        *,
        handle: int,
        spec: CharSpec,
        peripheral: VirtualPeripheral,
    ) -> None:
        super().__init__(
            GATT_CHARACTERISTIC1,
            path,
            {
                "Handle": handle,
                "UUID": uuid,
                "Service": service,
                "Value": spec.value,
                "Notifying": False,
                "Flags": list(spec.flags),
            },
        )
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
    def Handle(self) -> UInt16:
        return int(self.props["Handle"])

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


class GattDescriptor(BluezObject):
    def __init__(self, path: str, uuid: str, characteristic: str, *, handle: int) -> None:
        super().__init__(
            GATT_DESCRIPTOR1,
            path,
            {
                "Handle": handle,
                "UUID": uuid,
                "Characteristic": characteristic,
                "Value": b"\x00\x00",
            },
        )

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
    def Handle(self) -> UInt16:
        return int(self.props["Handle"])

    @dbus_property(PropertyAccess.READ)
    def UUID(self) -> Str:
        return str(self.props["UUID"])

    @dbus_property(PropertyAccess.READ)
    def Characteristic(self) -> DBusObjectPath:
        return str(self.props["Characteristic"])

    @dbus_property(PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return bytes(self.props["Value"])


def gatt_objects(device: Device) -> Iterator[BluezObject]:
    """GATT objects in the order bluetoothd exports them, with an ATT handle layout a real
    server has: service declaration, then per characteristic its declaration (the handle in
    the path and in Handle), its value (declaration + 1), then its CCCD."""
    handles = itertools.count(1)
    for service_uuid, chars in device.peripheral.services.items():
        handle = next(handles)
        service_path = f"{device.path}/service{handle:04x}"
        yield GattService(service_path, service_uuid, device.path, handle=handle)
        for char_uuid, spec in chars.items():
            handle = next(handles)
            next(handles)  # the value attribute: no object of its own
            char_path = f"{service_path}/char{handle:04x}"
            yield GattCharacteristic(
                char_path,
                char_uuid,
                service_path,
                handle=handle,
                spec=spec,
                peripheral=device.peripheral,
            )
            if {"notify", "indicate"} & set(spec.flags):
                handle = next(handles)
                yield GattDescriptor(
                    f"{char_path}/desc{handle:04x}", CCCD_UUID, char_path, handle=handle
                )


class BluezBus(MessageBus):
    """bluetoothd emits InterfacesAdded/Removed from `/`; dbus-fast would use the object's path."""

    # dbus-fast's asyncio bus returns a Future here; its base class declares None.
    def send(self, msg: Message) -> "asyncio.Future[None]":  # type: ignore[override]
        if self.connected:
            return super().send(msg)
        # Once bluetoothd is gone it sends nothing: an answer still pending when it crashed (a
        # Connect waiting out its delay) is dropped, and the caller gets NoReply from the bus.
        dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        dropped.set_result(None)
        return dropped

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        def send(iface: ServiceInterface, values: Any, _data: Any, exc: Exception | None) -> None:
            if exc is not None:
                _LOGGER.error("cannot read properties of %s at %s: %s", iface.name, path, exc)
                return
            self.send(
                Message.new_signal(
                    "/",
                    OBJECT_MANAGER,
                    "InterfacesAdded",
                    "oa{sa{sv}}",
                    [path, {iface.name: values}],
                )
            )

        if self.connected:
            ServiceInterface._get_all_property_values(interface, send)

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if self.connected:
            self.send(
                Message.new_signal(
                    "/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, removed_interfaces]
                )
            )
