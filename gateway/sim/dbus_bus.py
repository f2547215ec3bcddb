"""A private D-Bus bus for the virtual Bluetooth lab: `private_bus()` yields its address.

What lives here: the launcher of a throwaway `dbus-daemon` configured as a *system* bus (bleak
only ever talks to the system bus) that listens on a unix socket in a temporary directory and
lets everyone do everything. Point a process at it with `DBUS_SYSTEM_BUS_ADDRESS=<address>`.
Nothing here knows about Bluetooth.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

DBUS_DAEMON = "dbus-daemon"
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0

# XML comments may not contain two hyphens in a row, so this config has no comments at all.
_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class PrivateBusError(Exception):
    """dbus-daemon is missing or did not start; install the `dbus` package."""


def dbus_daemon_available() -> bool:
    """Whether this machine can run a private bus (the demo and tests skip BLE without one)."""
    return shutil.which(DBUS_DAEMON) is not None


@contextlib.contextmanager
def private_bus() -> Iterator[str]:
    """Run a private system-type bus for the duration of the block; yield its address."""
    daemon = shutil.which(DBUS_DAEMON)
    if daemon is None:
        raise PrivateBusError("dbus-daemon not found on PATH; install the `dbus` package")
    with tempfile.TemporaryDirectory(prefix="rtm-dbus-") as tmp:
        config = Path(tmp) / "bus.conf"
        config.write_text(_CONFIG.format(socket=Path(tmp) / "bus.socket"), encoding="utf-8")
        process = subprocess.Popen(  # noqa: S603 - a fixed program with our own config file
            [daemon, f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            # Unprivileged, it always complains that it cannot raise its fd limit: harmless.
            stderr=subprocess.DEVNULL,
        )
        try:
            address = _read_address(process)
            yield address
        finally:
            _stop(process)


def _read_address(process: subprocess.Popen[str]) -> str:
    # dbus-daemon prints the address as soon as it listens; an empty line means it exited.
    line = process.stdout.readline().strip() if process.stdout is not None else ""
    if not line:
        code = process.wait(timeout=START_TIMEOUT)
        raise PrivateBusError(
            f"dbus-daemon exited with code {code} before listening; "
            "run it by hand with the same config to see why"
        )
    return line


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
