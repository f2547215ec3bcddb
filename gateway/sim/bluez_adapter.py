"""The virtual BlueZ's adapter objects on `/org/bluez/hci0`, shaped like bluetoothd 5.66's:
`org.bluez.Adapter1` and `org.bluez.AdvertisementMonitorManager1`.

They hold properties and answer calls; what a call does to the rest of the service (discovery
sessions, monitors, power) is `VirtualBluez`'s (`gateway.sim.bluez_service`), reached through
`owner`, or `BluezDaemon`'s (`gateway.sim.bluez_daemon`) for calls answered per caller.
"""

# No `from __future__ import annotations`: dbus-fast reads these annotations at import time,
# and would take a postponed `-> None` for a D-Bus signature.
from typing import TYPE_CHECKING

from dbus_fast import DBusError
from dbus_fast.annotations import DBusBool, DBusDict, DBusObjectPath
from dbus_fast.annotations import DBusStr as Str
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import dbus_method, dbus_property

from gateway.sim.bluez_objects import ADAPTER1, MONITOR_MANAGER1, BluezObject, StrList

if TYPE_CHECKING:
    from gateway.sim.bluez_service import VirtualBluez


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
