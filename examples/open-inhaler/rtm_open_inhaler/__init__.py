"""rtm-driver-open-inhaler: the reference driver (`driver.DRIVER`, pure) and simulated sensor
(`simulator.InhalerSensor`, for the virtual Bluetooth lab) of rtm-gateway's open smart-inhaler
sensor profile. The profile itself is written down in the package's README.md."""
