"""What a virtual peripheral is, for the virtual BlueZ: its advertisement, its GATT table and its
fault switches (`VirtualPeripheral`, `CharSpec`), and the raw advertising data (AD structures)
a radio would carry for it, which advertisement monitors match their patterns against.

Plain data only: no D-Bus, no event loop. `gateway.sim.bluez` re-exports the public names.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.sim.bluez_service import VirtualBluez

ABORT_BY_LOCAL = "le-connection-abort-by-local"

# AD types (Bluetooth Assigned Numbers, "Common Data Types").
AD_FLAGS = 0x01
AD_UUID16_ALL = 0x03
AD_UUID32_ALL = 0x05
AD_UUID128_ALL = 0x07
AD_NAME_COMPLETE = 0x09
AD_SERVICE_DATA16 = 0x16
AD_SERVICE_DATA32 = 0x20
AD_SERVICE_DATA128 = 0x21
AD_MANUFACTURER_DATA = 0xFF
# LE General Discoverable, BR/EDR not supported: what a typical LE-only sensor advertises.
_FLAGS_LE_GENERAL = b"\x06"
_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"


class VirtualBluezError(Exception):
    """The virtual BlueZ could not start, or was used from the wrong thread or loop."""


@dataclass(frozen=True, slots=True)
class CharSpec:
    """A characteristic of a virtual peripheral: BlueZ flags ("read", "notify", ...) and value."""

    flags: tuple[str, ...]
    value: bytes = b""


@dataclass(eq=False, slots=True)
class VirtualPeripheral:
    """A device that advertises and, once connected, serves GATT. Define it, then `add` it."""

    address: str
    name: str | None = None
    services: Mapping[str, Mapping[str, CharSpec]] = field(default_factory=dict)
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)
    service_data: Mapping[str, bytes] = field(default_factory=dict)
    service_uuids: Sequence[str] = ()
    rssi: int = -60
    advertise_interval: float = 0.05
    address_type: str = "public"
    connect_delay: float = 0.0
    """Seconds before a Connect call answers (fault injection)."""
    bonded: bool = False
    """bluetoothd holds this device's keys: its Device1 shows Paired and Bonded, as after a
    `Pair()` the device accepted with bonding. RemoveDevice forgets them, as bluetoothd does."""
    writes: list[tuple[str, bytes]] = field(default_factory=list)
    """Every value a central wrote, as (characteristic UUID, bytes), oldest first."""
    on_write: Callable[[str, bytes], None] | None = None
    """Called on the service's loop after each write with (characteristic UUID, bytes): the
    peripheral's behaviour (a control point answering with indications) hangs here. It may
    raise `DBusError` to refuse the write, as a device's ATT error would."""
    connect_calls: int = field(default=0, init=False)
    """How many Connect calls reached this peripheral, failed ones included."""
    _bluez: VirtualBluez | None = None
    _connect_failures: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)

    def fail_connects(
        self, count: int, error: str = "org.bluez.Error.Failed", message: str = ABORT_BY_LOCAL
    ) -> None:
        """Make the next `count` Connect calls fail with D-Bus `error` and `message`."""
        if count < 0:
            raise ValueError("count must not be negative")
        self._connect_failures = [(error, message)] * count

    def take_connect_failure(self) -> tuple[str, str] | None:
        """The next injected Connect failure as (error, message), consuming it; None if none."""
        return self._connect_failures.pop(0) if self._connect_failures else None

    async def notify(self, char_uuid: str, data: bytes) -> None:
        """Send a notification, as the peripheral would; dropped unless connected and enabled."""
        if self._bluez is None:
            raise VirtualBluezError(f"{self.address} is not hosted by a VirtualBluez")
        self._bluez.notify(self, char_uuid, bytes(data))


def advertising_data(peripheral: VirtualPeripheral) -> list[tuple[int, bytes]]:
    """The AD structures (type, data) of one advertisement of `peripheral`, in on-air layout:
    UUIDs and service data keys little-endian, manufacturer data behind its 2-byte LE company
    id. The name goes out complete (0x09); nothing here ever shortens it (0x08)."""
    structures = [(AD_FLAGS, _FLAGS_LE_GENERAL)]
    if peripheral.name is not None:
        structures.append((AD_NAME_COMPLETE, peripheral.name.encode()))
    by_size: dict[int, list[bytes]] = {2: [], 4: [], 16: []}
    for service in peripheral.service_uuids:
        packed = _pack_uuid(service)
        by_size[len(packed)].append(packed)
    for size, ad_type in ((2, AD_UUID16_ALL), (4, AD_UUID32_ALL), (16, AD_UUID128_ALL)):
        if by_size[size]:
            structures.append((ad_type, b"".join(by_size[size])))
    for service, data in peripheral.service_data.items():
        packed = _pack_uuid(service)
        ad_type = {2: AD_SERVICE_DATA16, 4: AD_SERVICE_DATA32}.get(len(packed), AD_SERVICE_DATA128)
        structures.append((ad_type, packed + bytes(data)))
    for company, data in peripheral.manufacturer_data.items():
        structures.append((AD_MANUFACTURER_DATA, company.to_bytes(2, "little") + bytes(data)))
    return structures


def _pack_uuid(text: str) -> bytes:
    """A UUID as it travels over the air: the shortest alias of the Bluetooth base UUID, LE."""
    value = uuid.UUID(text)
    if str(value).endswith(_BASE_UUID_TAIL):
        short = value.int >> 96
        return short.to_bytes(2 if short <= 0xFFFF else 4, "little")
    return value.bytes[::-1]
