"""Bluetooth LE through bleak and BlueZ: one shared scanner, and connections that survive.

I/O only: nothing in this package knows drivers, readings or the journal. Its modules:

- `scanner`: `BleScanner`, the adapter's one scanner (passive when BlueZ offers advertisement
  monitors, active otherwise) with its watchdog, and `Advert`, the last advertisement of a device.
- `bluez_watch`: `BluezWatch`, which tells listeners when bluetoothd goes away or comes back, and
  `AdapterProbe`, which asks BlueZ whether the adapter is powered and discovering and
  power-cycles it.
- `link`: `GattLink`, one connected device: read, write, subscribe, and `lost` on link loss.
- `connector`: `BleConnector`, connections with retries, an outer timeout, a per-adapter slot
  limit, stale-link clean-up and the service cache cleared on demand.
- `errors`: `BleUnavailable` and `BleConnectError`, shared by the modules above.

The ways of BlueZ this follows are the ones Home Assistant's Bluetooth stack learned (summed up
in docs/bluetooth.md, "What the hub does to keep Bluetooth up for months").

Import from the module that defines a name; this package re-exports nothing.
"""
