"""The simulated BLE health devices (gateway.sim.ble_devices), driven by the real bleak through
the virtual BlueZ: scan, connect, read, subscribe, and the Record Access Control Point, with
every value decoded by our own drivers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakGATTProtocolError, BleakGATTProtocolErrorCode

from gateway.hub.registry import Registry
from gateway.sdk import GattDecoder, GattDriver, Reading, uuid16
from gateway.sim import SimulatorError
from gateway.sim.ble_base import SERIAL_NUMBER, sfloat
from gateway.sim.ble_devices import (
    BODY_SENSOR_LOCATION,
    FTMS_CONTROL_POINT,
    FTMS_FEATURE,
    HR_MEASUREMENT,
    INDOOR_BIKE_DATA,
    MACHINE_STATUS,
    SIMULATORS,
    GlucoseMeter,
    IndoorBike,
    PulseOximeter,
    SimulatedBleDevice,
    make_device,
    run_on,
    start_device,
    stop_device,
)
from gateway.sim.ble_racp import RACP
from gateway.sim.ble_records import (
    CONTINUOUS,
    GLUCOSE_CONTEXT,
    GLUCOSE_FEATURE,
    GLUCOSE_MEASUREMENT,
    PLX_FEATURES,
    SPOT_CHECK,
)
from gateway.sim.bluez import BluezThread
from tests.blelab import OnAir, bleak_session, needs_dbus

pytestmark = needs_dbus

BATTERY_LEVEL = uuid16(0x2A19)
MANUFACTURER_NAME = uuid16(0x2A29)

SUCCESS = 1
OP_CODE_NOT_SUPPORTED = 2
INVALID_OPERATOR = 3
OPERATOR_NOT_SUPPORTED = 4
INVALID_OPERAND = 5
NO_RECORDS_FOUND = 6
OPERAND_NOT_SUPPORTED = 9


def _decoder(driver_id: str) -> GattDecoder:
    driver = Registry.load().get(driver_id)
    assert isinstance(driver, GattDriver)
    return driver.gatt_decoder({})


def _decode(driver_id: str, values: Iterable[tuple[str, bytes]]) -> list[Reading]:
    """Every value through one decoder of `driver_id`: no errors allowed."""
    decoder = _decoder(driver_id)
    readings: list[Reading] = []
    for uuid, data in values:
        result = decoder.value(uuid, data)
        assert result.errors == [], (uuid, data.hex())
        readings += result.readings
    return readings


def _response(op: int, code: int) -> bytes:
    return bytes((0x06, 0x00, op, code))


def _observations(reading: Reading) -> dict[str, object]:
    return {o.type: o.value for o in reading.observations}


def _number(reading: Reading, type_name: str) -> float:
    value = _observations(reading)[type_name]
    assert isinstance(value, int | float)
    return value


def _times(readings: Iterable[Reading]) -> list[datetime]:
    times = [r.device_time for r in readings]
    stamped = [t for t in times if t is not None]
    assert len(stamped) == len(times)
    return stamped


@dataclass
class Inbox:
    """Every notification and indication bleak delivered, in arrival order."""

    values: list[tuple[str, bytes, float]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the link went down."""

    def __call__(self, char: BleakGATTCharacteristic, data: bytearray) -> None:
        self.values.append((char.uuid, bytes(data), time.monotonic()))
        self.arrived.set()

    def of(self, uuid: str) -> list[bytes]:
        return [data for u, data, _ in self.values if u == uuid]

    def pairs(self, *uuids: str) -> list[tuple[str, bytes]]:
        return [(u, data) for u, data, _ in self.values if u in uuids]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        # A generous deadline: on a loaded machine, 200 records take a while to arrive.
        async with asyncio.timeout(timeout):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def _connected(
    bluez: BluezThread,
    device: SimulatedBleDevice,
    *,
    rate: float | None = None,
    subscribe: Iterable[str] = (),
) -> AsyncIterator[tuple[BleakClient, Inbox]]:
    """Host `device` (running its live loop if `rate`), find it by its service UUID as the hub
    does, connect and subscribe; stop the device on the way out."""
    inbox = Inbox()
    async with bleak_session():
        if rate is None:
            await bluez.add_peripheral(device.peripheral)
        else:
            running = start_device(bluez, device, rate)
        try:
            found = await BleakScanner.find_device_by_filter(
                lambda _d, adv: device.service in adv.service_uuids, timeout=5
            )
            assert found is not None
            assert found.address == device.peripheral.address
            async with BleakClient(found, lambda _c: inbox.lost.set(), timeout=5) as client:
                for uuid in subscribe:
                    await client.start_notify(uuid, inbox)
                yield client, inbox
        finally:
            await asyncio.wrap_future(stop_device(bluez, device))
            if rate is not None:
                await asyncio.wrap_future(running)


