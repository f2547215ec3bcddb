"""BLE device sessions in-process: the real bleak, bleak-retry-connector, the virtual BlueZ, the
real journal, signer and outbox. (The daemon end to end, with a broker, is in test_ble_e2e.py.)"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.app import BleRadio, ble_companions
from gateway.drivers.gatt_cts import decode_current_time
from gateway.hub.clock import HubClock
from gateway.hub.config import BleConfig, DeviceConfig
from gateway.hub.identity import HubIdentity, load_public_jwk
from gateway.hub.journal import Journal
from gateway.hub.jws import verify_entry
from gateway.hub.outbox import Outbox
from gateway.hub.registry import Registry
from gateway.hub.signer import ChainHead, Signer
from gateway.sdk import uuid16
from gateway.sessions.ble import BleDeviceSession
from gateway.sim.ble_devices import GlucoseMeter, PulseOximeter, run_on, start_device, stop_device
from gateway.sim.ble_records import SpotCheck
from gateway.sim.bluez import BluezThread, CharSpec, VirtualPeripheral
from tests.blelab import bleak_session, needs_dbus
from tests.harness import until

pytestmark = needs_dbus

HRS = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
DIS = uuid16(0x180A)
SERIAL_NUMBER = uuid16(0x2A25)
BAS = uuid16(0x180F)
BATTERY_LEVEL = uuid16(0x2A19)
REGISTRY = Registry.load()


def strap(address: str, serial: str = "HR-0001") -> VirtualPeripheral:
    return VirtualPeripheral(
        address,
        "HR Strap",
        services={
            HRS: {HR_MEASUREMENT: CharSpec(("notify",))},
            DIS: {SERIAL_NUMBER: CharSpec(("read",), serial.encode())},
            BAS: {BATTERY_LEVEL: CharSpec(("read", "notify"), b"\x57")},
        },
        service_uuids=[HRS],
        rssi=-50,
    )


@dataclass
class Rig:
    bluez: BluezThread
    outbox: Outbox
    journal: Journal
    radio: BleRadio
    key: Any
    sessions: list[BleDeviceSession]

    final: list[dict[str, Any]] | None = None

    def payloads(self) -> list[dict[str, Any]]:
        if self.final is not None:
            return self.final
        return [verify_entry(e.body, self.key) for e in self.outbox.lease(0, 100_000)]

    def readings(self, device: str | None = None) -> list[dict[str, Any]]:
        return [
            p
            for p in self.payloads()
            if p["kind"] == "reading" and (device is None or p["device"]["id"] == device)
        ]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.payloads() if p["kind"] == "event" and p["event"] == name]

    async def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        await until(check, timeout)  # polls state owned by other tasks and threads

    async def stream(
        self, peripheral: VirtualPeripheral, uuid: str, values: list[bytes], gap: float = 0.0
    ) -> None:
        for value in values:
            await self.bluez.notify(peripheral, uuid, value)
            if gap:
                await asyncio.sleep(gap)


@asynccontextmanager
async def rig(
    bluez: BluezThread,
    tmp_path: Path,
    devices: list[DeviceConfig],
    ble: BleConfig | None = None,
    clock: HubClock = "unsynced",
) -> AsyncIterator[Rig]:
    outbox = Outbox.open(tmp_path / "outbox.sqlite")
    identity = HubIdentity.generate()
    journal = Journal(
        outbox,
        Signer(identity, "hub-t", ChainHead(*outbox.head())),
        on_commit=lambda: None,
        commit_interval=0.002,
    )
    radio = BleRadio(ble or BleConfig(passive=False, scanner_watchdog=5.0))
    sessions = [
        BleDeviceSession(
            d,
            REGISTRY.get_ble(d.driver),
            radio,
            journal,
            outbox,
            companions=ble_companions(),
            clock=lambda: clock,
        )
        for d in devices
    ]
    async with bleak_session():
        tasks = [
            asyncio.create_task(journal.run()),
            asyncio.create_task(radio.scanner.run()),
            *(asyncio.create_task(s.run()) for s in sessions),
        ]
        the_rig = Rig(
            bluez, outbox, journal, radio, load_public_jwk(identity.public_jwk()), sessions
        )
        try:
            yield the_rig
        finally:
            for task in tasks[2:]:
                task.cancel()
            await asyncio.gather(*tasks[2:], return_exceptions=True)
            await journal.drain()
            for task in tasks[:2]:
                task.cancel()
            await asyncio.gather(*tasks[:2], return_exceptions=True)
            the_rig.final = the_rig.payloads()  # signatures checked here, once
            outbox.close()


def hr(bpm: int) -> bytes:
    return bytes((0x00, bpm))


def test_a_configured_strap_is_found_connected_identified_and_its_values_signed(
    bluez: BluezThread, tmp_path: Path
) -> None:
    device = DeviceConfig("strap", "gatt.hrs", "pt-1", address="C0:FF:EE:00:00:01")
    peripheral = strap("C0:FF:EE:00:00:01")

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            assert peripheral.connect_calls == 1  # found and connected at once: no retry
            await r.stream(peripheral, HR_MEASUREMENT, [hr(70), hr(71), hr(72)])
            await r.until(lambda: len(r.readings("strap")) >= 4)
            return r

    r = asyncio.run(run())
    readings = r.readings("strap")
    battery = [p for p in readings if p["device"]["driver"] == "gatt.bas"]
    heart = [p for p in readings if p["device"]["driver"] == "gatt.hrs"]
    assert [o["value"] for p in battery for o in p["observations"]] == [0x57]
    assert [p["observations"][0]["value"] for p in heart] == [70, 71, 72]
    assert heart[0]["device"]["serial"] == "HR-0001"
    assert heart[0]["device"]["address"] == "C0:FF:EE:00:00:01"
    assert len(r.events("device-connected")) == 1


def test_link_loss_is_an_event_and_the_device_is_reconnected(
    bluez: BluezThread, tmp_path: Path
) -> None:
    device = DeviceConfig("strap", "gatt.hrs", "pt-1", address="C0:FF:EE:00:00:01")
    peripheral = strap("C0:FF:EE:00:00:01")

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            await r.stream(peripheral, HR_MEASUREMENT, [hr(80)])
            await r.until(lambda: any(p["device"]["driver"] == "gatt.hrs" for p in r.readings()))
            await bluez.drop_link(peripheral)
            await r.until(lambda: r.sessions[0].serving(2))
            await r.stream(peripheral, HR_MEASUREMENT, [hr(81)])
            await r.until(
                lambda: (
                    [
                        p["observations"][0]["value"]
                        for p in r.readings()
                        if p["device"]["driver"] == "gatt.hrs"
                    ]
                    == [80, 81]
                )
            )
            return r

    r = asyncio.run(run())
    lost = r.events("device-lost")
    assert len(lost) == 1
    assert lost[0]["detail"]["device"] == "strap"
    assert len(r.events("device-connected")) == 2


def test_a_device_named_by_serial_is_told_from_a_neighbour_of_the_same_kind(
    bluez: BluezThread, tmp_path: Path
) -> None:
    device = DeviceConfig("mine", "gatt.hrs", "pt-1", serial="HR-MINE")
    neighbour = strap("C0:FF:EE:00:00:07", serial="HR-NEIGHBOUR")
    mine = strap("C0:FF:EE:00:00:08", serial="HR-MINE")

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            await bluez.add_peripheral(neighbour)
            await bluez.add_peripheral(mine)
            await r.until(lambda: r.sessions[0].connected)
            await r.stream(mine, HR_MEASUREMENT, [hr(65)])
            await r.stream(neighbour, HR_MEASUREMENT, [hr(99)])
            # A marker after the neighbour's value, through the same virtual BlueZ in order:
            # once it is signed, the neighbour's would have been too, had it been heard.
            await r.stream(mine, HR_MEASUREMENT, [hr(66)])
            await r.until(lambda: len(heart_rates(r)) >= 2)
            return r

    r = asyncio.run(run())
    assert heart_rates(r) == [65, 66]
    assert {p["device"]["serial"] for p in r.readings()} == {"HR-MINE"}
    assert r.sessions[0].address == "C0:FF:EE:00:00:08"


def heart_rates(r: Rig) -> list[object]:
    heart = [p for p in r.readings() if p["device"]["driver"] == "gatt.hrs"]
    return [p["observations"][0]["value"] for p in heart]


@pytest.mark.parametrize("failures", [2])
def test_le_connection_abort_by_local_is_retried_without_a_lost_device(
    bluez: BluezThread, tmp_path: Path, failures: int
) -> None:
    device = DeviceConfig("strap", "gatt.hrs", "pt-1", address="C0:FF:EE:00:00:01")
    peripheral = strap("C0:FF:EE:00:00:01")
    peripheral.fail_connects(failures)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)
            return r

    r = asyncio.run(run())
    assert peripheral.connect_calls == failures + 1
    assert r.events("device-lost") == []


def _records(r: Rig, device: str) -> list[int]:
    return [
        p["status"]["sequence_number"]
        for p in r.readings(device)
        if p["device"]["driver"] == "gatt.gls"
        and "glucose" in {o["type"] for o in p["observations"]}
    ]


def test_glucose_records_are_fetched_once_and_only_new_ones_on_the_next_connection(
    bluez: BluezThread, tmp_path: Path
) -> None:
    meter = GlucoseMeter(address="C0:FF:EE:60:00:01", records=30, first_sequence=5, seed=3)
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: len(_records(r, "glucose")) == 30)
            await r.until(lambda: r.outbox.get_meta("ble.last-record:glucose") == 34)
            await bluez.drop_link(meter.peripheral)
            await asyncio.wrap_future(run_on(bluez, meter.add_record()))
            await r.until(lambda: r.sessions[0].serving(2))
            await r.until(lambda: len(_records(r, "glucose")) == 31)
            await asyncio.sleep(0.3)
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r

    r = asyncio.run(run())
    assert _records(r, "glucose") == list(range(5, 36))
    assert meter.racp_requests[-1][:3] == bytes((0x01, 0x03, 0x01))  # ">= 35" the 2nd time
    assert int.from_bytes(meter.racp_requests[-1][3:5], "little") == 35


def test_pulse_oximeter_spot_checks_are_fetched_then_deleted_on_the_device(
    bluez: BluezThread, tmp_path: Path
) -> None:
    oximeter = PulseOximeter(
        address="C0:FF:EE:50:00:01", stored_records=4, seed=2, spot_check_every=0
    )
    device = DeviceConfig(
        "plx", "gatt.plx", "pt-1", address=oximeter.peripheral.address, summary_interval=0.05
    )

    def spot_checks(r: Rig) -> list[dict[str, Any]]:
        # Spot-checks carry the device's time stamp; continuous values do not.
        return [
            p
            for p in r.readings("plx")
            if p["device"]["driver"] == "gatt.plx" and p["time"]["device"] is not None
        ]

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, oximeter, rate=20)
            await r.until(lambda: len(spot_checks(r)) == 4)
            await r.until(lambda: not oximeter.stored)
            await r.until(
                lambda: len([p for p in r.readings("plx") if p not in spot_checks(r)]) >= 3
            )
            await asyncio.wrap_future(stop_device(bluez, oximeter))
            return r

    r = asyncio.run(run())
    assert len(spot_checks(r)) == 4
    assert r.payloads()  # signatures verified while collecting


def _delete_answers(oximeter: PulseOximeter) -> int:
    """RACP answers to the hub's delete: one at the end of each transfer that had records."""
    return sum(1 for v in oximeter.racp_responses if v[:3] == bytes((0x06, 0x00, 0x02)))


