"""The hub's clock: UTC time stamps, whether the kernel says the clock is synchronised, and the
monotonic reference that goes with every entry (boot id and CLOCK_BOOTTIME).

A Raspberry Pi has no real-time clock, so until NTP has synchronised it the wall clock can be
years off. Every reading says which case it was taken in; readings are never dropped for it.
A step of the wall clock (NTP, `date -s`, a forged NTP answer) is found by `StepDetector`,
which compares wall time with boottime, and the journal signs a `clock-stepped` event for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from gateway.hub.machine import boot_id

HubClock = Literal["synced", "unsynced", "unknown"]

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> on 64-bit Linux; only `status` and the return value matter,
    # the padding keeps the kernel from writing past the buffer.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 256)]


def _load_adjtimex() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return getattr(libc, "adjtimex", None)


_adjtimex = _load_adjtimex()


def clock_state() -> HubClock:
    """'synced' when the kernel's NTP state says so, 'unsynced' when it says not, else 'unknown'."""
    if _adjtimex is None:
        return "unknown"
    buf = _Timex()
    state = int(_adjtimex(ctypes.byref(buf)))
    if state < 0:
        return "unknown"
    return "unsynced" if state == _TIME_ERROR else "synced"


def rfc3339(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds: 2026-11-26T20:01:55.123Z."""
    # Exactly what datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds") gives
    # (microseconds rounded half-even, then cut to milliseconds), at a third of the cost: the
    # date and time of day are formatted once per second, which is most readings' second.
    frac, whole = math.modf(epoch)
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        whole += 1.0
        micros -= 1_000_000
    elif micros < 0:
        whole -= 1.0
        micros += 1_000_000
    global _last_second, _last_prefix  # noqa: PLW0603 - a one-entry cache
    if whole != _last_second:
        _last_prefix = datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")[:-6]
        _last_second = whole
    return f"{_last_prefix}.{micros // 1000:03d}Z"


_last_second = math.nan
_last_prefix = ""


# --- the monotonic reference (F-CLOCK) -------------------------------------------------------

_BOOTTIME: Final = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
_clock_gettime_ns = time.clock_gettime_ns


def boottime_ms() -> int:
    """CLOCK_BOOTTIME in whole milliseconds: time since boot, suspend included, never stepped.
    With `boot_id` it places an entry on a clock nobody can set."""
    return _clock_gettime_ns(_BOOTTIME) // 1_000_000


BOOT_ID: Final = boot_id() or ""
"""The kernel's boot id, read once: a new one each boot ("" where the kernel has none)."""

STEP_THRESHOLD_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class ClockStep:
    """The wall clock moved by `by_s` seconds more (or less) than boottime since the last
    look: `before` is where the wall clock would be without the step, `after` where it is."""

    by_s: float
    before: float
    after: float


class StepDetector:
    """Finds wall-clock steps by comparing wall time with boottime between two looks.

    Both clocks run at the same (NTP-disciplined) rate, so their difference moves only when
    someone sets the wall clock: NTP's step, `date -s`, a forged NTP answer. A difference
    that moved by more than `STEP_THRESHOLD_S` is a step (a leap second's 1 s is not)."""

    __slots__ = ("_offset",)

    def __init__(self) -> None:
        self._offset: float | None = None

    def look(self, wall: float, boot_ms: int) -> ClockStep | None:
        offset = wall - boot_ms / 1000.0
        last, self._offset = self._offset, offset
        if last is None or abs(offset - last) <= STEP_THRESHOLD_S:
            return None
        return ClockStep(round(offset - last, 3), wall - (offset - last), wall)
