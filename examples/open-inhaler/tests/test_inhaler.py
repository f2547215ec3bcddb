"""rtm-driver-open-inhaler: the driver against its recorded fixtures and random bytes, the
Record Control Point functions the hub runs, and the simulated sensor driven by the real bleak
through a virtual BlueZ on a private D-Bus bus (no radio, no root; needs dbus-daemon).

Run from the rtm-gateway checkout, with the package installed (`pip install -e
examples/open-inhaler`): `pytest -q examples/open-inhaler/tests`.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakGATTProtocolError, BleakGATTProtocolErrorCode
from gateway.kit.vendor import (
    BluezThread,
    Registry,
    bleak_session,
    characteristic_uuid,
    lab_available,
    local_now,
    run_on,
    simulator_classes,
    stop_device,
    validate_driver,
    virtual_lab,
)
from gateway.sdk import SDK_VERSION, DecodeError, GattDriver, Reading, parse_hex

from rtm_open_inhaler import driver as inhaler
from rtm_open_inhaler.driver import (
    ACTUATION_EVENT,
    DRIVER,
    RECORD_CONTROL_POINT,
    SENSOR_FEATURES,
    SERVICE,
    Response,
    event_counter,
    parse_response,
    request_events,
    transfer_done,
)
from rtm_open_inhaler.simulator import InhalerSensor

FIXTURES = Path(inhaler.__file__).parent / "fixtures" / DRIVER.info.id
CASES = sorted(FIXTURES.glob("*.json"))
needs_dbus = pytest.mark.skipif(not lab_available(), reason="needs dbus-daemon")


def _decode(values: Iterable[tuple[str, bytes]]) -> tuple[list[Reading], list[DecodeError]]:
    """Values of one connection through one decoder, as the hub feeds them."""
    decoder = DRIVER.gatt_decoder({})
    readings: list[Reading] = []
    errors: list[DecodeError] = []
    for uuid, data in values:
        result = decoder.value(uuid, data)
        readings += result.readings
        errors += result.errors
    return readings, errors


# --- the declaration ---------------------------------------------------------------------------


def test_the_hub_accepts_the_driver_and_finds_both_entry_points() -> None:
    assert validate_driver(DRIVER) is DRIVER
    assert isinstance(DRIVER, GattDriver)
    info = DRIVER.info
    assert (info.category, info.sdk_version) == ("respiratory", (1, 3))
    assert info.sdk_version <= SDK_VERSION
    assert info.ble_session is not None
    stored = info.ble_session.stored
    assert stored is not None
    assert (stored.control, stored.records) == (RECORD_CONTROL_POINT, ACTUATION_EVENT)
    assert [c.uuid for c in info.characteristics] == [SENSOR_FEATURES, ACTUATION_EVENT]
    registry = Registry.load()
    assert registry.get("openrtm.inhaler").info == info
    assert not [p for p in registry.problems if "inhaler" in str(p)]
    assert simulator_classes()["openrtm.inhaler"] is InhalerSensor


# --- fixtures ---------------------------------------------------------------------------------


def test_there_are_fixtures() -> None:
    assert 5 <= len(CASES) <= 8


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_fixture(path: Path) -> None:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    readings, errors = _decode(
        (characteristic_uuid(v["char"]), parse_hex(v["hex"])) for v in case["values"]
    )
    # Through JSON, as the platform will see it.
    assert json.loads(json.dumps([r.as_dict() for r in readings])) == case["readings"]
    assert len(errors) == case["errors"], [str(e) for e in errors]
    assert all(isinstance(e, DecodeError) for e in errors)


# --- the Record Control Point functions the hub runs -------------------------------------------


def test_request_asks_for_all_or_for_the_events_after_the_last_stored() -> None:
    assert request_events(None) == b"\x02"
    assert request_events(41) == bytes.fromhex("01 29000000")
    assert request_events(0) == bytes.fromhex("01 00000000")
    assert request_events(0xFFFFFFFF) == bytes.fromhex("01 ffffffff")
    # Nothing is above 0xFFFFFFFF either way, and a position below 0 means everything.
    assert request_events(0x1_0000_0005) == request_events(0xFFFFFFFF)
    assert request_events(-1) == b"\x02"


def test_cursor_is_the_event_counter_and_none_for_features() -> None:
    readings, errors = _decode(
        [
            (ACTUATION_EVENT, bytes.fromhex("00 2a000000 ea07 03 0e 08 02 25 01")),
            (SENSOR_FEATURES, bytes.fromhex("07 00 03")),
        ]
    )
    assert not errors
    assert [event_counter(r) for r in readings] == [42, None]
    assert event_counter(Reading((), b"", {"event_counter": True})) is None


@pytest.mark.parametrize(
    ("value", "done", "response"),
    [
        ("80 02 01", True, Response(0x02, 0x01)),  # report all: success
        ("80 01 02", True, Response(0x01, 0x02)),  # report after N: no events
        ("80 01 04", True, Response(0x01, 0x04)),  # refused: invalid operand, still the end
        ("80 03 01", True, Response(0x03, 0x01)),  # abort answered
        ("80 07 03", False, Response(0x07, 0x03)),  # a request the hub never makes
        ("80 02", False, None),
        ("80 02 01 00", False, None),
        ("06 00 01 01", False, None),  # an RACP-shaped value is not ours
        ("", False, None),
        ("0b 8a000000 ea07 03 0e 0f 29 09 02 abf1 c805", False, None),  # an event never ends it
    ],
)
def test_done_is_the_response_to_a_report_or_an_abort(
    value: str, done: bool, response: Response | None
) -> None:
    assert transfer_done(parse_hex(value)) is done
    assert parse_response(parse_hex(value)) == response


def test_response_describes_its_result() -> None:
    assert Response(0x01, 0x02).describe() == "no events"
    assert Response(0x01, 0x7F).describe() == "result 0x7f"


# --- fuzz -------------------------------------------------------------------------------------


def _mutations(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """Random bytes, and valid values cut, lengthened and bit-flipped."""
    valid = [
        bytes.fromhex(h)
        for h in (
            "0b 8a000000 ea07 03 0e 0f 29 09 02 abf1 c805",
            "00 2a000000 ea07 03 0e 08 02 25 01",
            "07 00 03",
        )
    ]
    uuids = (ACTUATION_EVENT, SENSOR_FEATURES, RECORD_CONTROL_POINT)
    for _ in range(count):
        if rng.random() < 0.4:
            yield rng.choice(uuids), rng.randbytes(rng.randint(0, 24))
            continue
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        cut = rng.randint(0, len(data) + 3)
        data = data[:cut] + rng.randbytes(max(0, cut - len(data)))
        yield rng.choice(uuids[:2]), bytes(data)


def test_fuzz_gives_readings_or_decode_errors_and_never_raises() -> None:
    rng = random.Random(20260314)
    decoder = DRIVER.gatt_decoder({})
    outcomes = {"readings": 0, "errors": 0}
    for uuid, data in _mutations(rng, 5000):
        result = decoder.value(uuid, data)
        assert all(isinstance(e, DecodeError) for e in result.errors), data.hex()
        assert len(result.readings) + len(result.errors) == 1
        for reading in result.readings:
            json.dumps(reading.as_dict(), allow_nan=False)  # finite numbers only
            if uuid == ACTUATION_EVENT:
                assert isinstance(event_counter(reading), int)
        outcomes["readings"] += len(result.readings)
        outcomes["errors"] += len(result.errors)
    assert min(outcomes.values()) > 500, outcomes  # both paths well exercised


# --- the simulated sensor's day, without a radio ------------------------------------------------


def test_the_default_day_is_a_morning_dose_a_missed_evening_and_a_rescue_use() -> None:
    now = local_now()
    sensor = InhalerSensor(seed=11)
    readings, errors = _decode(
        (ACTUATION_EVENT, e.encode(from_storage=True)) for e in sensor.stored
    )
    assert not errors
    assert [event_counter(r) for r in readings] == [137, 138, 139, 140]
    roles = [r.status["medication_role"] for r in readings]
    assert sorted(roles) == ["controller", "controller", "rescue", "rescue"]
    times = [r.device_time for r in readings if r.device_time is not None]
    assert len(times) == 4
    assert all(now - timedelta(days=1, hours=1) < t < now for t in times)
    assert times == sorted(times)
    for reading in readings:
        values = {o.type: o.value for o in reading.observations}
        assert values["inhaler_actuation"] == 1
        assert isinstance(flow := values["inhalation_peak_flow"], float)
        assert isinstance(duration := values["inhalation_duration"], float)
        assert 30 <= flow <= 90
        assert 1 <= duration <= 3
        assert reading.device_clock == "set"
        hour = reading.device_time.hour if reading.device_time else -1
        if reading.status["medication_role"] == "controller":
            assert 7 <= hour <= 8  # the morning dose; the evening one (about 20:00) is missed
        else:
            assert 13 <= hour <= 17


def test_sensor_options_change_the_day() -> None:
    clip_on = InhalerSensor(
        seed=1,
        roles=("controller",),
        missed=None,
        puffs=1,
        first_counter=5,
        measures_flow=False,
        clock_set=False,
    )
    readings, errors = _decode(
        (ACTUATION_EVENT, e.encode(from_storage=False)) for e in clip_on.stored
    )
    assert not errors
    assert [event_counter(r) for r in readings] == [5, 6]
    assert {r.status["medication_role"] for r in readings} == {"controller"}
    assert all([o.type for o in r.observations] == ["inhaler_actuation"] for r in readings)
    assert {r.device_clock for r in readings} == {"not-set"}
    assert all(r.device_time is not None and r.device_time.year == 2000 for r in readings)
    features = clip_on.peripheral.services[SERVICE][SENSOR_FEATURES].value
    assert features == bytes.fromhex("04 00 01")  # clock only; the controller role
    with pytest.raises(ValueError, match="roles"):
        InhalerSensor(roles=("reliever",))


# --- the simulated sensor through the real bleak -----------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[BluezThread]:
    """A private bus with the hub's virtual BlueZ on it, and bleak here pointed at it."""
    with virtual_lab(bin_dir=tmp_path / "bin") as handle:
        yield handle


