"""One bluetoothd lifetime of the virtual BlueZ: `BluezDaemon`, its bus connection owning
`org.bluez`, the adapter objects it exports, its clients' discovery sessions and advertisement
monitors, and the calls whose answer depends on who calls (StartDiscovery, StopDiscovery,
RegisterMonitor, UnregisterMonitor: dbus-fast's method handlers cannot see the caller).

`VirtualBluez` (`gateway.sim.bluez_service`) starts one per `start_daemon` and closes it on
`stop_daemon`; a restart is a new `BluezDaemon`, as a new bluetoothd process is.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from dbus_fast import DBusError, Message, MessageType

from gateway.sim.bluez_adapter import Adapter, MonitorManager
from gateway.sim.bluez_monitor import Monitors
from gateway.sim.bluez_objects import ADAPTER1, BLUEZ, MONITOR_MANAGER1, OBJECT_MANAGER, BluezBus

if TYPE_CHECKING:
    from gateway.sim.bluez_service import VirtualBluez

CALL_TIMEOUT = 5.0
NOT_READY = ("org.bluez.Error.NotReady", "Resource Not Ready")
# Signals bluetoothd listens to: clients leaving the bus (sessions and monitors end with them).
_NAME_OWNER_CHANGED = "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"


class BluezDaemon:
    """One bluetoothd process: made by `start`, ended by `release` (graceful exit only) and
    `close`. Use it on the service's event loop."""

    def __init__(
        self, owner: VirtualBluez, bus: BluezBus, adapter: Adapter, monitors: Monitors
    ) -> None:
        self._owner = owner
        self.bus = bus
        self.adapter = adapter
        self.monitors = monitors
        self.discovery_clients: set[str] = set()
        self._closed = False

    @classmethod
    async def start(
        cls, owner: VirtualBluez, bus_address: str, adapter_path: str, address: str
    ) -> BluezDaemon:
        """A new bus connection owns `org.bluez`, then the adapter appears."""
        bus = BluezBus(bus_address=bus_address)
        try:
            await asyncio.wait_for(bus.connect(), CALL_TIMEOUT)
            daemon = cls(owner, bus, Adapter(owner, adapter_path, address), Monitors(bus))
            bus.add_message_handler(daemon._on_message)
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
            bus.disconnect()
            raise
        bus.export(adapter_path, daemon.adapter)
        bus.export(adapter_path, MonitorManager(adapter_path))
        return daemon

    @property
    def powered(self) -> bool:
        return bool(self.adapter.props["Powered"])

    @property
    def discovering(self) -> bool:
        return bool(self.adapter.props["Discovering"])

    def end_discovery(self) -> None:
        """Every client's discovery session ends (the adapter powers off)."""
        self.discovery_clients.clear()
        self.adapter.update(Discovering=False)

    async def release(self) -> None:
        """The end of a graceful exit, once the devices are gone: the adapter leaves the bus,
        then the name is released. The reply also proves every signal before it has left."""
        self.bus.unexport(self.adapter.path)
        await asyncio.wait_for(self.bus.release_name(BLUEZ), CALL_TIMEOUT)

    async def close(self) -> None:
        """The process is gone: its monitors end and its bus connection closes."""
        self._closed = True
        await self.monitors.close()
        self.bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.bus.wait_for_disconnect(), CALL_TIMEOUT)  # type: ignore[no-untyped-call]

    def _on_message(self, msg: Message) -> Message | bool:
        if self._closed:
            return False
        if msg.message_type is MessageType.SIGNAL:
            self._on_signal(msg)
            return False
        if (
            msg.message_type is not MessageType.METHOD_CALL
            or msg.path != self.adapter.path
            or msg.sender is None
        ):
            return False
        if msg.interface == ADAPTER1 and msg.member in ("StartDiscovery", "StopDiscovery"):
            self._on_discovery_call(msg.member, msg.sender)
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
                self.monitors.register(msg.sender, msg.body[0])
            else:
                self.monitors.unregister(msg.sender, msg.body[0])
                self._owner.scanner_muted = False
            return Message.new_method_return(msg)
        return False

    def _on_discovery_call(self, member: str, sender: str) -> None:
        if not self.powered:
            raise DBusError(*NOT_READY)
        if member == "StartDiscovery":
            if sender in self.discovery_clients:
                raise DBusError("org.bluez.Error.InProgress", "Operation already in progress")
            self.discovery_clients.add(sender)
            self.adapter.update(Discovering=True)
            return
        if sender not in self.discovery_clients:
            raise DBusError("org.bluez.Error.Failed", "No discovery started")
        # Stopping restarts the controller's scan with the remaining sessions' filter, which
        # is what unwedges a muted scanner.
        self._owner.scanner_muted = False
        self._stop_discovery(sender)

    def _on_signal(self, msg: Message) -> None:
        if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
            name, _old, new = msg.body
            if not new:
                if name in self.discovery_clients:
                    self._stop_discovery(name)
                self.monitors.forget_owner(name)
        elif msg.interface == OBJECT_MANAGER and msg.sender != self.bus.unique_name:
            self.monitors.handle_signal(msg)

    def _stop_discovery(self, client: str) -> None:
        self.discovery_clients.discard(client)
        if not self.discovery_clients:
            self.adapter.update(Discovering=False)