def _raw(record: SpotCheck) -> str:
    return base64.b64encode(record.encode(stored=True)).decode()


async def _store(bluez: BluezThread, oximeter: PulseOximeter, record: SpotCheck) -> None:
    """A spot-check taken while the hub is away: stored on the device."""

    async def take() -> None:
        oximeter.stored.append(record)

    await asyncio.wrap_future(run_on(bluez, take()))


def test_identical_spot_checks_in_one_transfer_stay_two_readings_and_a_reconnect_adds_none(
    bluez: BluezThread, tmp_path: Path
) -> None:
    # Two spot-checks taken while the oximeter's clock was not set, with the same values: byte
    # for byte the same record. This oximeter refuses to delete, so every connection reports
    # every record again: only the count of each digest tells new from stored.
    twin, other = SpotCheck(None, 97, 72), SpotCheck(None, 95, 80)
    oximeter = PulseOximeter(
        address="C0:FF:EE:50:00:03",
        records=[twin, SpotCheck(None, 97, 72), other],
        keeps_records=True,
        spot_check_every=0,
        seed=4,
    )
    device = DeviceConfig(
        "plx", "gatt.plx", "pt-1", address=oximeter.peripheral.address, summary_interval=0.05
    )

    def stored_ones(r: Rig) -> list[str]:
        return [p["raw"] for p in r.readings("plx") if p["raw"] in (_raw(twin), _raw(other))]

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, oximeter, rate=20)
            await r.until(lambda: _delete_answers(oximeter) == 1)  # all committed, then refused
            assert sorted(stored_ones(r)) == sorted([_raw(twin), _raw(twin), _raw(other)])
            await bluez.drop_link(oximeter.peripheral)
            await r.until(lambda: r.sessions[0].serving(2))
            await r.until(lambda: _delete_answers(oximeter) == 2)  # the same three, again
            assert len(stored_ones(r)) == 3
            # A third measurement with the same values, taken while the hub is away: new.
            await _store(bluez, oximeter, SpotCheck(None, 97, 72))
            await bluez.drop_link(oximeter.peripheral)
            await r.until(lambda: r.sessions[0].serving(3))
            await r.until(lambda: _delete_answers(oximeter) == 3)
            await r.until(lambda: len(stored_ones(r)) == 4)
            await asyncio.sleep(0.2)  # a fifth would be signed by now
            await asyncio.wrap_future(stop_device(bluez, oximeter))
            digests = json.loads(str(r.outbox.get_meta("ble.stored-digests:plx")))
            assert len(digests) == 4 and len(set(digests)) == 2  # one per record
            return r

    r = asyncio.run(run())
    assert sorted(stored_ones(r)) == sorted([_raw(twin)] * 3 + [_raw(other)])
    assert all(p["time"]["device"] is None for p in r.readings("plx"))
    assert len(oximeter.stored) == 4  # it kept them all
    assert len(oximeter.racp_requests) == 6  # report + delete on each of the 3 connections


