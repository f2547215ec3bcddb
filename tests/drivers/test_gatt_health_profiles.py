"""The health GATT profiles (gatt.hts, gatt.wss, gatt.bps, gatt.gls): each ships at least five
recorded fixtures (the conformance kit runs them, in tests/test_conformance.py), every declared
characteristic is known to the decoder, and no decode function raises anything but
`DecodeError` on arbitrary bytes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.drivers import gatt_bps, gatt_gls, gatt_gls_context, gatt_hts, gatt_wss
from gateway.kit.conformance import BUILTIN_FIXTURES
from gateway.sdk import DecodeError, GattDriver, OptionError, Reading

FIXTURES = BUILTIN_FIXTURES
DRIVERS: dict[str, GattDriver] = {
    d.info.id: d for d in (gatt_hts.DRIVER, gatt_wss.DRIVER, gatt_bps.DRIVER, gatt_gls.DRIVER)
}
DECODE_FUNCTIONS: list[Callable[[bytes], Reading]] = [
    gatt_hts.decode_temperature_measurement,
    gatt_hts.decode_intermediate_temperature,
    gatt_hts.decode_temperature_type,
    gatt_wss.decode_weight_measurement,
    gatt_wss.decode_weight_scale_feature,
    gatt_bps.decode_blood_pressure_measurement,
    gatt_bps.decode_intermediate_cuff_pressure,
    gatt_bps.decode_blood_pressure_feature,
    gatt_gls.decode_glucose_measurement,
    gatt_gls_context.decode_measurement_context,
    gatt_gls.decode_glucose_feature,
]
FUZZ = settings(max_examples=500, deadline=None, database=None)  # no wall-clock deadline


@pytest.mark.parametrize("driver_id", sorted(DRIVERS))
def test_every_driver_has_fixtures(driver_id: str) -> None:
    assert len(list((FIXTURES / driver_id).glob("*.json"))) >= 5


@pytest.mark.parametrize("driver_id", sorted(DRIVERS))
def test_declared_characteristics_all_decode(driver_id: str) -> None:
    driver = DRIVERS[driver_id]
    assert driver.info.transport == "ble"
    decoder = driver.gatt_decoder({})
    for characteristic in driver.info.characteristics:
        # An empty value is malformed for every characteristic: an error, but a known UUID.
        result = decoder.value(characteristic.uuid.upper(), b"")
        assert not result.readings
        assert len(result.errors) == 1
        assert "has no characteristic" not in str(result.errors[0])


@pytest.mark.parametrize("driver_id", sorted(DRIVERS))
def test_options_are_refused(driver_id: str) -> None:
    with pytest.raises(OptionError) as excinfo:
        DRIVERS[driver_id].gatt_decoder({"unit": "kg"})
    assert excinfo.value.path == "unit"


def test_glucose_conversion_keeps_the_device_digits() -> None:
    # 5.55 mmol/L sent as 555 x 10^-5 mol/L (SFLOAT 0xB22B): exactly 5.55, not 5.550000001.
    data = bytes.fromhex("06 0100 e807030f070000 2bb2 11")
    (observation,) = gatt_gls.decode_glucose_measurement(data).observations
    assert (observation.value, observation.unit) == (5.55, "mmol/L")


@pytest.mark.parametrize("decode", DECODE_FUNCTIONS, ids=lambda f: f"{f.__module__}.{f.__name__}")
@FUZZ
@given(data=st.binary(max_size=40))
def test_decode_raises_only_decode_error(decode: Callable[[bytes], Reading], data: bytes) -> None:
    try:
        reading = decode(data)
    except DecodeError:
        return
    assert reading.raw == data
    json.dumps(reading.as_dict(), allow_nan=False)


@pytest.mark.parametrize("decode", DECODE_FUNCTIONS, ids=lambda f: f"{f.__module__}.{f.__name__}")
@FUZZ
@given(flags=st.integers(0, 255), tail=st.binary(max_size=30))
def test_decode_with_any_flags_raises_only_decode_error(
    decode: Callable[[bytes], Reading], flags: int, tail: bytes
) -> None:
    # Valid-looking dates make the optional fields after the time stamp reachable.
    data = bytes([flags]) + tail[:2] + bytes.fromhex("e807030f070000") + tail[2:]
    with contextlib.suppress(DecodeError):
        json.dumps(decode(data).as_dict(), allow_nan=False)
