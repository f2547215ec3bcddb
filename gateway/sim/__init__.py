"""Simulated devices for the demo, the tests and vendors without hardware.

`run_simulator(driver_id, link, ...)` streams a simulated device of that kind on a
pseudo-terminal whose path is `link`, the way `rtm-gateway simulate` does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class SimulatorError(Exception):
    """No simulator for that driver, or the pseudo-terminal could not be made."""


def _cms50d(link: Path, rate_hz: float, seconds: float | None) -> None:
    from gateway.sim.cms50d import run_pty

    run_pty(link, rate_hz=rate_hz, seconds=seconds)


SIMULATORS: dict[str, Callable[[Path, float, float | None], None]] = {
    "contec.cms50d": _cms50d,
}


def run_simulator(driver_id: str, link: Path, *, rate_hz: float = 60.0,
                  seconds: float | None = None) -> None:
    """Stream until `seconds` pass, or SIGTERM / Ctrl-C."""
    simulator = SIMULATORS.get(driver_id)
    if simulator is None:
        raise SimulatorError(f"no simulator for {driver_id!r}; simulators exist for: "
                             f"{', '.join(sorted(SIMULATORS))}")
    if rate_hz <= 0:
        raise SimulatorError("--rate must be above 0")
    try:
        simulator(link, rate_hz, seconds)
    except OSError as exc:
        raise SimulatorError(f"cannot serve a pseudo-terminal at {link}: {exc}") from exc
