"""The text of the files `rtm-gateway driver new` writes (see gateway/kit/scaffold.py): string
templates, filled with the names derived from the driver id. No logic lives here.
"""

from __future__ import annotations

from collections.abc import Mapping
from string import Template


def _code(text: str) -> Template:
    """A template written as a raw string that starts on the line after its quotes."""
    return Template(text.removeprefix("\n"))


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

_PYPROJECT = Template("""\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "rtm-gateway driver for $name"
readme = "README.md"
requires-python = ">=3.11"
# The driver is written for driver SDK 1.2 (gateway.sdk). A hub with an older SDK refuses it:
# when you use a newer SDK, say so here too, e.g. "rtm-gateway>=0.2".
dependencies = ["rtm-gateway"]

[project.entry-points."rtm_gateway.drivers"]
"$name" = "$pkg.driver:DRIVER"
$simulator_entry_point
# Found as packages (fixtures/ as a namespace package), so setuptools ships the fixtures
# without warning that a data directory looks importable.
[tool.setuptools.packages.find]
include = ["$pkg", "$pkg.*"]

[tool.setuptools.package-data]
$pkg = ["py.typed", "fixtures/**/*.json"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
addopts = "-ra --strict-markers"
filterwarnings = ["error"]

[tool.mypy]
strict = true
python_version = "3.11"
packages = ["$pkg"]
""")

_SIMULATOR_ENTRY_POINT = Template("""
[project.entry-points."rtm_gateway.simulators"]
"$name" = "$pkg.simulator:Simulated$camel"
""")

_README = Template("""\
# $dist

The rtm-gateway driver for `$name`, made by `rtm-gateway driver new`. It works as it is,
for a made-up device: make it yours.

## Edit first

1. `$pkg/driver.py`: the TODOs ($edit_what), `category`, `description`.
2. `$fixtures/`: replace the cases with bytes recorded from your device
   (one JSON file per case: the bytes and the whole expected result).
3. $simulator`pyproject.toml` (description, authors, project URLs) and this file.

Keep the driver pure: bytes in, readings out, `DecodeError` for anything malformed; no I/O,
clock or logging. It may import `gateway.sdk` and the standard library only.

## Try it

```sh
pip install -e .        # into the environment that has rtm-gateway
pytest                  # runs every fixture through the driver
rtm-gateway drivers     # lists $name, with how it matches devices
rtm-gateway driver check $name
$try_it```

## Publish

```sh
python -m build                 # sdist and wheel in dist/
python -m twine upload dist/*   # to PyPI, or your own index
```

A hub then needs only `pip install $dist`: the entry points in `pyproject.toml` make the
driver known to it, and devices name it with `driver = "$name"`.
""")

_INIT_BLE = Template('''\
"""rtm-gateway driver package (made by `rtm-gateway driver new`).

`driver` is the driver (pure: bytes in, readings out), found by the hub through the
`rtm_gateway.drivers` entry point; `simulator` is a simulated device for the hub's virtual
Bluetooth lab (`rtm_gateway.simulators`); `fixtures/` holds recorded cases. Nothing is imported
here, so loading the driver never pulls in the simulator's dependencies.
"""
''')

_INIT_SERIAL = Template('''\
"""rtm-gateway driver package (made by `rtm-gateway driver new`).

`driver` is the driver (pure: bytes in, readings out), found by the hub through the
`rtm_gateway.drivers` entry point; `fixtures/` holds recorded cases.
"""
''')

