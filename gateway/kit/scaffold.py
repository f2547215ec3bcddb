"""`rtm-gateway driver new`: a vendor driver package, ready to edit, test and publish.

What lives here: `new_driver_package` and its `ScaffoldError`. The templates of the files it
writes are files too, in `templates/` beside this module (`string.Template`, `$name`
placeholders; `driver-ble.py.tmpl` and the like), shipped as package data. The package it makes
has the layout of the reference packages in examples/: a pure driver found through the
`rtm_gateway.drivers` entry point, recorded fixtures in the hub's format that the driver
passes, a pytest file that runs them, a simulated device for Bluetooth LE
(`rtm_gateway.simulators`), and a short README.

Standard library only, and nothing here imports the hub: the templates are text, and the
generated driver's fixtures are written out here by hand, not computed with the driver, so a
test that runs one through the other checks both.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

Transport = Literal["ble", "serial"]

TEMPLATES = "templates"
"""The folder, beside this module and shipped as package data, of the files' templates."""

# Fields that differ by transport, filled into the templates with the names.
_BLE_FIELDS: Mapping[str, str] = {
    "edit_what": "UUIDs, value layout, observation type",
    "case_keys": "values        the characteristic values one connection received, in order, "
    'each\n                  {"char": "<full UUID, or 16-bit like 2a19>", '
    '"hex": "..."}',
    "sdk_imports": ", uuid16",
    "try_it": 'rtm-gateway decode $name "00 a9f1" --char $measurement\n'
    "rtm-gateway simulate $name --ble   # a virtual Bluetooth lab with the device\n",
}
_SERIAL_FIELDS: Mapping[str, str] = {
    "edit_what": "port settings, USB match, framing, observation type",
    "case_keys": "hex           the bytes as received\n"
    "    serial        optional: the expected `SerialSettings.describe()`",
    "sdk_imports": "",
    "try_it": 'rtm-gateway decode $name "4d 20 34 32 2e 35 0a"   # the line "M 42.5"\n',
    "simulator_entry_point": "",
    "simulator": "",
}


def _template(*names: str) -> Template:
    """The template made of these files of `TEMPLATES`, one after the other."""
    folder = resources.files("gateway.kit").joinpath(TEMPLATES)
    return Template("".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names))


_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+")
MAX_NAME = 64
"""Longest driver id: it is spelled out in generated lines that must stay within 100 columns."""

OBSERVATION_TYPE = "range_of_motion"
UNIT = "deg"
"""The placeholder quantity the generated driver reports (UCUM degrees of plane angle)."""


class ScaffoldError(Exception):
    """The package cannot be made: a bad name or transport, or the target is taken or unwritable."""


@dataclass(frozen=True, slots=True)
class _Names:
    """Every spelling of the driver id that the templates use."""

    name: str
    dist: str
    pkg: str
    camel: str
    service: str
    measurement: str
    address: str

    def fields(self) -> dict[str, str]:
        return {
            "name": self.name,
            "dist": self.dist,
            "pkg": self.pkg,
            "camel": self.camel,
            "service": self.service,
            "measurement": self.measurement,
            "address": self.address,
            "model": self.camel.upper()[:24] + "-SIM",
            "device_name": f"Sim {self.camel}"[:20],
            "fixtures": f"{self.pkg}/fixtures/{self.name}",
        }


def _names(name: str) -> _Names:
    if not _NAME.fullmatch(name):
        raise ScaffoldError(
            f"driver name {name!r} must be dotted lower-case like 'acme.spirometer' (vendor, "
            "then model: letters a-z, digits, '_' and '-', parts joined by '.')"
        )
    if len(name) > MAX_NAME:
        raise ScaffoldError(f"driver name {name!r} is longer than {MAX_NAME} characters")
    # Made up, but stable for a name: a UUID whose digits 5-8 are 0001 for the service and count
    # on for its characteristics, as vendors number theirs.
    base = uuid.uuid5(uuid.NAMESPACE_URL, f"rtm-gateway:driver:{name}").hex
    service, measurement = (str(uuid.UUID(base[:4] + f"{n:04x}" + base[8:])) for n in (1, 2))
    address = "C0:FF:EE:" + ":".join(base[i : i + 2].upper() for i in (26, 28, 30))
    return _Names(
        name=name,
        dist="rtm-driver-" + name.replace(".", "-"),
        pkg="rtm_" + re.sub(r"[.-]", "_", name),
        camel="".join(part.capitalize() for part in re.split(r"[._-]+", name)),
        service=service,
        measurement=measurement,
        address=address,
    )


def new_driver_package(name: str, dest: Path, *, transport: Transport = "ble") -> Path:
    """Write a new driver package for driver id `name` (like `acme.spirometer`) to
    `dest/rtm-driver-<name with dots as dashes>/` and return that directory.

    Raises `ScaffoldError` for a bad name or transport, a target that exists and is not an
    empty directory, or a file that cannot be written (nothing is left half-written then).
    """
    names = _names(name)
    if transport not in ("ble", "serial"):
        raise ScaffoldError(f"transport {transport!r} is not 'ble' or 'serial'")
    target = dest / names.dist
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ScaffoldError(
            f"{target} already exists and is not an empty directory: choose "
            "another --dir, or move it away first"
        )
    _write_tree(target, _files(names, transport))
    return target


