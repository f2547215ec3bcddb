"""Which machine and which boot the hub runs on, and whether its state dir was made here.

A state dir (the signing key, the outbox) copied to a second machine would sign as the first
hub. The hub keeps a hash of the machine id in its state dir and refuses a state dir made on
another machine unless told the move was deliberate; its `hub-started` event carries the machine
hash and the boot id, so the platform can tell which machine and which boot signed what.
Standard library only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

MACHINE_FILE = "machine"
"""In the state dir: the hash of the machine id the state dir was made on (or moved to)."""
_MACHINE_IDS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class MachineMovedError(Exception):
    """The state dir was made on another machine."""


def _first_line(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def machine_hash(candidates: tuple[Path, ...] = _MACHINE_IDS) -> str | None:
    """A hash of the machine id (the id itself is private to the machine: systemd asks that it
    not leave it), or None where the system has none."""
    for path in candidates:
        machine_id = _first_line(path)
        if machine_id:
            digest = hashlib.sha256(b"rtm-gateway machine:" + machine_id.encode()).hexdigest()
            return digest[:32]
    return None


def boot_id(path: Path = _BOOT_ID) -> str | None:
    return _first_line(path)


@dataclass(frozen=True, slots=True)
class Binding:
    machine: str | None
    """This machine's hash (None: the system has no machine id)."""
    moved_from: str | None = None
    """The machine hash the state dir was bound to before a deliberate move."""


def bind_state_dir(state_dir: Path, *, moved: bool, machine: str | None = None) -> Binding:
    """Check the state dir against this machine; record this machine on first use, or when a
    deliberate move (`moved`) rebinds it. Raises `MachineMovedError` for an undeclared move."""
    here = machine if machine is not None else machine_hash()
    if here is None:
        return Binding(None)
    path = state_dir / MACHINE_FILE
    recorded = _first_line(path)
    if recorded == here:
        return Binding(here)
    if recorded is not None and not moved:
        raise MachineMovedError(
            f"the state dir {state_dir} was made on another machine (machine hash {recorded}, "
            f"this one is {here}): a copied state dir signs as the original hub. If this hub "
            "was moved here deliberately, start it once with `rtm-gateway run --moved` (a "
            "signed hub-moved event tells the platform); otherwise give this machine its own "
            "state dir and register its new key"
        )
    tmp = path.with_name(f".{MACHINE_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(here + "\n")
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)
    return Binding(here, recorded)
