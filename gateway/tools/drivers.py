"""`rtm-gateway drivers`: the installed drivers as a technician reads them, one block each
(where it came from, how it matches devices, what it produces). The rows come from
`Registry.describe()`; this only lays them out.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.hub.driver_description import DriverDescription


def render_drivers(descriptions: Iterable[DriverDescription]) -> str:
    lines: list[str] = []
    for row in descriptions:
        lines.append(
            f"{row.id} {row.version}  ({row.source}; {row.category}; SDK {row.sdk_version})"
        )
        lines.append(f"    {row.description}")
        unmatched = (
            "(no automatic match: name the port in the config)"
            if row.transport == "serial"
            else "(no advertisement rule: give the device's address or serial in the config)"
        )
        lines += [f"    matches: {rule}" for rule in row.match or (unmatched,)]
        if row.serial:
            lines.append(f"    serial: {row.serial}")
        lines += [f"    characteristic: {c}" for c in row.characteristics]
        lines += [f"    {step}" for step in row.session]
        lines.append(f"    produces: {', '.join(row.produces) or '(set by the device options)'}")
    return "\n".join(lines)
