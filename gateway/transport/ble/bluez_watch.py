"""Watching bluetoothd over the system D-Bus, beside bleak, for the scanner and the connector.

What lives here: `BluezWatch` (tells listeners when the owner of `org.bluez` changes, that is
when bluetoothd goes away or comes back), `AdapterProbe` (reads whether the adapter is powered
and discovering, and power-cycles it) and `reset_bleak` (makes bleak forget what a dead
bluetoothd told it). What may not: scanning or connecting; those are `scanner` and `connector`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from gateway.transport.ble.errors import BleUnavailable

log = logging.getLogger(__name__)


async def _close_bus(bus: Any) -> None:
    """Disconnect and wait until dbus-fast has closed the socket (it closes it later)."""
    bus.disconnect()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await bus.wait_for_disconnect()


def reset_bleak() -> None:
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
                reset_bleak()
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
