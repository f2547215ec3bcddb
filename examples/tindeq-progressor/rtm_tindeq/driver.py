"""Tindeq Progressor (a Bluetooth LE dynamometer): force samples summarised into repetitions.

What lives here: the Progressor's UUIDs and commands, the pure codec for its data
notifications (`parse`), the driver options (`Settings`), the per-connection decoder that finds
repetitions (`ProgressorDecoder`) and `DRIVER`. Nothing here talks to a radio, reads a clock or
imports anything but `gateway.sdk` and the standard library.

Protocol (Tindeq's public Progressor API): service 7e4e1701-..., notifications on the data
characteristic 7e4e1702-..., commands written to the control characteristic 7e4e1703-....
Every notification is one tag-length-value record, little-endian:

    tag u8 | length u8 | value (length bytes)
    0x00  command response; the answer to 0x6F (battery voltage) is a uint32 in mV
    0x01  weight measurement: samples of float32 weight (kg) + uint32 time (us since 0x65)
    0x04  low power warning

The hub writes 0x6F (sample the battery voltage) and 0x65 (start weight measurement) once the
data characteristic is subscribed, and 0x66 (stop) when it closes the link itself. It never
tares (0x64): taring while a patient pulls would zero their force.

Repetitions. A repetition starts at the first sample at or above `start_threshold_kgf` and ends
at the first sample below `stop_threshold_kgf` (lower: hysteresis, so tremor near one threshold
does not split a pull in two). Its time under tension runs from the first of those samples to
the second; its peak and mean force are over the samples in between, the first included. One
shorter than `min_duration_s` (a knock, the handle swinging) is dropped. Each repetition is ONE
reading; the samples themselves are never signed one by one. A gap of more than a second
between samples (timestamps restart at every 0x65, or samples were lost) ends a repetition in
progress as incomplete, and so does `flush()` when the link ends: incomplete ones end at their
last sample and carry `status["repetition_complete"] = False`.

Units: force stays in the device's own unit, the kilogram-force (UCUM `kgf`: 1 kgf = 9.80665 N
exactly, so a platform converts without loss). UCUM `kg` would say mass, which a unit-aware
platform could not compare with a dynamometer reporting newtons. Options are in kgf too, the unit
the Progressor's own app shows. Values are rounded to 0.01 kgf and 1 ms, below what the load
cell resolves.

A command response is matched to its command by length: the hub sends only 0x6F among the
commands that answer with a value, and its answer is the only 4-byte one. A response of any
other length belongs to a command this hub did not send and is ignored.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.sdk import (
    BleMatch,
    BleSession,
    Characteristic,
    DecodeError,
    DriverInfo,
    FeedResult,
    GattWrite,
    Observation,
    ObservationType,
    OptionError,
    Reading,
    StatusValue,
)

DRIVER_ID = "tindeq.progressor"
SERVICE = "7e4e1701-1ea6-40c9-9dcc-13d34ffead57"
DATA = "7e4e1702-1ea6-40c9-9dcc-13d34ffead57"
CONTROL = "7e4e1703-1ea6-40c9-9dcc-13d34ffead57"

CMD_START_WEIGHT = b"\x65"
CMD_STOP_WEIGHT = b"\x66"
CMD_BATTERY_VOLTAGE = b"\x6f"

TAG_RESPONSE = 0x00
TAG_WEIGHT = 0x01
TAG_LOW_POWER = 0x04

TYPES: Mapping[str, ObservationType] = {
    t.name: t
    for t in (
        ObservationType("peak_force", "kgf"),
        ObservationType("mean_force", "kgf"),
        ObservationType("time_under_tension", "s"),
        ObservationType("battery_voltage", "mV"),
    )
}
"""No MDC or LOINC code names a repetition's force: none is given rather than one invented."""

_SAMPLE = struct.Struct("<fI")
_US_PER_S = 1_000_000
_UINT32 = 1 << 32
# Samples come every 12.5 ms; a second without any means the stream restarted or broke.
MAX_GAP_US = 1_000_000
# A repetition's raw bytes are its notifications: 40 KiB for a one-minute hold. A load left
# hanging for hours must not grow the decoder without end.
MAX_RAW_BYTES = 64 * 1024
MAX_FORCE_KGF = 500.0  # the largest Progressor measures 300 kg
# Beyond any load cell's overload: a corrupted value, and sums of such would overflow to inf.
MAX_SAMPLE_KGF = 1000.0
MAX_MIN_DURATION_S = 60.0


# --- the codec -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One weight sample: force in kgf and the device's time in us since measuring started."""

    kgf: float
    time_us: int