def _files(names: _Names, transport: Transport) -> dict[str, str]:
    """Every file of the package, by path relative to its root."""
    ble = transport == "ble"
    fields = {**names.fields(), **(_BLE_FIELDS if ble else _SERIAL_FIELDS)}
    fields["try_it"] = Template(fields["try_it"]).substitute(fields)
    if ble:
        fields["simulator_entry_point"] = _template("simulator-entry-point.toml.tmpl").substitute(
            fields
        )
        fields["simulator"] = f"`{names.pkg}/simulator.py` (what the simulated device sends), "
    pkg = names.pkg
    kind = transport  # the templates that differ are named by it: driver-ble, driver-serial
    files = {
        "pyproject.toml": _template("pyproject.toml.tmpl").substitute(fields),
        "README.md": _template("README.md.tmpl").substitute(fields),
        f"{pkg}/__init__.py": _template(f"init-{kind}.py.tmpl").substitute(fields),
        f"{pkg}/py.typed": "",
        f"{pkg}/driver.py": _template(f"driver-{kind}.py.tmpl").substitute(fields),
        "tests/test_driver.py": _template("test-head.py.tmpl", f"test-{kind}.py.tmpl").substitute(
            fields
        ),
    }
    if ble:
        files[f"{pkg}/simulator.py"] = _template("simulator.py.tmpl").substitute(fields)
    cases = _ble_cases(names.measurement) if ble else _serial_cases()
    for stem, case in cases.items():
        files[f"{fields['fixtures']}/{stem}.json"] = json.dumps(case, indent=2) + "\n"
    return files


def _write_tree(target: Path, files: Mapping[str, str]) -> None:
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        for relative, text in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
    except OSError as exc:
        # The target was new or empty: put it back that way, so a retry is not refused.
        shutil.rmtree(target, ignore_errors=True)
        if not created:
            target.mkdir(exist_ok=True)
        raise ScaffoldError(f"cannot write the package to {target}: {exc}") from exc


# --- fixtures: the expected results, written out by hand ------------------------------------


def _wire(
    raw: bytes, value: float | None, status: Mapping[str, object], absent: str | None = None
) -> dict[str, object]:
    """A reading as `Reading.as_dict()` gives it: one placeholder observation, no device time."""
    observation: dict[str, object] = {"type": OBSERVATION_TYPE, "value": value, "unit": UNIT}
    if absent is not None:
        observation["absent"] = absent
    return {
        "observations": [observation],
        "status": dict(status),
        "raw": base64.b64encode(raw).decode("ascii"),
        "device_time": None,
        "device_clock": "unknown",
    }


def _ble_cases(char: str) -> dict[str, dict[str, object]]:
    def values(*hexes: str) -> list[dict[str, str]]:
        return [{"char": char, "hex": text} for text in hexes]

    return {
        "measurements": {
            "description": "42.5 deg (SFLOAT mantissa 425, exponent -1), then 120 deg "
            "(exponent 0) with the low battery flag set",
            "values": values("00 a9f1", "01 7800"),
            "readings": [
                _wire(bytes.fromhex("00a9f1"), 42.5, {"low_battery": False}),
                _wire(bytes.fromhex("017800"), 120, {"low_battery": True}),
            ],
            "errors": 0,
        },
        "not-a-number": {
            "description": "SFLOAT NaN (0x07FF): the observation stays, with value null and why",
            "values": values("00 ff07"),
            "readings": [
                _wire(bytes.fromhex("00ff07"), None, {"low_battery": False}, absent="not-a-number")
            ],
            "errors": 0,
        },
        "malformed": {
            "description": "Empty, cut short and one byte too long: one DecodeError each",
            "values": values("", "00 a9", "00 a9f1 00"),
            "readings": [],
            "errors": 3,
        },
    }


def _serial_cases() -> dict[str, dict[str, object]]:
    good = b"M 42.5\r\nM 120\n"
    garbage = b"M 42.5\n\x13\x80?noise\nM 43.1\n"
    malformed = b"M 4x\nM\n" + b"M " + b"9" * 70 + b"\n"
    return {
        "measurements": {
            "description": "Two lines, ending in CR LF and in LF: 42.5 deg and 120 deg",
            "serial": "9600 8N1",
            "hex": good.hex(" "),
            "readings": [_wire(b"M 42.5", 42.5, {}), _wire(b"M 120", 120, {})],
            "errors": 0,
        },
        "garbage-line": {
            "description": "A line of noise between two good ones: one DecodeError, and the "
            "next line decodes",
            "hex": garbage.hex(" "),
            "readings": [_wire(b"M 42.5", 42.5, {}), _wire(b"M 43.1", 43.1, {})],
            "errors": 1,
        },
        "malformed": {
            "description": "Not a number, no value, and a line longer than MAX_LINE: one "
            "DecodeError each",
            "hex": malformed.hex(" "),
            "readings": [],
            "errors": 3,
        },
    }
