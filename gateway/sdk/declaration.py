"""What a driver declares about itself: `DriverInfo`, its match rules (`UsbMatch`, `BleMatch`),
its BLE characteristics, its serial settings, its category, and `SDK_VERSION`, the version of
this SDK a driver is written against.

Standard library only, no I/O; imported through `gateway.sdk`, never directly by drivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.sdk.conversations import BleSession, SerialSession
from gateway.sdk.values import ObservationType

SDK_VERSION = (1, 3)
"""(major, minor). A driver declares the version it was written for; the hub refuses one that
needs another major version or a newer minor one. Additions bump the minor version, changes
that could break a driver bump the major. 1.2 added `category`, `BleSession` and
`SerialSession`; 1.3 added `GattTableDriver`, `DriverInfo.observation_types`,
`ObservationType.observation`/`in_unit`, the fitness types in `OBSERVATION_TYPES`, `BitNames`
with `name_bits`/`bits_reading`, and `Reading.as_dict` (the new name of `Reading.wire`)."""


@dataclass(frozen=True, slots=True)
class UsbMatch:
    """Matches a USB serial adapter by vendor and product id (and optionally product string)."""

    vid: int
    pid: int
    product: str | None = None

    def describe(self) -> str:
        text = f"usb {self.vid:04x}:{self.pid:04x}"
        return f"{text} product={self.product!r}" if self.product else text


BLUETOOTH_BASE_UUID = "0000{:04x}-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """The full lower-case UUID of a Bluetooth SIG 16-bit UUID (0x180D -> 0000180d-...)."""
    if not 0 <= short <= 0xFFFF:
        raise ValueError(f"not a 16-bit UUID: {short:#x}")
    return BLUETOOTH_BASE_UUID.format(short)


@dataclass(frozen=True, slots=True)
class BleMatch:
    """Matches a BLE advertisement. Every field given must match; None means "any".

    `service_uuid` is a full lower-case UUID (use `uuid16` for SIG services); `local_name` is a
    regular expression matched at the start of the advertised name; `data_prefix` is matched
    against the manufacturer data of `manufacturer_id`.
    """

    service_uuid: str | None = None
    manufacturer_id: int | None = None
    data_prefix: bytes = b""
    local_name: str | None = None
    connectable: bool | None = None

    def describe(self) -> str:
        parts = []
        if self.service_uuid:
            parts.append(f"service {self.service_uuid}")
        if self.manufacturer_id is not None:
            prefix = f" data {self.data_prefix.hex()}..." if self.data_prefix else ""
            parts.append(f"manufacturer {self.manufacturer_id:#06x}{prefix}")
        if self.local_name:
            parts.append(f"name ~ {self.local_name!r}")
        if self.connectable is not None:
            parts.append("connectable" if self.connectable else "not connectable")
        return "ble " + (", ".join(parts) or "(anything)")


MatchRule = UsbMatch | BleMatch


@dataclass(frozen=True, slots=True)
class Characteristic:
    """A GATT characteristic a BLE driver uses, and how the hub gets its values."""

    uuid: str
    name: str
    mode: Literal["notify", "indicate", "read"]
    optional: bool = False
    """The profile lets a device leave it out: a connection goes on without it."""


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """How to open a serial device. Defaults are 8N1 without flow control."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    xonxoff: bool = False

    def describe(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}" + (
            " xon/xoff" if self.xonxoff else ""
        )


Category = Literal["respiratory", "musculoskeletal", "other"]
"""The RTM category a driver's device serves (CPT 98976 respiratory, 98977 musculoskeletal)."""


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """What a driver declares about itself."""

    id: str
    version: str
    description: str
    transport: Literal["serial", "ble"]
    match: tuple[MatchRule, ...] = ()
    serial: SerialSettings = SerialSettings()
    service: str | None = None
    """BLE: the primary service the driver talks to (full UUID)."""
    characteristics: tuple[Characteristic, ...] = ()
    """BLE: the characteristics the hub subscribes to or reads, in the order to set them up."""
    produces: tuple[str, ...] = ()
    """The observation type names the driver emits. Left empty when `observation_types` is
    given: it is then filled from there."""
    continuous: bool = False
    """A continuous stream (tens of frames a second): the hub summarises the values of its
    notify characteristics to one reading per configured interval instead of signing each."""
    sdk_version: tuple[int, int] = SDK_VERSION
    """The SDK version the driver was written for; vendors should spell it out."""
    category: Category = "other"
    ble_session: BleSession | None = None
    serial_session: SerialSession | None = None
    observation_types: tuple[ObservationType, ...] = ()
    """SDK 1.3: every (type, unit) the driver emits, one entry per unit a type comes in (a
    scale in kg or lb lists `body_weight` twice). `driver check` fails a fixture observation
    whose type or unit is not declared here. Empty: only `produces` names are checked."""

    def __post_init__(self) -> None:
        if not self.produces and self.observation_types:
            # getattr: a wrong entry is the registry's to refuse by name, not an import error.
            names = dict.fromkeys(getattr(t, "name", "") for t in self.observation_types)
            object.__setattr__(self, "produces", tuple(name for name in names if name))