_DRIVER_BLE = _code(r'''
"""A Bluetooth LE driver for rtm-gateway, made by `rtm-gateway driver new`.

What lives here: the device's UUIDs, the pure codec `decode_measurement` and `DRIVER`, which
the hub finds through the `rtm_gateway.drivers` entry point. Nothing here talks to a radio,
reads a clock or logs; it imports `gateway.sdk` and the standard library only.

TODO: this decodes a made-up device. Put in your device's UUIDs, value layout and observation
type, then replace the fixtures with values recorded from it. The Measurement value
(notify) is little-endian, 3 bytes:

    flags   uint8    bit 0 low battery; bits 1-7 reserved (ignored)
    value   SFLOAT   the range of motion in degrees; NaN when there is none
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.sdk import (
    BleMatch,
    Characteristic,
    DecodeError,
    DriverInfo,
    Observation,
    Reading,
    TableGattDecoder,
    no_options,
    sfloat_from,
    uint_from,
)

DRIVER_ID = "$name"

# TODO: your device's UUIDs. These are made up: the service's digits 5-8 are 0001 and its
# characteristics count on from there.
SERVICE = "$service"
MEASUREMENT = "$measurement"

# Observation types are snake_case and fixed once published: platforms key on them. The unit
# is UCUM. Give no MDC or LOINC code unless one names exactly this quantity.
OBSERVATION_TYPE = "range_of_motion"
UNIT = "deg"

MEASUREMENT_SIZE = 3
_LOW_BATTERY = 0x01


def decode_measurement(data: bytes) -> Reading:
    """A Measurement value. Raises `DecodeError` for one of the wrong length."""
    if len(data) != MEASUREMENT_SIZE:
        raise DecodeError(f"{DRIVER_ID}: a measurement is {MEASUREMENT_SIZE} bytes, "
                          f"got {len(data)}")
    flags = uint_from(data, 0, 1)
    value = sfloat_from(data, 1)
    # A special value (NaN, NRes, +-INF) keeps the observation, with value None and the reason:
    # a platform can then tell "measured nothing" from "sent nothing".
    observation = Observation(OBSERVATION_TYPE, value.value, UNIT, absent=value.absent)
    return Reading((observation,), bytes(data), {"low_battery": bool(flags & _LOW_BATTERY)})


class ${camel}Driver:
    """The driver: a declaration and a factory for per-connection decoders."""

    # A plain class, not a frozen dataclass: the SDK's driver protocol declares `info` as a
    # plain attribute, which a frozen field does not satisfy for mypy.
    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="0.1.0",  # keep in step with pyproject.toml
        description="TODO: what the device is and what it measures",
        transport="ble",
        match=(BleMatch(service_uuid=SERVICE),),
        service=SERVICE,
        characteristics=(Characteristic(MEASUREMENT, "measurement", "notify"),),
        produces=(OBSERVATION_TYPE,),
        sdk_version=(1, 2),
        # The RTM category the device serves: "respiratory" (CPT 98976), "musculoskeletal"
        # (98977) or "other" (neither; the platform decides how to bill it).
        category="other",
    )

    def gatt_decoder(self, options: Mapping[str, object]) -> TableGattDecoder:
        """A decoder for one connection. TODO: validate options here if you add any, raising
        `OptionError(path, message)`."""
        no_options(DRIVER_ID, options)
        return TableGattDecoder(DRIVER_ID, {MEASUREMENT: decode_measurement})


DRIVER = ${camel}Driver()
''')

