"""BLE faults against the real bleak and bleak-retry-connector, the virtual BlueZ injecting them:
out of connection slots, the hub's own slot limit, link loss mid-stream, the adapter powered
off, bluetoothd restarting, a scanner gone silent, a device that vanishes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.hub.config import BleConfig, DeviceConfig
from gateway.sim.bluez import BluezThread
from tests.blelab import OnAir, needs_dbus
from tests.test_ble_session import HR_MEASUREMENT, Rig, hr, rig, strap

pytestmark = needs_dbus

ADDRESS = "C0:FF:EE:00:00:01"
DEVICE = DeviceConfig("strap", "gatt.hrs", "pt-1", address=ADDRESS)


def heart_rates(r: Rig) -> list[int]:
    return [
        p["observations"][0]["value"] for p in r.readings() if p["device"]["driver"] == "gatt.hrs"
    ]


def test_out_of_slots_is_retried_after_a_backoff(bluez: BluezThread, tmp_path: Path) -> None:
    # bleak-retry-connector counts "no slots" as transient and tries 9 times, 0.25 s apart;
    # when all fail, the session waits the out-of-slots backoff (the controller needs time to
    # free a slot) before the next round.
    peripheral = strap(ADDRESS)
    peripheral.fail_connects(9, "org.bluez.Error.Failed", "No available connection slots")

    async def run() -> float:
        async with rig(bluez, tmp_path, [DEVICE]) as r:
            started = time.monotonic()
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected, timeout=15)
            return time.monotonic() - started

    took = asyncio.run(run())
    assert peripheral.connect_calls == 10
    assert took >= 4.0 + 8 * 0.25


def test_never_more_connections_than_the_adapter_has_slots(
    bluez: BluezThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_air = OnAir(bluez, monkeypatch)
    addresses = [f"C0:FF:EE:00:01:0{i}" for i in range(3)]
    devices = [
        DeviceConfig(f"strap-{i}", "gatt.hrs", "pt-1", address=a) for i, a in enumerate(addresses)
    ]
    peripherals = [strap(a, serial=f"HR-{i}") for i, a in enumerate(addresses)]
    ble = BleConfig(passive=False, scanner_watchdog=5.0, max_connections=2)

    async def run() -> tuple[list[bool], int, int]:
        async with rig(bluez, tmp_path, devices, ble) as r:
            for peripheral in peripherals:
                await bluez.add_peripheral(peripheral)
            await r.until(lambda: sum(s.connected for s in r.sessions) == 2)
            # The third waits for a slot, it does not squeeze in, however often it advertises.
            await on_air.more(10)
            waiting = [s.connected for s in r.sessions]
            in_use = r.radio.connector.in_use
            # One link goes: the waiting device gets the freed slot.
            first = next(p for p, s in zip(peripherals, r.sessions, strict=True) if s.connected)
            await bluez.vanish(first)
            await r.until(
                lambda: all(
                    s.connected
                    for s, p in zip(r.sessions, peripherals, strict=True)
                    if p is not first
                )
            )
            return waiting, in_use, r.radio.connector.in_use

    waiting, in_use, after = asyncio.run(run())
    assert sorted(waiting) == [False, True, True]
    assert in_use == 2
    assert after == 2


def test_link_loss_mid_stream_loses_only_what_was_on_the_air(
    bluez: BluezThread, tmp_path: Path
) -> None:
    peripheral = strap(ADDRESS)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [DEVICE]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            await r.stream(peripheral, HR_MEASUREMENT, [hr(60 + i) for i in range(10)], 0.005)
            await r.until(lambda: len(heart_rates(r)) == 10)
            await bluez.drop_link(peripheral)
            # Sent while the link is down: a real device's values go nowhere either.
            await r.stream(peripheral, HR_MEASUREMENT, [hr(99)])
            await r.until(lambda: r.sessions[0].serving(2))
            await r.stream(peripheral, HR_MEASUREMENT, [hr(70 + i) for i in range(10)], 0.005)
            await r.until(lambda: len(heart_rates(r)) == 20)
            return r

    r = asyncio.run(run())
    assert heart_rates(r) == [*range(60, 70), *range(70, 80)]
    assert [e["detail"]["device"] for e in r.events("device-lost")] == ["strap"]


def test_adapter_power_cycle_reconnects_and_scanning_resumes(
    bluez: BluezThread, tmp_path: Path
) -> None:
    peripheral = strap(ADDRESS)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [DEVICE]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            await bluez.set_powered(False)
            await r.until(lambda: not r.sessions[0].connected)
            await asyncio.sleep(1.0)  # the scanner and the session retry against a dead adapter
            await bluez.set_powered(True)
            await r.until(lambda: r.sessions[0].serving(2), timeout=20)
            await r.stream(peripheral, HR_MEASUREMENT, [hr(77)])
            await r.until(lambda: heart_rates(r) == [77])
            await r.until(lambda: r.radio.scanner.scanning)
            return r

    r = asyncio.run(run())
    assert len(r.events("device-lost")) == 1


@pytest.mark.parametrize("graceful", [True, False], ids=["clean-exit", "crash"])
def test_bluetoothd_restart_is_survived(bluez: BluezThread, tmp_path: Path, graceful: bool) -> None:
    # A crash leaves bleak believing the link is up (no disconnected callback): only the
    # hub's own watch on the org.bluez name notices.
    peripheral = strap(ADDRESS)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [DEVICE]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            await bluez.restart_daemon(down_seconds=0.5, graceful=graceful)
            await r.until(lambda: r.sessions[0].serving(2), timeout=30)
            await r.stream(peripheral, HR_MEASUREMENT, [hr(66)])
            await r.until(lambda: heart_rates(r) == [66])
            return r

    r = asyncio.run(run())
    assert len(r.events("device-lost")) == 1


def test_a_silent_scanner_is_restarted_by_the_watchdog(
    bluez: BluezThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_air = OnAir(bluez, monkeypatch)
    peripheral = strap(ADDRESS)
    ble = BleConfig(passive=False, scanner_watchdog=1.0)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [DEVICE], ble) as r:
            await bluez.mute_scanner()
            await bluez.add_peripheral(peripheral)  # advertising, but nothing reaches the hub
            await on_air.more(4, ADDRESS)
            assert not r.sessions[0].connected
            await r.until(lambda: r.sessions[0].connected, timeout=10)
            return r

    r = asyncio.run(run())
    assert r.radio.scanner.restarts >= 1


def test_a_vanished_device_is_reconnected_when_it_returns(
    bluez: BluezThread, tmp_path: Path
) -> None:
    peripheral = strap(ADDRESS)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [DEVICE]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            await bluez.vanish(peripheral)
            await r.until(lambda: not r.sessions[0].connected)
            await asyncio.sleep(1.0)  # gone: nothing to connect to, and nothing breaks
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].serving(2), timeout=10)
            await r.stream(peripheral, HR_MEASUREMENT, [hr(88)])
            await r.until(lambda: heart_rates(r) == [88])
            return r

    r = asyncio.run(run())
    assert len(r.events("device-lost")) == 1
