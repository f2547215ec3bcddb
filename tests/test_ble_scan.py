"""`rtm-gateway scan` in a child process: the real bleak in it, the virtual BlueZ in the test."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.sdk import uuid16
from gateway.sim.bluez import BluezThread, CharSpec, VirtualPeripheral
from tests.blelab import needs_dbus
from tests.harness import run_cli, until

pytestmark = needs_dbus

PLX = uuid16(0x1822)
CONFIG = """
[hub]
id = "hub-scan"
state_dir = "{state}"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[devices]]
id = "oximeter"
driver = "gatt.plx"
address = "C0:FF:EE:00:00:01"
patient = "pt-0001"
"""


def _oximeter(address: str, name: str | None) -> VirtualPeripheral:
    return VirtualPeripheral(
        address,
        name,
        services={PLX: {uuid16(0x2A60): CharSpec(("read",))}},
        service_uuids=[PLX],
        rssi=-40,
    )


def test_scan_lists_devices_with_driver_and_pairing_and_ingests_nothing(
    bluez: BluezThread, tmp_path: Path
) -> None:
    for peripheral in (
        _oximeter("C0:FF:EE:00:00:01", "Oxi Mine"),
        _oximeter("C0:FF:EE:00:00:02", "Oxi Neighbour"),
        VirtualPeripheral("C0:FF:EE:00:00:03", None, rssi=-90),
    ):
        asyncio.run(bluez.add_peripheral(peripheral))
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state"))

    done = run_cli("scan", "--seconds", "1", "--json", "-c", str(config))

    assert done.returncode == 0, done.stderr
    rows = {row["address"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {"C0:FF:EE:00:00:01", "C0:FF:EE:00:00:02", "C0:FF:EE:00:00:03"}
    mine, neighbour, other = (rows[f"C0:FF:EE:00:00:0{i}"] for i in (1, 2, 3))
    assert (mine["name"], mine["driver"], mine["paired"]) == ("Oxi Mine", "gatt.plx", "oximeter")
    assert (neighbour["driver"], neighbour["paired"]) == ("gatt.plx", None)
    assert (other["name"], other["driver"], other["paired"]) == (None, None, None)
    assert -45 <= mine["rssi"] <= -40
    assert not (tmp_path / "state").exists()  # scanning stores nothing

    table = run_cli("scan", "--seconds", "0.5", "-c", str(config))
    assert table.returncode == 0, table.stderr
    assert "Oxi Neighbour" in table.stdout
    assert "(no name)" in table.stdout
    line = next(row for row in table.stdout.splitlines() if "Oxi Mine" in row)
    assert "gatt.plx" in line
    assert line.rstrip().endswith("oximeter")


def test_scan_with_the_adapter_off_names_the_cause(bluez: BluezThread) -> None:
    asyncio.run(bluez.set_powered(False))
    done = run_cli("scan", "--seconds", "1")
    assert done.returncode == 1
    assert "could not scan on hci0" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_hub_scanner_listens_passively_after_a_short_active_window(bluez: BluezThread) -> None:
    from gateway.transport.ble.scanner import BleScanner
    from tests.blelab import bleak_session

    async def run() -> tuple[list[str | None], bool, str | None]:
        async with bleak_session():
            scanner = BleScanner(passive=True, active_window=0.3, active_every=1000.0)
            task = asyncio.create_task(scanner.run())
            modes: list[str | None] = []
            try:
                # Each mode as it comes (not sampled at fixed times): first the window, active
                # to hear names, then passive.
                await until(lambda: scanner.mode is not None)
                modes.append(scanner.mode)
                await until(lambda: scanner.mode != modes[0])
                modes.append(scanner.mode)
                await bluez.add_peripheral(_oximeter("C0:FF:EE:00:00:05", "Late Oxi"))
                found = await scanner.wait_for(
                    lambda a: a.address == "C0:FF:EE:00:00:05", timeout=5
                )
                discovering = bluez.bluez.discovering  # no discovery session: monitors only
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            return modes, discovering, found.service_uuids[0] if found.service_uuids else None

    modes, discovering, service = asyncio.run(run())
    assert modes == ["active", "passive"]
    assert discovering is False
    assert service == PLX


def test_the_hub_scanner_sees_a_changed_advertisement(bluez: BluezThread) -> None:
    from gateway.transport.ble.scanner import BleScanner
    from tests.blelab import bleak_session

    peripheral = VirtualPeripheral(
        "C0:FF:EE:00:00:06", "Scale", manufacturer_data={0x0059: b"\x01"}, rssi=-50
    )

    async def run() -> tuple[dict[int, bytes], str | None]:
        async with bleak_session():
            scanner = BleScanner(passive=False)
            task = asyncio.create_task(scanner.run())
            try:
                await bluez.add_peripheral(peripheral)
                await scanner.wait_for(lambda a: a.address == peripheral.address, timeout=5)
                await bluez.set_advertisement(
                    peripheral, name="Scale 2", manufacturer_data={0x0059: b"\x02\x03"}
                )
                changed = await scanner.wait_for(
                    lambda a: (
                        a.address == peripheral.address
                        and a.manufacturer_data.get(0x0059) == b"\x02\x03"
                    ),
                    timeout=5,
                )
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            return dict(changed.manufacturer_data), changed.name

    data, name = asyncio.run(run())
    assert data == {0x0059: b"\x02\x03"}
    assert name == "Scale 2"


def test_a_name_with_terminal_escapes_is_printed_harmless() -> None:
    from gateway.tools.scan import ScanRow, render

    hostile = "\x1b[2J\x07Oxi"
    row = ScanRow("C0:FF:EE:00:00:09", hostile, -50, None, None, ())
    text = render([row])
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "Oxi" in text


def test_an_advertisement_flood_costs_bounded_memory_and_one_check_per_advert() -> None:
    """F-ADVERT: 50,000 random-address advertisements while a session waits for its device."""
    import tracemalloc

    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

    from gateway.transport.ble.scanner import MAX_ADVERTS, Advert, BleScanner

    def advert(address: str) -> tuple[BLEDevice, AdvertisementData]:
        data = AdvertisementData(
            local_name=None,
            manufacturer_data={0x004C: bytes(20)},
            service_data={},
            service_uuids=[uuid16(0x180D)],
            tx_power=None,
            rssi=-70,
            platform_data=(),
        )
        return BLEDevice(address, None, None), data

    wanted = "C0:FF:EE:00:00:42"
    checks = 0

    def is_mine(candidate: Advert) -> bool:
        nonlocal checks
        checks += 1
        return candidate.address == wanted

    async def flood() -> tuple[Advert, int, int]:
        scanner = BleScanner()
        waiting = asyncio.create_task(scanner.wait_for(is_mine, timeout=30))
        await asyncio.sleep(0)  # the session is now waiting
        tracemalloc.start()
        for n in range(50_000):
            scanner._on_advertisement(
                *advert(f"7A:{n >> 16 & 255:02X}:{n >> 8 & 255:02X}:{n & 255:02X}:00:01")
            )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert not waiting.done()
        scanner._on_advertisement(*advert(wanted))
        return await waiting, len(scanner.adverts), peak

    found, remembered, peak = asyncio.run(flood())
    assert found.address == wanted
    assert remembered == MAX_ADVERTS
    assert checks == 50_001  # one predicate call per advertisement, not one per device kept
    assert peak < 10_000_000, f"{peak / 1e6:.1f} MB traced during the flood"


def test_addresses_no_session_wanted_are_forgotten_soon_and_wanted_ones_kept() -> None:
    """F-ADVERT: a random-address flood leaves the store within `unknown_expire` (30 s, as
    BlueZ forgets temporary devices), while a device a session connected to is remembered for
    the long `expire`, so its session finds it again at once."""
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

    from gateway.transport.ble.scanner import BleScanner

    def heard(scanner: BleScanner, address: str) -> None:
        data = AdvertisementData(
            local_name=None,
            manufacturer_data={},
            service_data={},
            service_uuids=[uuid16(0x180D)],
            tx_power=None,
            rssi=-60,
            platform_data=(),
        )
        scanner._on_advertisement(BLEDevice(address, None, None), data)

    wanted = "C0:FF:EE:00:00:42"

    async def scenario() -> tuple[set[str], str]:
        scanner = BleScanner(unknown_expire=0.05, expire=600.0)
        for n in range(100):
            heard(scanner, f"7A:00:00:00:{n >> 8:02X}:{n & 255:02X}")
        heard(scanner, wanted)
        found = await scanner.wait_for(lambda a: a.address == wanted, timeout=5)
        await asyncio.sleep(0.1)  # past unknown_expire, far from expire
        scanner._expire_old()
        again = await scanner.wait_for(lambda a: a.address == wanted, timeout=5)
        return set(scanner.adverts), again.address if again is found else "another advert"

    remembered, again = asyncio.run(scenario())
    assert remembered == {wanted}
    assert again == wanted
