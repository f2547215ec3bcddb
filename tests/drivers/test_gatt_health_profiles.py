"""The health GATT profiles (gatt.hts, gatt.wss, gatt.bps, gatt.gls): every recorded fixture
decodes to exactly its expected readings, and no decode function raises anything but
`DecodeError` on arbitrary bytes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.drivers import gatt_bps, gatt_gls, gatt_hts, gatt_wss
from gateway.kit.conformance import BUILTIN_FIXTURES
from gateway.sdk import DecodeError, GattDriver, OptionError, Reading, parse_hex, uuid16

FIXTURES = BUILTIN_FIXTURES
DRIVERS: dict[str, GattDriver] = {
    d.info.id: d for d in (gatt_hts.DRIVER, gatt_wss.DRIVER, gatt_bps.DRIVER, gatt_gls.DRIVER)
}
CASES = sorted(p for driver_id in DRIVERS for p in (FIXTURES / driver_id).glob("*.json"))
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
    gatt_gls.decode_measurement_context,
    gatt_gls.decode_glucose_feature,
]
FUZZ = settings(max_examples=500, deadline=1000, database=None)


@pytest.mark.parametrize("driver_id", sorted(DRIVERS))
def test_every_driver_has_fixtures(driver_id: str) -> None:
    assert len(list((FIXTURES / driver_id).glob("*.json"))) >= 5


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture(path: Path) -> None:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    decoder = DRIVERS[path.parent.name].gatt_decoder({})
    readings: list[object] = []
    errors: list[Exception] = []
    for value in case["values"]:
        result = decoder.value(uuid16(int(value["char"], 16)), parse_hex(value["hex"]))
        readings += [r.as_dict() for r in result.readings]
        errors += result.errors
    # Through JSON, as the platform will see it.
    assert json.loads(json.dumps(readings, allow_nan=False)) == case["readings"]
    assert len(errors) == case["errors"], [str(e) for e in errors]
    assert all(isinstance(e, DecodeError) for e in errors)


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