async def _racp(client: BleakClient, inbox: Inbox, request: bytes) -> bytes:
    """Write a RACP request and return the indication that answers it."""
    seen = len(inbox.of(RACP))
    await client.write_gatt_char(RACP, request, response=True)
    await inbox.wait(lambda: len(inbox.of(RACP)) > seen)
    return inbox.of(RACP)[seen]


# --- live values from every simulator -----------------------------------------------------

LIVE: dict[str, tuple[str, ...]] = {
    "gatt.plx": (CONTINUOUS, SPOT_CHECK),
    "gatt.gls": (GLUCOSE_MEASUREMENT, GLUCOSE_CONTEXT),
    "gatt.ftms": (INDOOR_BIKE_DATA, MACHINE_STATUS),
    "gatt.hrs": (HR_MEASUREMENT,),
}
READS: dict[str, tuple[str, ...]] = {
    "gatt.plx": (PLX_FEATURES,),
    "gatt.gls": (GLUCOSE_FEATURE,),
    "gatt.ftms": (FTMS_FEATURE,),
    "gatt.hrs": (BODY_SENSOR_LOCATION,),
}
# observation type -> (lowest, highest) a realistic device sends
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "gatt.plx": {"spo2": (94, 99), "pulse_rate": (60, 90), "perfusion_index": (1, 10)},
    "gatt.gls": {"glucose": (60, 280)},
    "gatt.ftms": {
        "cadence": (60, 95),
        "power": (80, 220),
        "speed": (20, 33),
        "resistance_level": (1, 20),
        "elapsed_time": (1, 600),
    },
    "gatt.hrs": {"heart_rate": (60, 90), "rr_interval": (0.5, 1.2)},
}
RATE = 40.0


