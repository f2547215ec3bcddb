"""The virtual BlueZ's `org.bluez.Device1` objects, shaped like bluetoothd 5.66's: what a
scanner sees of a peripheral (merged as bluetoothd merges advertisements), its pairing state
(`Paired`, `Bonded`: from the peripheral's `bonded`, or set by `VirtualBluez.set_bond`), and the
Connect, Disconnect and Pair calls, which `VirtualBluez` (`gateway.sim.bluez_service`) carries
out.
"""

# No `from __future__ import annotations`: dbus-fast reads these annotations at import time,
# and would take a postponed `-> None` for a D-Bus signature.
from typing import TYPE_CHECKING, Any

from dbus_fast import DBusError, Variant
from dbus_fast.annotations import DBusBool, DBusDict, DBusObjectPath
from dbus_fast.annotations import DBusStr as Str
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import dbus_method, dbus_property

from gateway.sim.bluez_objects import DEVICE1, BluezObject, Int16, ManufacturerData, StrList
from gateway.sim.bluez_peripheral import VirtualPeripheral

if TYPE_CHECKING:
    from gateway.sim.bluez_service import VirtualBluez


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
                "Paired": peripheral.bonded,
                "Bonded": peripheral.bonded,
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
        self.peripheral.bonded = True
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