def test_identical_spot_checks_are_both_signed_before_the_oximeter_deletes_them(
    bluez: BluezThread, tmp_path: Path
) -> None:
    twin = SpotCheck(None, 98, 64)
    oximeter = PulseOximeter(
        address="C0:FF:EE:50:00:04",
        records=[twin, SpotCheck(None, 98, 64)],
        spot_check_every=0,
        seed=5,
    )
    device = DeviceConfig(
        "plx", "gatt.plx", "pt-1", address=oximeter.peripheral.address, summary_interval=0.05
    )

    def twins(r: Rig) -> int:
        return sum(1 for p in r.readings("plx") if p["raw"] == _raw(twin))

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, oximeter, rate=20)
            await r.until(lambda: _delete_answers(oximeter) == 1)
            assert not oximeter.stored  # deleted once both were committed
            assert twins(r) == 2
            await r.until(lambda: r.outbox.get_meta("ble.stored-digests:plx") == "[]")
            # The same values again later: a new measurement, signed.
            await _store(bluez, oximeter, SpotCheck(None, 98, 64))
            await bluez.drop_link(oximeter.peripheral)
            await r.until(lambda: r.sessions[0].serving(2))
            await r.until(lambda: _delete_answers(oximeter) == 2)
            await asyncio.wrap_future(stop_device(bluez, oximeter))
            return r

    r = asyncio.run(run())
    assert twins(r) == 3
    assert not oximeter.stored


