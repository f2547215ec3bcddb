"""Built-in device drivers: one small pure module per device or profile, named for it; a large
profile keeps its tables in siblings (`gatt_ftms_machines`, `gatt_ftms_status`,
`gatt_plx_tables`, `gatt_gls_context`, `kv_lines_options`). The GATT profiles are
`GattTableDriver` declarations (gateway.sdk).

What lives here besides the modules: `BUILTIN_DRIVERS`, the table the registry starts from, and
two pure helpers that work on any driver, built-in or plugin:

- `serial_settings_for(driver, options)`: the port settings for a device. A driver whose
  settings depend on its options (e.g. a `baudrate` option) has a `serial_settings(options)`
  method; otherwise its declared `info.serial` applies.
- `decode_bytes(driver, data, options)`: a one-shot decode (`rtm-gateway decode`). A decoder
  that holds an unfinished frame at the end of the stream may have a `flush()` method returning
  a `FeedResult`; a one-shot decode calls it, since no more bytes will come.

Nothing in this package does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from gateway.drivers import (
    contec_cms50d,
    gatt_bas,
    gatt_bps,
    gatt_cscs,
    gatt_cts,
    gatt_dis,
    gatt_ftms,
    gatt_gls,
    gatt_hrs,
    gatt_hts,
    gatt_plx,
    gatt_rscs,
    gatt_wss,
    kv_lines,
)
from gateway.sdk import Driver, FeedResult, Flushable, GattDriver, SerialSettings

BUILTIN_DRIVERS: tuple[Driver | GattDriver, ...] = (
    contec_cms50d.DRIVER,
    kv_lines.DRIVER,
    gatt_dis.DRIVER,
    gatt_bas.DRIVER,
    gatt_cts.DRIVER,
    gatt_plx.DRIVER,
    gatt_hrs.DRIVER,
    gatt_ftms.DRIVER,
    gatt_rscs.DRIVER,
    gatt_cscs.DRIVER,
    gatt_hts.DRIVER,
    gatt_wss.DRIVER,
    gatt_bps.DRIVER,
    gatt_gls.DRIVER,
)


@runtime_checkable
class OptionSerial(Protocol):
    """A driver whose serial settings depend on the device's options."""

    def serial_settings(self, options: Mapping[str, object]) -> SerialSettings: ...


def serial_settings_for(driver: Driver, options: Mapping[str, object]) -> SerialSettings:
    """How to open the port for this driver and options. May raise `OptionError`."""
    if isinstance(driver, OptionSerial):
        return driver.serial_settings(options)
    return driver.info.serial


def decode_bytes(driver: Driver, data: bytes, options: Mapping[str, object]) -> FeedResult:
    """Decode a complete recording in one go: feed it, then flush what is left.

    Raises `OptionError` for bad options; malformed bytes come back as errors in the result.
    """
    decoder = driver.decoder(options)
    result = decoder.feed(data)
    if isinstance(decoder, Flushable):
        tail = decoder.flush()
        result.readings.extend(tail.readings)
        result.errors.extend(tail.errors)
    return result
