"""The decode budget around vendor drivers, the fixed-width name rule, and the registry's choice
of plugins by name (the subprocess tests are in test_plugin_allowlist.py)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

import pytest

from gateway.hub.driver_match import name_pattern_problem
from gateway.hub.plugin_budget import (
    MAX_RESULTS,
    MAX_STUCK,
    DecodeBudgetExceeded,
    DecodeOutputTooLarge,
    budgeted,
)
from gateway.hub.registry import InvalidDriverError, Registry, validate_driver
from gateway.sdk import (
    AfterCommit,
    BleMatch,
    BleSession,
    Characteristic,
    DecodeError,
    Driver,
    DriverInfo,
    FeedResult,
    Flushable,
    GattDriver,
    Observation,
    Reading,
    StoredRecords,
    uuid16,
)
from tests.test_registry import FakeDist, FakeEntryPoint, driver

BUDGET = 0.5  # generous: a call within it must finish on a loaded CI machine too


class _Gate:
    """A decoder that waits for the test to open a gate: a decode that overruns its budget."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def feed(self, data: bytes) -> FeedResult:
        self.calls += 1
        if data == b"wait":
            self.gate.wait(10)
        if data == b"bug":
            raise KeyError("a driver bug")
        if data == b"exit":
            raise SystemExit(3)
        if data == b"wide":  # one observation more than a reading may carry
            return FeedResult(readings=[Reading((Observation.known("spo2", 97),) * 65, raw=data)])
        if data.startswith(b"many"):
            reading = Reading((Observation.known("spo2", 97),), raw=data[4:])
            return FeedResult(readings=[reading] * (MAX_RESULTS + 1 if data == b"many" else 1))
        return FeedResult(errors=[DecodeError(f"{len(data)} bytes")])

    def flush(self) -> FeedResult:
        return FeedResult()


@dataclasses.dataclass
class _GateDriver:
    info: DriverInfo
    decoder_object: _Gate

    def decoder(self, options: Mapping[str, object]) -> _Gate:
        return self.decoder_object


def _gated() -> tuple[Driver, _Gate]:
    gate = _Gate()
    wrapped = budgeted(_GateDriver(driver("acme.gate").info, gate), BUDGET)
    assert isinstance(wrapped, Driver)
    return wrapped, gate


def test_a_decode_within_budget_returns_its_result_and_errors_pass_through() -> None:
    wrapped, _ = _gated()
    decoder = wrapped.decoder({})
    assert isinstance(decoder, Flushable)  # the wrapper keeps the decoder's optional flush
    assert [str(e) for e in decoder.feed(b"abc").errors] == ["3 bytes"]
    with pytest.raises(KeyError):  # a driver bug reaches ReadingPath as before
        decoder.feed(b"bug")
    # A vendor's sys.exit() would get past the sessions' `except Exception` and end the hub.
    with pytest.raises(RuntimeError, match=r"driver acme\.gate raised SystemExit"):
        decoder.feed(b"exit")
    assert wrapped.info.id == "acme.gate"


def test_a_result_larger_than_one_input_can_mean_is_refused() -> None:
    wrapped, _ = _gated()
    decoder = wrapped.decoder({})
    with pytest.raises(DecodeOutputTooLarge, match="more than 1000 results"):
        decoder.feed(b"many")
    with pytest.raises(DecodeOutputTooLarge, match="raw bytes"):
        decoder.feed(b"many" + bytes(64 * 1024 + 1))
    assert len(decoder.feed(b"many" + bytes(100)).readings) == 1
    with pytest.raises(DecodeOutputTooLarge, match="over 64 observations"):
        decoder.feed(b"wide")


def test_a_decode_over_budget_raises_and_the_next_call_gets_a_new_worker() -> None:
    wrapped, gate = _gated()
    decoder = wrapped.decoder({})
    with pytest.raises(DecodeBudgetExceeded):
        decoder.feed(b"wait")
    # The stuck call still runs on its abandoned worker; a new one serves the next call.
    assert [str(e) for e in decoder.feed(b"ab").errors] == ["2 bytes"]
    for _ in range(MAX_STUCK - 1):
        with pytest.raises(DecodeBudgetExceeded):
            decoder.feed(b"wait")
    calls = gate.calls
    with pytest.raises(DecodeBudgetExceeded, match="still running"):
        decoder.feed(b"ab")  # no thread is started for a driver with MAX_STUCK stuck calls
    assert gate.calls == calls
    gate.gate.set()
    wait = threading.Event()
    for _ in range(200):  # the abandoned calls end once the gate opens
        try:
            assert decoder.feed(b"ab").errors
            break
        except DecodeBudgetExceeded:
            wait.wait(0.01)
    else:
        pytest.fail("the driver stayed refused after its stuck calls ended")


