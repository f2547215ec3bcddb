"""`rtm-gateway drivers`: the drivers as a technician reads them, one block each (where it came
from, how it matches devices, what it produces), then the vendor packages that are installed
but were not loaded, from their metadata alone.

The loaded rows come from `Registry.describe()`; the others from
`gateway.hub.plugins.installed_plugins`, which imports nothing: a vendor package's code runs
only when a configuration allows it or `--load ID` asks for it. This only lays them out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from gateway.hub.driver_description import DriverDescription
from gateway.hub.plugins import installed_plugins

NOT_LOADED = "not loaded"
NOT_ALLOWED = "installed, not allowed"


@dataclass(frozen=True, slots=True)
class InstalledRow:
    """An installed vendor driver that was not imported."""

    id: str
    distribution: str
    version: str
    target: str
    status: str

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "source": self.distribution,
            "distribution": self.distribution,
            "version": self.version,
            "target": self.target,
            "status": self.status,
        }


def installed_rows(asked: Collection[str], *, configured: bool) -> list[InstalledRow]:
    """The installed vendor drivers that were not asked for (by the configuration or --load),
    so not imported. One that was asked for and failed is not listed: the log says why."""
    rows = []
    for plugin in installed_plugins():
        if plugin.id in asked:
            continue
        status = NOT_ALLOWED if configured else NOT_LOADED
        rows.append(
            InstalledRow(plugin.id, plugin.distribution, plugin.version, plugin.target, status)
        )
    return rows


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


def render_installed(rows: Sequence[InstalledRow]) -> str:
    lines: list[str] = []
    for row in rows:
        lines.append(f"{row.id}  ({row.distribution} {row.version}; {row.status})")
        lines.append(
            f"    not imported: a device or [drivers] allow must name it on a hub; "
            f"`rtm-gateway drivers --load {row.id}` runs its code to describe it"
        )
    return "\n".join(lines)