def split_tlv(data: bytes) -> tuple[int, bytes]:
    """The (tag, value) of one notification. Raises `DecodeError` unless the length byte
    accounts for exactly the bytes that follow it."""
    if len(data) < 2:
        raise DecodeError(f"{DRIVER_ID}: a record needs tag and length, got {len(data)} bytes")
    tag, length = data[0], data[1]
    if len(data) - 2 != length:
        raise DecodeError(
            f"{DRIVER_ID}: tag {tag:#04x} says {length} bytes of value, {len(data) - 2} follow"
        )
    return tag, bytes(data[2:])


def parse_samples(value: bytes) -> tuple[Sample, ...]:
    """The samples of a weight measurement value (8 bytes each). Raises `DecodeError` for a
    partial sample, or a weight that is not a number or not one a load cell could report."""
    if len(value) % _SAMPLE.size:
        raise DecodeError(
            f"{DRIVER_ID}: weight measurement of {len(value)} bytes is not whole "
            f"{_SAMPLE.size}-byte samples"
        )
    samples = tuple(Sample(kgf, time_us) for kgf, time_us in _SAMPLE.iter_unpack(value))
    if not all(abs(s.kgf) <= MAX_SAMPLE_KGF for s in samples):  # False for NaN too
        raise DecodeError(
            f"{DRIVER_ID}: a weight sample is not a number from "
            f"-{MAX_SAMPLE_KGF:g} to {MAX_SAMPLE_KGF:g} kgf"
        )
    return samples


# --- options -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """The repetition detector's thresholds (kgf) and shortest repetition (s)."""

    start_threshold_kgf: float = 2.0
    stop_threshold_kgf: float = 1.0
    min_duration_s: float = 0.5

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> Settings:
        """Settings from a device's `options` table. Raises `OptionError` naming the option."""
        names = cls.__dataclass_fields__
        for key in options:
            if key not in names:
                raise OptionError(key, f"unknown option; {DRIVER_ID} takes {', '.join(names)}")
        defaults = cls()
        start = _number(
            options,
            "start_threshold_kgf",
            defaults.start_threshold_kgf,
            low=0.0,
            high=MAX_FORCE_KGF,
            what="a force in kgf",
        )
        if start == 0:
            raise OptionError("start_threshold_kgf", "must be above 0 kgf")
        # Left out, the stop threshold follows a low start threshold down (half of it).
        stop = _number(
            options,
            "stop_threshold_kgf",
            min(defaults.stop_threshold_kgf, start / 2),
            low=0.0,
            high=MAX_FORCE_KGF,
            what="a force in kgf",
        )
        if stop >= start:
            raise OptionError(
                "stop_threshold_kgf",
                f"must be below start_threshold_kgf ({start:g}): the gap is the hysteresis",
            )
        duration = _number(
            options,
            "min_duration_s",
            defaults.min_duration_s,
            low=0.0,
            high=MAX_MIN_DURATION_S,
            what="a duration in seconds",
        )
        return cls(start, stop, duration)


def _number(
    options: Mapping[str, object], name: str, default: float, *, low: float, high: float, what: str
) -> float:
    value = options.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise OptionError(name, f"must be {what}, a number from {low:g} to {high:g}")
    return float(value)


# --- the repetition detector ---------------------------------------------------------------


@dataclass(slots=True)
class _Repetition:
    """A repetition in progress. Times are on the decoder's unwrapped clock (us)."""

    start: int
    start_us: int
    last: int
    last_us: int
    peak: float
    total: float
    samples: int = 1
    parts: list[bytes] = field(default_factory=list)
    raw_size: int = 0
    raw_truncated: bool = False
    last_part: int = -1
    """The notification number of the last part in `parts`."""

    def add_part(self, number: int, data: bytes) -> None:
        if self.last_part == number:
            return
        self.last_part = number
        if self.raw_size + len(data) > MAX_RAW_BYTES:
            self.raw_truncated = True
            return
        self.parts.append(data)
        self.raw_size += len(data)


