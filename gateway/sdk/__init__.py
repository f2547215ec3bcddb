"""The driver SDK: everything a device driver may use, and nothing that does I/O.

A driver turns bytes into `Reading`s. It never opens a port, reads a clock, sleeps or logs health
values. This package imports only the standard library (enforced by import-linter), so a vendor
can depend on it without pulling in the hub.

Drivers import from `gateway.sdk` only; the submodules are how the SDK is filed, not a public
surface:

- `values`: `Observation`, `Reading`, `ObservationType`, `OBSERVATION_TYPES` (well-known types
  with their UCUM units and MDC / LOINC codes), `DecodeError`, `OptionError`;
- `declaration`: `DriverInfo`, match rules, `Characteristic`, `SerialSettings`, `SDK_VERSION`
  (its docstring has the compatibility rule);
- `conversations`: `GattWrite`, `StoredRecords`, `AfterCommit`, `RecordCount`, `BleSession`,
  `SerialSession`;
- `protocols`: `Driver`, `GattDriver`, their decoders, `FeedResult`, `TableGattDecoder`;
- `table_driver`: `GattTableDriver`, a BLE driver declared as data;
- `fields`: IEEE 11073 SFLOAT/FLOAT, integers, Date Time, bits by name.
"""

from gateway.sdk.conversations import (
    AfterCommit,
    BleSession,
    GattWrite,
    RecordCount,
    SerialSession,
    StoredRecords,
)
from gateway.sdk.declaration import (
    BLUETOOTH_BASE_UUID,
    SDK_VERSION,
    BleMatch,
    Category,
    Characteristic,
    DriverInfo,
    MatchRule,
    SerialSettings,
    UsbMatch,
    uuid16,
)
from gateway.sdk.fields import (
    BitNames,
    Float11073,
    bit_names,
    bits_reading,
    date_time_from,
    finite_or_none,
    flags_reading,
    float32,
    float_from,
    name_bits,
    sfloat,
    sfloat_from,
    sint_from,
    timestamp_from,
    uint_from,
)
from gateway.sdk.protocols import (
    Driver,
    FeedResult,
    Flushable,
    GattDecoder,
    GattDriver,
    StreamDecoder,
    TableGattDecoder,
    no_options,
    parse_hex,
)
from gateway.sdk.table_driver import GattTableDriver
from gateway.sdk.values import (
    OBSERVATION_TYPES,
    TRACE,
    Absent,
    ClockStatus,
    DecodeError,
    Observation,
    ObservationType,
    OptionError,
    Reading,
    StatusValue,
)

__all__ = [
    "BLUETOOTH_BASE_UUID",
    "OBSERVATION_TYPES",
    "SDK_VERSION",
    "TRACE",
    "Absent",
    "AfterCommit",
    "BitNames",
    "BleMatch",
    "BleSession",
    "Category",
    "Characteristic",
    "ClockStatus",
    "DecodeError",
    "Driver",
    "DriverInfo",
    "FeedResult",
    "Float11073",
    "Flushable",
    "GattDecoder",
    "GattDriver",
    "GattTableDriver",
    "GattWrite",
    "MatchRule",
    "Observation",
    "ObservationType",
    "OptionError",
    "Reading",
    "RecordCount",
    "SerialSession",
    "SerialSettings",
    "StatusValue",
    "StoredRecords",
    "StreamDecoder",
    "TableGattDecoder",
    "UsbMatch",
    "bit_names",
    "bits_reading",
    "date_time_from",
    "finite_or_none",
    "flags_reading",
    "float32",
    "float_from",
    "name_bits",
    "no_options",
    "parse_hex",
    "sfloat",
    "sfloat_from",
    "sint_from",
    "timestamp_from",
    "uint_from",
    "uuid16",
]
