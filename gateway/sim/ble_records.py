"""Simulated devices that store records: a pulse oximeter (PLXS 0x1822) and a glucose meter (GLS
0x1808), both serving their records through a Record Access Control Point (0x2A52).

Layouts sent (the Pulse Oximeter and Glucose service specifications and the Record Access
Control Point of the GATT Specification Supplement), little-endian:

- PLX Continuous (0x2A5F, notify), 9 bytes: flags 0x14 (Measurement Status, PAI), SpO2 SFLOAT
  (exponent 0), PR SFLOAT (exponent 0), Measurement Status 0x0080 (validated data), PAI SFLOAT
  (exponent -1, 1.0-10.0 %).
- PLX Spot-check (0x2A5E, indicate), 14 bytes: flags 0x03 (Timestamp, Measurement Status),
  SpO2, PR, Date Time, Measurement Status 0x0080, plus bit 9 (data from storage, 0x0280) for
  stored records; 7 bytes, flags 0x02, for a record without a time stamp (the time stamp is
  optional: two such records with the same values are byte for byte the same).
- PLX Features (0x2A60, read): 4D 00 80 02 = Measurement Status support, spot-check storage,
  spot-check timestamp, PAI; then the Measurement Status bits it uses (7 and 9).
- Glucose Measurement (0x2A18, notify), 15 or 17 bytes: flags 0x03 (time offset, concentration
  in kg/L with type/location) | 0x08 (sensor status, some records) | 0x10 (context follows, some
  records); sequence number, base time, time offset 0, concentration SFLOAT mg/dL x 1e-5 kg/L
  (exponent -5), type/location 0x11 (capillary whole blood, finger) or 0x12 (plasma), status.
- Glucose Measurement Context (0x2A34, notify), sent right after its measurement: flags 0x06
  (meal, tester/health) | 0x01 (carbohydrate id + SFLOAT kg, exponent -3) when it has one;
  sequence number, then those fields; tester 1 (self), health 5 (no health issues).
- Glucose Feature (0x2A51, read): 2F 00 = low battery, sensor malfunction, sample size, strip
  insertion and result high/low detection.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from gateway.sdk import uuid16
from gateway.sim.ble_base import (
    DEVICE_INFORMATION,
    SERIAL_NUMBER,
    Walk,
    date_time,
    local_now,
    sfloat,
    spread_times,
    u16,
)
from gateway.sim.ble_racp import RACP, Operator, RecordStoreDevice
from gateway.sim.bluez import CharSpec

PLX_SERVICE = uuid16(0x1822)
SPOT_CHECK = uuid16(0x2A5E)
CONTINUOUS = uuid16(0x2A5F)
PLX_FEATURES = uuid16(0x2A60)

GLS_SERVICE = uuid16(0x1808)
GLUCOSE_MEASUREMENT = uuid16(0x2A18)
GLUCOSE_CONTEXT = uuid16(0x2A34)
GLUCOSE_FEATURE = uuid16(0x2A51)

_VALIDATED = 0x0080
_FROM_STORAGE = 0x0200
_RACP_FLAGS = ("write", "indicate")


class _Clock:
    """A device clock: set to `clock` at construction (the host's local time by default) and
    running with the host's from then on."""

    def __init__(self, clock: datetime | None) -> None:
        self._offset = timedelta() if clock is None else clock - local_now()

    def now(self) -> datetime:
        return local_now() + self._offset


# --- pulse oximeter -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpotCheck:
    """One spot-check measurement, as the oximeter stores it."""

    time: datetime | None
    """None: taken while the oximeter's clock was not set; sent without a time stamp."""
    spo2: int
    pulse_rate: int

    def encode(self, *, stored: bool) -> bytes:
        status = _VALIDATED | (_FROM_STORAGE if stored else 0)
        stamp = b"" if self.time is None else date_time(self.time)
        return (
            bytes((0x02 if self.time is None else 0x03,))
            + sfloat(self.spo2)
            + sfloat(self.pulse_rate)
            + stamp
            + u16(status)
        )


class PulseOximeter(RecordStoreDevice[SpotCheck]):
    """A fingertip pulse oximeter: continuous values live, spot-checks indicated live every
    `spot_check_every` seconds (0: never), and `stored_records` spot-checks taken before the
    hub connected, an hour apart (or exactly `records`, such as two identical ones without a
    time stamp). PLX records have no sequence number, so its RACP takes only the "all records"
    operator: report, delete and count (`keeps_records`: it refuses the delete)."""

    driver_id = "gatt.plx"
    service = PLX_SERVICE
    model = "SIM-PLX-1"
    what = "a pulse oximeter (continuous, spot-check, stored spot-checks over RACP)"

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:50:00:01",
        name: str = "Sim Oximeter",
        serial: str = "PLX-000001",
        seed: int | None = None,
        stored_records: int = 5,
        record_interval: float = 0.0,
        spot_check_every: int = 30,
        clock: datetime | None = None,
        battery_level: int = 90,
        records: Sequence[SpotCheck] | None = None,
        keeps_records: bool = False,
    ) -> None:
        if stored_records < 0 or spot_check_every < 0:
            raise ValueError("stored_records and spot_check_every must not be negative")
        super().__init__(
            address=address,
            name=name,
            serial=serial,
            seed=seed,
            battery_level=battery_level,
            stored=(),
            record_interval=record_interval,
            operators=frozenset({Operator.ALL}),
            supports_delete=not keeps_records,
            profile={
                SPOT_CHECK: CharSpec(("indicate",)),
                CONTINUOUS: CharSpec(("notify",)),
                PLX_FEATURES: CharSpec(("read",), u16(0x004D) + u16(_VALIDATED | _FROM_STORAGE)),
                RACP: CharSpec(_RACP_FLAGS),
            },
        )
        self.spot_check_every = spot_check_every
        self.clock = _Clock(clock)
        self._spo2 = Walk(self.rng, 97, 94, 99, 0.4)
        self._pulse = Walk(self.rng, 72, 60, 90, 1.5)
        self._pai = Walk(self.rng, 4.0, 1.0, 10.0, 0.2)
        self.stored = (
            list(records)
            if records is not None
            else [
                SpotCheck(time, *self._vitals())
                for time in spread_times(
                    self.rng, self.clock.now(), stored_records, timedelta(hours=1)
                )
            ]
        )

    def _vitals(self) -> tuple[int, int]:
        return round(self._spo2.next()), round(self._pulse.next())

    async def live(self, first: bool) -> None:
        spo2, pulse = self._vitals()
        await self.send(
            CONTINUOUS,
            bytes((0x14,))
            + sfloat(spo2)
            + sfloat(pulse)
            + u16(_VALIDATED)
            + sfloat(round(self._pai.next() * 10), -1),
        )
        if self.spot_check_every and (self.ticks + 1) % self.spot_check_every == 0:
            await self.send(
                SPOT_CHECK, SpotCheck(self.clock.now(), spo2, pulse).encode(stored=False)
            )

    async def add_record(self) -> SpotCheck:
        """Take a spot-check now: indicated live if a central listens (and no transfer runs),
        stored otherwise, as an oximeter with storage does. On the device's loop."""
        record = SpotCheck(self.clock.now(), *self._vitals())
        if self.transferring or not self.listening(SPOT_CHECK):
            self.stored.append(record)
        else:
            await self.send(SPOT_CHECK, record.encode(stored=False))
        return record

    async def send_record(self, record: SpotCheck) -> None:
        await self.send(SPOT_CHECK, record.encode(stored=True))


