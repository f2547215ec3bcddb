"""Bluetooth SIG Battery service (0x180F): the battery level.

What lives here: the pure codec `decode_battery_level` (0x2A19) and `DRIVER`. Nothing here talks
to a radio.
"""

from __future__ import annotations

from gateway.sdk import (
    Characteristic,
    DecodeError,
    GattTableDriver,
    ObservationType,
    Reading,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.bas"
BATTERY_LEVEL = uuid16(0x2A19)
BATTERY_LEVEL_TYPE = ObservationType("battery_level", "%")


def decode_battery_level(data: bytes) -> Reading:
    """Battery Level (0x2A19): uint8 percent, 0-100."""
    level = uint_from(data, 0, 1)
    if level > 100:
        raise DecodeError(f"battery level {level} % is above 100 %")
    return Reading((BATTERY_LEVEL_TYPE.observation(level),), bytes(data))


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Battery service (0x180F): battery level",
    # A companion service read beside a device's main profile: it claims no device.
    match=(),
    service=uuid16(0x180F),
    characteristics=(Characteristic(BATTERY_LEVEL, "battery-level", "read"),),
    decoders={BATTERY_LEVEL: decode_battery_level},
    observation_types=(BATTERY_LEVEL_TYPE,),
)
