"""The common part of the virtual BlueZ's D-Bus objects: the interface names, `BluezObject`
(an exported interface whose properties live in one dict, signalled on change) and `BluezBus`,
the connection that emits InterfacesAdded/Removed from `/` as bluetoothd does.

The objects themselves, shaped like bluetoothd 5.66's, are per interface: the adapter's in
`gateway.sim.bluez_adapter`, Device1 in `gateway.sim.bluez_device`, the GATT client objects in
`gateway.sim.bluez_gatt`. They hold properties and answer calls; what a call does to the rest
of the service is `VirtualBluez`'s (`gateway.sim.bluez_service`).
"""

# No `from __future__ import annotations`: dbus-fast reads these annotations at import time,
# and would take a postponed `-> None` for a D-Bus signature.
import asyncio
import logging
import socket
from typing import Annotated, Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface

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


class _PatientSocket:
    """The bus socket as bluetoothd treats it: when its send buffer is full (a burst of
    notifications), the write waits for the socket to drain. dbus-fast 5.2's writer takes the
    EAGAIN of its non-blocking send as a broken connection and drops the bus; reporting "nothing
    written" instead makes it wait for the socket to become writable, as it does for a short
    write."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: memoryview) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def sendmsg(self, buffers: list[memoryview], ancdata: list[Any]) -> int:
        try:
            return self._sock.sendmsg(buffers, ancdata)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BluezBus(MessageBus):
    """bluetoothd emits InterfacesAdded/Removed from `/`; dbus-fast would use the object's path."""

    async def connect(self) -> "BluezBus":
        await super().connect()
        writer = self._writer
        if writer is not None and writer.sock is not None:
            writer.sock = _PatientSocket(writer.sock)  # type: ignore[assignment]
        return self

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
