"""Transports: I/O only (serial, MQTT).

They never import drivers, registry, pipeline, outbox or signing.
"""
