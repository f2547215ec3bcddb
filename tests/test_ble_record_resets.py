"""F-CURSOR through the virtual BlueZ and the real bleak: a glucose meter whose memory is
cleared, one replaced under the same address, and one whose 16-bit counter wraps; each time
the new records arrive as signed readings, with a signed event saying what happened, and what
is skipped is logged and counted. (The decisions alone: test_record_positions.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.config import DeviceConfig
from gateway.sim.ble_devices import GlucoseMeter, run_on, start_device, stop_device
from gateway.sim.bluez import BluezThread
from tests.blelab import needs_dbus
from tests.test_ble_session import Rig, _records, rig

pytestmark = needs_dbus

COUNT = bytes((0x04, 0x01))
ALL = bytes((0x01, 0x01))
FIRST = bytes((0x01, 0x05))


def report_from(sequence: int) -> bytes:
    return bytes((0x01, 0x03, 0x01)) + sequence.to_bytes(2, "little")


async def on_meter(bluez: BluezThread, change: Callable[[], Any]) -> None:
    """Change the meter on its own loop (the virtual BlueZ's), as its owner would."""

    async def run() -> None:
        change()

    await asyncio.wrap_future(run_on(bluez, run()))


async def reconnect(r: Rig, meter: GlucoseMeter, connection: int) -> int:
    """Drop the link; the session reconnects. The RACP requests written before, returned."""
    before = len(meter.racp_requests)
    await r.bluez.drop_link(meter.peripheral)
    await r.until(lambda: r.sessions[0].serving(connection))
    return before


def serials(r: Rig) -> list[str]:
    """The serial each glucose record was signed with (not the battery's or features')."""
    return [
        p["device"]["serial"]
        for p in r.readings("glucose")
        if p["device"]["driver"] == "gatt.gls" and "sequence_number" in p["status"]
    ]


def test_a_cleared_meter_restarting_at_1_has_its_new_records_signed(
    bluez: BluezThread, tmp_path: Path
) -> None:
    meter = GlucoseMeter(address="C0:FF:EE:61:00:01", records=30, context=False, seed=21)
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)

    async def run() -> tuple[Rig, list[bytes]]:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: r.outbox.get_meta("ble.last-record:glucose") == 30)
            await on_meter(bluez, lambda: meter.clear_memory(records=3))
            before = await reconnect(r, meter, 2)
            await r.until(lambda: len(_records(r, "glucose")) == 33)
            await r.until(lambda: bool(r.events("records-reset")))
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r, meter.racp_requests[before:]

    r, second = asyncio.run(run())
    assert _records(r, "glucose") == [*range(1, 31), 1, 2, 3]
    assert second == [FIRST, ALL]  # its oldest record is not the one the hub saw: all
    (event,) = r.events("records-reset")
    assert event["detail"] == {
        "device": "glucose",
        "reason": "counter-restarted",
        "previous": 30,
        "cursor": 3,
        "refetched": 3,
        "duplicates": 0,
    }


def test_a_counter_restarted_without_clearing_is_told_by_the_count(
    bluez: BluezThread, tmp_path: Path
) -> None:
    meter = GlucoseMeter(address="C0:FF:EE:61:00:05", records=6, context=False, seed=25)
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)

    async def run() -> tuple[Rig, list[bytes]]:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: r.outbox.get_meta("ble.last-record:glucose") == 6)
            await on_meter(bluez, lambda: setattr(meter, "next_sequence", 1))  # a firmware bug
            for _ in range(2):  # numbered 1 and 2 again, beside the old 1..6
                await asyncio.wrap_future(run_on(bluez, meter.add_record(live=False)))
            before = await reconnect(r, meter, 2)
            await r.until(lambda: len(_records(r, "glucose")) == 8)
            await r.until(lambda: bool(r.events("records-reset")))
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r, meter.racp_requests[before:]

    r, second = asyncio.run(run())
    assert _records(r, "glucose") == [1, 2, 3, 4, 5, 6, 1, 2]
    assert second == [FIRST, report_from(7), COUNT, ALL]  # nothing after 6; 8 records, not 6
    (event,) = r.events("records-reset")
    assert event["detail"] == {
        "device": "glucose",
        "reason": "counter-restarted",
        "previous": 6,
        "cursor": 2,
        "refetched": 2,
        "duplicates": 6,
    }
    assert r.events("records-skipped")[0]["detail"]["count"] == 6


