"""Device sessions: one configured device, from open or advertisement to readings in the journal.

The serial and Bluetooth LE sessions share one core (`core`: decode, isolate a failing driver,
count errors, summarise continuous streams, flush at link end); the BLE session runs a driver's
stored-record declaration (`records`) in one forward pass. Transports and companion services are
seen only through small protocols (`ble_ports`); `gateway.app` passes the real ones. No driver is
imported here: sessions run what drivers declare.
"""
