"""Simulated devices for the demo, the tests and vendors without hardware.

`run_simulator(driver_id, link, ...)` streams a simulated device of that kind on a
pseudo-terminal whose path is `link`, the way `rtm-gateway simulate` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class SimulatorError(Exception):
    """No simulator for that driver, or the pseudo-terminal could not be made."""


@dataclass(frozen=True, slots=True)
class _Simulator:
    run: Callable[[Path, float, float | None], object]
    default_rate_hz: float
    what: str


def _cms50d(link: Path, rate_hz: float, seconds: float | None) -> object:
    from gateway.sim.cms50d import run_pty

    return run_pty(link, rate_hz=rate_hz, seconds=seconds)


def _kv_lines(link: Path, rate_hz: float, seconds: float | None) -> object:
    from gateway.sim.kv_lines import run_pty

    return run_pty(link, rate_hz=rate_hz, seconds=seconds)


SIMULATORS: dict[str, _Simulator] = {
    "contec.cms50d": _Simulator(_cms50d, 60.0, "a CMS50D+ pulse oximeter's live stream"),
    "generic.kv-lines": _Simulator(_kv_lines, 0.5, "a peak-flow meter printing key=value lines"),
}


def run_simulator(
    driver_id: str, link: Path, *, rate_hz: float | None = None, seconds: float | None = None
) -> None:
    """Stream until `seconds` pass, or SIGTERM / Ctrl-C."""
    simulator = SIMULATORS.get(driver_id)
    if simulator is None:
        raise SimulatorError(
            f"no simulator for {driver_id!r}; simulators exist for: {', '.join(sorted(SIMULATORS))}"
        )
    rate = simulator.default_rate_hz if rate_hz is None else rate_hz
    if rate <= 0:
        raise SimulatorError("--rate must be above 0")
    try:
        simulator.run(link, rate, seconds)
    except OSError as exc:
        raise SimulatorError(f"cannot serve a pseudo-terminal at {link}: {exc}") from exc
