"""The Bluetooth LE transport's errors, shared by the scanner, the BlueZ probe and the connector.

What may not live here: anything that does I/O.
"""

from __future__ import annotations


class BleUnavailable(Exception):
    """Bluetooth cannot be used now: the adapter is off or missing, or bluetoothd is not there."""


class BleConnectError(Exception):
    """A connection attempt failed after its retries. `out_of_slots` says the controller had no
    free connection: wait longer before the next try."""

    def __init__(self, message: str, *, out_of_slots: bool = False) -> None:
        super().__init__(message)
        self.out_of_slots = out_of_slots
