"""F-SPOOF, what the hub can say about who it is talking to: every BLE reading's signed `device`
carries `link` (`encrypted`, `bonded`) as BlueZ reports it; a configured device whose address,
serial or model differs from the last time is a signed `device-identity-changed` event and a
WARNING; the rogue list stays bounded and the device that served before wins over rogues that
keep failing the serial check. The real bleak over the virtual BlueZ, the real journal, signer
and outbox (the rig of test_ble_session.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.config import DeviceConfig
from gateway.hub.outbox import Outbox
from gateway.sessions.ble_identity import Candidates
from gateway.sim.bluez import BluezThread, VirtualPeripheral
from gateway.transport.ble.link_security import device_path, read_link_security
from tests.blelab import OnAir, bleak_session, needs_dbus
from tests.test_ble_session import HR_MEASUREMENT, Rig, hr, rig, strap

pytestmark = needs_dbus

MINE = "C0:FF:EE:00:00:0A"
CLONE = "66:66:66:66:66:66"


def links(r: Rig, device: str) -> list[dict[str, Any]]:
    return [p["device"].get("link") for p in r.readings(device)]


def test_readings_of_an_unpaired_device_say_its_link_is_neither_encrypted_nor_bonded(
    bluez: BluezThread, tmp_path: Path
) -> None:
    device = DeviceConfig("strap", "gatt.hrs", "pt-1", address=MINE)
    peripheral = strap(MINE)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            await r.stream(peripheral, HR_MEASUREMENT, [hr(70), hr(71)])
            await r.until(lambda: len(r.readings("strap")) >= 3)  # the battery and two
            return r

    r = asyncio.run(run())
    assert links(r, "strap") == [{"encrypted": False, "bonded": False}] * 3


def test_readings_of_a_bonded_device_say_its_link_is_encrypted_and_bonded(
    bluez: BluezThread, tmp_path: Path
) -> None:
    device = DeviceConfig("strap", "gatt.hrs", "pt-1", address=MINE)
    peripheral = strap(MINE)
    peripheral.bonded = True  # bluetoothd holds its keys: it encrypts every link to it

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            await r.stream(peripheral, HR_MEASUREMENT, [hr(70)])
            await r.until(lambda: len(r.readings("strap")) >= 2)
            return r

    r = asyncio.run(run())
    assert links(r, "strap") == [{"encrypted": True, "bonded": True}] * 2


def test_a_pairing_on_the_link_reads_encrypted_not_bonded_and_ends_with_the_link(
    bluez: BluezThread,
) -> None:
    """The rule's middle case, read from BlueZ over D-Bus: Paired without Bonded while
    connected (a pairing on this link) is encrypted; bluetoothd forgets it with the link."""
    peripheral = strap(MINE)
    path = device_path(None, "hci0", MINE)
    assert path == "/org/bluez/hci0/dev_C0_FF_EE_00_00_0A"

    async def run() -> list[tuple[bool, bool, bool]]:
        from gateway.transport.ble.connector import BleConnector
        from gateway.transport.ble.scanner import BleScanner

        seen = []
        async with bleak_session():
            scanner = BleScanner("hci0", passive=False, watchdog=5.0)
            scan = asyncio.create_task(scanner.run())
            try:
                await bluez.add_peripheral(peripheral)
                advert = await asyncio.wait_for(scanner.wait_for(lambda a: a.address == MINE), 10)
                link = await BleConnector().connect(advert, "t")
                for paired in (False, True):
                    await bluez.set_bond(peripheral, paired=paired, bonded=False)
                    s = await link.security()
                    seen.append((s.paired, s.bonded, s.encrypted))
                await link.close()
                s = await read_link_security(path)
                seen.append((s.paired, s.bonded, s.encrypted))
            finally:
                scan.cancel()
                await asyncio.gather(scan, return_exceptions=True)
        return seen

    assert asyncio.run(run()) == [
        (False, False, False),
        (True, False, True),
        (False, False, False),  # the link ended: the pairing it did not store is gone
    ]


def test_a_neighbour_reporting_the_configured_serial_is_signed_as_an_identity_change(
    bluez: BluezThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The review's experiment: a device at another address that reports the configured
    serial is accepted (nothing tells it from the patient's), but the readings name its
    address, and the change is a signed event and a WARNING; the identity is kept across a
    restart, and stored only when it changes."""
    device = DeviceConfig("mine", "gatt.hrs", "pt-1", serial="HR-MINE")
    mine = strap(MINE, serial="HR-MINE")
    clone = strap(CLONE, serial="HR-MINE")
    caplog.set_level(logging.WARNING)

    async def first() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            await bluez.add_peripheral(mine)
            await r.until(lambda: r.sessions[0].serving(1))
            await r.stream(mine, HR_MEASUREMENT, [hr(60)])
            await bluez.vanish(mine)
            await bluez.add_peripheral(clone)
            await r.until(lambda: r.sessions[0].serving(2), timeout=30)
            await r.stream(clone, HR_MEASUREMENT, [hr(61)])
            await r.until(lambda: any(p["device"]["address"] == CLONE for p in heart(r)))
            return r

    r = asyncio.run(first())
    assert [(p["device"]["address"], p["observations"][0]["value"]) for p in heart(r)] == [
        (MINE, 60),
        (CLONE, 61),
    ]
    changed = [e["detail"] for e in r.events("device-identity-changed")]
    assert changed == [{"device": "mine", "changed": "address", "from": MINE, "to": CLONE}]
    warnings = [
        rec.getMessage()
        for rec in caplog.records
        if rec.levelno == logging.WARNING and "changed from" in rec.getMessage()
    ]
    assert warnings == [
        f"device mine: its address changed from {MINE} to {CLONE}; if the device was not "
        "replaced, another device may be answering in its place: check the device near the "
        "patient"
    ]
    outbox = Outbox.open(tmp_path / "outbox.sqlite")
    try:
        stored = json.loads(str(outbox.get_meta("identity:mine")))
        # Published and acknowledged, as the uplink would: the next run signs with a new key.
        outbox.ack(e.seq for e in outbox.lease(0, 100_000))
        outbox.flush()
    finally:
        outbox.close()
    assert stored == {"address": CLONE, "serial": "HR-MINE", "model": None}

    async def after_a_restart() -> Rig:  # the same outbox: the clone is now what was seen last
        async with rig(bluez, tmp_path, [device]) as r:
            await r.until(lambda: r.sessions[0].serving(1), timeout=30)
            await r.stream(clone, HR_MEASUREMENT, [hr(62)])
            await r.until(lambda: any(p["observations"][0]["value"] == 62 for p in heart(r)))
            return r

    r = asyncio.run(after_a_restart())
    assert [p["device"]["address"] for p in heart(r)] == [CLONE]
    assert r.events("device-connected")  # connected and served, and no identity change
    assert r.events("device-identity-changed") == []


