"""Checks that this environment holds every pin of a lock file at the locked version.

scripts/test installs the lock first and the test tools after; a tool that needs another
version of a locked package would silently move it. Exit 1 names each package that moved.

    python scripts/lock_pins.py requirements/hub.lock
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            found[normalise(match.group(1))] = match.group(2)
    return found


def main(lock: Path) -> int:
    installed = {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    moved = [
        f"{name}: locked {version}, installed {installed.get(name, 'nothing')}"
        for name, version in sorted(pins(lock).items())
        if installed.get(name) != version
    ]
    for line in moved:
        print(f"lock drift: {line}", file=sys.stderr)
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