# --- glucose meter ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GlucoseContext:
    """What the patient entered with a reading: meal, optional carbohydrates, tester, health."""

    meal: int
    carbohydrate_id: int | None = None
    carbohydrate_g: int | None = None
    tester: int = 1
    health: int = 5

    def encode(self, sequence: int) -> bytes:
        carbs = self.carbohydrate_id is not None and self.carbohydrate_g is not None
        data = bytes((0x06 | (0x01 if carbs else 0),)) + u16(sequence)
        if self.carbohydrate_id is not None and self.carbohydrate_g is not None:
            data += bytes((self.carbohydrate_id,)) + sfloat(self.carbohydrate_g, -3)  # kg
        return data + bytes((self.meal, self.health << 4 | self.tester))


@dataclass(frozen=True, slots=True)
class GlucoseRecord:
    """One stored glucose measurement."""

    sequence: int
    time: datetime
    mg_dl: int
    sample_type: int = 1
    location: int = 1
    sensor_status: int | None = None
    context: GlucoseContext | None = None

    def measurement(self, *, with_context: bool = True) -> bytes:
        context = self.context is not None and with_context
        flags = 0x03 | (0x08 if self.sensor_status is not None else 0) | (0x10 if context else 0)
        data = (
            bytes((flags,))
            + u16(self.sequence)
            + date_time(self.time)
            + u16(0)
            + sfloat(self.mg_dl, -5)
            + bytes((self.location << 4 | self.sample_type,))
        )
        if self.sensor_status is not None:
            data += u16(self.sensor_status)
        return data


