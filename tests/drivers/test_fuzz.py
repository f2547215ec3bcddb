"""Fuzz every registered driver: arbitrary bytes, in arbitrary chunks, never raise and never hang.

Bad input may only come back as `DecodeError`s inside a `FeedResult`. A driver's options come
from its first fixture that has valid options (none for drivers without options).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.drivers import contec_cms50d, decode_bytes
from gateway.hub.registry import AnyDriver, Registry
from gateway.kit.conformance import BUILTIN_FIXTURES
from gateway.sdk import DecodeError, Driver, FeedResult, Flushable, GattDriver, Reading

FIXTURES = BUILTIN_FIXTURES
REGISTRY = Registry()
DRIVERS = [d for d in REGISTRY if isinstance(d, Driver)]
GATT_DRIVERS = [d for d in REGISTRY if isinstance(d, GattDriver)]
# No example database: a fuzz run must not leave files in the checkout.
FUZZ = settings(max_examples=300, deadline=1000, database=None)


def _options(driver: AnyDriver) -> Mapping[str, object]:
    for path in sorted((FIXTURES / driver.info.id).glob("*.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        if "options" in case and "option_error" not in case:
            options: Mapping[str, object] = case["options"]
            return options
    return {}


def _check(result: FeedResult) -> None:
    assert all(isinstance(r, Reading) for r in result.readings)
    assert all(isinstance(e, DecodeError) for e in result.errors)
    for reading in result.readings:
        json.dumps(reading.as_dict(), allow_nan=False)  # the JSON form is always valid JSON


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.info.id)
@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=40))
def test_feed_arbitrary_chunks_never_raises(driver: Driver, chunks: list[bytes]) -> None:
    decoder = driver.decoder(_options(driver))
    for chunk in chunks:
        _check(decoder.feed(chunk))
    if isinstance(decoder, Flushable):
        _check(decoder.flush())


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.info.id)
@FUZZ
@given(data=st.binary(max_size=2048), cut=st.integers(min_value=0, max_value=2048))
def test_chunking_does_not_change_the_result(driver: Driver, data: bytes, cut: int) -> None:
    options = _options(driver)
    whole = driver.decoder(options).feed(data)
    decoder = driver.decoder(options)
    first, second = decoder.feed(data[:cut]), decoder.feed(data[cut:])
    assert [r.as_dict() for r in first.readings + second.readings] == [
        r.as_dict() for r in whole.readings
    ]
    assert len(first.errors) + len(second.errors) == len(whole.errors)


@pytest.mark.parametrize("driver", GATT_DRIVERS, ids=lambda d: d.info.id)
@FUZZ
@given(data=st.data())
def test_gatt_values_never_raise(driver: GattDriver, data: st.DataObject) -> None:
    """Arbitrary values on the driver's characteristics, in any order, to one decoder (some
    profiles keep state between values): only DecodeErrors in the results, within bounds."""
    decoder = driver.gatt_decoder(_options(driver))
    uuids = [c.uuid for c in driver.info.characteristics]
    values = data.draw(
        st.lists(st.tuples(st.sampled_from(uuids), st.binary(max_size=40)), max_size=30)
    )
    started = time.monotonic()
    for uuid, value in values:
        _check(decoder.value(uuid, value))
    assert time.monotonic() - started < 5.0


def test_every_driver_is_fuzzed() -> None:
    assert len(DRIVERS) + len(GATT_DRIVERS) == len(REGISTRY)


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.info.id)
def test_large_input_is_decoded_in_bounded_time(driver: Driver) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value, no newline or frame structure
    started = time.monotonic()
    _check(decode_bytes(driver, data, _options(driver)))
    assert time.monotonic() - started < 10.0


@FUZZ
@given(frame=st.binary(max_size=12))
def test_decode_frame_raises_only_decode_error(frame: bytes) -> None:
    try:
        reading = contec_cms50d.decode_frame(frame)
    except DecodeError:
        return
    assert len(frame) == 5
    assert reading.raw == frame


@FUZZ
@given(
    body=st.lists(st.integers(min_value=0, max_value=0x7F), min_size=4, max_size=4),
    head=st.integers(min_value=0x80, max_value=0xFF),
)
def test_every_well_formed_frame_decodes_without_fake_zeros(head: int, body: list[int]) -> None:
    reading = contec_cms50d.decode_frame(bytes([head, *body]))
    for observation in reading.observations:
        assert observation.value != 0
        assert (observation.value is None) == (observation.absent == "error")


@FUZZ
@given(text=st.text(alphabet="spo2rt=,.-+eE0123456789 \r\n\xe9", max_size=200))
@example(text="spo2=1e999\nt=1e999\npr=-1e999,x=9e99999\n")
def test_kv_lines_near_miss_text(text: str) -> None:
    driver = REGISTRY.get_serial("generic.kv-lines")
    _check(decode_bytes(driver, text.encode("utf-8"), _options(driver)))
