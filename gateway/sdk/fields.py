"""Reading fields out of bytes: IEEE 11073-20601 SFLOAT/FLOAT (`Float11073`), little-endian
integers, GATT Date Time and time stamps, and status bits by name.

Naming bits (SDK 1.3): a `BitNames` table maps bit numbers (0 = least significant), as
specifications number them, to status names; `name_bits` turns a bit field into
`{name: bool}` for every named bit, `bits_reading` makes a Feature characteristic's reading.
`bit_names`/`flags_reading` take (name, mask) pairs and stay for drivers written before 1.3.

Standard library only, no I/O; imported through `gateway.sdk`, never directly by drivers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.sdk.values import Absent, ClockStatus, DecodeError, Observation, Reading


@dataclass(frozen=True, slots=True)
class Float11073:
    """A decoded IEEE 11073 SFLOAT or FLOAT: mantissa and base-10 exponent, or a special value.

    The exponent carries the precision (2, 2.0 and 2.00 are different encodings), so `value`
    is rounded to exactly the decimals the device sent.
    """

    mantissa: int
    exponent: int
    absent: Absent | None = None

    @property
    def value(self) -> float | int | None:
        if self.absent is not None:
            return None
        if self.exponent >= 0:
            return self.mantissa * int(10**self.exponent)
        return round(float(self.mantissa * 10.0**self.exponent), -self.exponent)

    @property
    def decimals(self) -> int:
        """Digits after the decimal point the device's encoding carries."""
        return max(0, -self.exponent)

    def observation(self, type_name: str) -> Observation:
        return Observation.known(type_name, self.value, self.absent)


_SFLOAT_SPECIAL: Mapping[int, Absent] = {
    0x07FF: "not-a-number",
    0x0800: "not-at-this-resolution",
    0x07FE: "positive-infinity",
    0x0802: "negative-infinity",
    0x0801: "error",  # reserved for future use: treat as an error, never a number
}
_FLOAT_SPECIAL: Mapping[int, Absent] = {
    0x007FFFFF: "not-a-number",
    0x00800000: "not-at-this-resolution",
    0x007FFFFE: "positive-infinity",
    0x00800002: "negative-infinity",
    0x00800001: "error",
}


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def sfloat(raw: int) -> Float11073:
    """Decode a 16-bit SFLOAT: 4-bit signed exponent, 12-bit signed mantissa."""
    if not 0 <= raw <= 0xFFFF:
        raise DecodeError(f"SFLOAT out of range: {raw:#x}")
    mantissa_bits = raw & 0x0FFF
    if mantissa_bits in (0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801):
        # Special values are defined with a zero exponent only.
        special = _SFLOAT_SPECIAL.get(raw)
        if special is not None:
            return Float11073(0, 0, special)
    return Float11073(_signed(mantissa_bits, 12), _signed(raw >> 12, 4))


def float32(raw: int) -> Float11073:
    """Decode a 32-bit FLOAT: 8-bit signed exponent, 24-bit signed mantissa."""
    if not 0 <= raw <= 0xFFFFFFFF:
        raise DecodeError(f"FLOAT out of range: {raw:#x}")
    special = _FLOAT_SPECIAL.get(raw)
    if special is not None:
        return Float11073(0, 0, special)
    return Float11073(_signed(raw & 0xFFFFFF, 24), _signed(raw >> 24, 8))


def sfloat_from(data: bytes | Sequence[int], offset: int) -> Float11073:
    """Decode the little-endian SFLOAT at `offset`, or raise `DecodeError` if it is cut short."""
    if offset < 0 or offset + 2 > len(data):
        raise DecodeError(f"SFLOAT at offset {offset} runs past the end ({len(data)} bytes)")
    return sfloat(data[offset] | data[offset + 1] << 8)


