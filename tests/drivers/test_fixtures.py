"""Runs every recorded fixture of every built-in driver: gateway/drivers/fixtures/<id>/*.json
(shipped with the package, so `rtm-gateway driver check ID` runs them too).

A fixture is one case: the recorded bytes (hex), the driver options if any, and the whole
expected result, so a vendor can read one and write the next:

    description   what the case shows
    options       the device's `options` table (default {})
    hex           the bytes as received
    flush         true for a one-shot decode (`rtm-gateway decode`): flush at the end
    readings      every expected reading, as `Reading.as_dict()` dicts
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
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.registry import AnyDriver, Registry
from gateway.kit.conformance import BUILTIN_FIXTURES, fixture_problems

FIXTURES = BUILTIN_FIXTURES
CASES = sorted(FIXTURES.glob("*/*.json"))
REGISTRY = Registry(entry_points=())


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def test_fixtures_exist() -> None:
    assert CASES, f"no fixtures under {FIXTURES}"


@pytest.mark.parametrize("driver", list(REGISTRY), ids=lambda d: d.info.id)
def test_every_builtin_driver_has_fixtures(driver: AnyDriver) -> None:
    assert list((FIXTURES / driver.info.id).glob("*.json")), f"{driver.info.id} has no fixtures"


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture(path: Path) -> None:
    # The same runner `rtm-gateway driver check` uses for a vendor's fixtures.
    driver = REGISTRY.get(path.parent.name)
    problems, _ = fixture_problems(driver, _load(path), seed=path.name)
    assert not problems, "\n".join(problems)


def test_decode_bytes_flushes_a_final_line() -> None:
    result = REGISTRY.decode(
        "generic.kv-lines", b"spo2=97\nspo2=0", {"keys": {"spo2": {"type": "spo2"}}}
    )
    assert [r.observations[0].value for r in result.readings] == [97, 0]
    assert not result.errors


def test_decode_bytes_without_flush_support() -> None:
    frame = bytes.fromhex("88 40 04 48 61")
    result = REGISTRY.decode("contec.cms50d", frame + frame[:3], {})
    assert len(result.readings) == 1
    assert not result.errors
