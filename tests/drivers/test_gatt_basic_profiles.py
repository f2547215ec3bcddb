"""The GATT profile drivers gatt.plx, gatt.hrs, gatt.bas, gatt.dis and gatt.cts on their own:
their declarations, every `decode_*` function fuzzed on its own, and the Current Time encoder
against its decoder.

Their recorded fixtures run through the conformance kit (tests/test_conformance.py); the drivers
as a whole are fuzzed, with "one reading or error per value", in tests/drivers/test_fuzz.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.drivers import gatt_bas, gatt_cts, gatt_dis, gatt_hrs, gatt_plx
from gateway.kit.conformance import BUILTIN_FIXTURES
from gateway.sdk import (
    OBSERVATION_TYPES,
    DecodeError,
    GattDriver,
    OptionError,
    Reading,
    uuid16,
)

MODULES: tuple[ModuleType, ...] = (gatt_plx, gatt_hrs, gatt_bas, gatt_dis, gatt_cts)
FIXTURES = BUILTIN_FIXTURES
# No example database: a fuzz run must not leave files in the checkout.
FUZZ = settings(max_examples=300, deadline=None, database=None)  # no wall-clock deadline

DECODE_FUNCTIONS: dict[str, Callable[[bytes], Reading]] = {
    "plx.spot_check": gatt_plx.decode_spot_check,
    "plx.continuous": gatt_plx.decode_continuous,
    "plx.features": gatt_plx.decode_features,
    "hrs.measurement": gatt_hrs.decode_measurement,
    "hrs.body_sensor_location": gatt_hrs.decode_body_sensor_location,
    "bas.battery_level": gatt_bas.decode_battery_level,
    "dis.string": partial(gatt_dis.decode_string, "manufacturer"),
    "dis.system_id": gatt_dis.decode_system_id,
    "dis.udi": gatt_dis.decode_udi,
    "cts.current_time": gatt_cts.decode_current_time,
    "cts.local_time_info": gatt_cts.decode_local_time_info,
}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.DRIVER_ID)
def test_every_driver_has_fixtures_and_declares_itself(module: ModuleType) -> None:
    driver = module.DRIVER
    assert isinstance(driver, GattDriver)
    assert driver.info.id == module.DRIVER_ID
    assert driver.info.transport == "ble"
    assert driver.info.characteristics
    assert list((FIXTURES / driver.info.id).glob("*.json"))
    with pytest.raises(OptionError):
        driver.gatt_decoder({"anything": 1})


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.DRIVER_ID)
def test_unknown_characteristic_is_an_error(module: ModuleType) -> None:
    result = module.DRIVER.gatt_decoder({}).value(uuid16(0x2A00), b"\x00\x00")
    assert not result.readings
    assert len(result.errors) == 1


@pytest.mark.parametrize("name", DECODE_FUNCTIONS)
@FUZZ
@given(data=st.binary(max_size=40))
def test_decode_functions_raise_only_decode_error(name: str, data: bytes) -> None:
    try:
        reading = DECODE_FUNCTIONS[name](data)
    except DecodeError:
        return
    assert reading.raw == data
    json.dumps(reading.as_dict(), allow_nan=False)
    for observation in reading.observations:
        assert (observation.value is None) == (observation.absent is not None)


def test_new_observation_types_are_snake_case_and_fast_slow_keep_the_codes() -> None:
    produced = {t for m in MODULES for t in m.DRIVER.info.produces}
    assert produced == {
        "spo2",
        "pulse_rate",
        "perfusion_index",
        "spo2_fast",
        "pulse_rate_fast",
        "spo2_slow",
        "pulse_rate_slow",
        "heart_rate",
        "energy",
        "rr_interval",
        "battery_level",
    }
    reading = gatt_plx.decode_continuous(bytes.fromhex("03 6100 4800 6200 4900 6000 4700"))
    for observation in reading.observations:
        known = OBSERVATION_TYPES[observation.type.removesuffix("_fast").removesuffix("_slow")]
        assert (observation.unit, observation.mdc, observation.loinc) == (
            known.unit,
            known.mdc,
            known.loinc,
        )


# --- Current Time: encode for writing, decode what the device reports -------------------------

# Naive bounds are what hypothesis wants; the zones come from `timezones`.
MOMENTS = st.datetimes(
    min_value=datetime(1582, 1, 1),  # noqa: DTZ001
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=45))]
    ),
)


@FUZZ
@given(moment=MOMENTS, reason=st.integers(0, 255))
def test_current_time_round_trip(moment: datetime, reason: int) -> None:
    encoded = gatt_cts.encode_current_time(moment, reason)
    assert len(encoded) == gatt_cts.CURRENT_TIME_LEN
    reading = gatt_cts.decode_current_time(encoded)
    assert reading.device_clock == "set"
    assert reading.device_time is not None
    wall = moment.replace(tzinfo=None)
    # Within one fraction: 1/256 s is 3906.25 µs, and timedelta(seconds=1/256) truncates it to
    # 3906 µs, which a moment 3906 µs past a fraction's start (still in it) would fail.
    assert timedelta(0) <= wall - reading.device_time <= timedelta(microseconds=3906)
    assert reading.status["day_of_week"] == moment.isoweekday()
    assert (
        gatt_cts.encode_current_time(reading.device_time.replace(tzinfo=moment.tzinfo), reason)
        == encoded
    )


def test_encode_current_time_example() -> None:
    moment = datetime(2026, 11, 26, 21, 45, 30, 500_000, tzinfo=UTC)
    assert gatt_cts.encode_current_time(moment).hex(" ") == "ea 07 0b 1a 15 2d 1e 04 80 02"
    local = moment.astimezone(timezone(timedelta(hours=1)))
    assert gatt_cts.encode_current_time(local, 0x01).hex(" ") == "ea 07 0b 1a 16 2d 1e 04 80 01"


@pytest.mark.parametrize(
    ("moment", "reason"),
    [
        (datetime(2026, 1, 1), 2),  # noqa: DTZ001 (a naive moment is the point of the test)
        (datetime(1500, 1, 1, tzinfo=UTC), 2),
        (datetime(2026, 1, 1, tzinfo=UTC), 256),
    ],
)
def test_encode_current_time_refuses(moment: datetime, reason: int) -> None:
    with pytest.raises(ValueError, match=r"aware|year|adjust"):
        gatt_cts.encode_current_time(moment, reason)