def test_the_registry_budgets_plugins_for_sessions_but_not_builtins() -> None:
    gate = _Gate()
    plugin = FakeEntryPoint(
        "acme.gate", lambda: _GateDriver(driver("acme.gate").info, gate), FakeDist("acme")
    )
    registry = Registry(entry_points=[plugin], by_name=True, decode_budget=BUDGET)
    session_driver = registry.get_serial("acme.gate")
    assert session_driver is not registry.get("acme.gate")  # `get` is the driver itself
    with pytest.raises(DecodeBudgetExceeded):
        session_driver.decoder({}).feed(b"wait")
    # Every device of the driver shares its budget: a second session's decoder finds the
    # driver's stuck call, and after MAX_STUCK of them no new thread is started for any.
    assert registry.get_serial("acme.gate") is session_driver
    with pytest.raises(DecodeBudgetExceeded):
        registry.get_serial("acme.gate").decoder({}).feed(b"wait")
    with pytest.raises(DecodeBudgetExceeded, match="2 decodes still running"):
        registry.get_serial("acme.gate").decoder({}).feed(b"ab")
    gate.gate.set()
    assert registry.get_serial("contec.cms50d") is registry.get("contec.cms50d")
    assert [p.id for p in registry.plugins()] == ["acme.gate"]
    assert registry.plugins()[0].distribution == "acme"


def test_a_vendors_stored_record_callbacks_run_under_the_budget_too() -> None:
    """The session calls StoredRecords and AfterCommit callbacks on the event loop for every
    record: a vendor's that hangs is cut off like a decode, and raises into the session's
    guard (which logs the type and goes on with live values)."""
    gate = threading.Event()

    def hang(_value: object) -> bool:
        gate.wait(10)
        return True

    stored = StoredRecords(
        records=uuid16(0x2A18),
        control=uuid16(0x2A52),
        request=lambda _after: b"\x01\x01",
        cursor=lambda _reading: 1,
        done=hang,
        after_commit=AfterCommit(b"\x02", hang),
    )
    info = dataclasses.replace(driver("acme.meter").info, ble_session=BleSession(stored=stored))
    wrapped = budgeted(_GateDriver(info, _Gate()), BUDGET)
    bounded = wrapped.info.ble_session
    assert bounded is not None and bounded.stored is not None
    assert bounded.stored.request(None) == b"\x01\x01"
    with pytest.raises(DecodeBudgetExceeded):
        bounded.stored.done(b"\x10")
    after = bounded.stored.after_commit
    assert after is not None
    with pytest.raises(DecodeBudgetExceeded):
        after.answer(b"\x10")
    gate.set()


def test_a_plugin_chosen_by_name_must_carry_that_driver_id() -> None:
    renamed = FakeEntryPoint("acme.gate", lambda: driver("acme.other"), FakeDist("acme"))
    registry = Registry(entry_points=[renamed], by_name=True)
    assert "acme.other" not in registry and "acme.gate" not in registry
    assert "entry point is named 'acme.gate' but its driver id is 'acme.other'" in (
        registry.problems[0].reason
    )


@pytest.mark.parametrize(
    "pattern", ["Progressor", "SPIRO-[0-9]{4}", r"^Acme\.\d{2}$", "[]a]b", r"[^\]]{3}x"]
)
def test_fixed_width_name_patterns_are_accepted(pattern: str) -> None:
    assert name_pattern_problem(pattern) is None


@pytest.mark.parametrize(
    "pattern",
    ["(a+)+$", ".?.?.?x", "a*", "a+", "a{2,}", "x{65}", "a|b", "(?i)x", "^x$y", "a(", "a" * 129],
)
def test_name_patterns_that_could_backtrack_are_refused(pattern: str) -> None:
    assert name_pattern_problem(pattern) is not None


def test_a_driver_with_a_backtracking_name_rule_is_invalid() -> None:
    @dataclasses.dataclass
    class Gatt:
        info: DriverInfo

        def gatt_decoder(self, options: Mapping[str, object]) -> object:
            raise NotImplementedError

    info = DriverInfo(
        id="acme.band",
        version="1.0",
        description="test",
        transport="ble",
        match=(BleMatch(local_name="(a+)+$"),),
        characteristics=(Characteristic(uuid16(0x2A37), "measurement", "notify"),),
    )
    candidate = Gatt(info)
    assert isinstance(candidate, GattDriver)
    with pytest.raises(InvalidDriverError, match="fixed-width"):
        validate_driver(candidate)
