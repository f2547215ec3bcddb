"""What a BLE session does on every device beside its driver's profile, once per connection:
set the device's clock from the hub's (`set_clock`) and read its battery (`read_battery`), with
the companion services the app hands in (`Companions`); and `gatt_call`, how any GATT operation
is awaited (a failure while connected is the link's end, not a crash). What may not: the
driver's own characteristics or stored records (sessions/ble.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import TypeVar

from gateway.hub.clock import HubClock
from gateway.sdk import GattDecoder
from gateway.sessions.ble_ports import Companions, Link
from gateway.sessions.core import DeviceUnavailable, ReadingPath

log = logging.getLogger(__name__)
_T = TypeVar("_T")


async def gatt_call(operation: Awaitable[_T], link: Link) -> _T:
    """Await a GATT operation; a failure while connected is the link's end, not a crash."""
    try:
        return await operation
    except (TimeoutError, OSError, EOFError) as exc:
        raise DeviceUnavailable(f"GATT operation failed: {exc or type(exc).__name__}") from exc
    except Exception as exc:  # bleak's errors (BleakError, BleakDBusError)
        if link.lost.is_set():
            raise DeviceUnavailable(link.lost_reason or "link lost") from exc
        raise DeviceUnavailable(f"GATT operation failed: {exc}") from exc


async def set_clock(
    device_id: str, link: Link, companions: Companions, hub_clock: Callable[[], HubClock]
) -> None:
    """Give the device the hub's time, only while the hub's clock is synchronised."""
    clock = companions.clock
    if clock is None or not link.has(clock[0], "write") or hub_clock() != "synced":
        return
    uuid, encode = clock
    try:
        await gatt_call(link.write(uuid, encode(datetime.now().astimezone())), link)
        log.info("device %s: clock set from the hub", device_id)
    except DeviceUnavailable as exc:
        if link.lost.is_set():
            raise
        log.warning("device %s: it refused the current time (%s)", device_id, exc)


async def read_battery(link: Link, path: ReadingPath[GattDecoder], companions: Companions) -> None:
    """Read the battery's readable characteristics and sign what they decode to, under the
    battery driver's identity (the device's own identity otherwise)."""
    battery = companions.battery
    if battery is None:
        return
    identity = dict(path.identity, driver=battery.info.id, driver_version=battery.info.version)
    for char in battery.info.characteristics:
        if char.mode != "read" or not link.has(char.uuid, "read"):
            continue
        data = await gatt_call(link.read(char.uuid), link)
        decoder = battery.gatt_decoder({})
        for reading in path.decode_once(partial(decoder.value, char.uuid, data), battery.info.id):
            path.submit(reading, identity)