def test_a_failing_stored_record_callback_is_logged_by_its_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.sdk import TRACE, Reading, StoredRecords
    from gateway.sessions.records import RecordSync

    def done(value: bytes) -> bool:
        raise ValueError(f"cannot read spo2={value[1]}")

    def cursor(reading: Reading) -> int:
        raise KeyError(f"pulse={reading.raw[0]}")

    spec = StoredRecords(
        control="c", records="r", request=lambda _: b"\x01", cursor=cursor, done=done
    )
    sync = RecordSync(spec, "k", None)
    caplog.set_level(logging.DEBUG)
    assert sync.request() == b"\x01"
    assert sync.done(bytes((0, 97))) is True  # a broken driver ends the transfer
    assert sync.accept("r", Reading((), bytes((72,)), {})) == (True, None)  # and keeps records
    lines = [(rec.levelno, rec.getMessage(), rec.exc_info) for rec in caplog.records]
    assert [(level, text) for level, text, _ in lines] == [
        (
            logging.ERROR,
            "the driver's StoredRecords.done raised ValueError; report this to the "
            "driver's maintainer",
        ),
        (
            logging.ERROR,
            "the driver's StoredRecords.cursor raised KeyError; report this to the "
            "driver's maintainer",
        ),
    ]
    assert all(info is None for _, _, info in lines)  # no traceback, no text: no values
    broken = RecordSync(replace(spec, request=lambda last: bytes((1, 0, 300))), "k", None)
    assert broken.request() is None  # no transfer: live values only
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith("the driver's StoredRecords.request raised ValueError;")
    )
    caplog.clear()
    caplog.set_level(TRACE)
    sync.done(bytes((0, 97)))
    traced = [rec for rec in caplog.records if rec.levelno == TRACE]
    assert traced and traced[0].exc_info is not None  # the traceback, at TRACE


