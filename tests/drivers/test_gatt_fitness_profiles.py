"""The fitness GATT profile drivers (gatt.ftms, gatt.rscs, gatt.cscs): the behaviour fixtures
cannot show (flush, chunking-independent merging), with the profiles' particular states (split
records, counters).

Their recorded fixtures run through the conformance kit (tests/test_conformance.py); the one
fuzz (tests/drivers/test_fuzz.py) feeds arbitrary values on every characteristic, and on one
they do not declare, with flushes between.
"""

from __future__ import annotations

import pytest

from gateway.drivers import gatt_cscs, gatt_ftms, gatt_ftms_machines, gatt_rscs
from gateway.hub.registry import characteristic_uuid
from gateway.kit.conformance import BUILTIN_FIXTURES
from gateway.sdk import GattDriver, OptionError, Reading

FIXTURES = BUILTIN_FIXTURES
DRIVERS: dict[str, GattDriver] = {
    d.info.id: d for d in (gatt_ftms.DRIVER, gatt_rscs.DRIVER, gatt_cscs.DRIVER)
}


def _ftms(hexes: list[str], char: int = 0x2AD2) -> tuple[gatt_ftms.FtmsDecoder, list[Reading]]:
    decoder = gatt_ftms.DRIVER.gatt_decoder({})
    assert isinstance(decoder, gatt_ftms.FtmsDecoder)
    readings: list[Reading] = []
    for text in hexes:
        result = decoder.value(characteristic_uuid(f"{char:04x}"), bytes.fromhex(text))
        assert not result.errors
        readings += result.readings
    return decoder, readings


def test_split_record_is_one_reading_with_every_field() -> None:
    _, readings = _ftms(["45 00 b4 00 c8 00", "01 02 8c", "00 08 c4 09 3c 00"])
    assert len(readings) == 1
    values = {o.type: o.value for o in readings[0].observations}
    assert values == {
        "cadence": 90.0,
        "power": 200,
        "heart_rate": 140,
        "speed": 25.0,
        "elapsed_time": 60,
    }
    assert readings[0].raw == bytes.fromhex("4500b400c80001028c0008c4093c00")


def test_flush_emits_an_unfinished_record_as_incomplete() -> None:
    decoder, readings = _ftms(["45 00 b4 00 c8 00"])
    assert readings == []
    tail = decoder.flush()
    assert len(tail.readings) == 1
    assert tail.readings[0].status == {"record_complete": False}
    assert decoder.flush().readings == []


def test_pending_parts_are_kept_per_characteristic() -> None:
    decoder = gatt_ftms.DRIVER.gatt_decoder({})
    bike, rower = characteristic_uuid("2ad2"), characteristic_uuid("2ad1")
    assert not decoder.value(bike, bytes.fromhex("45 00 b4 00 c8 00")).readings
    rowed = decoder.value(rower, bytes.fromhex("00 00 38 fa 00"))
    assert [o.type for o in rowed.readings[0].observations] == ["stroke_rate", "stroke_count"]
    biked = decoder.value(bike, bytes.fromhex("00 00 c4 09"))
    assert [o.type for o in biked.readings[0].observations] == ["cadence", "power", "speed"]


def test_endless_more_data_does_not_grow_without_bound() -> None:
    _, readings = _ftms(["01 00"] * (3 * gatt_ftms.MAX_PARTS))
    assert len(readings) == 2
    assert all(r.status == {"record_complete": False} for r in readings)


def test_every_machine_table_is_ordered_and_typed() -> None:
    for machine in (
        gatt_ftms_machines.INDOOR_BIKE,
        gatt_ftms_machines.TREADMILL,
        gatt_ftms_machines.ROWER,
        gatt_ftms_machines.CROSS_TRAINER,
        gatt_ftms_machines.STEP_CLIMBER,
    ):
        bits = [bit for bit, _ in machine.groups]
        assert bits == sorted(set(bits)) and bits[0] == 0, machine.name
        assert all(
            f.type in gatt_ftms_machines.TYPES for _, fields in machine.groups for f in fields
        )


def test_ftms_never_subscribes_to_the_control_point() -> None:
    uuids = {c.uuid for c in gatt_ftms.DRIVER.info.characteristics}
    assert characteristic_uuid("2ad9") not in uuids
    assert characteristic_uuid("2ad9") not in gatt_ftms.CHARACTERISTICS


@pytest.mark.parametrize("value", [0.05, 5.5, float("nan"), float("inf"), True, "2.1", [2.1]])
def test_cscs_refuses_a_bad_circumference(value: object) -> None:
    with pytest.raises(OptionError) as excinfo:
        gatt_cscs.DRIVER.gatt_decoder({"wheel_circumference_m": value})
    assert excinfo.value.path == "wheel_circumference_m"


def test_cscs_rate_after_an_error_uses_the_last_good_measurement() -> None:
    decoder = gatt_cscs.DRIVER.gatt_decoder({})
    uuid = characteristic_uuid("2a5b")
    decoder.value(uuid, bytes.fromhex("02 64 00 00 04"))
    assert decoder.value(uuid, bytes.fromhex("02 65")).errors
    result = decoder.value(uuid, bytes.fromhex("02 66 00 00 08"))
    assert [(o.type, o.value) for o in result.readings[0].observations] == [
        ("crank_revolutions", 102),
        ("cadence", 120.0),
    ]
