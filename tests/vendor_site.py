"""A fake vendor distribution on disk, laid out as pip installs one: a package and its
`*.dist-info` (METADATA, entry_points.txt, RECORD with each file's sha256). Put its folder on a
subprocess's PYTHONPATH and `importlib.metadata` finds it as installed.

The driver module's body appends to a marker file in `$ACME_MARKERS` when it is imported, so a
test can tell whether a command imported it. The driver itself is a serial line decoder:
`ok N` is a reading (SpO2 90 + N % 10), `slow` sleeps `SLOW_SECONDS` first (a decoder that
overruns its budget), `peek` opens the file `$ACME_PEEK` and `net` connects to a local port
(what a driver must not do), anything else a `DecodeError`.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

SLOW_SECONDS = 3.0

_DRIVER = """
import os
from pathlib import Path

Path(os.environ["ACME_MARKERS"], "{module}.imported").open("a").write("imported\\n")

import socket
import time

from gateway.sdk import DecodeError, DriverInfo, FeedResult, Observation, Reading


class _Lines:
    def __init__(self):
        self._held = b""

    def feed(self, data):
        result = FeedResult()
        self._held += data
        *lines, self._held = self._held.split(b"\\n")
        for line in lines:
            if line == b"slow":
                time.sleep({slow})
                line = b"ok 0"
            elif line == b"peek":
                open(os.environ["ACME_PEEK"], "rb").close()
                continue
            elif line == b"net":
                with socket.socket() as sock:
                    sock.settimeout(1)
                    try:
                        sock.connect(("127.0.0.1", 9))
                    except OSError:
                        pass
                continue
            words = line.split()
            if len(words) == 2 and words[0] == b"ok" and words[1].isdigit():
                spo2 = Observation.known("spo2", 90 + int(words[1]) % 10)
                result.readings.append(Reading((spo2,), raw=line))
            else:
                result.errors.append(DecodeError("not an ok line"))
        return result


class _Driver:
    info = DriverInfo(
        id="{driver_id}",
        version="1.0.0",
        description="a test vendor driver",
        transport="serial",
        produces=("spo2",),
        category="respiratory",
    )

    def decoder(self, options):
        return _Lines()


DRIVER = _Driver()
"""


@dataclass(frozen=True)
class VendorPackage:
    driver_id: str
    distribution: str
    version: str
    module: str
    site: Path

    @property
    def record(self) -> Path:
        return self.site / f"{self.distribution.replace('-', '_')}-{self.version}.dist-info/RECORD"

    @property
    def driver_file(self) -> Path:
        return self.site / self.module / "driver.py"

    def imported(self, markers: Path) -> bool:
        return (markers / f"{self.module}.imported").exists()


def _hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def install_vendor_package(
    site: Path, driver_id: str, distribution: str, version: str, module: str
) -> VendorPackage:
    """Write the package and its metadata into `site`, as pip would."""
    files: dict[str, bytes] = {
        f"{module}/__init__.py": b"",
        f"{module}/driver.py": _DRIVER.format(
            module=module, driver_id=driver_id, slow=SLOW_SECONDS
        ).encode(),
    }
    info = f"{distribution.replace('-', '_')}-{version}.dist-info"
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    ).encode()
    files[f"{info}/entry_points.txt"] = (
        f"[rtm_gateway.drivers]\n{driver_id} = {module}.driver:DRIVER\n"
    ).encode()
    for name, data in files.items():
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    record = "".join(f"{name},sha256={_hash(data)},{len(data)}\n" for name, data in files.items())
    (site / info / "RECORD").write_text(record + f"{info}/RECORD,,\n")
    return VendorPackage(driver_id, distribution, version, module, site)