def test_a_meter_replaced_under_the_same_address_has_its_records_signed(
    bluez: BluezThread, tmp_path: Path
) -> None:
    meter = GlucoseMeter(
        address="C0:FF:EE:61:00:02", serial="GLS-OLD-1", records=12, context=False, seed=22
    )
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)

    async def run() -> tuple[Rig, list[bytes]]:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: r.outbox.get_meta("ble.last-record:glucose") == 12)
            await on_meter(bluez, lambda: meter.replace("GLS-NEW-2", records=4))
            before = await reconnect(r, meter, 2)
            await r.until(lambda: len(_records(r, "glucose")) == 16)
            await r.until(lambda: bool(r.events("records-reset")))
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r, meter.racp_requests[before:]

    r, second = asyncio.run(run())
    assert _records(r, "glucose") == [*range(1, 13), 1, 2, 3, 4]
    assert serials(r) == ["GLS-OLD-1"] * 12 + ["GLS-NEW-2"] * 4
    assert second == [ALL]  # known at once by its serial: no count needed
    (event,) = r.events("records-reset")
    assert event["detail"]["reason"] == "device-replaced"
    assert (event["detail"]["previous"], event["detail"]["refetched"]) == (12, 4)


def test_records_after_the_16_bit_wrap_arrive_and_the_overlap_is_logged_and_signed(
    bluez: BluezThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    meter = GlucoseMeter(
        address="C0:FF:EE:61:00:03", records=2, first_sequence=65533, context=False, seed=23
    )
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)
    caplog.set_level(logging.INFO, logger="gateway.sessions")

    async def take(count: int) -> None:
        for _ in range(count):
            await asyncio.wrap_future(run_on(bluez, meter.add_record(live=False)))

    async def run() -> tuple[Rig, list[bytes]]:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: r.outbox.get_meta("ble.last-record:glucose") == 65534)
            await take(4)  # 65535, then 0, 1, 2: the counter wraps; kept for the next sync
            before = await reconnect(r, meter, 2)
            await r.until(lambda: len(_records(r, "glucose")) == 6)
            await r.until(lambda: bool(r.events("records-skipped")))
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r, meter.racp_requests[before:]

    r, second = asyncio.run(run())
    assert _records(r, "glucose") == [65533, 65534, 65535, 0, 1, 2]
    assert second == [FIRST, report_from(65535), ALL]  # at the top: all, for after the wrap
    (wrapped,) = r.events("records-reset")
    assert wrapped["detail"] == {
        "device": "glucose",
        "reason": "counter-wrapped",
        "previous": 65535,
        "cursor": 2,
        "refetched": 3,
        "duplicates": 3,
    }
    (skipped,) = r.events("records-skipped")
    assert skipped["detail"] == {"device": "glucose", "count": 3, "reason": "already-stored"}
    warnings = [
        rec.getMessage()
        for rec in caplog.records
        if rec.levelno == logging.WARNING and rec.name.startswith("gateway.sessions.records")
    ]
    assert warnings == [
        "device glucose: 3 records skipped (already stored); nothing to do unless this repeats "
        "on every connection (then check the device's record counter)"
    ]


def test_a_meter_whose_count_matches_is_asked_nothing_more(
    bluez: BluezThread, tmp_path: Path
) -> None:
    meter = GlucoseMeter(address="C0:FF:EE:61:00:04", records=5, context=False, seed=24)
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)

    async def run() -> tuple[Rig, list[bytes]]:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: r.outbox.get_meta("ble.last-record:glucose") == 5)
            before = await reconnect(r, meter, 2)
            await r.until(lambda: len(meter.racp_responses) == 4)  # report; first, report, count
            asked = meter.racp_requests[before:]  # what the connection asked when it came up
            await asyncio.wrap_future(run_on(bluez, meter.add_record()))  # live, then stored
            await r.until(lambda: len(_records(r, "glucose")) == 6)
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r, asked

    r, second = asyncio.run(run())
    assert second == [FIRST, report_from(6), COUNT]
    assert _records(r, "glucose") == [1, 2, 3, 4, 5, 6]
    assert r.events("records-reset") == [] and r.events("records-skipped") == []
