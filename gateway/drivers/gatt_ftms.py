"""Fitness Machine Service (FTMS, 0x1826), read only: the machines' data characteristics, the
feature read, training status and machine status.

What lives here: the one generic record parser the machine tables (gatt_ftms_machines.py) drive,
the per-connection decoder that merges records split over several notifications, and `DRIVER`;
the status characteristics are decoded in gatt_ftms_status.py. Nothing here writes to the
machine: the control point (0x2AD9) is never touched, because controlling a connected device
would take the hub out of the MDDS exemption.

Record layout (all machines): flags (uint16, 24-bit for the cross trainer), then the fields each
flag bit announces, in table order, little-endian. Bit 0 is "More Data" and works the other way
round: the first field group is present when bit 0 is 0.

Split records: a machine may send one record as several notifications, "More Data" = 1 on all
but the last. The decoder keeps the parts per characteristic and emits ONE reading when the last
part arrives; its `raw` is the parts' bytes concatenated in arrival order. If a part brings a
field that the pending parts already hold, the previous record was never completed: the pending
parts are emitted as their own reading with `status["record_complete"] = False` and the new part
starts the next record, so nothing is lost and nothing is counted twice. `flush()` does the same
for parts still pending when the connection ends.

Trailing bytes after the flagged fields are an error (a flag-polarity quirk would otherwise give
wrong numbers silently), unless a reserved flag bit is set: then they belong to a field this
driver does not know and are ignored. Fields whose value is the spec's "data not available"
marker are left out, as if their flag were clear; a heart rate of 0 (no strap) is null with
`absent = "error"`, as in gatt.hrs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.drivers.gatt_ftms_machines import (
    CROSS_TRAINER,
    INDOOR_BIKE,
    ROWER,
    STEP_CLIMBER,
    TREADMILL,
    TYPES,
    Machine,
)
from gateway.drivers.gatt_ftms_status import (
    decode_feature,
    decode_machine_status,
    decode_training_status,
)
from gateway.sdk import (
    BleMatch,
    Characteristic,
    DecodeError,
    FeedResult,
    GattTableDriver,
    Observation,
    Reading,
    StatusValue,
    no_options,
    sint_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.ftms"


@dataclass(frozen=True, slots=True)
class Part:
    """One notification of a machine record."""

    more_data: bool
    observations: tuple[Observation, ...]
    status: Mapping[str, StatusValue]
    raw: bytes


def parse_part(machine: Machine, data: bytes) -> Part:
    """Decode one data notification by the machine's table. Raises only `DecodeError`."""
    flags = uint_from(data, 0, machine.flags_size)
    offset = machine.flags_size
    observations: list[Observation] = []
    for bit, fields in machine.groups:
        # Bit 0 ("More Data") is inverted: the first group is present when it is 0.
        if bool(flags >> bit & 1) == (bit == 0):
            continue
        for field in fields:
            read = sint_from if field.signed else uint_from
            raw = read(data, offset, field.size)
            offset += field.size
            if raw != field.unavailable:
                observations.append(field.observation(raw))
    if offset != len(data) and not flags & ~machine.known_bits:
        raise DecodeError(
            f"FTMS {machine.name} data: {len(data) - offset} bytes after the "
            f"fields its flags {flags:#x} announce"
        )
    status = {name: (on if flags >> bit & 1 else off) for bit, name, off, on in machine.flag_status}
    return Part(bool(flags & 1), tuple(observations), status, bytes(data))


def merge(parts: list[Part], complete: bool) -> Reading:
    status: dict[str, StatusValue] = {}
    for part in parts:
        status.update(part.status)
    if not complete:
        status["record_complete"] = False
    return Reading(
        observations=tuple(o for p in parts for o in p.observations),
        raw=b"".join(p.raw for p in parts),
        status=status,
    )


CHARACTERISTICS: Mapping[str, Machine | Callable[[bytes], Reading]] = {
    uuid16(0x2AD2): INDOOR_BIKE,
    uuid16(0x2ACD): TREADMILL,
    uuid16(0x2AD1): ROWER,
    uuid16(0x2ACE): CROSS_TRAINER,
    uuid16(0x2ACF): STEP_CLIMBER,
    uuid16(0x2ACC): decode_feature,
    uuid16(0x2AD3): decode_training_status,
    uuid16(0x2ADA): decode_machine_status,
}

# Enough for any real split (a record has at most 16 field groups); a machine that sets
# "More Data" forever must not make the decoder hold its bytes forever.
MAX_PARTS = 16


class FtmsDecoder:
    """One connection's decoder: keeps the pending parts of split records per characteristic."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[str, list[Part]] = {}

    def value(self, uuid: str, data: bytes) -> FeedResult:
        result = FeedResult()
        key = uuid.lower()
        entry = CHARACTERISTICS.get(key)
        if entry is None:
            result.errors.append(DecodeError(f"{DRIVER_ID}: no characteristic {uuid}"))
            return result
        try:
            if isinstance(entry, Machine):
                result.readings.extend(self._record(key, parse_part(entry, data)))
            else:
                result.readings.append(entry(data))
        except DecodeError as exc:
            result.errors.append(exc)
        return result

    def flush(self) -> FeedResult:
        """The connection ended: emit every unfinished record as incomplete."""
        result = FeedResult(readings=[merge(p, complete=False) for p in self._pending.values()])
        self._pending.clear()
        return result

    def _record(self, key: str, part: Part) -> list[Reading]:
        out: list[Reading] = []
        pending = self._pending.pop(key, [])
        held = {o.type for p in pending for o in p.observations}
        if pending and (held & {o.type for o in part.observations} or len(pending) >= MAX_PARTS):
            out.append(merge(pending, complete=False))
            pending = []
        pending.append(part)
        if part.more_data:
            self._pending[key] = pending
        else:
            out.append(merge(pending, complete=True))
        return out


def _decoder(options: Mapping[str, object]) -> FtmsDecoder:
    no_options(DRIVER_ID, options)
    return FtmsDecoder()


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Fitness Machine Service (bike, treadmill, rower, cross trainer, "
    "step climber), read only",
    category="musculoskeletal",
    match=(BleMatch(service_uuid=uuid16(0x1826)),),
    service=uuid16(0x1826),
    characteristics=(
        Characteristic(uuid16(0x2ACC), "fitness-machine-feature", "read"),
        Characteristic(uuid16(0x2AD2), "indoor-bike-data", "notify", optional=True),
        Characteristic(uuid16(0x2ACD), "treadmill-data", "notify", optional=True),
        Characteristic(uuid16(0x2AD1), "rower-data", "notify", optional=True),
        Characteristic(uuid16(0x2ACE), "cross-trainer-data", "notify", optional=True),
        Characteristic(uuid16(0x2ACF), "step-climber-data", "notify", optional=True),
        Characteristic(uuid16(0x2AD3), "training-status", "notify", optional=True),
        Characteristic(uuid16(0x2ADA), "fitness-machine-status", "notify", optional=True),
    ),
    decoder_factory=_decoder,
    observation_types=tuple(TYPES.values()),
)
