"""Advertisement monitors (passive scanning) for the virtual BlueZ, run the way bluetoothd 5.66
with `--experimental` runs them: `Monitors` holds what clients registered through
`org.bluez.AdvertisementMonitorManager1.RegisterMonitor(root)`.

On RegisterMonitor bluetoothd reads the client's ObjectManager at `root` (GetManagedObjects,
then InterfacesAdded/Removed as the client exports or drops objects), validates each
`org.bluez.AdvertisementMonitor1` it finds (Type "or_patterns", Patterns `a(yyay)`), calls its
`Activate()` (or `Release()` when invalid), and from then on calls `DeviceFound(device)` once per
device whose advertisement matches any of the monitor's patterns (start position, AD type,
bytes; matched against the AD structures of `bluez_peripheral.advertising_data`).
RSSI thresholds and DeviceLost timeouts are not modelled; DeviceLost is called when a device
object is removed. Calls to the client expect no reply, as bluetoothd's do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

_LOGGER = logging.getLogger(__name__)

MONITOR1 = "org.bluez.AdvertisementMonitor1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
CALL_TIMEOUT = 5.0
# bluetoothd's limits for a pattern (adv_monitor.c): legacy advertising data is 31 bytes, and
# the AD type must be a known one (up to 3D Information Data) or manufacturer data.
_AD_MAX_LEN = 31
_AD_TYPE_LAST_KNOWN = 0x3D
_AD_MANUFACTURER_DATA = 0xFF

Pattern = tuple[int, int, bytes]
"""(start position in the AD structure's data, AD type, bytes that must be there), in the order
of BlueZ's `Patterns` property."""


def parse_patterns(value: Any) -> list[Pattern] | None:
    """The monitor's `Patterns` as bluetoothd accepts them, or None if it would reject them."""
    if not isinstance(value, list) or not value:
        return None
    patterns: list[Pattern] = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 3:
            return None
        offset, ad_type, content = int(item[0]), int(item[1]), bytes(item[2])
        if not (0 < ad_type <= _AD_TYPE_LAST_KNOWN or ad_type == _AD_MANUFACTURER_DATA):
            return None
        if not content or offset + len(content) > _AD_MAX_LEN:
            return None
        patterns.append((offset, ad_type, content))
    return patterns


def matches(patterns: Iterable[Pattern], structures: Sequence[tuple[int, bytes]]) -> bool:
    """Whether any pattern is found in the AD structures (type, data), as bluetoothd matches."""
    return any(
        ad_type == pattern_type and data[offset : offset + len(content)] == content
        for offset, pattern_type, content in patterns
        for ad_type, data in structures
    )


@dataclass(eq=False, slots=True)
class Monitor:
    owner: str
    path: str
    patterns: list[Pattern]
    found: set[str] = field(default_factory=set)
    """Device paths already reported with DeviceFound."""


@dataclass(eq=False, slots=True)
class _App:
    owner: str
    root: str
    monitors: dict[str, Monitor] = field(default_factory=dict)

    def holds(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root.rstrip("/") + "/")


class Monitors:
    """The registered monitor applications of one bluetoothd lifetime (one bus connection).

    The owning service must have a match rule for ObjectManager signals and pass them to
    `handle_signal`, and call `forget_owner` when a client leaves the bus."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._apps: list[_App] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._watched: set[str] = set()

    @property
    def active(self) -> list[Monitor]:
        return [m for app in self._apps for m in app.monitors.values()]

    def register(self, owner: str, root: str) -> None:
        """RegisterMonitor from `owner`: answer now, read its objects in the background."""
        if any(a.owner == owner and a.root == root for a in self._apps):
            raise DBusError("org.bluez.Error.AlreadyExists", "Already Exists")
        app = _App(owner, root)
        self._apps.append(app)
        self._watch(owner)
        task = asyncio.create_task(self._load(app))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def unregister(self, owner: str, root: str) -> None:
        for app in self._apps:
            if app.owner == owner and app.root == root:
                self._apps.remove(app)
                return
        raise DBusError("org.bluez.Error.DoesNotExist", "Does Not Exist")

    def forget_owner(self, owner: str) -> None:
        """The client left the bus: its monitors go with it (nobody left to tell)."""
        self._apps = [a for a in self._apps if a.owner != owner]
        if owner in self._watched:
            self._watched.discard(owner)
            self._bus_driver("RemoveMatch", owner)

    def handle_signal(self, msg: Message) -> None:
        """InterfacesAdded/Removed from a registered client: monitors come and go with them."""
        if msg.interface != OBJECT_MANAGER or not msg.body:
            return
        path = msg.body[0]
        for app in self._apps:
            if app.owner != msg.sender or not app.holds(path):
                continue
            if msg.member == "InterfacesAdded" and MONITOR1 in msg.body[1]:
                self._add(app, path, msg.body[1][MONITOR1])
            elif msg.member == "InterfacesRemoved" and MONITOR1 in msg.body[1]:
                app.monitors.pop(path, None)

    def matching(self, structures: Sequence[tuple[int, bytes]]) -> list[Monitor]:
        return [m for m in self.active if matches(m.patterns, structures)]

    def report_found(self, monitors: Iterable[Monitor], device_path: str) -> None:
        for monitor in monitors:
            if device_path not in monitor.found:
                monitor.found.add(device_path)
                self._notify(monitor, "DeviceFound", device_path)

    def report_lost(self, device_path: str) -> None:
        for monitor in self.active:
            if device_path in monitor.found:
                monitor.found.discard(device_path)
                self._notify(monitor, "DeviceLost", device_path)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._apps.clear()
        self._watched.clear()

    def _watch(self, owner: str) -> None:
        """Subscribe to the client's ObjectManager signals before RegisterMonitor is answered,
        as bluetoothd's GDBusClient does: the bus applies the rule before it passes the reply
        on, so a monitor the client exports on getting the reply (bleak does) is not missed.
        GetManagedObjects would not list it: it lists only objects below the path asked."""
        if owner not in self._watched:
            self._watched.add(owner)
            self._bus_driver("AddMatch", owner)

    def _bus_driver(self, member: str, owner: str) -> None:
        if self._bus.connected:
            self._bus.send(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member=member,
                    signature="s",
                    body=[f"type='signal',sender='{owner}',interface='{OBJECT_MANAGER}'"],
                    flags=MessageFlag.NO_REPLY_EXPECTED,
                )
            )

    async def _load(self, app: _App) -> None:
        try:
            reply = await asyncio.wait_for(
                self._bus.call(
                    Message(
                        destination=app.owner,
                        path=app.root,
                        interface=OBJECT_MANAGER,
                        member="GetManagedObjects",
                    )
                ),
                CALL_TIMEOUT,
            )
        except Exception as exc:  # the bus or the client went away meanwhile
            _LOGGER.debug("cannot read monitors of %s at %s: %r", app.owner, app.root, exc)
            return
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            # Not fatal for bluetoothd either: monitors exported later still arrive as signals.
            _LOGGER.debug(
                "GetManagedObjects on %s at %s failed: %s",
                app.owner,
                app.root,
                None if reply is None else reply.body,
            )
            return
        if app not in self._apps:
            return
        for path, interfaces in reply.body[0].items():
            if MONITOR1 in interfaces and app.holds(path):
                self._add(app, path, interfaces[MONITOR1])

    def _add(self, app: _App, path: str, props: dict[str, Variant]) -> None:
        if path in app.monitors:
            return
        kind = props.get("Type")
        patterns = parse_patterns(props["Patterns"].value) if "Patterns" in props else None
        if kind is None or kind.value != "or_patterns" or patterns is None:
            self._send(app.owner, path, "Release")
            return
        monitor = Monitor(app.owner, path, patterns)
        app.monitors[path] = monitor
        self._send(app.owner, path, "Activate")

    def _notify(self, monitor: Monitor, member: str, device_path: str) -> None:
        self._send(monitor.owner, monitor.path, member, "o", [device_path])

    def _send(
        self, owner: str, path: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> None:
        if not self._bus.connected:
            return
        self._bus.send(
            Message(
                destination=owner,
                path=path,
                interface=MONITOR1,
                member=member,
                signature=signature,
                body=body or [],
                flags=MessageFlag.NO_REPLY_EXPECTED,
            )
        )
