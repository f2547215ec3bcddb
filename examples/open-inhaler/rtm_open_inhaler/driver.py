"""The open smart-inhaler sensor profile (rtm-gateway's own open profile, not any vendor's
product): the pure codecs and the `openrtm.inhaler` driver.

What lives here: the profile's UUIDs, `decode_actuation_event`, `decode_sensor_features`, the
Record Control Point's requests and responses (`request_events`, `parse_response`,
`transfer_done`), `event_counter` (the hub's stored-record cursor) and `DRIVER`. It imports
gateway.sdk and the standard library only: no I/O, no clock. README.md has the byte tables.

Actuation Event (notify; also carries stored events), little-endian, 13 to 17 bytes:

    flags            uint8      bit 0 peak inspiratory flow present, bit 1 inhalation duration
                                present, bit 2 clock not set, bit 3 from storage; 4-7 reserved
    event counter    uint32     +1 per actuation, never reused
    device time      Date Time  7 bytes, the sensor's local wall clock
    medication role  uint8      0 unknown, 1 controller, 2 rescue, 3 controller and rescue
    peak flow        SFLOAT     L/min, when bit 0
    duration         uint16     ms, when bit 1

A value is exactly as long as its flags say, unless a reserved flag bit is set: then the bytes
after the known fields belong to a later version of the profile and are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.sdk import (
    BitNames,
    BleMatch,
    BleSession,
    Characteristic,
    ClockStatus,
    DecodeError,
    GattTableDriver,
    Observation,
    ObservationType,
    Reading,
    StatusValue,
    StoredRecords,
    date_time_from,
    name_bits,
    sfloat_from,
    uint_from,
)

DRIVER_ID = "openrtm.inhaler"

# A random version-4 UUID with its 16 bits after the first four hex digits set to 0001; the
# characteristics count on from there (0002, 0003, 0004).
SERVICE = "2f620001-5316-400a-a3db-7194b34df5b3"
SENSOR_FEATURES = "2f620002-5316-400a-a3db-7194b34df5b3"
ACTUATION_EVENT = "2f620003-5316-400a-a3db-7194b34df5b3"
RECORD_CONTROL_POINT = "2f620004-5316-400a-a3db-7194b34df5b3"

ACTUATION_UNIT = "{actuation}"
PEAK_FLOW_UNIT = "L/min"
DURATION_UNIT = "s"

_FLOW_PRESENT = 0x01
_DURATION_PRESENT = 0x02
_CLOCK_NOT_SET = 0x04
_FROM_STORAGE = 0x08
_RESERVED_FLAGS = 0xF0
_FIXED_SIZE = 13  # flags, counter, Date Time, role

MEDICATION_ROLES: Mapping[int, str] = {1: "controller", 2: "rescue", 3: "controller_and_rescue"}
"""Medication role codes; 0 is "unknown" and is left out of a reading's status."""

_FEATURES: BitNames = {
    0: "peak_flow_supported",
    1: "inhalation_duration_supported",
    2: "real_time_clock_supported",
}
_ROLE_BITS: BitNames = {0: "role_controller", 1: "role_rescue", 2: "role_controller_and_rescue"}

# Record Control Point op codes and result codes.
REPORT_AFTER = 0x01
REPORT_ALL = 0x02
ABORT = 0x03
RESPONSE = 0x80
SUCCESS = 0x01
NO_EVENTS = 0x02
OP_CODE_NOT_SUPPORTED = 0x03
INVALID_OPERAND = 0x04
RESULT_NAMES: Mapping[int, str] = {
    SUCCESS: "success",
    NO_EVENTS: "no events",
    OP_CODE_NOT_SUPPORTED: "op code not supported",
    INVALID_OPERAND: "invalid operand",
}
MAX_COUNTER = 0xFFFFFFFF


# --- Actuation Event and Sensor Features -----------------------------------------------------