class ProgressorDecoder:
    """One connection's decoder: the repetition in progress and the device clock so far."""

    __slots__ = ("_clock", "_last_us", "_notifications", "_rep", "_repetitions", "settings")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clock = 0
        self._last_us: int | None = None
        self._rep: _Repetition | None = None
        self._repetitions = 0
        self._notifications = 0

    def value(self, uuid: str, data: bytes) -> FeedResult:
        result = FeedResult()
        if uuid.lower() != DATA:
            result.errors.append(DecodeError(f"{DRIVER_ID} does not decode characteristic {uuid}"))
            return result
        try:
            result.readings += self._record(bytes(data))
        except DecodeError as exc:
            result.errors.append(exc)
        return result

    def _record(self, data: bytes) -> list[Reading]:
        tag, value = split_tlv(data)
        if tag == TAG_WEIGHT:
            return self._samples(parse_samples(value), data)
        if tag == TAG_RESPONSE:
            if len(value) != 4:
                return []
            return [
                Reading((_observation("battery_voltage", int.from_bytes(value, "little")),), data)
            ]
        if tag == TAG_LOW_POWER:
            return [Reading((), data, {"low_power_warning": True})]
        raise DecodeError(
            f"{DRIVER_ID}: tag {tag:#04x} is not one this driver reads "
            "(0x00 response, 0x01 weight, 0x04 low power)"
        )

    def flush(self) -> FeedResult:
        """The link ended: a repetition in progress ends at its last sample, incomplete."""
        result = FeedResult(readings=self._end(complete=False))
        self._last_us = None
        return result

    def _samples(self, samples: tuple[Sample, ...], data: bytes) -> list[Reading]:
        out: list[Reading] = []
        self._notifications += 1
        settings = self.settings
        for sample in samples:
            if self._last_us is not None:
                step = (sample.time_us - self._last_us) % _UINT32  # the us counter wraps at 2^32
                if step > MAX_GAP_US:
                    out += self._end(complete=False)
                self._clock += step
            self._last_us = sample.time_us
            rep = self._rep
            if rep is None:
                if sample.kgf >= settings.start_threshold_kgf:
                    self._rep = rep = _Repetition(
                        self._clock,
                        sample.time_us,
                        self._clock,
                        sample.time_us,
                        sample.kgf,
                        sample.kgf,
                    )
                    rep.add_part(self._notifications, data)
            elif sample.kgf < settings.stop_threshold_kgf:
                rep.add_part(self._notifications, data)
                out += self._end(complete=True, end=self._clock, end_us=sample.time_us)
            else:
                rep.add_part(self._notifications, data)
                rep.last, rep.last_us = self._clock, sample.time_us
                rep.peak = max(rep.peak, sample.kgf)
                rep.total += sample.kgf
                rep.samples += 1
        return out

    def _end(
        self, *, complete: bool, end: int | None = None, end_us: int | None = None
    ) -> list[Reading]:
        rep, self._rep = self._rep, None
        if rep is None:
            return []
        if end is None or end_us is None:
            end, end_us = rep.last, rep.last_us
        duration = end - rep.start
        if duration < self.settings.min_duration_s * _US_PER_S:
            return []
        self._repetitions += 1
        status: dict[str, StatusValue] = {
            "repetition": self._repetitions,
            "samples": rep.samples,
            "start_us": rep.start_us,
            "end_us": end_us,
        }
        if not complete:
            status["repetition_complete"] = False
        if rep.raw_truncated:
            status["raw_truncated"] = True
        observations = (
            _observation("peak_force", round(rep.peak, 2)),
            _observation("mean_force", round(rep.total / rep.samples, 2)),
            _observation("time_under_tension", round(duration / _US_PER_S, 3)),
        )
        return [Reading(observations, b"".join(rep.parts), status)]


def _observation(type_name: str, value: float | int) -> Observation:
    kind = TYPES[type_name]
    return Observation(type_name, value, kind.unit, kind.mdc, kind.loinc)


class ProgressorDriver:
    """The Tindeq Progressor driver."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Tindeq Progressor dynamometer: pulls summarised into repetitions (peak and "
        "mean force, time under tension), battery voltage",
        transport="ble",
        # By name too: apps find Progressors by it, and a device that puts its service UUID
        # only in the scan response is not heard by that UUID in a passive scan.
        match=(BleMatch(service_uuid=SERVICE), BleMatch(local_name=r"Progressor")),
        service=SERVICE,
        # The control characteristic is write-only: the session writes it, nobody subscribes.
        characteristics=(Characteristic(DATA, "progressor-data", "notify"),),
        produces=tuple(TYPES),
        # The decoder summarises the 80 samples a second itself; the hub must not.
        continuous=False,
        sdk_version=(1, 2),
        category="musculoskeletal",
        ble_session=BleSession(
            # The voltage first: its answer arrives before the samples start.
            on_connect=(
                GattWrite(CONTROL, CMD_BATTERY_VOLTAGE),
                GattWrite(CONTROL, CMD_START_WEIGHT),
            ),
            on_disconnect=(GattWrite(CONTROL, CMD_STOP_WEIGHT),),
        ),
    )

    def gatt_decoder(self, options: Mapping[str, object]) -> ProgressorDecoder:
        return ProgressorDecoder(Settings.from_options(options))


DRIVER = ProgressorDriver()