CTS = uuid16(0x1805)
CURRENT_TIME = uuid16(0x2A2B)


@pytest.mark.parametrize("clock", ["synced", "unsynced"])
def test_the_device_clock_is_set_only_from_a_synchronised_hub_clock(
    bluez: BluezThread, tmp_path: Path, clock: HubClock
) -> None:
    peripheral = strap("C0:FF:EE:00:00:01")
    peripheral.services = {
        **peripheral.services,
        CTS: {CURRENT_TIME: CharSpec(("read", "write", "notify"), bytes(10))},
    }
    device = DeviceConfig("strap", "gatt.hrs", "pt-1", address=peripheral.address)

    async def run() -> None:
        async with rig(bluez, tmp_path, [device], clock=clock) as r:
            await bluez.add_peripheral(peripheral)
            await r.until(lambda: r.sessions[0].connected)

    before = datetime.now().astimezone()
    asyncio.run(run())
    written = [data for uuid, data in peripheral.writes if uuid == CURRENT_TIME]
    if clock == "unsynced":
        assert written == []
        return
    (value,) = written
    reading = decode_current_time(value)
    assert reading.device_time is not None
    moment = reading.device_time.replace(tzinfo=before.tzinfo)
    assert abs((moment - before).total_seconds()) < 5


FTMS = uuid16(0x1826)
FTMS_FEATURE = uuid16(0x2ACC)
INDOOR_BIKE_DATA = uuid16(0x2AD2)
MACHINE_STATUS = uuid16(0x2ADA)
RACP = uuid16(0x2A52)


