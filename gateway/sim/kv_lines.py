"""A simulated line-printing device for `generic.kv-lines`: a home spirometer / peak-flow
meter that prints one line per blow, such as `pef=412,fev1=2.87,t=1795718184294,batt=88`.

`t` is the device's clock in epoch milliseconds; `batt` is not mapped by the demo's options, so
the hub keeps it in the reading's status. `KV_OPTIONS` is the device's options table.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from gateway.sim.pty import PtyStats, PtyThread, serve_pty

KV_OPTIONS: Mapping[str, object] = {
    "time_key": "t",
    "keys": {"pef": {"type": "peak_expiratory_flow"}, "fev1": {"type": "fev1"}},
}


def lines(seed: int = 0, clock: Callable[[], float] = time.time) -> Iterator[bytes]:
    """Blows that vary around a personal best, as a patient's do from day to day."""
    rng = random.Random(seed)  # noqa: S311  (a simulation, not cryptography)
    battery = 95
    while True:
        pef = round(rng.gauss(420, 25))
        fev1 = round(rng.gauss(2.9, 0.15), 2)
        if rng.random() < 0.05:
            battery = max(5, battery - 1)
        yield f"pef={pef},fev1={fev1},t={int(clock() * 1000)},batt={battery}\r\n".encode()


def run_pty(
    link: Path, rate_hz: float = 0.5, seconds: float | None = None, seed: int = 0
) -> PtyStats:
    return serve_pty(link, lines(seed), rate_hz, seconds)


def start_pty(link: Path, rate_hz: float = 0.5, seed: int = 0) -> PtyThread:
    thread = PtyThread(link, lines(seed), rate_hz)
    thread.start()
    return thread
