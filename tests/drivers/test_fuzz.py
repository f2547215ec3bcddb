"""The one fuzz of every installed driver (built-in and the example vendor packages): arbitrary
bytes, in arbitrary chunks and orders, with flushes in between, never raise and never hang.

Bad input may only come back as `DecodeError`s inside a `FeedResult`; every reading's `as_dict()`
form is valid JSON (no NaN or infinity). A driver is fuzzed with every option set it accepts among
"no options" and its fixtures' options. The conformance kit's own fuzz (`driver check`) is not
run over these drivers a second time (tests/test_conformance.py runs the kit with no fuzz
inputs for them): hypothesis shrinks a failure to its smallest input and checks more.

Time bounds count this process's CPU time (`time.process_time`), never the wall clock, and are
generous: a loaded machine must not fail a test, a decoder that loops on some input must.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from functools import partial

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.drivers import contec_cms50d, decode_bytes
from gateway.hub.registry import AnyDriver, Registry
from gateway.kit.conformance import BUILTIN_FIXTURES
from gateway.sdk import (
    DecodeError,
    Driver,
    FeedResult,
    Flushable,
    GattDriver,
    OptionError,
    Reading,
    uuid16,
)

REGISTRY = Registry()
# No example database: a fuzz run must not leave files in the checkout. No deadline: hypothesis
# would fail an example on wall-clock time; the CPU bound below is the time check.
FUZZ = settings(max_examples=300, deadline=None, database=None)
CPU_PER_INPUT = 1.0
"""Seconds of CPU one feed/value/flush call may take (the kit's default is 50 ms wall)."""
UNDECLARED = uuid16(0x2A00)
"""Device Name: no driver decodes it; a value on it must be an error, not an exception."""
ONE_PER_VALUE = {"gatt.plx", "gatt.hrs", "gatt.bas", "gatt.dis", "gatt.cts"}
"""Profiles that keep no state between values: each value gives exactly one reading or error."""


def _fixture_options(driver: AnyDriver) -> list[Mapping[str, object]]:
    """Every option set the driver accepts among {} and its built-in fixtures' options (a
    vendor driver that needs options is then left out, which test_every_driver_is_fuzzed
    catches)."""
    folder = BUILTIN_FIXTURES / driver.info.id
    candidates: list[Mapping[str, object]] = [{}]
    for path in sorted(folder.glob("*.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        if "options" in case and "option_error" not in case and case["options"] not in candidates:
            candidates.append(case["options"])
    accepted = []
    for options in candidates:
        try:
            (driver.decoder if isinstance(driver, Driver) else driver.gatt_decoder)(options)
        except OptionError:
            continue
        accepted.append(options)
    return accepted


CASES = [(d, o) for d in REGISTRY for o in _fixture_options(d)]
SERIAL = [(d, o) for d, o in CASES if isinstance(d, Driver)]
GATT = [(d, o) for d, o in CASES if isinstance(d, GattDriver) and not isinstance(d, Driver)]


def _id(value: object) -> str:
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)[:40] if value else "no-options"
    info = getattr(value, "info", None)
    return str(getattr(info, "id", value))


def _check(result: FeedResult) -> FeedResult:
    assert all(isinstance(r, Reading) for r in result.readings)
    assert all(type(e) is DecodeError for e in result.errors), result.errors
    for reading in result.readings:
        json.dumps(reading.as_dict(), allow_nan=False)  # the JSON form is always valid JSON
    return result


def _timed(call: Callable[[], FeedResult]) -> FeedResult:
    started = time.process_time()
    result = call()
    spent = time.process_time() - started
    assert spent < CPU_PER_INPUT, f"{spent:.2f} s of CPU for one input"
    return _check(result)


FLUSH = None
"""A step that flushes the decoder (as at a link's end) before more input arrives."""


@pytest.mark.parametrize(("driver", "options"), SERIAL, ids=_id)
@FUZZ
@given(steps=st.lists(st.one_of(st.binary(max_size=64), st.none()), max_size=40))
def test_feed_arbitrary_chunks_and_flushes_never_raises(
    driver: Driver, options: Mapping[str, object], steps: list[bytes | None]
) -> None:
    decoder = driver.decoder(options)
    for step in steps:
        if step is not FLUSH:
            _timed(partial(decoder.feed, step))
        elif isinstance(decoder, Flushable):
            _timed(decoder.flush)
    if isinstance(decoder, Flushable):
        _timed(decoder.flush)


@pytest.mark.parametrize(("driver", "options"), SERIAL, ids=_id)
@FUZZ
@given(data=st.binary(max_size=2048), cut=st.integers(min_value=0, max_value=2048))
def test_chunking_does_not_change_the_result(
    driver: Driver, options: Mapping[str, object], data: bytes, cut: int
) -> None:
    whole = driver.decoder(options).feed(data)
    decoder = driver.decoder(options)
    first, second = decoder.feed(data[:cut]), decoder.feed(data[cut:])
    assert [r.as_dict() for r in first.readings + second.readings] == [
        r.as_dict() for r in whole.readings
    ]
    assert len(first.errors) + len(second.errors) == len(whole.errors)


@pytest.mark.parametrize(("driver", "options"), GATT, ids=_id)
@FUZZ
@given(data=st.data())
def test_gatt_values_and_flushes_never_raise(
    driver: GattDriver, options: Mapping[str, object], data: st.DataObject
) -> None:
    """Arbitrary values on the driver's characteristics (and one it does not declare), in any
    order, with flushes between, to one decoder (some profiles keep state between values)."""
    decoder = driver.gatt_decoder(options)
    uuids = [c.uuid for c in driver.info.characteristics]
    value = st.tuples(st.sampled_from([*uuids, UNDECLARED]), st.binary(max_size=200))
    steps = data.draw(st.lists(st.one_of(value, st.none()), max_size=30))
    flush = getattr(decoder, "flush", None)
    for step in steps:
        if step is FLUSH:
            if callable(flush):
                _timed(flush)
            continue
        uuid, payload = step
        result = _timed(partial(decoder.value, uuid, payload))
        if driver.info.id in ONE_PER_VALUE:
            assert len(result.readings) + len(result.errors) == 1
    if callable(flush):
        _timed(flush)


def test_every_driver_is_fuzzed() -> None:
    fuzzed = {d.info.id for d, _ in SERIAL + GATT}
    assert fuzzed == set(REGISTRY.ids())
    assert fuzzed >= ONE_PER_VALUE


@pytest.mark.parametrize(("driver", "options"), SERIAL, ids=_id)
def test_large_input_is_decoded_in_bounded_time(
    driver: Driver, options: Mapping[str, object]
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value, no newline or frame structure
    started = time.process_time()
    _check(decode_bytes(driver, data, options))
    assert time.process_time() - started < 10.0


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
    for options in _fixture_options(driver):
        _check(decode_bytes(driver, text.encode("utf-8"), options))
