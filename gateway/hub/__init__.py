"""The hub core: what the daemon is made of once devices have produced readings.

Configuration, the driver registry, the journal (sign and chain), the outbox on disk, the
uplink to the broker, the hub's clock and systemd notification. Sessions hand readings in;
nothing here knows a device, or a transport beyond the broker URL parser
(`transport.mqtt_url`, pure). The vendor kit and the tools are never imported.
"""
