"""`rtm-gateway sbom`: a CycloneDX 1.5 bill of materials of the environment the hub runs in.

What lives here: reading the installed distributions' metadata (`importlib.metadata`) and
writing it as CycloneDX JSON. The components are the hub, what it requires (followed through
each distribution's Requires-Dist, extras left out), and every distribution that registers an
`rtm_gateway.drivers` entry point, with what those require: vendor plugins appear by name,
version and entry points, and their code is never imported. Each component carries its purl,
its licence where the metadata states one, and a SHA-256 of its RECORD when every file RECORD
lists is still on disk with the hash RECORD gives (the installed files are what the wheel put
there). What may not: anything the daemon imports; this module runs only for this command.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import uuid
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway import __version__

HUB = "rtm-gateway"
DRIVER_GROUP = "rtm_gateway.drivers"
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_LICENSE_CLASSIFIER = "License :: "


def normalise(name: str) -> str:
    """A distribution name as PyPI and purls spell it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def purl(name: str, version: str) -> str:
    return f"pkg:pypi/{normalise(name)}@{version}"


def build_sbom(hub: str = HUB) -> dict[str, Any]:
    """The bill of materials as a JSON-ready dict."""
    installed = _installed()
    plugins = _plugins()
    wanted = _closure([hub, *plugins], installed)
    components = [
        _component(installed[name], plugins.get(name, ()))
        for name in sorted(wanted)
        if name != normalise(hub)
    ]
    hub_dist = installed[normalise(hub)]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {
                "components": [
                    {"type": "application", "name": HUB, "version": __version__},
                ]
            },
            "component": _component(hub_dist, (), kind="application"),
        },
        "components": components,
        "dependencies": [
            {"ref": _ref(installed[name]), "dependsOn": sorted(_ref(installed[d]) for d in deps)}
            for name, deps in sorted(_edges(wanted, installed).items())
        ],
    }


def _installed() -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            # The first on sys.path wins, as it does for an import.
            found.setdefault(normalise(name), dist)
    return found


def _plugins() -> dict[str, tuple[str, ...]]:
    """Distribution name -> the driver entry points it registers, read without importing."""
    plugins: dict[str, list[str]] = {}
    for entry in metadata.entry_points(group=DRIVER_GROUP):
        if entry.dist is not None:
            plugins.setdefault(normalise(entry.dist.metadata["Name"]), []).append(entry.name)
    return {name: tuple(sorted(names)) for name, names in plugins.items()}


def _requires(dist: metadata.Distribution) -> list[str]:
    """The names this distribution requires, extras left out. Environment markers are not
    evaluated: a requirement counts when its distribution is installed."""
    names = []
    for line in dist.requires or []:
        requirement, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        match = _REQUIREMENT_NAME.match(requirement)
        if match:
            names.append(normalise(match.group(1)))
    return names


def _closure(roots: Iterable[str], installed: dict[str, metadata.Distribution]) -> set[str]:
    seen: set[str] = set()
    todo = [normalise(root) for root in roots]
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        todo.extend(_requires(installed[name]))
    return seen


def _edges(wanted: set[str], installed: dict[str, metadata.Distribution]) -> dict[str, list[str]]:
    return {name: sorted({d for d in _requires(installed[name]) if d in wanted}) for name in wanted}


def _ref(dist: metadata.Distribution) -> str:
    return purl(dist.metadata["Name"], dist.version)


def _component(
    dist: metadata.Distribution, entry_points: tuple[str, ...], kind: str = "library"
) -> dict[str, Any]:
    name, version = dist.metadata["Name"], dist.version
    component: dict[str, Any] = {
        "type": kind,
        "bom-ref": purl(name, version),
        "name": name,
        "version": version,
        "purl": purl(name, version),
    }
    summary = dist.metadata["Summary"]
    if summary:
        component["description"] = summary
    licenses = _licenses(dist)
    if licenses:
        component["licenses"] = licenses
    record_hash = _record_sha256(dist)
    if record_hash:
        component["hashes"] = [{"alg": "SHA-256", "content": record_hash}]
    properties = []
    if entry_points:
        properties.append({"name": "rtm-gateway:drivers", "value": " ".join(entry_points)})
    if record_hash:
        properties.append({"name": "rtm-gateway:hash-of", "value": "installed RECORD"})
    if properties:
        component["properties"] = properties
    return component


def _licenses(dist: metadata.Distribution) -> list[dict[str, Any]]:
    expression = dist.metadata["License-Expression"]
    if expression:
        return [{"expression": expression}]
    classifiers = [
        c.split(" :: ")[-1]
        for c in dist.metadata.get_all("Classifier") or []
        if c.startswith(_LICENSE_CLASSIFIER)
    ]
    if classifiers:
        return [{"license": {"name": name}} for name in classifiers]
    text = (dist.metadata["License"] or "").strip()
    # Some put the whole licence text in the field: only a one-line name is a name.
    if text and "\n" not in text and len(text) <= 100:
        return [{"license": {"name": text}}]
    return []


def _record_sha256(dist: metadata.Distribution) -> str | None:
    """SHA-256 of the RECORD file, when every file it lists with a hash still has that hash.
    RECORD is CSV (a path with a comma is quoted): `Distribution.files` reads it as such."""
    record_bytes = None
    try:
        for file in dist.files or ():
            located = Path(str(file.locate()))
            if file.name == "RECORD" and file.parent.name.endswith(".dist-info"):
                # The file's own bytes (line endings as written): anyone can recompute it.
                record_bytes = located.read_bytes()
            if file.hash is None:
                continue  # RECORD itself and generated files carry no hash
            if file.hash.mode != "sha256":
                return None
            actual = hashlib.sha256(located.read_bytes()).digest()
            if base64.urlsafe_b64encode(actual).rstrip(b"=").decode() != file.hash.value:
                return None
    except OSError:  # a listed file gone or unreadable: no hash to vouch with
        return None
    return hashlib.sha256(record_bytes).hexdigest() if record_bytes is not None else None
