"""A simulated Contec CMS50D+ (firmware <= 4.5) streaming live frames on a pseudo-terminal.

What lives here: `encode_frame` (exact frames for tests), `Cms50dSimulator` (a seeded stream of
realistic frames: slowly moving SpO2 and pulse rate, a pleth waveform with a beep per beat, and
episodes of finger-out, searching and probe error) and `run_pty`, the body of
`rtm-gateway simulate contec.cms50d --link PATH [--rate HZ] [--seconds N]`.

The frame layout is documented in `gateway.drivers.contec_cms50d`; it is written out again here
on purpose, so a mistake in the driver is not copied into the simulator that tests it.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.sim.pty import PtyStats, PtyThread, serve_pty

# field -> largest value its bits hold
_LIMITS: Mapping[str, int] = {
    "spo2": 127,
    "pulse_rate": 255,
    "pleth": 127,
    "signal": 15,
    "bargraph": 15,
}


def encode_frame(
    spo2: int = 97,
    pulse_rate: int = 72,
    *,
    pleth: int = 64,
    signal: int = 8,
    bargraph: int = 4,
    finger_out: bool = False,
    searching: bool = False,
    probe_error: bool = False,
    spo2_dropping: bool = False,
    beep: bool = False,
) -> bytes:
    """One 5-byte live frame with exactly these fields. Raises ValueError for a value that
    does not fit its bits."""
    fields = {
        "spo2": spo2,
        "pulse_rate": pulse_rate,
        "pleth": pleth,
        "signal": signal,
        "bargraph": bargraph,
    }
    for name, value in fields.items():
        if not 0 <= value <= _LIMITS[name]:
            raise ValueError(f"{name} must be 0..{_LIMITS[name]}, got {value}")
    byte0 = 0x80 | signal | finger_out << 4 | spo2_dropping << 5 | beep << 6
    byte2 = bargraph | probe_error << 4 | searching << 5 | (pulse_rate >> 7) << 6
    return bytes((byte0, pleth, byte2, pulse_rate & 0x7F, spo2))


@dataclass(frozen=True, slots=True)
class Episode:
    """A spell without a reading: what the frame says, and what the device sends as values."""

    flag: str
    seconds: tuple[float, float]
    spo2: int
    pulse_rate: int
    then: str | None = None
    """The episode that follows (a finger put back is searched for before a reading)."""


# The device's "no value" encodings: all-ones with the finger out or a probe fault, zeros while
# it searches for a pulse. Both kinds occur, so the simulator sends both.
EPISODES: Mapping[str, Episode] = {
    e.flag: e
    for e in (
        Episode("finger_out", (2.0, 6.0), spo2=127, pulse_rate=255, then="searching"),
        Episode("searching", (2.0, 5.0), spo2=0, pulse_rate=0),
        Episode("probe_error", (1.0, 3.0), spo2=127, pulse_rate=255, then="searching"),
    )
}
_STARTS: tuple[tuple[str, float], ...] = (("finger_out", 0.8), ("probe_error", 0.2))


WARM_UP_SECONDS = 5.0
"""No finger-out or searching spell starts in the stream's first seconds."""


def _pleth_shape(phase: float) -> float:
    """One heartbeat of a finger pleth, 0..~1: a sharp systolic peak and a dicrotic wave."""
    systolic = math.exp(-(((phase - 0.18) / 0.08) ** 2))
    dicrotic = 0.35 * math.exp(-(((phase - 0.5) / 0.09) ** 2))
    return systolic + dicrotic


