"""The rows of `rtm-gateway drivers`: what one installed driver declares, in words.

What lives here: `DriverDescription` (one row, and its `--json` shape) and `describe_driver`,
which builds it from a driver's `DriverInfo`. What may not: loading or choosing drivers (that is
`gateway.hub.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sdk import DriverInfo


@dataclass(frozen=True, slots=True)
class DriverDescription:
    """One row of `rtm-gateway drivers`."""

    id: str
    version: str
    description: str
    transport: str
    match: tuple[str, ...]
    serial: str
    produces: tuple[str, ...]
    continuous: bool
    source: str
    characteristics: tuple[str, ...] = ()
    category: str = "other"
    sdk_version: str = ""
    session: tuple[str, ...] = ()
    """What the hub does beyond listening: writes on connect/disconnect, stored records."""

    def as_dict(self) -> dict[str, object]:
        """The `--json` shape."""
        return {
            "id": self.id,
            "version": self.version,
            "description": self.description,
            "transport": self.transport,
            "match": list(self.match),
            "serial": self.serial,
            "produces": list(self.produces),
            "continuous": self.continuous,
            "source": self.source,
            "characteristics": list(self.characteristics),
            "category": self.category,
            "sdk_version": self.sdk_version,
            "session": list(self.session),
        }


def describe_driver(info: DriverInfo, source: str) -> DriverDescription:
    """The row of one driver; `source` is "builtin" or the distribution that provided it."""
    return DriverDescription(
        id=info.id,
        version=info.version,
        description=info.description,
        transport=info.transport,
        match=tuple(rule.describe() for rule in info.match),
        serial=info.serial.describe() if info.transport == "serial" else "",
        produces=tuple(info.produces),
        continuous=info.continuous,
        source=source,
        characteristics=tuple(
            f"{c.uuid} {c.name} ({c.mode}{', optional' if c.optional else ''})"
            for c in info.characteristics
        ),
        category=info.category,
        sdk_version=f"{info.sdk_version[0]}.{info.sdk_version[1]}",
        session=_session_lines(info),
    )


def _session_lines(info: DriverInfo) -> tuple[str, ...]:
    lines = []
    if info.ble_session is not None:
        for when, steps in (
            ("on connect", info.ble_session.on_connect),
            ("on disconnect", info.ble_session.on_disconnect),
        ):
            lines += [f"{when}: write {step.data.hex()} to {step.uuid}" for step in steps]
        if (stored := info.ble_session.stored) is not None:
            lines.append(
                f"stored records: requested on {stored.control}, arriving on {stored.records}"
            )
    if info.serial_session is not None:
        lines += [f"on open: send {data!r}" for data in info.serial_session.on_open]
    return tuple(lines)