@pytest.mark.parametrize("driver_id", sorted(SIMULATORS))
def test_each_simulator_streams_live_values_our_driver_decodes(
    bluez: BluezThread, driver_id: str
) -> None:
    device = make_device(driver_id, seed=7)
    primary = LIVE[driver_id][0]

    async def run() -> tuple[bytes, bytes, bytes, list[tuple[str, bytes]], Inbox]:
        async with _connected(bluez, device, rate=RATE, subscribe=LIVE[driver_id]) as (
            client,
            inbox,
        ):
            serial = bytes(await client.read_gatt_char(SERIAL_NUMBER))
            maker = bytes(await client.read_gatt_char(MANUFACTURER_NAME))
            battery = bytes(await client.read_gatt_char(BATTERY_LEVEL))
            reads = [(u, bytes(await client.read_gatt_char(u))) for u in READS[driver_id]]
            await inbox.wait(lambda: len(inbox.of(primary)) >= 25)
        return serial, maker, battery, reads, inbox

    serial, maker, battery, reads, inbox = asyncio.run(run())

    assert serial.decode() == device.serial
    dis = _decode("gatt.dis", [(SERIAL_NUMBER, serial), (MANUFACTURER_NAME, maker)])
    assert dis[0].status["serial_number"] == device.serial
    assert dis[1].status["manufacturer"] == "RTM Simulated Devices"
    [level] = _decode("gatt.bas", [(BATTERY_LEVEL, battery)])
    assert _observations(level) == {"battery_level": 90}
    assert all(r.status for r in _decode(driver_id, reads))
    # About the rate asked for (the first value may come before the subscription settles).
    times = [t for u, _, t in inbox.values if u == primary]
    measured = (len(times) - 1) / (times[-1] - times[0])
    assert 0.6 * RATE <= measured <= 1.6 * RATE
    readings = _decode(driver_id, inbox.pairs(*LIVE[driver_id]))
    values: dict[str, list[float]] = {}
    for reading in readings:
        for o in reading.observations:
            assert isinstance(o.value, int | float), o
            values.setdefault(o.type, []).append(o.value)
    for name, (low, high) in RANGES[driver_id].items():
        assert values[name], name
        assert all(low <= v <= high for v in values[name]), (name, values[name])
    # Counted as delivered when sent; the last may cross the disconnect on its way.
    assert 0 <= device.notifications[primary] - len(inbox.of(primary)) <= 2
    assert device.peripheral.writes == []


def test_heart_rate_strap_rr_intervals_match_the_heart_rate(bluez: BluezThread) -> None:
    strap = make_device("gatt.hrs", seed=3)

    async def run() -> Inbox:
        async with _connected(bluez, strap, rate=RATE, subscribe=[HR_MEASUREMENT]) as (_, inbox):
            await inbox.wait(lambda: len(inbox.of(HR_MEASUREMENT)) >= 30)
        return inbox

    readings = _decode("gatt.hrs", asyncio.run(run()).pairs(HR_MEASUREMENT))
    rates = [o.value for r in readings for o in r.observations if o.type == "heart_rate"]
    rr = [o.value for r in readings for o in r.observations if o.type == "rr_interval"]
    assert all(r.status["sensor_contact"] == "detected" for r in readings)
    # Each value is one second: the beats in it add up to about that second.
    assert len(readings) * 0.8 <= sum(v for v in rr if isinstance(v, float)) <= len(readings) + 2
    mean_rate = sum(v for v in rates if isinstance(v, int)) / len(rates)
    assert (
        60 / mean_rate * 0.85
        <= sum(v for v in rr if isinstance(v, float)) / len(rr)
        <= (60 / mean_rate * 1.15)
    )
    assert any(o.type == "energy" for r in readings for o in r.observations)


