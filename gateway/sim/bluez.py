"""A virtual BlueZ on a private D-Bus bus, for running the real bleak without a radio.

What lives here: `BluezThread`, the virtual BlueZ on its own event loop in a background thread
(bleak runs in the caller's loop), with the public names of the peripherals it hosts
(`VirtualPeripheral`, `CharSpec`, `VirtualBluezError`, from `gateway.sim.bluez_peripheral`); and
below, the model the whole virtual BlueZ follows. Its parts: the service, `VirtualBluez`
(`gateway.sim.bluez_service`); one bluetoothd lifetime, its bus and the calls answered per
client (`gateway.sim.bluez_daemon`); the D-Bus objects (`gateway.sim.bluez_objects`,
`bluez_adapter`, `bluez_device`, `bluez_gatt`); advertisement monitors
(`gateway.sim.bluez_monitor`); the bus comes from `gateway.sim.dbus_bus`. Nothing here imports
bleak or the gateway.

Modelled on bluetoothd 5.66 (Debian's real `bluetoothctl` drives it too, see
tests/test_bluetoothctl.py):

- Discovery sessions per client: a second StartDiscovery from one client is InProgress, a
  StopDiscovery without one is Failed "No discovery started", a client leaving the bus ends its
  session. Devices appear only when they advertise during a discovery (or match a monitor);
  each advertising tick changes RSSI, so PropertiesChanged keeps firing. Heard data merges into
  Device1 as bluetoothd merges it (a name is kept once heard; manufacturer data, service data
  and UUIDs update per key and are never dropped); properties never heard are absent.
- Connect sets Connected, exports the GATT objects (paths and Handle with a real server's
  handle layout), then ServicesResolved; Disconnect and link loss do the reverse; notifications
  are PropertiesChanged on `Value`. At most `max_connections` links at once (default 5, like
  typical controllers); one more Connect fails with Failed "No available connection slots".
- Adapter power: Powered is writable over D-Bus, or `set_powered`. Off: links drop, discovery
  sessions end, Discovering is False, StartDiscovery, StopDiscovery, SetDiscoveryFilter,
  Connect and RemoveDevice fail with NotReady. Device objects stay.
- bluetoothd exiting and starting again (`stop_daemon`, `start_daemon`): a graceful exit powers
  the adapter off, removes every object (InterfacesRemoved), releases `org.bluez` and leaves the
  bus; `graceful=False` is a crash: the bus only reports NameOwnerChanged. A start is a new
  process: a new bus connection owning the name, the adapter powered, no devices until they
  advertise during a discovery again, no sessions, no monitors.
- Pairing state: Device1 `Paired` and `Bonded` start from `VirtualPeripheral.bonded` (bluetoothd
  holds the device's keys); `Pair()` bonds; `set_bond(peripheral, paired=..., bonded=...)` sets
  them live (PropertiesChanged); a link that ends clears `Paired` unless `Bonded`, and
  RemoveDevice forgets the bond, as bluetoothd does. Link encryption itself is not modelled.
- Passive scanning (bluetoothd --experimental): `org.bluez.AdvertisementMonitorManager1` with
  "or_patterns" monitors, see `gateway.sim.bluez_monitor`. Monitors need no discovery:
  Discovering stays False.

Not modelled: AcquireNotify/AcquireWrite, pairing agents (no AgentManager1), monitor RSSI
thresholds and lost timeouts, expiry of temporary devices, UUIDs from service resolution,
BR/EDR, more than one adapter, ATT timing.

Fault injection, modelled on bluetoothd:

- `VirtualPeripheral.fail_connects(count, error, message)`: the next `count` Connect calls fail
  with that D-Bus error. For `le-connection-abort-by-local` (the default) Connected goes True then
  False before the error, as BlueZ >= 5.62 does, so bleak retries it inside `connect()`; any other
  message (e.g. "No available connection slots") fails without touching Connected, and bleak
  raises it as `BleakDBusError`. `VirtualPeripheral.connect_calls` counts Connect calls.
- `VirtualPeripheral.connect_delay`: seconds before Connect answers. A Disconnect meanwhile (what
  bleak sends when its connect times out) cancels it with `le-connection-abort-by-local`.
- `drop_link(peripheral)`: link loss of a connected peripheral: ServicesResolved False, GATT
  objects removed, Connected False.
- `vanish(peripheral)`: the peripheral stops advertising and its Device1 object is removed
  (InterfacesRemoved), dropping the link first if connected; `add` it again to bring it back.
- `set_advertisement(peripheral, name=..., manufacturer_data=..., ...)`: the peripheral
  advertises something else from its next tick on (only the arguments given change).
- `mute_scanner()`: a wedged controller scan: Discovering stays True but nothing is heard
  until a StopDiscovery (any client; a new StartDiscovery then scans again), an
  UnregisterMonitor, a power cycle or a bluetoothd restart.
- `set_powered`, `stop_daemon`, `start_daemon` (and `BluezThread.restart_daemon`) above;
  `max_connections` when constructing or starting.

All of these exist on `VirtualBluez` (call them on its loop, `BluezThread.loop`) and on
`BluezThread` (async, from any loop). `connect_delay` and `fail_connects` are plain data read
when Connect arrives, so a test may set them from its own thread. Simulated devices may ask
`VirtualBluez.link_state(peripheral)` whether a central is connected and listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from gateway.sim.bluez_daemon import CALL_TIMEOUT
from gateway.sim.bluez_peripheral import (
    ABORT_BY_LOCAL,
    CharSpec,
    VirtualBluezError,
    VirtualPeripheral,
)
from gateway.sim.bluez_service import DEFAULT_MAX_CONNECTIONS, VirtualBluez

__all__ = [
    "ABORT_BY_LOCAL",
    "BluezThread",
    "CharSpec",
    "VirtualBluezError",
    "VirtualPeripheral",
]

_T = TypeVar("_T")


class BluezThread:
    """A `VirtualBluez` on its own event loop in a daemon thread; call `stop()` when done.

    Every async method runs the `VirtualBluez` method of the same name on the service's loop.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, bluez: VirtualBluez
    ) -> None:
        self._loop = loop
        self._thread = thread
        self.bluez = bluez

    @classmethod
    def start(
        cls, bus_address: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> BluezThread:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="virtual-bluez", daemon=True)
        thread.start()
        try:
            bluez = asyncio.run_coroutine_threadsafe(
                VirtualBluez.start(bus_address, max_connections=max_connections), loop
            ).result(CALL_TIMEOUT * 2)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(loop, thread, bluez)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The service's event loop: run code that touches `bluez` or peripherals there."""
        return self._loop

    async def add_peripheral(self, peripheral: VirtualPeripheral) -> None:
        await self._run(lambda: self.bluez.add(peripheral))

    async def notify(self, peripheral: VirtualPeripheral, char_uuid: str, data: bytes) -> None:
        await self._call(peripheral.notify(char_uuid, data))

    async def drop_link(self, peripheral: VirtualPeripheral) -> None:
        await self._run(lambda: self.bluez.drop_link(peripheral))

    async def vanish(self, peripheral: VirtualPeripheral) -> None:
        await self._call(self.bluez.vanish(peripheral))

    async def set_bond(self, peripheral: VirtualPeripheral, *, paired: bool, bonded: bool) -> None:
        await self._run(lambda: self.bluez.set_bond(peripheral, paired=paired, bonded=bonded))

    async def set_powered(self, powered: bool) -> None:
        await self._run(lambda: self.bluez.set_powered(powered))

    async def stop_daemon(self, *, graceful: bool = True) -> None:
        await self._call(self.bluez.stop_daemon(graceful=graceful))

    async def start_daemon(self) -> None:
        await self._call(self.bluez.start_daemon())

    async def restart_daemon(self, down_seconds: float = 0.0, *, graceful: bool = True) -> None:
        """`stop_daemon`, `down_seconds` without bluetoothd, then `start_daemon`."""
        await self.stop_daemon(graceful=graceful)
        await asyncio.sleep(down_seconds)
        await self.start_daemon()

    async def set_advertisement(
        self,
        peripheral: VirtualPeripheral,
        *,
        name: str | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        service_data: Mapping[str, bytes] | None = None,
        service_uuids: Sequence[str] | None = None,
        rssi: int | None = None,
    ) -> None:
        await self._run(
            lambda: self.bluez.set_advertisement(
                peripheral,
                name=name,
                manufacturer_data=manufacturer_data,
                service_data=service_data,
                service_uuids=service_uuids,
                rssi=rssi,
            )
        )

    async def mute_scanner(self) -> None:
        await self._run(self.bluez.mute_scanner)

    def stop(self) -> None:
        """Close the service, then end whatever else runs on its loop (simulated devices
        started on it, say) so that nothing is left pending when the loop closes."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.bluez.close(), self._loop).result(
                CALL_TIMEOUT * 2
            )
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(CALL_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT)
        self._loop.close()

    async def _run(self, fn: Callable[[], _T]) -> _T:
        async def call() -> _T:
            return fn()

        return await self._call(call())

    async def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), CALL_TIMEOUT)


async def _cancel_others() -> None:
    """Cancel every task on the running loop but this one, and wait for them to end."""
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
