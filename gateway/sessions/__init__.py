"""Device sessions: one configured device, from open or advertisement to readings in the journal.

The serial and Bluetooth LE sessions share one core (decode, isolate a failing driver, count
errors, summarise continuous streams); stored-record sync (`records`, `racp`) runs inside the
BLE session. Transports are seen only through small protocols; `gateway.app` passes the real ones.
"""