class Cms50dSimulator:
    """A seeded, reproducible stream of live frames at `rate_hz`.

    `episode_every` is the mean number of seconds between episodes without a reading.
    """

    def __init__(self, seed: int = 0, rate_hz: float = 60.0, episode_every: float = 90.0) -> None:
        if not rate_hz > 0 or not episode_every > 0:
            raise ValueError("rate_hz and episode_every must be positive")
        self._rng = random.Random(seed)  # noqa: S311  (a simulation, not cryptography)
        self._dt = 1.0 / rate_hz
        self._episode_every = episode_every
        self._spo2 = 97.0
        self._spo2_before = 97.0
        self._pulse = 72.0
        self._phase = 0.0
        self._episode: Episode | None = None
        self._episode_left = 0.0
        # A patient's first seconds with the clip on give readings; spells come later.
        self._settling = round(WARM_UP_SECONDS * rate_hz)

    def frames(self) -> Iterator[bytes]:
        while True:
            yield self.next_frame()

    def next_frame(self) -> bytes:
        self._drift()
        if self._settling:
            self._settling -= 1
        elif self._episode is None and self._rng.random() < self._dt / self._episode_every:
            names, weights = zip(*_STARTS, strict=True)
            self._begin(self._rng.choices(names, weights)[0])
        if self._episode is not None:
            return self._episode_frame(self._episode)
        return self._reading_frame()

    def _drift(self) -> None:
        """A mean-reverting random walk: values move slowly, as a resting patient's do."""
        rng, dt = self._rng, self._dt
        self._spo2_before = self._spo2
        self._spo2 += (97.0 - self._spo2) * 0.02 * dt + rng.gauss(0.0, 0.25) * math.sqrt(dt)
        self._spo2 = min(max(self._spo2, 94.0), 99.0)
        self._pulse += (72.0 - self._pulse) * 0.02 * dt + rng.gauss(0.0, 1.2) * math.sqrt(dt)
        self._pulse = min(max(self._pulse, 60.0), 90.0)

    def _begin(self, flag: str) -> None:
        self._episode = EPISODES[flag]
        self._episode_left = self._rng.uniform(*self._episode.seconds)

    def _episode_frame(self, episode: Episode) -> bytes:
        self._episode_left -= self._dt
        if self._episode_left <= 0:
            if episode.then is None:
                self._episode = None
            else:
                self._begin(episode.then)
        noise = self._rng.randrange(0, 4) if episode.flag == "searching" else 0
        return encode_frame(
            episode.spo2,
            episode.pulse_rate,
            pleth=noise,
            signal=noise,
            bargraph=0,
            finger_out=episode.flag == "finger_out",
            searching=episode.flag == "searching",
            probe_error=episode.flag == "probe_error",
        )

    def _reading_frame(self) -> bytes:
        self._phase += self._pulse / 60.0 * self._dt
        beat = self._phase >= 1.0
        self._phase %= 1.0
        shape = _pleth_shape(self._phase)
        spo2 = round(self._spo2)
        return encode_frame(
            spo2,
            round(self._pulse),
            pleth=min(127, round(15 + 95 * shape + self._rng.uniform(-2.0, 2.0))),
            signal=self._rng.choice((7, 8, 8, 9)),
            bargraph=min(15, round(12 * shape)),
            spo2_dropping=spo2 < 95 and self._spo2 < self._spo2_before,
            beep=beat,
        )


def run_pty(
    link: Path,
    rate_hz: float = 60.0,
    seconds: float | None = None,
    seed: int = 0,
    stop: threading.Event | None = None,
) -> PtyStats:
    """Stream a simulated CMS50D+ on a pty at `link` until `seconds` pass, `stop` is set, or
    Ctrl-C / SIGTERM. Blocking; use `start_pty` for a background thread."""
    frames = Cms50dSimulator(seed, rate_hz).frames()
    return serve_pty(link, frames, rate_hz, seconds, stop=stop)


def start_pty(
    link: Path, rate_hz: float = 60.0, seed: int = 0, episode_every: float = 90.0
) -> PtyThread:
    """A simulated CMS50D+ streaming in a background thread; call `.stop()` (or use `with`)."""
    frames = Cms50dSimulator(seed, rate_hz, episode_every).frames()
    thread = PtyThread(link, frames, rate_hz)
    thread.start()
    return thread