_DRIVER_SERIAL = _code(r'''
"""A serial driver for rtm-gateway, made by `rtm-gateway driver new`.

What lives here: the pure line codec `decode_line`, the stream decoder that splits the bytes
into lines, and `DRIVER`, which the hub finds through the `rtm_gateway.drivers` entry point.
Nothing here opens the port, reads a clock or logs; it imports `gateway.sdk` and the standard
library only.

TODO: this decodes a made-up device that prints one ASCII line per measurement: `M 42.5` and
a newline (`\n` or `\r\n`), the range of motion in degrees. Put in your device's port
settings, framing and observation type, then replace the fixtures with bytes recorded from it.
A binary protocol has the same shape: find a frame's start, check its length (and checksum),
decode it, and after a bad frame look for the next start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.sdk import (
    DecodeError,
    DriverInfo,
    FeedResult,
    Observation,
    Reading,
    SerialSettings,
    no_options,
)

DRIVER_ID = "$name"

# Observation types are snake_case and fixed once published: platforms key on them. The unit
# is UCUM. Give no MDC or LOINC code unless one names exactly this quantity.
OBSERVATION_TYPE = "range_of_motion"
UNIT = "deg"

MAX_LINE = 64
"""Longest line in bytes, without its terminator: a device that never sends a newline must not
make the decoder buffer without bound."""

_LINE = re.compile(rb"M (-?\d{1,4}(?:\.\d{1,3})?)")


def decode_line(line: bytes) -> Reading:
    """One line without its terminator. Raises `DecodeError` for anything but `M <number>`."""
    match = _LINE.fullmatch(line)
    if match is None:
        # Say what is wrong, not what the line held: it may be a health value.
        raise DecodeError(f"{DRIVER_ID}: expected a line 'M <number>', got {len(line)} bytes")
    text = match.group(1).decode("ascii")
    value = float(text) if "." in text else int(text)
    return Reading((Observation(OBSERVATION_TYPE, value, UNIT),), bytes(line))


@dataclass(slots=True)
class LineDecoder:
    """Splits the stream at newlines and decodes each line. A malformed line is one
    `DecodeError` and the next line decodes again, however the bytes are chunked.

    The first line after the port opens may be the tail of one sent before: expect one error
    then. An over-long line is one error; the rest of it, up to its newline, is dropped.
    """

    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False

    def feed(self, data: bytes) -> FeedResult:
        result = FeedResult()
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).removesuffix(b"\r")
            del self._buffer[:end + 1]
            if self._discarding:
                self._discarding = False
            elif line.strip():  # blank lines carry nothing
                try:
                    result.readings.append(decode_line(line))
                except DecodeError as exc:
                    result.errors.append(exc)
        # One byte of slack: a full-length line may be waiting for the "\n" after its "\r".
        if len(self._buffer) > MAX_LINE + 1:
            if not self._discarding:
                result.errors.append(DecodeError(
                    f"{DRIVER_ID}: no newline within {MAX_LINE} bytes; line dropped"))
            self._discarding = True
            self._buffer.clear()
        return result


class ${camel}Driver:
    """The driver: a declaration and a factory for per-session stream decoders."""

    # A plain class, not a frozen dataclass: the SDK's driver protocol declares `info` as a
    # plain attribute, which a frozen field does not satisfy for mypy.
    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="0.1.0",  # keep in step with pyproject.toml
        description="TODO: what the device is and what it measures",
        transport="serial",
        # TODO: UsbMatch(vid, pid) with your cable's USB ids (`lsusb`) lets the hub find the
        # device by itself; add product="..." when it uses a common bridge chip (CP210x, FTDI,
        # CH340), whose ids many other devices share. Without a rule, devices name the driver.
        match=(),
        serial=SerialSettings(9600),  # TODO: your device's baud rate, parity and stop bits
        produces=(OBSERVATION_TYPE,),
        sdk_version=(1, 2),
        # The RTM category the device serves: "respiratory" (CPT 98976), "musculoskeletal"
        # (98977) or "other" (neither; the platform decides how to bill it).
        category="other",
    )

    def decoder(self, options: Mapping[str, object]) -> LineDecoder:
        """A decoder for one session. TODO: validate options here if you add any, raising
        `OptionError(path, message)`."""
        no_options(DRIVER_ID, options)
        return LineDecoder()


DRIVER = ${camel}Driver()
''')

_SIMULATOR = _code(r'''
"""A simulated device for rtm-gateway's virtual Bluetooth lab (`simulate --ble`).

What lives here: the simulated device, which the hub finds through the `rtm_gateway.simulators`
entry point. It advertises the driver's service, serves Device Information and Battery (from
`SimulatedBleDevice`) and notifies one measurement a second while a central listens.

TODO: make `live` send what your device sends. Encode the bytes here from your protocol's
description, not with the driver's code, so that a mistake in the driver is not copied into the
device that tests it.
"""

from __future__ import annotations

from gateway.kit.vendor import CharSpec, SimulatedBleDevice, Walk, sfloat

from .driver import DRIVER_ID, MEASUREMENT, SERVICE

_LOW_BATTERY = 0x01


class Simulated$camel(SimulatedBleDevice):
    """A range of motion drifting around 45 degrees, one value a second."""

    driver_id = DRIVER_ID
    service = SERVICE
    model = "$model"
    what = "a made-up device (range of motion once a second)"

    def __init__(self, *, address: str = "$address", name: str = "$device_name",
                 serial: str = "SIM-000001", seed: int | None = None,
                 battery_level: int = 90) -> None:
        super().__init__(address=address, name=name, serial=serial, seed=seed,
                         battery_level=battery_level,
                         profile={MEASUREMENT: CharSpec(("notify",))})
        self._angle = Walk(self.rng, mean=45.0, low=0.0, high=150.0, step=2.0)

    async def live(self, first: bool) -> None:
        flags = _LOW_BATTERY if self.battery_level < 20 else 0
        # SFLOAT with one decimal: the mantissa counts tenths of a degree, the exponent is -1.
        value = sfloat(round(self._angle.next() * 10), -1)
        await self.send(MEASUREMENT, bytes((flags,)) + value)
''')