def test_a_record_cut_by_link_loss_is_kept_marked_incomplete(
    bluez: BluezThread, tmp_path: Path
) -> None:
    bike = VirtualPeripheral(
        "C0:FF:EE:80:00:09",
        "Bike",
        services={
            FTMS: {
                FTMS_FEATURE: CharSpec(("read",), bytes(8)),
                INDOOR_BIKE_DATA: CharSpec(("notify",)),
                MACHINE_STATUS: CharSpec(("notify",)),
            }
        },
        service_uuids=[FTMS],
    )
    device = DeviceConfig("bike", "gatt.ftms", "pt-1", address=bike.address)
    # "More Data" set (bit 0): power follows in a later notification that never comes.
    first_half = (
        (0x0045).to_bytes(2, "little")
        + (160).to_bytes(2, "little")
        + (150).to_bytes(2, "little", signed=True)
    )

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            await bluez.add_peripheral(bike)
            await r.until(lambda: r.sessions[0].connected)
            await r.stream(bike, INDOOR_BIKE_DATA, [first_half])
            # A marker on the same link: once its reading is stored, the half record has been
            # decoded too (notifications arrive in order), and it must still be held.
            await r.stream(bike, MACHINE_STATUS, [bytes([0x01])])
            await r.until(lambda: any("machine_status" in p["status"] for p in r.readings()))
            assert not [p for p in r.readings() if p["observations"]]  # held: more to come
            await bluez.drop_link(bike)
            await r.until(lambda: any(p["observations"] for p in r.readings()))
            return r

    r = asyncio.run(run())
    (cut,) = [p for p in r.readings() if p["observations"]]
    assert cut["status"]["record_complete"] is False
    assert {o["type"] for o in cut["observations"]} == {"cadence", "power"}


def test_a_stalled_transfer_is_aborted_and_resumed_on_the_next_connection(
    bluez: BluezThread, tmp_path: Path
) -> None:
    meter = GlucoseMeter(address="C0:FF:EE:60:00:02", records=4, record_interval=1.5, seed=4)
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            r.sessions[0]._record_timeout = 0.4  # a short fuse for the test
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: bytes((0x03, 0x00)) in meter.racp_requests)  # aborted
            got = len(_records(r, "glucose"))
            assert 1 <= got < 4
            assert r.sessions[0].connected  # live values still flow; the link stays up
            meter.record_interval = 0.0
            await bluez.drop_link(meter.peripheral)
            await r.until(lambda: len(_records(r, "glucose")) == 4)
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r

    r = asyncio.run(run())
    assert _records(r, "glucose") == [1, 2, 3, 4]


def test_a_transfer_past_its_record_budget_is_ended_and_the_rest_comes_next_time(
    bluez: BluezThread, tmp_path: Path
) -> None:
    """F-RACPQ: a device that keeps sending records cannot hold a transfer open for ever."""
    meter = GlucoseMeter(address="C0:FF:EE:60:00:04", records=60, record_interval=0.02, seed=6)
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            r.sessions[0]._transfer_budget = (600.0, 20)  # a small budget for the test
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: bytes((0x03, 0x00)) in meter.racp_requests)  # ended
            # The 21st record ended it; wait for its commit rather than race the journal.
            await r.until(lambda: len(_records(r, "glucose")) > 20)
            assert len(_records(r, "glucose")) < 60
            assert r.sessions[0].connected  # the link stays up; live values still flow
            meter.record_interval = 0.0
            r.sessions[0]._transfer_budget = (600.0, 1000)
            await bluez.drop_link(meter.peripheral)
            await r.until(lambda: len(_records(r, "glucose")) == 60)
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r

    r = asyncio.run(run())
    assert _records(r, "glucose") == list(range(1, 61))  # none lost, none twice


