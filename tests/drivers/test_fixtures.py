"""Runs every recorded fixture of every built-in driver: gateway/drivers/fixtures/<id>/*.json
(shipped with the package, so `rtm-gateway driver check ID` runs them too).

A fixture is one case: the recorded bytes (hex), the driver options if any, and the whole
expected result, so a vendor can read one and write the next:

    description   what the case shows
    options       the device's `options` table (default {})
    hex           the bytes as received
    flush         true for a one-shot decode (`rtm-gateway decode`): flush at the end
    readings      every expected reading, as `Reading.wire()` dicts
    errors        how many DecodeErrors the bytes must produce
    serial        optional: the expected `SerialSettings.describe()` for these options
    option_error  instead of readings/errors: the options must be refused at this path

Every case is fed whole, byte by byte and in random chunks; all must give the same result.

A Bluetooth LE (GATT) driver's case has `values` instead of `hex`: the characteristic values
one connection received, in order, each `{"char": "2a37", "hex": "..."}`; they go to one
decoder, since some profiles carry state from value to value.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.conformance import BUILTIN_FIXTURES
from gateway.drivers import serial_settings_for
from gateway.registry import AnyDriver, Registry, characteristic_uuid
from gateway.sdk import DecodeError, Driver, Flushable, GattDriver, OptionError, parse_hex

FIXTURES = BUILTIN_FIXTURES
CASES = sorted(FIXTURES.glob("*/*.json"))
REGISTRY = Registry(entry_points=())


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def _decode(driver: Driver, options: Mapping[str, object], chunks: Iterable[bytes],
            *, flush: bool) -> tuple[list[object], list[DecodeError]]:
    decoder = driver.decoder(options)
    readings: list[object] = []
    errors: list[DecodeError] = []
    for chunk in chunks:
        result = decoder.feed(chunk)
        readings += [r.wire() for r in result.readings]
        errors += result.errors
    if flush:
        assert isinstance(decoder, Flushable)
        result = decoder.flush()
        readings += [r.wire() for r in result.readings]
        errors += result.errors
    # Through JSON, as the platform will see it.
    return json.loads(json.dumps(readings)), errors


def _random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, start = [], 0
    while start < len(data):
        size = rng.randint(1, 7)
        chunks.append(data[start:start + size])
        start += size
    return chunks


def test_fixtures_exist() -> None:
    assert CASES, f"no fixtures under {FIXTURES}"


@pytest.mark.parametrize("driver", list(REGISTRY), ids=lambda d: d.info.id)
def test_every_builtin_driver_has_fixtures(driver: AnyDriver) -> None:
    assert list((FIXTURES / driver.info.id).glob("*.json")), f"{driver.info.id} has no fixtures"


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture(path: Path) -> None:
    case = _load(path)
    driver = REGISTRY.get(path.parent.name)
    options = case.get("options", {})
    if "option_error" in case:
        with pytest.raises(OptionError) as excinfo:
            REGISTRY.check_options(driver.info.id, options)
        assert excinfo.value.path == case["option_error"]
        return
    if isinstance(driver, GattDriver):
        _gatt_case(driver, options, case)
        return
    assert isinstance(driver, Driver)
    if "serial" in case:
        assert serial_settings_for(driver, options).describe() == case["serial"]

    data = parse_hex(case["hex"])
    flush = bool(case.get("flush", False))
    readings, errors = _decode(driver, options, [data], flush=flush)
    assert readings == case["readings"]
    assert len(errors) == case["errors"], [str(e) for e in errors]
    assert all(isinstance(e, DecodeError) for e in errors)

    rng = random.Random(path.name)
    splits = [[data[i:i + 1] for i in range(len(data))]] + [
        _random_chunks(data, rng) for _ in range(5)]
    for chunks in splits:
        assert _decode(driver, options, chunks, flush=flush)[0] == readings
        assert len(_decode(driver, options, chunks, flush=flush)[1]) == len(errors)


def _gatt_case(driver: GattDriver, options: Mapping[str, object], case: dict[str, Any]) -> None:
    decoder = driver.gatt_decoder(options)
    readings: list[object] = []
    errors: list[DecodeError] = []
    for value in case["values"]:
        result = decoder.value(characteristic_uuid(value["char"]), parse_hex(value["hex"]))
        readings += [r.wire() for r in result.readings]
        errors += result.errors
    assert json.loads(json.dumps(readings)) == case["readings"]
    assert len(errors) == case["errors"], [str(e) for e in errors]
    assert all(isinstance(e, DecodeError) for e in errors)


def test_decode_bytes_flushes_a_final_line() -> None:
    result = REGISTRY.decode("generic.kv-lines", b"spo2=97\nspo2=0",
                             {"keys": {"spo2": {"type": "spo2"}}})
    assert [r.observations[0].value for r in result.readings] == [97, 0]
    assert not result.errors


def test_decode_bytes_without_flush_support() -> None:
    frame = bytes.fromhex("88 40 04 48 61")
    result = REGISTRY.decode("contec.cms50d", frame + frame[:3], {})
    assert len(result.readings) == 1
    assert not result.errors