@dataclass
class Inbox:
    """Every notification and indication bleak delivered, in arrival order."""

    values: list[tuple[str, bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, char: BleakGATTCharacteristic, data: bytearray) -> None:
        self.values.append((char.uuid, bytes(data)))
        self.arrived.set()

    def of(self, uuid: str) -> list[bytes]:
        return [data for u, data in self.values if u == uuid]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def _connected(
    lab: BluezThread,
    sensor: InhalerSensor,
    subscribe: Iterable[str] = (ACTUATION_EVENT, RECORD_CONTROL_POINT),
) -> AsyncIterator[tuple[BleakClient, Inbox]]:
    """Host `sensor`, find it by its service UUID as the hub does, connect and subscribe."""
    inbox = Inbox()
    async with bleak_session():
        await lab.add_peripheral(sensor.peripheral)
        try:
            found = await BleakScanner.find_device_by_filter(
                lambda _d, adv: SERVICE in adv.service_uuids, timeout=5
            )
            assert found is not None
            async with BleakClient(found, timeout=5) as client:
                for uuid in subscribe:
                    await client.start_notify(uuid, inbox)
                yield client, inbox
        finally:
            await asyncio.wrap_future(stop_device(lab, sensor))


async def _transfer(
    client: BleakClient, inbox: Inbox, request: bytes
) -> tuple[list[bytes], Response | None]:
    """Write `request` to the Record Control Point; the events that arrived before the value
    that ends the transfer (by the driver's `done`), and that response."""
    start = len(inbox.values)
    await client.write_gatt_char(RECORD_CONTROL_POINT, request, response=True)

    def ended() -> int | None:
        return next(
            (
                i
                for i, (u, d) in enumerate(inbox.values[start:], start)
                if u == RECORD_CONTROL_POINT and transfer_done(d)
            ),
            None,
        )

    await inbox.wait(lambda: ended() is not None)
    end = ended()
    assert end is not None
    events = [d for u, d in inbox.values[start:end] if u == ACTUATION_EVENT]
    return events, parse_response(inbox.values[end][1])


async def _answer(client: BleakClient, inbox: Inbox, request: bytes) -> Response | None:
    """Write `request` to the Record Control Point; the next value the sensor sends."""
    start = len(inbox.values)
    await client.write_gatt_char(RECORD_CONTROL_POINT, request, response=True)
    await inbox.wait(lambda: len(inbox.values) > start)
    return parse_response(inbox.values[start][1])


def _hub_keeps(readings: Iterable[Reading], position: int | None) -> list[int]:
    """What a hub storing by `event_counter` keeps: counters above its position, in order."""
    kept = []
    for reading in readings:
        counter = event_counter(reading)
        assert counter is not None
        if position is None or counter > position:
            kept.append(counter)
            position = counter
    return kept


@needs_dbus
def test_a_hub_fetches_the_day_then_nothing_then_gets_new_actuations_live(lab: BluezThread) -> None:
    sensor = InhalerSensor(seed=5)
    day = [e.encode(from_storage=True) for e in sensor.stored]

    async def run() -> dict[str, Any]:
        async with _connected(lab, sensor) as (client, inbox):
            out: dict[str, Any] = {"features": bytes(await client.read_gatt_char(SENSOR_FEATURES))}
            out["all"] = await _transfer(client, inbox, request_events(None))
            out["after_last"] = await _transfer(client, inbox, request_events(140))
            seen = len(inbox.of(ACTUATION_EVENT))
            await asyncio.wrap_future(run_on(lab, sensor.add_actuation()))
            await inbox.wait(lambda: len(inbox.of(ACTUATION_EVENT)) > seen)
            out["live"] = inbox.of(ACTUATION_EVENT)[seen:]
            return out

    out = asyncio.run(run())
    events, response = out["all"]
    assert events == day
    assert response == Response(0x02, 0x01)  # report all: success
    assert out["after_last"] == ([], Response(0x01, 0x02))  # after 140: no events
    assert sensor.requests == [b"\x02", bytes.fromhex("01 8c000000")]

    readings, errors = _decode(
        [(SENSOR_FEATURES, out["features"])] + [(ACTUATION_EVENT, d) for d in events + out["live"]]
    )
    assert not errors
    features, *actuations = readings
    assert features.status["role_controller"] is True
    assert features.status["role_rescue"] is True
    assert _hub_keeps(actuations, None) == [137, 138, 139, 140, 141]
    assert [r.status["from_storage"] for r in actuations] == [True] * 4 + [False]
    assert [r.status["medication_role"] for r in actuations] == [
        "controller",
        "controller",
        "rescue",
        "rescue",
        "rescue",
    ]
    assert all(r.device_clock == "set" for r in actuations)


@needs_dbus
def test_an_actuation_before_the_first_request_waits_for_the_report(lab: BluezThread) -> None:
    """Counters reach the hub in increasing order within a connection: one made before the
    hub's first request is not notified live (the hub would store it and then skip the older
    ones still on the sensor), it comes at the end of the report."""
    sensor = InhalerSensor(seed=6)

    async def run() -> tuple[list[bytes], Response | None, list[bytes]]:
        async with _connected(lab, sensor) as (client, inbox):
            await asyncio.wrap_future(run_on(lab, sensor.add_actuation("controller")))
            await asyncio.sleep(0.3)
            early = list(inbox.values)
            events, response = await _transfer(client, inbox, request_events(138))
            assert early == []
            return events, response, inbox.of(ACTUATION_EVENT)

    events, response, everything = asyncio.run(run())
    assert response == Response(0x01, 0x01)
    readings, errors = _decode((ACTUATION_EVENT, d) for d in events)
    assert not errors
    assert _hub_keeps(readings, 138) == [139, 140, 141]
    assert events == everything
    assert sensor.live_sent == 0


@needs_dbus
def test_abort_ends_a_report_and_the_next_request_resumes_after_the_last_counter(
    lab: BluezThread,
) -> None:
    sensor = InhalerSensor(seed=7, puffs=10, record_interval=0.05)  # 20 events, slowly
    total = len(sensor.stored)

    async def run() -> tuple[list[bytes], Response | None, list[bytes], Response | None]:
        async with _connected(lab, sensor) as (client, inbox):
            await client.write_gatt_char(RECORD_CONTROL_POINT, request_events(None), response=True)
            await inbox.wait(lambda: len(inbox.of(ACTUATION_EVENT)) >= 3)
            with pytest.raises(BleakGATTProtocolError) as busy:  # one procedure at a time
                await client.write_gatt_char(
                    RECORD_CONTROL_POINT, request_events(None), response=True
                )
            assert busy.value.code == BleakGATTProtocolErrorCode.PROCEDURE_ALREADY_IN_PROGRESS
            _, aborted = await _transfer(client, inbox, b"\x03")
            first = inbox.of(ACTUATION_EVENT)
            last = event_counter(_decode([(ACTUATION_EVENT, first[-1])])[0][0])
            rest, response = await _transfer(client, inbox, request_events(last))
            return first, aborted, rest, response

    first, aborted, rest, response = asyncio.run(run())
    assert aborted == Response(0x03, 0x01)
    assert response == Response(0x01, 0x01)
    assert 3 <= len(first) < total
    readings, errors = _decode((ACTUATION_EVENT, d) for d in first + rest)
    assert not errors
    assert _hub_keeps(readings, None) == list(range(137, 137 + total))
    assert sensor.responses == [b"\x80\x03\x01", b"\x80\x01\x01"]  # the aborted report: none


@needs_dbus
def test_the_control_point_refuses_what_the_profile_does_not_define(lab: BluezThread) -> None:
    sensor = InhalerSensor(seed=8)

    async def run() -> tuple[int, list[Response | None]]:
        async with _connected(lab, sensor, subscribe=[ACTUATION_EVENT]) as (client, inbox):
            with pytest.raises(BleakGATTProtocolError) as refused:  # indications still off
                await client.write_gatt_char(
                    RECORD_CONTROL_POINT, request_events(None), response=True
                )
            await client.start_notify(RECORD_CONTROL_POINT, inbox)
            answers = [
                await _answer(client, inbox, parse_hex(request))
                for request in ("01 01", "01 0100000000", "02 00", "07", "03 00", "03")
            ]
            return refused.value.code, answers

    refused, answers = asyncio.run(run())
    assert refused == BleakGATTProtocolErrorCode.CCCD_IMPROPERLY_CONFIGURED
    assert answers == [
        Response(0x01, 0x04),
        Response(0x01, 0x04),
        Response(0x02, 0x04),
        Response(0x07, 0x03),
        Response(0x03, 0x04),
        Response(0x03, 0x01),
    ]
    assert sensor.events_sent == 0