def test_control_point_values_queue_only_while_asked_and_never_past_the_bound() -> None:
    """F-RACPQ: indications nobody asked for are not kept; a flood while a request waits keeps
    the newest 64."""
    from gateway.sessions.ble import MAX_QUEUED_ANSWERS, BleDeviceSession

    session = BleDeviceSession.__new__(BleDeviceSession)  # only the answer queue is exercised
    session.device = DeviceConfig("glucose", "gatt.gls", "pt-1", address="C0:FF:EE:60:00:05")
    session._answers = asyncio.Queue(MAX_QUEUED_ANSWERS)
    session._asking = False
    for n in range(10_000):
        session._on_answer(RACP, n.to_bytes(4, "little"))
    assert session._answers.qsize() == 0
    session._asking = True
    for n in range(200_000):
        session._on_answer(RACP, n.to_bytes(4, "little"))
    assert session._answers.qsize() == MAX_QUEUED_ANSWERS
    newest = [session._answers.get_nowait()[1] for _ in range(MAX_QUEUED_ANSWERS)]
    assert newest[-1] == (199_999).to_bytes(4, "little")


def test_a_meter_with_no_records_is_served_live(bluez: BluezThread, tmp_path: Path) -> None:
    meter = GlucoseMeter(address="C0:FF:EE:60:00:03", records=0, seed=5)
    device = DeviceConfig("glucose", "gatt.gls", "pt-1", address=meter.peripheral.address)

    async def run() -> Rig:
        async with rig(bluez, tmp_path, [device]) as r:
            start_device(bluez, meter, rate=0.001)
            await r.until(lambda: r.sessions[0].serving(1) and bool(meter.racp_responses))
            await asyncio.wrap_future(run_on(bluez, meter.add_record()))
            await r.until(lambda: len(_records(r, "glucose")) == 1)
            await asyncio.wrap_future(stop_device(bluez, meter))
            return r

    r = asyncio.run(run())
    assert meter.racp_responses[0] == bytes((0x06, 0x00, 0x01, 0x06))  # no records found
    assert _records(r, "glucose") == [1]
    assert r.events("device-lost") == []


def test_record_sync_takes_record_0_first_and_skips_what_is_stored() -> None:
    from gateway.drivers.gatt_gls import DRIVER, GLUCOSE_MEASUREMENT
    from gateway.sdk import Reading
    from gateway.sessions.records import RecordSync

    def record(sequence: int) -> Reading:
        return Reading((), bytes((sequence,)), {"sequence_number": sequence})

    assert DRIVER.info.ble_session is not None and DRIVER.info.ble_session.stored is not None
    spec = DRIVER.info.ble_session.stored
    fresh = RecordSync(spec, "k", None)
    assert fresh.request() == bytes((0x01, 0x01))  # all: nothing is stored yet
    keep, positions = fresh.accept(GLUCOSE_MEASUREMENT, record(0))
    assert keep and isinstance(positions, dict) and positions["k"] == 0  # + "k-state"
    assert fresh.accept(GLUCOSE_MEASUREMENT, record(0)) == (False, None)
    resumed = RecordSync(spec, "k", 41)
    assert resumed.request() == bytes((0x01, 0x03, 0x01, 42, 0))
    assert resumed.accept(GLUCOSE_MEASUREMENT, record(40)) == (False, None)
    keep, positions = resumed.accept(GLUCOSE_MEASUREMENT, record(42))
    assert keep and isinstance(positions, dict) and positions["k"] == 42


def test_the_stored_digests_stay_bounded_and_count_each_record() -> None:
    from gateway.drivers.gatt_plx import DRIVER, SPOT_CHECK
    from gateway.sdk import Reading
    from gateway.sessions.records import MAX_DIGESTS, RecordSync

    assert DRIVER.info.ble_session is not None and DRIVER.info.ble_session.stored is not None
    spec = DRIVER.info.ble_session.stored
    full = json.dumps([f"{n:016x}" for n in range(MAX_DIGESTS)])
    sync = RecordSync(spec, "k", full)
    same = Reading((), bytes((0, 97, 0, 72, 0)), {})
    positions = [sync.accept(SPOT_CHECK, same)[1] for _ in range(3)]
    assert all(p is not None for p in positions)  # three records, three readings
    last = json.loads(str(positions[-1]["k"])) if positions[-1] else []
    assert len(last) == MAX_DIGESTS and len(set(last[-3:])) == 1