_TEST_HEAD = '''\
"""Runs every recorded case through the driver: the package's fixtures/<driver id>/*.json.

A case is one JSON file, in rtm-gateway's own fixture format:

    description   what the case shows
    options       the device's `options` table (default {})
    $case_keys
    readings      every expected reading, as `Reading.wire()` dicts
    errors        how many DecodeErrors the bytes must produce
    option_error  instead of readings and errors: the options must be refused at this path
"""
# ruff: noqa: S101  (pytest's assert)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from $pkg import driver

from gateway.sdk import DecodeError, OptionError, parse_hex$sdk_imports

FIXTURES = Path(driver.__file__).parent / "fixtures" / driver.DRIVER_ID
CASES = sorted(FIXTURES.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def test_there_are_fixtures() -> None:
    assert CASES, f"no fixtures in {FIXTURES}"

'''

_TEST_BLE = Template(
    _TEST_HEAD
    + '''
def _uuid(text: str) -> str:
    return uuid16(int(text, 16)) if len(text) == 4 else text.lower()


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_fixture(path: Path) -> None:
    case = _load(path)
    options = case.get("options", {})
    if "option_error" in case:
        with pytest.raises(OptionError) as excinfo:
            driver.DRIVER.gatt_decoder(options)
        assert excinfo.value.path == case["option_error"]
        return
    # One decoder for the whole case: a decoder may keep state from value to value.
    decoder = driver.DRIVER.gatt_decoder(options)
    readings: list[object] = []
    errors: list[DecodeError] = []
    for value in case["values"]:
        result = decoder.value(_uuid(value["char"]), parse_hex(value["hex"]))
        readings += [reading.wire() for reading in result.readings]
        errors += result.errors
    # Through JSON, as a platform sees it.
    assert json.loads(json.dumps(readings)) == case["readings"]
    assert len(errors) == case["errors"], [str(error) for error in errors]
    assert all(isinstance(error, DecodeError) for error in errors)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_cut_short_values_are_decode_errors(path: Path) -> None:
    """Every value cut short anywhere decodes or comes back as an error: never an exception."""
    for value in _load(path).get("values", []):
        data = parse_hex(value["hex"])
        for end in range(len(data)):
            driver.DRIVER.gatt_decoder({}).value(_uuid(value["char"]), data[:end])
'''
)

_TEST_SERIAL = Template(
    _TEST_HEAD
    + """
def _decode(chunks: list[bytes], options: dict[str, Any]) -> tuple[list[object], int]:
    decoder = driver.DRIVER.decoder(options)
    readings: list[object] = []
    errors: list[DecodeError] = []
    for chunk in chunks:
        result = decoder.feed(chunk)
        readings += [reading.wire() for reading in result.readings]
        errors += result.errors
    assert all(isinstance(error, DecodeError) for error in errors)
    # Through JSON, as a platform sees it.
    return json.loads(json.dumps(readings)), len(errors)


def _chunks(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    chunks, start = [], 0
    while start < len(data):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(data[start:start + size])
        start += size
    return chunks


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_fixture(path: Path) -> None:
    case = _load(path)
    options = case.get("options", {})
    if "option_error" in case:
        with pytest.raises(OptionError) as excinfo:
            driver.DRIVER.decoder(options)
        assert excinfo.value.path == case["option_error"]
        return
    if "serial" in case:
        assert driver.DRIVER.info.serial.describe() == case["serial"]
    data = parse_hex(case["hex"])
    expected = (case["readings"], case["errors"])
    assert _decode([data], options) == expected
    # Bytes arrive in any pieces: byte by byte and unevenly must give the same result.
    assert _decode(_chunks(data, (1,)), options) == expected
    assert _decode(_chunks(data, (2, 7, 3, 5)), options) == expected
"""
)