class GlucoseMeter(RecordStoreDevice[GlucoseRecord]):
    """A blood glucose meter holding `records` measurements (sequence numbers from
    `first_sequence`, about 8 hours apart; a uint16 counter: after 65535 comes 0), served over
    RACP: report and count (op 4: the number of stored records) with the
    `operators` given (all, >= sequence number, first, last by default), abort; delete only if
    `supports_delete`. Records go out `record_interval` seconds apart (0: as fast as the loop
    allows, yielding between records). `run` takes a new measurement every period."""

    driver_id = "gatt.gls"
    service = GLS_SERVICE
    model = "SIM-GLS-1"
    default_rate = 1 / 60
    what = "a glucose meter (stored records over RACP, a new measurement each period)"
    DEFAULT_OPERATORS: ClassVar[frozenset[int]] = frozenset(
        {Operator.ALL, Operator.AT_LEAST, Operator.FIRST, Operator.LAST}
    )

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:60:00:01",
        name: str = "Sim Glucose",
        serial: str = "GLS-000001",
        seed: int | None = None,
        records: int = 20,
        first_sequence: int = 1,
        record_interval: float = 0.0,
        context: bool = True,
        sensor_status: bool = True,
        operators: Collection[int] = DEFAULT_OPERATORS,
        supports_delete: bool = False,
        clock: datetime | None = None,
        battery_level: int = 90,
    ) -> None:
        if records < 0 or not 0 <= first_sequence <= 0xFFFF:
            raise ValueError("records must be >= 0 and first_sequence fit in uint16")
        profile: dict[str, CharSpec] = {GLUCOSE_MEASUREMENT: CharSpec(("notify",))}
        if context:
            profile[GLUCOSE_CONTEXT] = CharSpec(("notify",))
        profile[GLUCOSE_FEATURE] = CharSpec(("read",), u16(0x002F))
        profile[RACP] = CharSpec(_RACP_FLAGS)
        super().__init__(
            address=address,
            name=name,
            serial=serial,
            seed=seed,
            battery_level=battery_level,
            stored=(),
            record_interval=record_interval,
            operators=frozenset(operators),
            supports_delete=supports_delete,
            profile=profile,
        )
        self.has_context = context
        self.has_sensor_status = sensor_status
        self.clock = _Clock(clock)
        self.next_sequence = first_sequence
        self.stored = [
            self._measure(time)
            for time in spread_times(self.rng, self.clock.now(), records, timedelta(hours=8))
        ]

    def _measure(self, time: datetime, mg_dl: int | None = None) -> GlucoseRecord:
        rng = self.rng
        context = None
        if self.has_context and rng.random() < 0.3:
            after_meal = rng.random() < 0.5
            context = GlucoseContext(
                meal=2 if after_meal else 1,
                carbohydrate_id=rng.choice((1, 2, 3, 4)) if after_meal else None,
                carbohydrate_g=rng.randrange(20, 90, 5) if after_meal else None,
            )
        status = None
        if self.has_sensor_status and rng.random() < 0.1:
            status = rng.choice((0x0000, 0x0001))  # nothing to report, or battery low
        record = GlucoseRecord(
            sequence=self.next_sequence,
            time=time,
            mg_dl=mg_dl if mg_dl is not None else round(min(280, max(60, rng.gauss(125, 30)))),
            sample_type=2 if rng.random() < 0.1 else 1,
            sensor_status=status,
            context=context,
        )
        self.next_sequence = (self.next_sequence + 1) & 0xFFFF  # a uint16: 65535, then 0
        return record

    def clear_memory(self, *, records: int = 0, first_sequence: int = 1) -> None:
        """The meter's memory is cleared (some meters do this on a battery change) and its
        counter starts again at `first_sequence`; then it takes `records` new measurements.
        On the device's loop, or while it is not running."""
        self.next_sequence = first_sequence
        self.stored = [
            self._measure(time)
            for time in spread_times(self.rng, self.clock.now(), records, timedelta(hours=8))
        ]

    def replace(self, serial: str, *, records: int = 0, first_sequence: int = 1) -> None:
        """Another meter of this model takes this one's place under the same address (the
        patient's replacement): its own serial number, counter and records. Seen from the next
        connection on (the service table is read on connecting)."""
        services = self.peripheral.services
        info = {**services[DEVICE_INFORMATION], SERIAL_NUMBER: CharSpec(("read",), serial.encode())}
        self.peripheral.services = {**services, DEVICE_INFORMATION: info}
        self.serial = serial
        self.clear_memory(records=records, first_sequence=first_sequence)

    async def add_record(self, mg_dl: int | None = None, *, live: bool = True) -> GlucoseRecord:
        """A new measurement taken now: stored, and notified live if a central listens and no
        transfer runs (it would break the transfer's order; the next sync gets it); `live`
        False: stored only (the meter's owner did not open the app). On the device's loop."""
        record = self._measure(self.clock.now(), mg_dl)
        self.stored.append(record)
        if live and not self.transferring and self.listening(GLUCOSE_MEASUREMENT):
            await self.send_record(record)
        return record

    async def live(self, first: bool) -> None:
        await self.add_record()

    def sequence(self, record: GlucoseRecord) -> int:
        return record.sequence

    async def send_record(self, record: GlucoseRecord) -> None:
        await self.send(GLUCOSE_MEASUREMENT, record.measurement(with_context=self.has_context))
        if self.has_context and record.context is not None:
            await self.send(GLUCOSE_CONTEXT, record.context.encode(record.sequence))
