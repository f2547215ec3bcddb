"""The `[drivers]` table: which vendor (plugin) drivers this hub may load, and their decode budget.

```toml
[drivers]
allow = [{ id = "acme.spirometer", distribution = "acme-rtm-spirometer", version = "1.4.2" }]
decode_budget_ms = 250
```

A vendor driver is imported only when a configured device names it or `allow` does; an
`allow` entry also pins where it must come from (`distribution`, and `version` if given: pinning
the version is recommended, and required where the requirements file is not hash-pinned). The
check against what is installed is `gateway.hub.plugins`; this module only reads the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.hub.config_reader import ConfigTable, kind_of

_DRIVER_ID = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$")
# A distribution name as PEP 508 spells it; compared after PEP 503 normalisation.
_DISTRIBUTION = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[A-Za-z0-9.+!_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class AllowedDriver:
    """One `[drivers] allow` entry; `path` is its key path, for errors."""

    id: str
    distribution: str
    version: str | None
    path: str


@dataclass(frozen=True, slots=True)
class DriversConfig:
    allow: tuple[AllowedDriver, ...] = ()
    decode_budget: float = 0.25
    """Seconds a vendor driver's decoder may take for one input before it counts as failed."""

    def allowed(self, driver_id: str) -> AllowedDriver | None:
        return next((entry for entry in self.allow if entry.id == driver_id), None)


def normalise_distribution(name: str) -> str:
    """PEP 503: `Acme_RTM.Spirometer` and `acme-rtm-spirometer` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_drivers(table: ConfigTable) -> DriversConfig:
    table.check_known({"allow", "decode_budget_ms"})
    raw = table.data.get("allow", [])
    if not isinstance(raw, list):
        raise table.error(
            "allow",
            f'expected an array of tables like [{{ id = "acme.spirometer", distribution = '
            f'"acme-rtm-spirometer", version = "1.4.2" }}], got {kind_of(raw)}',
        )
    entries: list[AllowedDriver] = []
    for index, item in enumerate(raw):
        path = f"{table.path + '.' if table.path else ''}allow[{index}]"
        if not isinstance(item, dict):
            raise table.error(f"allow[{index}]", f"expected a table, got {kind_of(item)}")
        entry = ConfigTable(table.file, path, item)
        entry.check_known({"id", "distribution", "version"})
        driver_id = entry.text("id", pattern=_DRIVER_ID, hint="a driver id such as acme.spirometer")
        if any(earlier.id == driver_id for earlier in entries):
            raise entry.error("id", f"{driver_id!r} is allowed twice; keep one entry")
        distribution = entry.text(
            "distribution",
            pattern=_DISTRIBUTION,
            hint="the package name pip installed, such as acme-rtm-spirometer",
        )
        version = entry.optional_str("version")
        if version is not None and not _VERSION.match(version):
            raise entry.error("version", f"{version!r} is not a version such as 1.4.2")
        entries.append(AllowedDriver(driver_id, distribution, version, path))
    budget = table.number("decode_budget_ms", 250.0, 10.0, 10_000.0) / 1000.0
    return DriversConfig(tuple(entries), budget)
