"""The Tindeq Progressor driver and simulator: the package's recorded fixtures, the repetition
detector's edges, a fuzz that the decoder never raises, and the simulator driven through the
real bleak on a private D-Bus bus with the hub's virtual BlueZ (no radio, no root).

Run from the rtm-gateway checkout, with the package installed (`pip install -e
examples/tindeq-progressor`): `pytest -q examples/tindeq-progressor/tests`.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from gateway.kit.vendor import (
    BluezThread,
    Registry,
    bleak_session,
    characteristic_uuid,
    lab_available,
    simulator_classes,
    start_device,
    stop_device,
    virtual_lab,
)
from gateway.sdk import (
    DecodeError,
    FeedResult,
    GattDecoder,
    GattDriver,
    GattWrite,
    OptionError,
    Reading,
    parse_hex,
)

import rtm_tindeq
from rtm_tindeq.driver import CONTROL, DATA, DRIVER, MAX_RAW_BYTES, ProgressorDecoder, Settings
from rtm_tindeq.simulator import Progressor

FIXTURES = Path(rtm_tindeq.__file__).parent / "fixtures" / "tindeq.progressor"
CASES = sorted(FIXTURES.glob("*.json"))
PERIOD_US = 12_500


def _weight(samples: Iterable[tuple[float, int]]) -> bytes:
    body = b"".join(struct.pack("<fI", kgf, us) for kgf, us in samples)
    return bytes((0x01, len(body))) + body


def _feed(decoder: GattDecoder, values: Iterable[tuple[str, bytes]]) -> FeedResult:
    total = FeedResult()
    for uuid, data in values:
        result = decoder.value(uuid, data)
        total.readings += result.readings
        total.errors += result.errors
    return total


def _pull(start_us: int, kgf: Iterable[float]) -> list[tuple[float, int]]:
    """Samples 12.5 ms apart from `start_us`, as the device sends them."""
    return [(f, start_us + i * PERIOD_US) for i, f in enumerate(kgf)]


def _notifications(samples: list[tuple[float, int]], per: int = 4) -> list[tuple[str, bytes]]:
    return [(DATA, _weight(samples[i : i + per])) for i in range(0, len(samples), per)]


def _values(reading: Reading) -> dict[str, object]:
    return {o.type: o.value for o in reading.observations}


# --- the recorded fixtures ----------------------------------------------------------------


def test_the_package_ships_its_fixtures() -> None:
    assert len(CASES) >= 5, f"fixtures missing under {FIXTURES}"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_fixture(path: Path) -> None:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    options = case.get("options", {})
    if "option_error" in case:
        with pytest.raises(OptionError) as excinfo:
            DRIVER.gatt_decoder(options)
        assert excinfo.value.path == case["option_error"]
        return
    result = _feed(
        DRIVER.gatt_decoder(options),
        [(characteristic_uuid(v["char"]), parse_hex(v["hex"])) for v in case["values"]],
    )
    # Through JSON, as the platform will see it.
    assert json.loads(json.dumps([r.wire() for r in result.readings])) == case["readings"]
    assert len(result.errors) == case["errors"], [str(e) for e in result.errors]
    assert all(isinstance(e, DecodeError) for e in result.errors)


# --- the declaration and the plugin entry points -------------------------------------------


def test_the_hub_loads_the_driver_and_the_simulator_from_the_entry_points() -> None:
    registry = Registry.load()
    assert registry.get("tindeq.progressor") is DRIVER
    assert registry.source("tindeq.progressor") == "rtm-driver-tindeq-progressor"
    assert registry.match_ble(local_name="Progressor_1A2B") is DRIVER
    assert registry.match_ble(service_uuids=["7E4E1701-1EA6-40C9-9DCC-13D34FFEAD57"]) is DRIVER
    assert simulator_classes()["tindeq.progressor"] is Progressor


def test_the_declaration() -> None:
    info = DRIVER.info
    assert isinstance(DRIVER, GattDriver)
    assert (info.transport, info.category, info.sdk_version) == ("ble", "musculoskeletal", (1, 2))
    assert [(c.uuid, c.mode) for c in info.characteristics] == [(DATA, "notify")]
    assert info.ble_session is not None
    assert info.ble_session.on_connect == (GattWrite(CONTROL, b"\x6f"), GattWrite(CONTROL, b"\x65"))
    assert info.ble_session.on_disconnect == (GattWrite(CONTROL, b"\x66"),)
    assert set(info.produces) == {
        "peak_force",
        "mean_force",
        "time_under_tension",
        "battery_voltage",
    }
    assert not info.continuous


# --- options ------------------------------------------------------------------------------


def test_options_default_and_given() -> None:
    assert Settings.from_options({}) == Settings(2.0, 1.0, 0.5)
    assert Settings.from_options(
        {"start_threshold_kgf": 10, "stop_threshold_kgf": 4.5, "min_duration_s": 1}
    ) == Settings(10.0, 4.5, 1.0)
    # Left out, the stop threshold follows a low start threshold down.
    assert Settings.from_options({"start_threshold_kgf": 1.2}) == Settings(1.2, 0.6, 0.5)


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"threshold": 2}, "threshold"),
        ({"start_threshold_kgf": True}, "start_threshold_kgf"),
        ({"start_threshold_kgf": "2"}, "start_threshold_kgf"),
        ({"start_threshold_kgf": math.nan}, "start_threshold_kgf"),
        ({"start_threshold_kgf": 0}, "start_threshold_kgf"),
        ({"start_threshold_kgf": 501}, "start_threshold_kgf"),
        ({"stop_threshold_kgf": -1}, "stop_threshold_kgf"),
        ({"stop_threshold_kgf": 2}, "stop_threshold_kgf"),
        ({"start_threshold_kgf": 3, "stop_threshold_kgf": 4}, "stop_threshold_kgf"),
        ({"min_duration_s": -0.1}, "min_duration_s"),
        ({"min_duration_s": 61}, "min_duration_s"),
        ({"min_duration_s": math.inf}, "min_duration_s"),
    ],
)
def test_bad_options_are_refused_by_name(options: Mapping[str, object], path: str) -> None:
    with pytest.raises(OptionError) as excinfo:
        DRIVER.gatt_decoder(options)
    assert excinfo.value.path == path


# --- the repetition detector --------------------------------------------------------------


def test_a_realistic_pull_at_80_samples_a_second() -> None:
    rest = [0.02, -0.03, 0.05, 0.0] * 10
    pull = [20.0 * min(1.0, i / 30, (320 - i) / 20) for i in range(321)]  # 4 s, peak 20
    samples = _pull(0, rest + pull + rest)
    result = _feed(DRIVER.gatt_decoder({}), _notifications(samples))
    assert result.errors == []
    [rep] = result.readings
    values = _values(rep)
    assert values["peak_force"] == 20.0
    # Above 2 kgf from sample 40 + 3 (2.0 at i = 3); below 1 kgf at 40 + 320 (1.0 at i = 319
    # is not below): 317 samples of 12.5 ms.
    assert rep.status["samples"] == 317
    assert values["time_under_tension"] == round(317 * PERIOD_US / 1e6, 3)
    assert isinstance(values["mean_force"], float)
    assert 15.0 < values["mean_force"] < 20.0


def test_flush_ends_a_repetition_in_progress_as_incomplete() -> None:
    decoder = DRIVER.gatt_decoder({})
    assert _feed(decoder, _notifications(_pull(500_000, [10.0] * 60))).readings == []
    [rep] = decoder.flush().readings
    assert rep.status == {
        "repetition": 1,
        "samples": 60,
        "start_us": 500_000,
        "end_us": 500_000 + 59 * PERIOD_US,
        "repetition_complete": False,
    }
    # 59 x 12.5 ms: to the last sample, as no sample below the stop threshold came.
    assert _values(rep)["time_under_tension"] == round(59 * PERIOD_US / 1e6, 3)
    assert decoder.flush().readings == []


def test_flush_drops_a_spike_in_progress() -> None:
    decoder = DRIVER.gatt_decoder({})
    _feed(decoder, _notifications(_pull(0, [0.0, 8.0, 9.0])))
    assert decoder.flush().readings == []


def test_a_restarted_measurement_ends_the_repetition_in_progress() -> None:
    decoder = DRIVER.gatt_decoder({})
    first = _pull(0, [12.0] * 80)  # 1 s at 12 kgf, then the hub's 0x65 restarts the clock
    second = _pull(0, [0.0] * 8 + [14.0] * 80 + [0.0] * 4)
    result = _feed(decoder, _notifications(first + second))
    assert [r.status.get("repetition_complete", True) for r in result.readings] == [False, True]
    assert [_values(r)["peak_force"] for r in result.readings] == [12.0, 14.0]
    assert result.readings[0].status["end_us"] == 79 * PERIOD_US


def test_a_long_hold_keeps_its_raw_bytes_bounded() -> None:
    decoder = DRIVER.gatt_decoder({})
    hold = _pull(0, [25.0] * 80 * 120 + [0.0])  # two minutes
    [rep] = _feed(decoder, _notifications(hold)).readings
    assert rep.status["raw_truncated"] is True
    assert len(rep.raw) <= MAX_RAW_BYTES
    assert _values(rep)["time_under_tension"] == 120.0


def test_thresholds_from_the_options() -> None:
    samples = _notifications(_pull(0, [0.0] + [6.0] * 40 + [0.0]))
    assert _feed(DRIVER.gatt_decoder({}), samples).readings
    assert _feed(DRIVER.gatt_decoder({"start_threshold_kgf": 8}), samples).readings == []
    assert _feed(DRIVER.gatt_decoder({"min_duration_s": 0.6}), samples).readings == []


# --- robustness ---------------------------------------------------------------------------


def _random_value(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.4:  # well-framed weight records, any sample bytes (NaN, huge, negative)
        body = rng.randbytes(8 * rng.randint(0, 4))
        return bytes((0x01, len(body))) + body
    if kind < 0.6:  # plausible samples
        start = rng.randrange((1 << 32) - 4 * PERIOD_US)
        return _weight(_pull(start, [rng.uniform(-5, 40) for _ in range(rng.randint(0, 4))]))
    if kind < 0.8:  # a known tag with any length byte and any bytes
        body = rng.randbytes(rng.randint(0, 12))
        return bytes((rng.choice((0x00, 0x01, 0x04)), rng.randint(0, 255))) + body
    return rng.randbytes(rng.randint(0, 40))


def test_the_decoder_never_raises_on_random_bytes() -> None:
    rng = random.Random(20240611)
    for _ in range(20):
        decoder = DRIVER.gatt_decoder({})
        results = [
            decoder.value(rng.choice((DATA, DATA, DATA, CONTROL)), _random_value(rng))
            for _ in range(200)
        ]
        results.append(decoder.flush())
        for result in results:
            assert all(isinstance(e, DecodeError) for e in result.errors)
            # JSON has no NaN or infinity: nothing may reach the wire that it cannot carry.
            json.dumps([r.wire() for r in result.readings], allow_nan=False)


# --- the simulator through the real bleak --------------------------------------------------

needs_dbus = pytest.mark.skipif(not lab_available(), reason="needs dbus-daemon")
RATE = 200.0  # notifications a second: ten times the device's own pace


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[BluezThread]:
    """A private bus with the hub's virtual BlueZ on it, and bleak here pointed at it."""
    with virtual_lab(bin_dir=tmp_path / "bin") as handle:
        yield handle


