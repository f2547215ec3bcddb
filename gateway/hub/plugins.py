"""Vendor drivers as installed packages: found, chosen and vouched for from metadata alone.

What lives here: `installed_plugins` (every `rtm_gateway.drivers` entry point with its
distribution and version, read from the packages' metadata: nothing is imported),
`entry_points_for_config` (the entry points a configuration lets the hub import, checked against
its `[drivers] allow` pins; errors name the key path), `entry_points_named` (an explicit choice:
`rtm-gateway decode ID`, `drivers --load ID`), `provenance` (what `hub-started` signs about a
loaded plugin), `record_problem` (installed files that differ from the hashes pip recorded)
and `sources_only` (a plugin imported from its checked sources, not from compiled files beside
them that RECORD may not list).

`EntryPointLike` (what the registry needs of an entry point) and `PluginProblem` (a plugin
skipped, and why) are shared with the registry.

What may not: importing a plugin. `gateway.hub.registry` imports exactly the entry points
chosen here, and nothing else of the `rtm_gateway.drivers` group.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.hub.config_drivers import normalise_distribution
from gateway.hub.config_reader import ConfigError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from gateway.hub.config import Config

ENTRY_POINT_GROUP = "rtm_gateway.drivers"


class EntryPointLike(Protocol):
    """What the registry needs of an `importlib.metadata.EntryPoint` (a seam for tests)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    def load(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class PluginProblem:
    """A plugin that was skipped, and why: for `rtm-gateway doctor`."""

    name: str
    source: str
    reason: str


@dataclass(frozen=True, slots=True, order=True)
class InstalledPlugin:
    """One installed driver entry point, as its package's metadata declares it."""

    id: str
    distribution: str
    version: str
    target: str
    """The entry point's `module:attribute`, which is imported only when the plugin loads."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a loaded plugin came from, signed into `hub-started`.

    `sha256` is the hex SHA-256 of the distribution's RECORD file: RECORD lists every file pip
    installed with its own SHA-256, so this one hash stands for the whole installed package
    (None when the package has no RECORD, as when it is not installed by pip)."""

    id: str
    distribution: str
    version: str
    sha256: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "distribution": self.distribution,
            "version": self.version,
            "sha256": self.sha256,
        }


def _entry_points(name: str | None = None) -> list[EntryPoint]:
    from importlib.metadata import entry_points

    if name is None:
        return list(entry_points(group=ENTRY_POINT_GROUP))
    return list(entry_points(group=ENTRY_POINT_GROUP, name=name))


def _dist(entry_point: object) -> Any:
    return getattr(entry_point, "dist", None)


def distribution_name(entry_point: object) -> str | None:
    name = getattr(_dist(entry_point), "name", None)
    return name if isinstance(name, str) else None


def distribution_version(entry_point: object) -> str:
    version = getattr(_dist(entry_point), "version", None)
    return version if isinstance(version, str) else ""


def installed_plugins() -> tuple[InstalledPlugin, ...]:
    """Every installed `rtm_gateway.drivers` entry point, from metadata only, sorted by id."""
    return tuple(
        sorted(
            InstalledPlugin(
                ep.name,
                distribution_name(ep) or "(unknown distribution)",
                distribution_version(ep),
                ep.value,
            )
            for ep in _entry_points()
        )
    )


def entry_points_named(names: Iterable[str]) -> list[EntryPoint]:
    """The installed entry points with these names (selected by name, none imported)."""
    return [ep for name in sorted(set(names)) for ep in _entry_points(name)]


