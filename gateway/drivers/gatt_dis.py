"""Bluetooth SIG Device Information service (0x180A): who made the device and what it runs.

What lives here: the pure codecs (`decode_string` per text characteristic, `decode_system_id`,
`decode_udi`) and `DRIVER`. Nothing here talks to a radio. Every value is read once and becomes
status, never an observation; the serial number is the device's identity where it has one
(private addresses rotate).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from gateway.sdk import Characteristic, DecodeError, GattTableDriver, Reading, uuid16

DRIVER_ID = "gatt.dis"
SYSTEM_ID = uuid16(0x2A23)
UDI = uuid16(0x2BFF)

# characteristic -> (status key, hub-side name): text values, UTF-8.
_STRINGS: Mapping[str, tuple[str, str]] = {
    uuid16(0x2A29): ("manufacturer", "dis-manufacturer"),
    uuid16(0x2A24): ("model", "dis-model"),
    uuid16(0x2A25): ("serial_number", "dis-serial-number"),
    uuid16(0x2A27): ("hardware_revision", "dis-hardware-revision"),
    uuid16(0x2A26): ("firmware_revision", "dis-firmware-revision"),
    uuid16(0x2A28): ("software_revision", "dis-software-revision"),
}


def decode_string(key: str, data: bytes) -> Reading:
    """A UTF-8 text characteristic as status `{key: text}`. Some devices pad with NULs."""
    try:
        text = bytes(data).rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{key} is not UTF-8 text: {exc.reason}") from exc
    return Reading((), bytes(data), {key: text})


def decode_system_id(data: bytes) -> Reading:
    """System ID (0x2A23): 8 bytes, sent least significant octet first. The EUI-64 is written
    most significant (the OUI) first, as the PHD IG does: FE-ED-AB-EE-DE-AD-77-C3."""
    if len(data) != 8:
        raise DecodeError(f"System ID must be 8 bytes, got {len(data)}")
    return Reading((), bytes(data), {"system_id": bytes(reversed(data)).hex("-").upper()})


def decode_udi(data: bytes) -> Reading:
    """UDI for Medical Devices (0x2BFF), kept as hex: the platform parses the label."""
    if not data:
        raise DecodeError("UDI value is empty: it has at least its flags")
    return Reading((), bytes(data), {"udi": bytes(data).hex()})


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Device Information service (0x180A): names, revisions, ids",
    # A companion service read beside a device's main profile: it claims no device.
    match=(),
    service=uuid16(0x180A),
    characteristics=(
        *(
            Characteristic(uuid, name, "read", optional=True)
            for uuid, (_, name) in _STRINGS.items()
        ),
        Characteristic(SYSTEM_ID, "dis-system-id", "read", optional=True),
        Characteristic(UDI, "dis-udi", "read", optional=True),
    ),
    decoders={
        **{uuid: partial(decode_string, key) for uuid, (key, _) in _STRINGS.items()},
        SYSTEM_ID: decode_system_id,
        UDI: decode_udi,
    },
)
