"""Bluetooth SIG Battery service (0x180F): the battery level.

What lives here: the pure codec `decode_battery_level` (0x2A19), the per-connection
`BasDecoder` and the `DRIVER` object. Nothing here talks to a radio (domain.md §3.2.11).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.sdk import (
    Characteristic,
    DecodeError,
    DriverInfo,
    Observation,
    Reading,
    TableGattDecoder,
    no_options,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.bas"
BATTERY_LEVEL = uuid16(0x2A19)
BATTERY_LEVEL_UNIT = "%"


def decode_battery_level(data: bytes) -> Reading:
    """Battery Level (0x2A19): uint8 percent, 0-100."""
    level = uint_from(data, 0, 1)
    if level > 100:
        raise DecodeError(f"battery level {level} % is above 100 %")
    return Reading((Observation("battery_level", level, BATTERY_LEVEL_UNIT),), bytes(data))


_DECODERS: Mapping[str, Callable[[bytes], Reading]] = {BATTERY_LEVEL: decode_battery_level}


class BasDriver:
    """The Bluetooth SIG Battery service driver."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Bluetooth Battery service (0x180F): battery level",
        transport="ble",
        # A companion service read beside a device's main profile: it claims no device.
        match=(),
        service=uuid16(0x180F),
        characteristics=(Characteristic(BATTERY_LEVEL, "battery-level", "read"),),
        produces=("battery_level",),
    )

    def gatt_decoder(self, options: Mapping[str, object]) -> TableGattDecoder:
        no_options(DRIVER_ID, options)
        return TableGattDecoder(DRIVER_ID, _DECODERS)


DRIVER = BasDriver()
