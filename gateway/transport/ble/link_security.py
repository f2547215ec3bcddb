"""What BlueZ says about the security of one connected device: `LinkSecurity` and
`read_link_security`, which asks bluetoothd for the device's `org.bluez.Device1` properties
`Paired` and `Bonded` over the system D-Bus (bleak has no public call for them).

The rule (docs/bluetooth.md, "Link security"): BlueZ does not report a link's encryption, so
it is inferred, and claimed only where BlueZ's behaviour makes it certain:
- `Bonded` (BlueZ 5.66 and later): bluetoothd holds the device's keys. It then connects at
  security level "medium": the kernel encrypts the link with the stored key before any GATT
  traffic, or the connection fails. So a bonded device's link is encrypted.
- `Paired` while connected, without `Bonded`: a pairing completed on this very link (bluetoothd
  clears an unbonded pairing when the link goes), and an LE pairing ends with the link
  encrypted. Encrypted, not bonded.
- Neither, or the properties could not be read: not known to be encrypted, so `false`.
What may not live here: connecting, scanning, GATT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEVICE1 = "org.bluez.Device1"


@dataclass(frozen=True, slots=True)
class LinkSecurity:
    """BlueZ's `Paired` and `Bonded` for a connected device, and what they mean for its link."""

    paired: bool = False
    bonded: bool = False

    @property
    def encrypted(self) -> bool:
        """True only when BlueZ's behaviour makes it certain (the module doc's rule)."""
        return self.bonded or self.paired


NOT_KNOWN = LinkSecurity()


def device_path(details: object, adapter: str, address: str) -> str:
    """The D-Bus object path of a device: the one bleak found it at, else BlueZ's documented
    `/org/bluez/{adapter}/dev_{address}`."""
    if isinstance(details, dict) and isinstance(details.get("path"), str):
        return str(details["path"])
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


async def read_link_security(path: str, timeout: float = 5.0) -> LinkSecurity:
    """`Paired` and `Bonded` of the device at `path` (one short-lived bus connection; called
    once per connection). A BlueZ without `Bonded` reads as not bonded; a failure reads as
    `NOT_KNOWN`, never as encrypted."""
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus: Any = None
    try:
        async with asyncio.timeout(timeout):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            reply = await bus.call(
                Message(
                    destination="org.bluez",
                    path=path,
                    interface="org.freedesktop.DBus.Properties",
                    member="GetAll",
                    signature="s",
                    body=[DEVICE1],
                )
            )
    except Exception as exc:  # dbus-fast's DBusError, InternalError, InvalidAddressError, OSError
        # The label is informative: a bus that refuses us must not end the device's session.
        log.warning(
            "bluetooth: cannot read the pairing state of %s (%s); its readings say the link "
            "is not known to be encrypted",
            path,
            type(exc).__name__,
        )
        return NOT_KNOWN
    finally:
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await bus.wait_for_disconnect()
    if reply is None or reply.message_type is MessageType.ERROR:
        log.debug("bluetooth: cannot read the pairing state of %s: %s", path, reply)
        return NOT_KNOWN
    props = reply.body[0] if reply.body and isinstance(reply.body[0], dict) else {}

    def flag(name: str) -> bool:
        value = props.get(name)
        return getattr(value, "value", False) is True

    return LinkSecurity(paired=flag("Paired"), bonded=flag("Bonded"))