def entry_points_for_config(config: Config, builtin_ids: Collection[str]) -> list[EntryPoint]:
    """The vendor drivers this configuration lets the hub import: those a device names and those
    `[drivers] allow` names. An allow entry's distribution and version must be what is
    installed; a `ConfigError` names the key path that does not fit."""
    wanted: dict[str, str] = {}
    for index, device in enumerate(config.devices):
        if device.driver not in builtin_ids:
            wanted.setdefault(device.driver, f"devices[{index}].driver")
    for entry in config.drivers.allow:
        if entry.id in builtin_ids:
            raise ConfigError(
                config.file,
                f"{entry.path}.id",
                f"{entry.id} is a built-in driver; only vendor drivers are allowed here "
                "(remove this entry)",
            )
        wanted[entry.id] = entry.path
    chosen: list[EntryPoint] = []
    for driver_id, where in sorted(wanted.items()):
        found = _entry_points(driver_id)
        allowed = config.drivers.allowed(driver_id)
        if allowed is not None:
            by_name = [
                ep
                for ep in found
                if normalise_distribution(distribution_name(ep) or "")
                == normalise_distribution(allowed.distribution)
            ]
            if not by_name:
                elsewhere = ", ".join(_described(ep) for ep in found)
                raise ConfigError(
                    config.file,
                    f"{where}.distribution",
                    f"driver {driver_id} is not installed from {allowed.distribution}"
                    + (f" but from {elsewhere}" if elsewhere else "")
                    + "; install the vendor's package from the curated index "
                    "(pip install --require-hashes -r ...), or correct this entry",
                )
            found = by_name
            version = distribution_version(found[0])
            if allowed.version is not None and version != allowed.version:
                raise ConfigError(
                    config.file,
                    f"{where}.version",
                    f"{allowed.distribution} {version} is installed, this entry allows "
                    f"{allowed.version}; install {allowed.version}, or review the new version "
                    "and change the entry",
                )
        elif not found:
            continue  # the device's driver check says no such driver is installed
        elif len(found) > 1:
            raise ConfigError(
                config.file,
                where,
                f"driver {driver_id} is provided by {' and '.join(_described(ep) for ep in found)}"
                ": uninstall one, or add a [drivers] allow entry naming the distribution",
            )
        problem = record_problem(found[0])
        if problem is not None:
            raise ConfigError(
                config.file,
                where,
                f"driver {driver_id} from {_described(found[0])} is refused: {problem}; "
                "reinstall it (pip install --force-reinstall --require-hashes -r ...)",
            )
        chosen.append(found[0])
    return chosen


def _described(entry_point: object) -> str:
    name = distribution_name(entry_point) or "an unknown distribution"
    version = distribution_version(entry_point)
    return f"{name} {version}" if version else name


def _record_file(entry_point: object) -> Any:
    files = getattr(_dist(entry_point), "files", None)
    for file in files or ():
        if file.name == "RECORD" and file.parent.name.endswith(".dist-info"):
            return file
    return None


def provenance(driver_id: str, entry_point: object) -> Provenance:
    """What `hub-started` signs about a plugin loaded from `entry_point`."""
    record = _record_file(entry_point)
    digest = None
    if record is not None:
        try:
            digest = hashlib.sha256(record.locate().read_bytes()).hexdigest()
        except OSError:
            digest = None
    return Provenance(
        driver_id,
        distribution_name(entry_point) or "",
        distribution_version(entry_point),
        digest,
    )


def record_problem(entry_point: object) -> str | None:
    """None when every installed file that RECORD lists with a hash still has that hash; else
    the first that does not. (Visibility of a changed install, not a boundary: whoever can
    change the files can change RECORD too. The hash in `hub-started` makes that visible.)"""
    files = getattr(_dist(entry_point), "files", None)
    for file in files or ():
        expected = getattr(file, "hash", None)
        if expected is None or expected.mode != "sha256":
            continue
        try:
            data = file.locate().read_bytes()
        except OSError:
            return f"{file} is listed in its RECORD but cannot be read"
        actual = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if actual != expected.value:
            return f"{file} differs from the hash in its RECORD"
    return None


@contextlib.contextmanager
def sources_only() -> Iterator[None]:
    """Import (within the block) from source files, never from `__pycache__`: a compiled file
    that pip did not write is not in RECORD, so `record_problem` cannot vouch for it, and one
    with its source's time stamp and size would run instead of the checked source. Python
    looks for compiled files under `sys.pycache_prefix` when it is set: an empty folder, with
    writing off, leaves it only the sources. (Modules a plugin imports later, when decoding,
    are read as usual.)"""
    saved = sys.pycache_prefix, sys.dont_write_bytecode
    with tempfile.TemporaryDirectory(prefix="rtm-gateway-nopyc-") as empty:
        sys.pycache_prefix, sys.dont_write_bytecode = empty, True
        try:
            yield
        finally:
            sys.pycache_prefix, sys.dont_write_bytecode = saved