class Inbox:
    """The data notifications bleak delivered, in order, with an event per arrival."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.arrived = asyncio.Event()

    def __call__(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        self.values.append(bytes(data))
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.values) < count:
                self.arrived.clear()
                await self.arrived.wait()


@needs_dbus
def test_the_simulator_streams_pulls_the_driver_counts_as_repetitions(lab: BluezThread) -> None:
    device = Progressor(seed=11)
    # Read now: the base class drains the battery by live values, and these come fast.
    millivolts = device.millivolts
    running = start_device(lab, device, RATE)

    async def session() -> tuple[Inbox, int]:
        inbox = Inbox()
        async with bleak_session():
            found = await BleakScanner.find_device_by_filter(
                lambda d, _adv: (d.name or "").startswith("Progressor"), timeout=5
            )
            assert found is not None
            async with BleakClient(found, timeout=5) as client:
                await client.start_notify(DATA, inbox)
                await client.write_gatt_char(CONTROL, b"\x6f", response=True)
                await inbox.wait_for(1)
                await client.write_gatt_char(CONTROL, b"\x65", response=True)
                await asyncio.sleep(2.5)  # 25 s of the device's life
                await client.write_gatt_char(CONTROL, b"\x66", response=True)
                await asyncio.sleep(0.2)  # what was already on its way
                stopped = len(inbox.values)
                await asyncio.sleep(0.5)
        return inbox, stopped

    try:
        inbox, stopped = asyncio.run(session())
    finally:
        stop_device(lab, device).result(5)
        running.result(5)

    assert len(inbox.values) == stopped, "notifications went on after 0x66"
    assert not device.streaming
    assert [w for _, w in device.write_log] == [b"\x6f", b"\x65", b"\x66"]
    assert len(inbox.values) > 0.6 * RATE * 2.5
    assert device.samples_sent == 4 * (len(inbox.values) - 1)

    decoder = DRIVER.gatt_decoder({})
    assert isinstance(decoder, ProgressorDecoder)
    result = _feed(decoder, [(DATA, v) for v in inbox.values])
    assert result.errors == []
    battery, *reps = result.readings
    assert _values(battery) == {"battery_voltage": millivolts}
    assert reps, "no repetition in 25 s of sets of pulls"
    for rep in reps:
        values = _values(rep)
        peak, mean, tut = values["peak_force"], values["mean_force"], values["time_under_tension"]
        assert isinstance(peak, float)
        assert isinstance(mean, float)
        assert isinstance(tut, float)
        assert 14.0 <= peak <= 33.0, values  # 15-30 kgf aimed at, +-5 % and tremor
        assert 0.5 * peak < mean < peak
        assert 2.5 <= tut <= 5.5, values  # 3-5 s pulls, less the rise below 2 kgf
        samples = rep.status["samples"]
        assert isinstance(samples, int)
        assert abs(samples - tut * 80) <= 2


@needs_dbus
def test_rtm_gateway_scan_names_the_driver(lab: BluezThread) -> None:
    device = Progressor(seed=1)
    running = start_device(lab, device)
    try:
        # The command a technician runs; the lab pointed this process's environment at its bus.
        # A vendor driver's match rules are its code: without a configuration that allows it,
        # scan imports it only when asked (--load).
        scanned = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "scan",
                "--seconds",
                "1.5",
                "--json",
                "--load",
                "tindeq.progressor",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        stop_device(lab, device).result(5)
        running.result(5)
    assert scanned.returncode == 0, scanned.stderr
    rows = [(row["address"], row["name"], row["driver"]) for row in json.loads(scanned.stdout)]
    assert rows == [("C0:FF:EE:A0:00:01", "Progressor_0001", "tindeq.progressor")]