def float_from(data: bytes | Sequence[int], offset: int) -> Float11073:
    """Decode the little-endian FLOAT at `offset`, or raise `DecodeError` if it is cut short."""
    if offset < 0 or offset + 4 > len(data):
        raise DecodeError(f"FLOAT at offset {offset} runs past the end ({len(data)} bytes)")
    return float32(int.from_bytes(bytes(data[offset : offset + 4]), "little"))


def uint_from(data: bytes | Sequence[int], offset: int, size: int) -> int:
    """The little-endian unsigned integer of `size` bytes at `offset` (GATT byte order)."""
    if offset < 0 or offset + size > len(data):
        raise DecodeError(
            f"{size}-byte field at offset {offset} runs past the end ({len(data)} bytes)"
        )
    return int.from_bytes(bytes(data[offset : offset + size]), "little")


def sint_from(data: bytes | Sequence[int], offset: int, size: int) -> int:
    """The little-endian two's-complement integer of `size` bytes at `offset`."""
    return _signed(uint_from(data, offset, size), 8 * size)


def date_time_from(data: bytes | Sequence[int], offset: int) -> datetime | None:
    """A GATT Date Time (0x2A08, 7 bytes) at `offset`: the device's local wall clock, so the
    result has no time zone. None when the device says the date is not known (year, month or
    day 0); `DecodeError` for a date that cannot exist."""
    year = uint_from(data, offset, 2)
    month, day, hour, minute, second = (uint_from(data, offset + i, 1) for i in range(2, 7))
    if year == 0 or month == 0 or day == 0:
        return None
    try:
        return datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 (local clock)
    except ValueError as exc:
        raise DecodeError(f"Date Time at offset {offset} is not a date: {exc}") from exc


def timestamp_from(data: bytes | Sequence[int], offset: int) -> tuple[datetime | None, ClockStatus]:
    """A measurement's optional GATT time stamp at `offset`: (device time, clock status). A time
    stamp whose date is unknown (year, month or day 0) means the device clock was never set."""
    moment = date_time_from(data, offset)
    return moment, ("unknown" if moment is not None else "not-set")


def bit_names(value: int, masks: Iterable[tuple[str, int]]) -> dict[str, bool]:
    """Status flags by name from a bit field and a (name, mask) table. Before SDK 1.3; new
    drivers name bits by number with `name_bits`."""
    return {name: bool(value & mask) for name, mask in masks}


def flags_reading(data: bytes, size: int, masks: Iterable[tuple[str, int]], what: str) -> Reading:
    """A reading with no observations whose status is a `size`-byte bit field by name: the
    shape of every profile's Feature characteristic. Before SDK 1.3; new drivers use
    `bits_reading`."""
    if len(data) != size:
        raise DecodeError(f"{what} must be {size} bytes, got {len(data)}")
    return Reading((), bytes(data), bit_names(uint_from(data, 0, size), masks))


def finite_or_none(value: float) -> float | None:
    """None for NaN or infinity: JSON has no such numbers."""
    return value if math.isfinite(value) else None


BitNames = Mapping[int, str]
"""Status names of a bit field by bit number, 0 the least significant (SDK 1.3)."""


def name_bits(
    value: int, names: BitNames, *, prefix: str = "", suffix: str = ""
) -> dict[str, bool]:
    """Every named bit of `value` as `{prefix + name + suffix: bool}`, in table order, so "not
    set" can be told from "the device did not say" (SDK 1.3)."""
    return {prefix + name + suffix: bool(value >> bit & 1) for bit, name in names.items()}


def bits_reading(
    data: bytes, size: int, names: BitNames, what: str, *, prefix: str = "", suffix: str = ""
) -> Reading:
    """A reading with no observations whose status is a `size`-byte bit field by name: the
    shape of most profiles' Feature characteristic. `DecodeError` unless exactly `size` bytes
    (SDK 1.3)."""
    if len(data) != size:
        raise DecodeError(f"{what} must be {size} bytes, got {len(data)}")
    status = name_bits(uint_from(data, 0, size), names, prefix=prefix, suffix=suffix)
    return Reading((), bytes(data), status)
