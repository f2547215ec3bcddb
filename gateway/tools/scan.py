"""`rtm-gateway scan`: what Bluetooth LE devices are near, which driver would take each, and
which of them this hub is configured for ("paired").

A technician runs it while pairing: it listens for a few seconds with the same scanner the
daemon uses (actively, so devices send their names), then lists every device heard. Nothing is
connected to and nothing is ingested: a neighbour's device shows up here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from gateway.hub.config import DeviceConfig
from gateway.hub.driver_match import ble_claims
from gateway.hub.registry import AmbiguousMatchError, Registry
from gateway.transport.ble.scanner import Advert, BleScanner


class ScanError(Exception):
    """Scanning could not run; the message says why and what to check."""


@dataclass(frozen=True, slots=True)
class ScanRow:
    address: str
    name: str | None
    rssi: int
    driver: str | None
    """The installed driver that matches the advertisement, or None."""
    paired: str | None
    """The configured device id this is (by address), "serial?" candidates, or None."""
    services: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _driver_for(registry: Registry, advert: Advert) -> str | None:
    try:
        driver = registry.match_ble(
            service_uuids=advert.service_uuids,
            manufacturer_data=advert.manufacturer_data,
            local_name=advert.name,
        )
    except AmbiguousMatchError as exc:
        return f"ambiguous: {', '.join(exc.driver_ids)}"
    return driver.info.id if driver else None


def _paired(registry: Registry, advert: Advert, devices: Sequence[DeviceConfig]) -> str | None:
    for device in devices:
        if device.address is not None and device.address == advert.address:
            return device.id
    # A device named by its DIS serial can only be told apart by connecting; say which
    # configured devices it could be.
    maybe = [
        device.id
        for device in devices
        if device.serial is not None
        and device.driver in registry
        and ble_claims(
            registry.get(device.driver),
            service_uuids=advert.service_uuids,
            manufacturer_data=advert.manufacturer_data,
            local_name=advert.name,
        )
    ]
    return f"maybe {', '.join(maybe)} (by serial)" if maybe else None


async def scan(
    seconds: float,
    *,
    adapter: str = "hci0",
    registry: Registry | None = None,
    devices: Sequence[DeviceConfig] = (),
) -> list[ScanRow]:
    """Listen for `seconds`; the devices heard, strongest signal first. `registry`: the drivers
    whose match rules name the devices; by default the built-ins alone (a vendor driver's rules
    are part of its code, so only the vendor drivers a configuration allows can match)."""
    registry = registry or Registry.builtin()
    scanner = BleScanner(adapter, passive=False, watchdog=max(seconds * 2, 10.0))
    task = asyncio.create_task(scanner.run())
    try:
        await asyncio.sleep(seconds)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if scanner.mode is None:
        raise ScanError(
            f"could not scan on {adapter}: {scanner.last_error or 'no adapter'}. "
            "Is Bluetooth on (bluetoothctl show) and bluetoothd running?"
        )
    rows = [
        ScanRow(
            a.address,
            a.name,
            a.rssi,
            _driver_for(registry, a),
            _paired(registry, a, devices),
            a.service_uuids,
        )
        for a in scanner.adverts.values()
    ]
    return sorted(rows, key=lambda row: (-row.rssi, row.address))


def render(rows: Sequence[ScanRow]) -> str:
    if not rows:
        return "no Bluetooth LE device heard (is it awake and advertising? try --seconds 20)"
    width = max(14, *(len(row.driver or "-") for row in rows))  # ids are never cut
    lines = [f"{'ADDRESS':17}  {'RSSI':>4}  {'NAME':20}  {'DRIVER':{width}}  PAIRED"]
    for row in rows:
        lines.append(
            f"{row.address:17}  {row.rssi:>4}  {printable(row.name or '(no name)')[:20]:20}  "
            f"{row.driver or '-':{width}}  {row.paired or 'no'}"
        )
    return "\n".join(lines)


def printable(text: str) -> str:
    """A name a nearby device chose, safe for a terminal: control characters (escape sequences
    that could rewrite the technician's screen) become U+FFFD."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text)
