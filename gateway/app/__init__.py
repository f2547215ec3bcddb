"""The daemon: every part built from the configuration and run in one TaskGroup.

`daemon` wires the hub (start-up, signals, systemd notification, the TaskGroup); `devices`
holds the real serial port and Bluetooth radio seen through the sessions' protocols. What the
command line and the tools use is named here.
"""

from gateway.app.daemon import Hub, HubState, StartupError, mqtt_settings, open_state, run_hub
from gateway.app.devices import BleRadio, SerialOpener, ble_companions

__all__ = [
    "BleRadio",
    "Hub",
    "HubState",
    "SerialOpener",
    "StartupError",
    "ble_companions",
    "mqtt_settings",
    "open_state",
    "run_hub",
]
