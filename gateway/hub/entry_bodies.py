"""The signed bodies of the hub's log entries (docs/protocol.md): a reading, an event.

Pure functions of their inputs, so the journal, the room-maker and tests build the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.hub.clock import BOOT_ID, HubClock, boottime_ms, rfc3339
from gateway.hub.signer import SigningError
from gateway.sdk import Reading

_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


def floats_finite(reading: Reading) -> bool:
    """True when every value the driver supplied is a plain scalar and no float is NaN or
    infinite: the only floats in a reading body, so the signer may skip its own walk. Raises
    SigningError for a non-finite float; False for anything else (a subclass, a list)."""
    for values in ([o.value for o in reading.observations], reading.status.values()):
        for value in values:
            kind = type(value)
            if kind is float:
                if not math.isfinite(value):  # type: ignore[arg-type]
                    raise SigningError("a value is NaN or infinite, which JSON cannot carry")
            elif kind not in _PLAIN_TYPES:
                return False
    return True


def reading_body(
    device: Mapping[str, object],
    patient: str,
    reading_: Reading,
    hub_time: float,
    hub_clock: HubClock,
    *,
    mono: int,
) -> dict[str, object]:
    """The signed body of a reading (docs/protocol.md): the reading's own fields, with the
    device's clock nested under `time` beside the hub's (wall time, its sync state, and the
    boot id and boottime in ms when the hub took the reading: `mono`)."""
    reading = reading_.as_dict()
    return {
        "kind": "reading",
        "patient": patient,
        "device": device,
        "time": {
            "hub": rfc3339(hub_time),
            "hub_clock": hub_clock,
            "boot": BOOT_ID,
            "mono": mono,
            "device": reading["device_time"],
            "device_clock": reading["device_clock"],
        },
        "observations": reading["observations"],
        "status": reading["status"],
        "raw": reading["raw"],
    }


def event_body(
    name: str,
    detail: Mapping[str, object],
    hub_time: float,
    hub_clock: HubClock,
    mono: int | None = None,
) -> dict[str, object]:
    """The signed body of a hub event; `mono` (boottime ms) is read now when not given."""
    return {
        "kind": "event",
        "event": name,
        "time": {
            "hub": rfc3339(hub_time),
            "hub_clock": hub_clock,
            "boot": BOOT_ID,
            "mono": boottime_ms() if mono is None else mono,
        },
        "detail": dict(detail),
    }
