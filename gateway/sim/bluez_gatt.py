"""The virtual BlueZ's GATT client objects of a connected device, shaped like bluetoothd
5.66's: `org.bluez.GattService1`, `GattCharacteristic1` and `GattDescriptor1`, and
`gatt_objects`, which lays them out with a real server's ATT handles.
"""

# No `from __future__ import annotations`: dbus-fast reads these annotations at import time,
# and would take a postponed `-> None` for a D-Bus signature.
import itertools
from collections.abc import Iterator

from dbus_fast import DBusError
from dbus_fast.annotations import DBusBool, DBusBytes, DBusDict, DBusObjectPath
from dbus_fast.annotations import DBusStr as Str
from dbus_fast.annotations import DBusUInt16 as UInt16
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import dbus_method, dbus_property

from gateway.sim.bluez_device import Device
from gateway.sim.bluez_objects import (
    CCCD_UUID,
    GATT_CHARACTERISTIC1,
    GATT_DESCRIPTOR1,
    GATT_SERVICE1,
    BluezObject,
    StrList,
)
from gateway.sim.bluez_peripheral import CharSpec, VirtualPeripheral


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
