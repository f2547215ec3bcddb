"""Transports: I/O only (serial ports, MQTT, Bluetooth LE) and the broker URL parser.

They never import drivers, the hub core, the sessions, the kit or the tools; `gateway.app`
hands them to the hub through the hub's small protocols.
"""