def decode_actuation_event(data: bytes) -> Reading:
    """One actuation: an `inhaler_actuation` observation (value 1), then the inhalation's peak
    flow and duration when the sensor measured them. Raises `DecodeError` for a malformed value."""
    flags = uint_from(data, 0, 1)
    expected = (
        _FIXED_SIZE + (2 if flags & _FLOW_PRESENT else 0) + (2 if flags & _DURATION_PRESENT else 0)
    )
    if len(data) < expected or (len(data) > expected and not flags & _RESERVED_FLAGS):
        raise DecodeError(
            f"Actuation Event with flags {flags:#04x} must be {expected} bytes, got {len(data)}"
        )
    status: dict[str, StatusValue] = {"event_counter": uint_from(data, 1, 4)}
    role = uint_from(data, 12, 1)
    if role:
        status["medication_role"] = MEDICATION_ROLES.get(role, "reserved")
    status["from_storage"] = bool(flags & _FROM_STORAGE)
    moment = date_time_from(data, 5)
    clock: ClockStatus = "not-set" if flags & _CLOCK_NOT_SET or moment is None else "set"
    observations = [Observation("inhaler_actuation", 1, ACTUATION_UNIT)]
    offset = _FIXED_SIZE
    if flags & _FLOW_PRESENT:
        flow = sfloat_from(data, offset)
        observations.append(
            Observation("inhalation_peak_flow", flow.value, PEAK_FLOW_UNIT, absent=flow.absent)
        )
        offset += 2
    if flags & _DURATION_PRESENT:
        # Milliseconds to seconds, keeping every millisecond and adding no float noise.
        observations.append(
            Observation(
                "inhalation_duration", round(uint_from(data, offset, 2) / 1000, 3), DURATION_UNIT
            )
        )
    return Reading(tuple(observations), bytes(data), status, moment, clock)


def decode_sensor_features(data: bytes) -> Reading:
    """Sensor Features: what the sensor measures and which medication roles it serves, as
    status. Bytes after the first three belong to a later version and are ignored."""
    if len(data) < 3:
        raise DecodeError(f"Sensor Features must be at least 3 bytes, got {len(data)}")
    status = name_bits(uint_from(data, 0, 2), _FEATURES) | name_bits(data[2], _ROLE_BITS)
    return Reading((), bytes(data), status)


# --- the Record Control Point: what StoredRecords needs ----------------------------------------


def request_events(last: int | None) -> bytes:
    """The request for the events after counter `last`; every stored event when None."""
    if last is None or last < 0:
        return bytes((REPORT_ALL,))
    # No counter is above 0xFFFFFFFF, so "after" anything larger asks for the same nothing.
    return bytes((REPORT_AFTER,)) + min(last, MAX_COUNTER).to_bytes(4, "little")


def event_counter(reading: Reading) -> int | None:
    """The hub's cursor: an actuation's event counter; None for Sensor Features."""
    counter = reading.status.get("event_counter")
    return counter if isinstance(counter, int) and not isinstance(counter, bool) else None


@dataclass(frozen=True, slots=True)
class Response:
    """The sensor's answer on the Record Control Point: the op code answered and the result."""

    request: int
    result: int

    def describe(self) -> str:
        return RESULT_NAMES.get(self.result, f"result {self.result:#04x}")


def parse_response(value: bytes) -> Response | None:
    """The response in a Record Control Point indication; None for anything else."""
    if len(value) != 3 or value[0] != RESPONSE:
        return None
    return Response(value[1], value[2])


def transfer_done(value: bytes) -> bool:
    """True for the response that ends a transfer: to a report (whatever its result: success,
    no events, refused) or to an abort. Never true for an Actuation Event (13 bytes or more)."""
    response = parse_response(value)
    return response is not None and response.request in (REPORT_AFTER, REPORT_ALL, ABORT)


# --- the driver ---------------------------------------------------------------------------------

DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Open smart-inhaler sensor profile (rtm-gateway's own): actuations with "
    "inhalation peak flow and duration, stored events by counter",
    category="respiratory",
    match=(BleMatch(service_uuid=SERVICE),),
    service=SERVICE,
    characteristics=(
        Characteristic(SENSOR_FEATURES, "inhaler-sensor-features", "read"),
        Characteristic(ACTUATION_EVENT, "inhaler-actuation-event", "notify"),
    ),
    decoders={SENSOR_FEATURES: decode_sensor_features, ACTUATION_EVENT: decode_actuation_event},
    # No MDC or LOINC term exists for these: the platform keys on the type names.
    observation_types=(
        ObservationType("inhaler_actuation", ACTUATION_UNIT),
        ObservationType("inhalation_peak_flow", PEAK_FLOW_UNIT),
        ObservationType("inhalation_duration", DURATION_UNIT),
    ),
    sdk_version=(1, 3),
    ble_session=BleSession(
        stored=StoredRecords(
            control=RECORD_CONTROL_POINT,
            records=ACTUATION_EVENT,
            request=request_events,
            cursor=event_counter,
            done=transfer_done,
        )
    ),
)
"""The open smart-inhaler sensor profile: actuations live and from storage (SDK 1.3's table
driver: the declaration is the whole driver)."""
