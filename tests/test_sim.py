"""The CMS50D+ simulator: exact frames, a realistic seeded stream, a real pty read by pyserial."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import pytest
import serial

from gateway.drivers.contec_cms50d import DRIVER, decode_frame
from gateway.sim.cms50d import Cms50dSimulator, encode_frame, run_pty, start_pty
from gateway.sim.pty import PtyThread, serve_pty


def _values(frame: bytes) -> dict[str, float | int | None]:
    return {o.type: o.value for o in decode_frame(frame).observations}


def test_encode_frame_round_trips() -> None:
    frame = encode_frame(93, 201, pleth=127, signal=15, bargraph=15, spo2_dropping=True, beep=True)
    reading = decode_frame(frame)
    assert _values(frame) == {"spo2": 93, "pulse_rate": 201}
    assert reading.status["signal_strength"] == 15
    assert reading.status["spo2_dropping"] is True
    assert reading.status["pulse_beep"] is True


def test_encode_frame_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="pulse_rate"):
        encode_frame(97, 256)


def test_stream_is_seeded_and_realistic() -> None:
    sim = Cms50dSimulator(seed=7, rate_hz=60.0, episode_every=20.0)
    frames = [sim.next_frame() for _ in range(60 * 300)]
    again = Cms50dSimulator(seed=7, rate_hz=60.0, episode_every=20.0)
    assert frames[:500] == [again.next_frame() for _ in range(500)]

    readings = DRIVER.decoder({}).feed(b"".join(frames)).readings
    assert len(readings) == len(frames)
    measured = [r for r in readings if r.observations[0].value is not None]
    spo2 = [float(r.observations[0].value or 0) for r in measured]
    pulse = [float(r.observations[1].value or 0) for r in measured]
    assert all(94 <= v <= 99 for v in spo2)
    assert all(60 <= v <= 90 for v in pulse)
    # Slow movement: one frame to the next moves at most one unit.
    assert max(abs(a - b) for a, b in itertools.pairwise(spo2)) <= 1
    for flag in ("finger_out", "searching"):
        assert any(r.status[flag] for r in readings), f"no {flag} episode in 5 minutes"
    beats = sum(bool(r.status["pulse_beep"]) for r in measured)
    assert 40 <= beats / (len(measured) / 60 / 60) <= 100  # beats per minute
    pleth = {r.raw[1] for r in measured}
    assert max(pleth) - min(pleth) > 60  # a waveform, not a flat line


def test_pty_frames_decode_through_pyserial(tmp_path: Path) -> None:
    link = tmp_path / "cms50d"
    with start_pty(link, rate_hz=200.0, seed=3) as sim:
        assert link.is_symlink()
        port = serial.Serial(str(link), baudrate=19200, parity="O", timeout=0.2)
        try:
            port.reset_input_buffer()
            data = b""
            deadline = time.monotonic() + 5.0
            while len(data) < 5 * 100 and time.monotonic() < deadline:
                data += port.read(512)
        finally:
            port.close()
    stats = sim.stop()
    assert not link.is_symlink()
    result = DRIVER.decoder({}).feed(data)
    assert len(result.readings) >= 90
    assert len(result.errors) <= 1  # the buffer reset may cut one frame
    assert stats.written >= len(result.readings)


def test_no_reader_does_not_block(tmp_path: Path) -> None:
    """Nobody opens the port: the pty buffer fills, frames are dropped, the writer keeps time."""
    link = tmp_path / "idle"
    frames = iter(lambda: encode_frame(97, 72), b"")
    started = time.monotonic()
    stats = serve_pty(link, frames, rate_hz=20000.0, seconds=1.0)
    # Returns, about when asked (a writer blocked on the full buffer never would).
    assert time.monotonic() - started < 30.0
    assert stats.dropped > 0
    assert stats.written * 5 < 1024 * 1024  # bounded by the pty buffer, not by the rate


def test_stale_link_is_replaced_and_a_real_file_is_not(tmp_path: Path) -> None:
    link = tmp_path / "port"
    link.symlink_to(tmp_path / "gone")
    stats = run_pty(link, rate_hz=100.0, seconds=0.2)
    assert stats.written > 0
    assert not link.is_symlink()

    link.write_text("not a port")
    with pytest.raises(FileExistsError):
        run_pty(link, rate_hz=100.0, seconds=0.2)
    assert link.read_text() == "not a port"


def test_stop_event_ends_a_blocking_run(tmp_path: Path) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    run_pty(tmp_path / "p", rate_hz=60.0, stop=stop)
    assert time.monotonic() - started < 30.0  # returns at all: without the event it never would
    timer.join()


def test_thread_reports_a_startup_error(tmp_path: Path) -> None:
    link = tmp_path / "file"
    link.write_text("")
    sim = PtyThread(link, iter(()), rate_hz=10.0)
    with pytest.raises(FileExistsError):
        sim.start()


def test_link_points_at_a_tty(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    with start_pty(link, rate_hz=10.0):
        fd = os.open(link, os.O_RDONLY | os.O_NOCTTY)
        try:
            assert os.isatty(fd)
        finally:
            os.close(fd)
