"""The hub's clock: UTC time stamps and whether the kernel says the clock is synchronised.

A Raspberry Pi has no real-time clock, so until NTP has synchronised it the wall clock can be
years off. Every reading says which case it was taken in; readings are never dropped for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from datetime import UTC, datetime
from typing import Any, Literal

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