def heart(r: Rig) -> list[dict[str, Any]]:
    return [p for p in r.readings("mine") if p["device"]["driver"] == "gatt.hrs"]


def rogues(count: int, first: int = 0x20) -> list[VirtualPeripheral]:
    """Devices of the configured kind at rotating addresses, each reporting another serial."""
    return [strap(f"C0:FF:EE:00:01:{first + n:02X}", serial=f"HR-ROGUE-{n}") for n in range(count)]


def test_the_reject_list_stays_bounded_under_rotating_rogue_addresses(
    bluez: BluezThread, tmp_path: Path
) -> None:
    device = DeviceConfig("mine", "gatt.hrs", "pt-1", serial="HR-MINE")
    crowd = rogues(6)

    async def run() -> Candidates:
        async with rig(bluez, tmp_path, [device]) as r:
            candidates = r.sessions[0].candidates = Candidates(max_rejected=3, holdoff=(0, 0))
            for rogue in crowd:
                await bluez.add_peripheral(rogue)
            await r.until(lambda: candidates.rejections >= 6, timeout=60)
            assert len(candidates.rejected) == 3
            return candidates

    candidates = asyncio.run(run())
    assert not candidates.served


def test_the_device_that_served_wins_over_rogues_that_keep_failing(
    bluez: BluezThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = DeviceConfig("mine", "gatt.hrs", "pt-1", serial="HR-MINE")
    mine = strap(MINE, serial="HR-MINE")
    first, later = rogues(2)
    air = OnAir(bluez, monkeypatch)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            session = r.sessions[0]
            session.candidates = Candidates(holdoff=(60.0, 60.0))
            await bluez.add_peripheral(mine)
            await r.until(lambda: session.serving(1))
            await bluez.add_peripheral(first)
            await bluez.vanish(mine)  # gone a while: the rogue is tried and fails
            await r.until(lambda: session.candidates.rejections == 1, timeout=30)
            await bluez.add_peripheral(later)  # a new rogue address: held off
            await air.more(5, later.address)
            await bluez.add_peripheral(mine)  # back: tried at once
            await r.until(lambda: session.serving(2), timeout=30)
            assert session.address == MINE
            return r

    asyncio.run(run())
    assert first.connect_calls == 1
    assert later.connect_calls == 0


def test_candidates_hold_at_most_their_bound_and_never_drop_the_device_that_served() -> None:
    now = [0.0]
    candidates = Candidates(clock=lambda: now[0])
    candidates.passed(MINE)
    for n in range(10_000):
        now[0] += 0.01
        candidates.failed(f"66:66:66:66:{n >> 8:02X}:{n & 0xFF:02X}")
    assert len(candidates.rejected) == 256
    assert candidates.verdict(MINE) is True
    assert candidates.verdict("66:66:66:66:27:0F") is False  # the latest rogue, held off
    assert candidates.verdict("C0:FF:EE:00:00:99") is False  # unknown: rogues keep failing
    now[0] += 60.0
    assert candidates.verdict("C0:FF:EE:00:00:99") is None  # the hold-off ran out
    assert candidates.verdict("66:66:66:66:00:00") is None  # evicted: may be tried again


def test_after_a_restart_the_address_that_served_last_is_still_preferred(
    bluez: BluezThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = DeviceConfig("mine", "gatt.hrs", "pt-1", serial="HR-MINE")
    mine = strap(MINE, serial="HR-MINE")
    first, later = rogues(2)
    air = OnAir(bluez, monkeypatch)
    outbox = Outbox.open(tmp_path / "outbox.sqlite")  # what an earlier run left
    outbox.set_meta("identity:mine", json.dumps({"address": MINE, "serial": "HR-MINE"}))
    outbox.flush()
    outbox.close()

    async def run() -> None:
        async with rig(bluez, tmp_path, [device]) as r:
            session = r.sessions[0]
            await r.until(lambda: MINE in session.candidates.served)
            session.candidates.holdoff = (60.0, 60.0)
            await bluez.add_peripheral(first)
            await r.until(lambda: session.candidates.rejections == 1, timeout=30)
            await bluez.add_peripheral(later)  # held off: the remembered address is preferred
            await air.more(5, later.address)
            await bluez.add_peripheral(mine)
            await r.until(lambda: session.serving(1), timeout=30)
            assert session.address == MINE

    asyncio.run(run())
    assert (first.connect_calls, later.connect_calls) == (1, 0)