def test_indoor_bike_split_records_merge_into_whole_ones_and_nothing_is_written(
    bluez: BluezThread,
) -> None:
    bike = IndoorBike(seed=5, split_probability=1.0)

    async def run() -> Inbox:
        async with _connected(
            bluez, bike, rate=RATE, subscribe=[INDOOR_BIKE_DATA, MACHINE_STATUS]
        ) as (_, inbox):
            await inbox.wait(lambda: len(inbox.of(INDOOR_BIKE_DATA)) >= 20)
        return inbox

    inbox = asyncio.run(run())
    [started] = _decode("gatt.ftms", [(MACHINE_STATUS, s) for s in inbox.of(MACHINE_STATUS)])
    assert started.status == {"machine_status": "started_or_resumed_by_user"}
    parts = inbox.of(INDOOR_BIKE_DATA)
    parts = parts[0 if parts[0][0] & 1 else 1 :]  # start at a record's first part
    parts = parts[: len(parts) // 2 * 2]
    assert {p[0] & 1 for p in parts[0::2]} == {1}  # "More Data" on every first part
    readings = _decode("gatt.ftms", [(INDOOR_BIKE_DATA, p) for p in parts])
    assert len(readings) == len(parts) // 2
    for reading in readings:
        assert "record_complete" not in reading.status
        assert set(_observations(reading)) == {
            "speed",
            "cadence",
            "distance",
            "resistance_level",
            "power",
            "energy",
            "energy_per_hour",
            "energy_per_minute",
            "elapsed_time",
        }
    elapsed = [_number(r, "elapsed_time") for r in readings]
    assert elapsed == sorted(elapsed)
    assert bike.peripheral.writes == []
    assert bike.control_point_writes == 0


def test_indoor_bike_control_point_records_a_write_and_answers_it(bluez: BluezThread) -> None:
    bike = IndoorBike(seed=5)

    async def run() -> tuple[int, bytes]:
        async with _connected(bluez, bike) as (client, inbox):
            with pytest.raises(BleakGATTProtocolError) as refused:  # indications off
                await client.write_gatt_char(FTMS_CONTROL_POINT, b"\x07", response=True)
            await client.start_notify(FTMS_CONTROL_POINT, inbox)
            await client.write_gatt_char(FTMS_CONTROL_POINT, b"\x00", response=True)
            await inbox.wait(lambda: bool(inbox.of(FTMS_CONTROL_POINT)))
        return refused.value.code, inbox.of(FTMS_CONTROL_POINT)[0]

    refused, answer = asyncio.run(run())
    assert refused == BleakGATTProtocolErrorCode.CCCD_IMPROPERLY_CONFIGURED
    assert answer == b"\x80\x00\x01"
    assert bike.peripheral.writes == [(FTMS_CONTROL_POINT, b"\x00")]
    assert bike.control_point_writes == 2  # the refused one counts too


# --- glucose meter: Record Access Control Point --------------------------------------------

GLS_SUBSCRIBE = (GLUCOSE_MEASUREMENT, GLUCOSE_CONTEXT, RACP)
NO_CONTEXT = (GLUCOSE_MEASUREMENT, RACP)


def _sequences(values: Iterable[bytes]) -> list[int]:
    return [int.from_bytes(v[1:3], "little") for v in values]


def test_glucose_meter_reports_all_200_records_in_order_then_success(bluez: BluezThread) -> None:
    meter = GlucoseMeter(seed=11, records=200, first_sequence=41)

    async def run() -> tuple[bytes, Inbox]:
        async with _connected(bluez, meter, subscribe=GLS_SUBSCRIBE) as (client, inbox):
            answer = await _racp(client, inbox, b"\x01\x01")
        return answer, inbox

    answer, inbox = asyncio.run(run())
    assert answer == _response(1, SUCCESS)
    assert inbox.values[-1][:2] == (RACP, answer)  # after the last record
    measurements = inbox.of(GLUCOSE_MEASUREMENT)
    assert _sequences(measurements) == list(range(41, 241))
    assert meter.records_sent == 200
    readings = _decode("gatt.gls", inbox.pairs(GLUCOSE_MEASUREMENT, GLUCOSE_CONTEXT))
    glucose = [r for r in readings if r.observations]
    assert [r.status["sequence_number"] for r in glucose] == list(range(41, 241))
    times = _times(glucose)
    assert times == sorted(times)
    assert all(60 <= _number(r, "glucose") <= 280 for r in glucose)
    # A context follows its own measurement at once, and only where the flag says so.
    kinds = [u for u, _, _ in inbox.values if u != RACP]
    for index, uuid in enumerate(kinds):
        if uuid == GLUCOSE_CONTEXT:
            assert kinds[index - 1] == GLUCOSE_MEASUREMENT
    flagged = sum(1 for m in measurements if m[0] & 0x10)
    assert 0 < flagged == len(inbox.of(GLUCOSE_CONTEXT))
    assert _sequences(inbox.of(GLUCOSE_CONTEXT)) == [
        s for s, m in zip(_sequences(measurements), measurements, strict=True) if m[0] & 0x10
    ]


def test_glucose_meter_filters_count_and_refuses_with_the_right_codes(bluez: BluezThread) -> None:
    meter = GlucoseMeter(seed=2, records=10, first_sequence=1, context=False)
    requests = {
        "at_least_7": b"\x01\x03\x01\x07\x00",
        "first": b"\x01\x05",
        "last": b"\x01\x06",
        "count_all": b"\x04\x01",
        "count_at_least_8": b"\x04\x03\x01\x08\x00",
        "at_least_past_the_end": b"\x01\x03\x01\x0b\x00",
        "at_most": b"\x01\x02\x01\x05\x00",
        "null_operator": b"\x01\x00",
        "reserved_operator": b"\x01\x07",
        "op_code_7": b"\x07\x01",
        "delete": b"\x02\x01",
        "all_with_operand": b"\x01\x01\xff",
        "user_facing_time": b"\x01\x03\x02\x00\x00\x00\x00\x00\x00\x00",
        "short_operand": b"\x01\x03\x01\x05",
        "count_bad_operator": b"\x04\x00",
    }

    async def run() -> tuple[dict[str, tuple[bytes, list[int]]], list[str]]:
        answers: dict[str, tuple[bytes, list[int]]] = {}
        async with _connected(bluez, meter, subscribe=NO_CONTEXT) as (client, inbox):
            for name, request in requests.items():
                seen = len(inbox.of(GLUCOSE_MEASUREMENT))
                answer = await _racp(client, inbox, request)
                answers[name] = (answer, _sequences(inbox.of(GLUCOSE_MEASUREMENT)[seen:]))
        return answers, list(answers)

    answers, order = asyncio.run(run())
    assert order == list(requests)
    assert answers["at_least_7"] == (_response(1, SUCCESS), [7, 8, 9, 10])
    assert answers["first"] == (_response(1, SUCCESS), [1])
    assert answers["last"] == (_response(1, SUCCESS), [10])
    assert answers["count_all"] == (b"\x05\x00\x0a\x00", [])
    assert answers["count_at_least_8"] == (b"\x05\x00\x03\x00", [])
    refused = {name: answer for name, (answer, sent) in answers.items() if not sent}
    assert refused == {
        "count_all": b"\x05\x00\x0a\x00",
        "count_at_least_8": b"\x05\x00\x03\x00",
        "at_least_past_the_end": _response(1, NO_RECORDS_FOUND),
        "at_most": _response(1, OPERATOR_NOT_SUPPORTED),
        "null_operator": _response(1, INVALID_OPERATOR),
        "reserved_operator": _response(1, INVALID_OPERATOR),
        "op_code_7": _response(7, OP_CODE_NOT_SUPPORTED),
        "delete": _response(2, OP_CODE_NOT_SUPPORTED),
        "all_with_operand": _response(1, INVALID_OPERAND),
        "user_facing_time": _response(1, OPERAND_NOT_SUPPORTED),
        "short_operand": _response(1, INVALID_OPERAND),
        "count_bad_operator": _response(4, INVALID_OPERATOR),
    }
    assert len(meter.racp_requests) == len(requests)
    assert meter.records_sent == 6


def test_an_empty_glucose_meter_has_no_records_found(bluez: BluezThread) -> None:
    meter = GlucoseMeter(seed=1, records=0)

    async def run() -> list[bytes]:
        async with _connected(bluez, meter, subscribe=GLS_SUBSCRIBE) as (client, inbox):
            return [await _racp(client, inbox, r) for r in (b"\x01\x01", b"\x04\x01", b"\x01\x06")]

    assert asyncio.run(run()) == [
        _response(1, NO_RECORDS_FOUND),
        b"\x05\x00\x00\x00",
        _response(1, NO_RECORDS_FOUND),
    ]


def test_abort_stops_a_transfer_in_progress_and_is_answered(bluez: BluezThread) -> None:
    meter = GlucoseMeter(seed=4, records=100, record_interval=0.01)

    async def run() -> tuple[bytes, bytes, list[bytes], list[bytes], int]:
        async with _connected(bluez, meter, subscribe=GLS_SUBSCRIBE) as (client, inbox):
            await client.write_gatt_char(RACP, b"\x01\x01", response=True)
            await inbox.wait(lambda: len(inbox.of(GLUCOSE_MEASUREMENT)) >= 5)
            with pytest.raises(BleakGATTProtocolError) as busy:  # a second procedure
                await client.write_gatt_char(RACP, b"\x04\x01", response=True)
            answer = await _racp(client, inbox, b"\x03\x00")
            at_answer = len(inbox.of(GLUCOSE_MEASUREMENT))
            # A marker: the next procedure's answer comes after anything the aborted one
            # might still have sent.
            count = await _racp(client, inbox, b"\x04\x01")
            assert busy.value.code == BleakGATTProtocolErrorCode.PROCEDURE_ALREADY_IN_PROGRESS
            return answer, count, inbox.of(RACP), inbox.of(GLUCOSE_MEASUREMENT), at_answer

    answer, count, racp, measurements, at_answer = asyncio.run(run())
    assert answer == _response(3, SUCCESS)
    assert count[:2] == b"\x05\x00"  # Number of Stored Records Response
    assert racp == [answer, count]  # the aborted report gets no answer of its own
    assert len(measurements) == at_answer < 100
    assert _sequences(measurements) == list(range(1, len(measurements) + 1))
    assert meter.records_sent == len(measurements)


def test_racp_needs_indications_enabled_first(bluez: BluezThread) -> None:
    meter = GlucoseMeter(seed=1, records=3)

    async def run() -> tuple[int, bytes]:
        async with _connected(bluez, meter, subscribe=[GLUCOSE_MEASUREMENT]) as (client, inbox):
            with pytest.raises(BleakGATTProtocolError) as refused:
                await client.write_gatt_char(RACP, b"\x01\x01", response=True)
            await client.start_notify(RACP, inbox)
            return refused.value.code, await _racp(client, inbox, b"\x04\x01")

    refused, count = asyncio.run(run())
    assert refused == BleakGATTProtocolErrorCode.CCCD_IMPROPERLY_CONFIGURED
    assert count == b"\x05\x00\x03\x00"
    assert meter.racp_requests == [b"\x01\x01", b"\x04\x01"]
    assert meter.records_sent == 0


def test_link_loss_ends_a_transfer_without_an_answer(bluez: BluezThread) -> None:
    meter = GlucoseMeter(seed=4, records=100, record_interval=0.01)

    async def run() -> int:
        async with _connected(bluez, meter, subscribe=GLS_SUBSCRIBE) as (client, inbox):
            await client.write_gatt_char(RACP, b"\x01\x01", response=True)
            await inbox.wait(lambda: len(inbox.of(GLUCOSE_MEASUREMENT)) >= 3)
            await bluez.drop_link(meter.peripheral)
            async with asyncio.timeout(3):
                await inbox.lost.wait()
            assert not client.is_connected
            await asyncio.sleep(0.05)
            assert inbox.of(RACP) == []
            return len(inbox.of(GLUCOSE_MEASUREMENT))

    received = asyncio.run(run())
    assert meter.transfers_interrupted == 1
    assert received <= meter.records_sent < 100


def test_a_new_glucose_measurement_is_notified_live_and_stored(bluez: BluezThread) -> None:
    meter = GlucoseMeter(seed=8, records=3, first_sequence=7, context=False)

    async def run() -> tuple[list[bytes], bytes]:
        async with _connected(bluez, meter, subscribe=NO_CONTEXT) as (client, inbox):
            record = await asyncio.wrap_future(run_on(bluez, meter.add_record(mg_dl=104)))
            assert record.sequence == 10
            await inbox.wait(lambda: bool(inbox.of(GLUCOSE_MEASUREMENT)))
            return inbox.of(GLUCOSE_MEASUREMENT), await _racp(client, inbox, b"\x04\x01")

    live, count = asyncio.run(run())
    [reading] = _decode("gatt.gls", [(GLUCOSE_MEASUREMENT, live[0])])
    assert reading.status["sequence_number"] == 10
    assert _observations(reading) == {"glucose": 104}
    assert count == b"\x05\x00\x04\x00"


# --- pulse oximeter: stored spot-checks ----------------------------------------------------


def test_oximeter_reports_stored_records_deletes_them_then_has_none(bluez: BluezThread) -> None:
    oximeter = PulseOximeter(seed=9, stored_records=3)

    async def run() -> tuple[list[bytes], list[bytes], bytes]:
        async with _connected(bluez, oximeter, subscribe=(SPOT_CHECK, RACP)) as (client, inbox):
            features = bytes(await client.read_gatt_char(PLX_FEATURES))
            answers = [
                await _racp(client, inbox, request)
                for request in (
                    b"\x04\x01",
                    b"\x01\x01",
                    b"\x01\x03\x01\x00\x00",
                    b"\x02\x01",
                    b"\x01\x01",
                    b"\x04\x01",
                    b"\x03\x00",
                )
            ]
            return answers, inbox.of(SPOT_CHECK), features

    answers, spot_checks, features = asyncio.run(run())
    assert answers == [
        b"\x05\x00\x03\x00",
        _response(1, SUCCESS),
        _response(1, OPERATOR_NOT_SUPPORTED),
        _response(2, SUCCESS),
        _response(1, NO_RECORDS_FOUND),
        b"\x05\x00\x00\x00",
        _response(3, SUCCESS),
    ]
    assert len(spot_checks) == 3
    readings = _decode("gatt.plx", [(SPOT_CHECK, s) for s in spot_checks])
    times = _times(readings)
    assert times == sorted(set(times))
    assert all(r.status["data_from_storage"] is True for r in readings)
    assert all(94 <= _number(r, "spo2") <= 99 for r in readings)
    [feature] = _decode("gatt.plx", [(PLX_FEATURES, features)])
    assert feature.status["supports_spot_check_storage"] is True
    assert oximeter.stored == []
    assert oximeter.records_sent == 3


# --- without a central --------------------------------------------------------------------


def test_nothing_is_sent_while_no_central_is_connected_and_stop_ends_run(
    bluez: BluezThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_air = OnAir(bluez, monkeypatch)
    oximeter = PulseOximeter(seed=1)
    running = start_device(bluez, oximeter, rate=100)
    # Advertising for a while (at 100 values/s, many would have been sent), with no central.
    asyncio.run(on_air.more(4, oximeter.peripheral.address))
    assert oximeter.ticks == 0
    assert not running.done()
    stop_device(bluez, oximeter).result(5)
    assert running.result(5) is None


def test_same_seed_same_records_and_the_registry_matches_the_drivers() -> None:
    first = GlucoseMeter(seed=42, records=5, clock=datetime(2025, 3, 1, 8, 0))  # noqa: DTZ001
    again = GlucoseMeter(seed=42, records=5, clock=datetime(2025, 3, 1, 8, 0))  # noqa: DTZ001
    assert [r.measurement() for r in first.stored] == [r.measurement() for r in again.stored]
    registry = Registry.load()
    for driver_id, cls in SIMULATORS.items():
        driver = registry.get(driver_id)
        assert isinstance(driver, GattDriver)
        assert driver.info.service == cls.service
        assert cls.default_rate > 0
        assert cls.what
    with pytest.raises(SimulatorError, match=r"gatt\.plx"):
        make_device("gatt.nope")
    assert sfloat(96) == b"\x60\x00"
    assert sfloat(125, -5) == b"\x7d\xb0"
    with pytest.raises(ValueError, match="SFLOAT"):
        sfloat(2046)
