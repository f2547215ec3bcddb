"""Bluetooth SIG Current Time service (0x1805): the device's clock, and setting it.

What lives here: the pure codecs `decode_current_time` (0x2A2B) and `decode_local_time_info`
(0x2A0F), the pure encoder `encode_current_time` the hub uses to write its time to a device
(only while the hub clock is synchronised: the caller's decision), and `DRIVER`. Nothing here
talks to a radio or reads a clock.

Current Time (10 bytes): Date Time (7), day of week (1 = Monday .. 7 = Sunday, 0 unknown),
Fractions256 (1/256 s), Adjust Reason (bit 0 manual, 1 external reference, 2 time zone, 3 DST).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from gateway.sdk import (
    BitNames,
    Characteristic,
    DecodeError,
    GattTableDriver,
    Reading,
    StatusValue,
    date_time_from,
    name_bits,
    sint_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.cts"
CURRENT_TIME = uuid16(0x2A2B)
LOCAL_TIME_INFO = uuid16(0x2A0F)
CURRENT_TIME_LEN = 10
ADJUST_EXTERNAL_REFERENCE = 0x02

ADJUST_REASONS: BitNames = {
    0: "manual_time_update",
    1: "external_reference_time_update",
    2: "time_zone_change",
    3: "dst_change",
}
_DST_MINUTES: Mapping[int, int] = {0: 0, 2: 30, 4: 60, 8: 120}
_DST_UNKNOWN = 255
_TIME_ZONE_UNKNOWN = -128
_TIME_ZONE_STEPS = range(-48, 57)  # 15-minute steps: UTC-12:00 .. UTC+14:00


def decode_current_time(data: bytes) -> Reading:
    """Current Time (0x2A2B). The time is the device's local wall clock, so it has no zone."""
    if len(data) < CURRENT_TIME_LEN:
        raise DecodeError(f"Current Time must be {CURRENT_TIME_LEN} bytes, got {len(data)}")
    moment = date_time_from(data, 0)
    day_of_week, fractions, reasons = data[7], data[8], data[9]
    status: dict[str, StatusValue] = {"day_of_week": day_of_week, "fractions256": fractions}
    status |= name_bits(reasons, ADJUST_REASONS)
    if moment is None:
        return Reading((), bytes(data), status, None, "not-set")
    # Rounded up, so that encoding the decoded time gives back the same fraction.
    moment += timedelta(microseconds=-(-fractions * 1_000_000 // 256))
    return Reading((), bytes(data), status, moment, "set")


def decode_local_time_info(data: bytes) -> Reading:
    """Local Time Information (0x2A0F): offsets in minutes; a key is left out when unknown."""
    zone = sint_from(data, 0, 1)
    dst = uint_from(data, 1, 1)
    status: dict[str, StatusValue] = {}
    if zone != _TIME_ZONE_UNKNOWN:
        if zone not in _TIME_ZONE_STEPS:
            raise DecodeError(f"time zone {zone} is outside -48..56 quarter hours")
        status["utc_offset_minutes"] = zone * 15
    if dst != _DST_UNKNOWN:
        if dst not in _DST_MINUTES:
            raise DecodeError(f"DST offset code {dst} is reserved")
        status["dst_offset_minutes"] = _DST_MINUTES[dst]
    return Reading((), bytes(data), status)


def encode_current_time(moment: datetime, adjust_reason: int = ADJUST_EXTERNAL_REFERENCE) -> bytes:
    """The 10-byte Current Time value for `moment`, in its own zone's wall-clock time.

    `moment` must be aware (UTC or local: the device gets that zone's wall clock). Raises
    `ValueError` for a naive moment, a year the characteristic cannot carry, or a bad reason.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("encode_current_time needs an aware datetime (UTC or local)")
    if not 1582 <= moment.year <= 9999:
        raise ValueError(f"year {moment.year} is outside the Date Time range 1582..9999")
    if not 0 <= adjust_reason <= 0xFF:
        raise ValueError(f"adjust reason {adjust_reason:#x} is not one byte")
    return bytes(
        (
            *moment.year.to_bytes(2, "little"),
            moment.month,
            moment.day,
            moment.hour,
            moment.minute,
            moment.second,
            moment.isoweekday(),
            moment.microsecond * 256 // 1_000_000,
            adjust_reason,
        )
    )


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Current Time service (0x1805): device clock, local time info",
    # A companion service read beside a device's main profile: it claims no device.
    match=(),
    service=uuid16(0x1805),
    characteristics=(
        Characteristic(CURRENT_TIME, "cts-current-time", "read"),
        Characteristic(LOCAL_TIME_INFO, "cts-local-time-info", "read", optional=True),
    ),
    decoders={CURRENT_TIME: decode_current_time, LOCAL_TIME_INFO: decode_local_time_info},
)
