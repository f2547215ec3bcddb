"""Contec CMS50D+ pulse oximeter, firmware 4.5 and older: the live stream over its serial cable.

What lives here: the pure frame codec (`decode_frame`), the stream decoder that frames and
resynchronises the byte stream, and the `DRIVER` object. Nothing here opens the port.

The live stream is 5-byte frames, about 60 a second. Only the first byte of a frame has bit 7
set, which is all the framing there is (no length, no checksum):

    byte 0  1 beep dropping finger-out  signal strength (bits 0-3)
    byte 1  0 pleth waveform (7 bits)
    byte 2  0 pr-bit7 searching probe-error  bargraph (bits 0-3)
    byte 3  0 pulse rate bits 0-6
    byte 4  0 SpO2 (7 bits)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.sdk import (
    OBSERVATION_TYPES,
    BitNames,
    DecodeError,
    DriverInfo,
    FeedResult,
    Observation,
    Reading,
    SerialSettings,
    StatusValue,
    UsbMatch,
    no_options,
)

FRAME_LEN = 5
SYNC = 0x80

# The named status bits of bytes 0 and 2: flags are table entries, not code.
_BYTE0_BITS: BitNames = {4: "finger_out", 5: "spo2_dropping", 6: "pulse_beep"}
_BYTE2_BITS: BitNames = {4: "probe_error", 5: "searching"}
# (name, byte index, mask) of each, made once: a frame is decoded 60 times a second.
_FLAG_MASKS = tuple(
    (name, index, 1 << bit)
    for index, names in ((0, _BYTE0_BITS), (2, _BYTE2_BITS))
    for bit, name in names.items()
)

# While finger_out, searching or probe_error is set the oximeter is not measuring, so the
# numbers in the frame are left-overs or placeholders, not readings.

# The values a reading may take. Outside them the device is saying "no value", never a real 0:
# the stream uses all-ones (SpO2 127 in its 7-bit field, PR 255 in its 8-bit field) and zeros
# while it has no reading, and no living patient has an SpO2 or pulse rate of 0. SpO2 above 100 %
# cannot be a saturation either, so it is an error too rather than a clipped 100.
_VALID: Mapping[str, range] = {
    "spo2": range(1, 101),
    "pulse_rate": range(1, 255),
}

DRIVER_ID = "contec.cms50d"


# Every observation this device can produce, made once: a frame decodes to table lookups.
# We keep an observation with value None rather than dropping it: the platform then sees that
# the oximeter was on but had no value, which it cannot tell from a missing field.
_OBSERVATIONS: Mapping[str, Mapping[int, Observation]] = {
    name: {value: Observation.known(name, value) for value in valid}
    for name, valid in _VALID.items()
}
_NO_VALUE: Mapping[str, Observation] = {
    name: Observation.known(name, None, absent="error") for name in _VALID
}


def decode_frame(frame: bytes) -> Reading:
    """Decode one 5-byte live frame. Raises `DecodeError` for anything that is not one."""
    if len(frame) != FRAME_LEN:
        raise DecodeError(f"CMS50D frame must be {FRAME_LEN} bytes, got {len(frame)}")
    if not frame[0] & SYNC:
        raise DecodeError("CMS50D frame does not start with a sync byte (bit 7 set)")
    if (frame[1] | frame[2] | frame[3] | frame[4]) & SYNC:
        raise DecodeError("CMS50D frame has bit 7 set after its first byte")

    status: dict[str, StatusValue] = {"signal_strength": frame[0] & 0x0F}
    for name, index, mask in _FLAG_MASKS:
        status[name] = bool(frame[index] & mask)
    measuring = not (status["finger_out"] or status["searching"] or status["probe_error"])
    values = (("spo2", frame[4]), ("pulse_rate", frame[3] | (0x80 if frame[2] & 0x40 else 0)))
    observations = tuple(
        (_OBSERVATIONS[name].get(value, _NO_VALUE[name]) if measuring else _NO_VALUE[name])
        for name, value in values
    )
    return Reading(observations=observations, raw=bytes(frame), status=status)


@dataclass(slots=True)
class Cms50dStreamDecoder:
    """Frames the live stream: a byte with bit 7 set always starts a new frame.

    A frame cut short by a new sync byte is one `DecodeError`; so is each run of bytes that
    arrive between frames. Bytes before the first sync byte of a session are the tail of a frame
    sent before the port was opened, so they are skipped without an error. Errors are reported
    when the byte that ends them arrives, so how the stream is chunked never changes the result.
    """

    _frame: bytearray = field(default_factory=bytearray)
    _synced: bool = False
    _stray: int = 0

    def feed(self, data: bytes) -> FeedResult:
        result = FeedResult()
        index, end = 0, len(data)
        while index < end:
            byte = data[index]
            if byte & SYNC:
                self._start_frame(byte, result)
                # A whole frame ahead in this chunk: decode it from the slice in one step.
                stop = index + FRAME_LEN
                if stop <= end and not (
                    (data[index + 1] | data[index + 2] | data[index + 3] | data[index + 4]) & SYNC
                ):
                    self._frame.clear()
                    result.readings.append(decode_frame(data[index:stop]))
                    index = stop
                    continue
            elif not self._frame:
                self._stray += 1
            else:
                self._frame.append(byte)
                if len(self._frame) == FRAME_LEN:
                    self._finish_frame(result)
            index += 1
        return result

    def _start_frame(self, byte: int, result: FeedResult) -> None:
        if self._frame:
            result.errors.append(
                DecodeError(f"CMS50D frame cut short after {len(self._frame)} of {FRAME_LEN} bytes")
            )
        if self._stray and self._synced:
            result.errors.append(
                DecodeError(f"CMS50D stream: skipped {self._stray} bytes between frames")
            )
        self._stray = 0
        self._synced = True
        self._frame = bytearray((byte,))

    def _finish_frame(self, result: FeedResult) -> None:
        try:
            result.readings.append(decode_frame(bytes(self._frame)))
        except DecodeError as exc:  # cannot happen with the framing above; kept as a guard
            result.errors.append(exc)
        self._frame.clear()


class Cms50dDriver:
    """The Contec CMS50D+ (firmware <= 4.5) live-stream driver."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Contec CMS50D+ pulse oximeter (firmware <= 4.5), live stream over USB serial",
        transport="serial",
        category="respiratory",
        # The cable holds a Silicon Labs CP210x bridge; the oximeter itself speaks TTL serial.
        match=(UsbMatch(0x10C4, 0xEA60),),
        # The firmware documents XON/XOFF, but the hub never sends in live mode, and a tty with
        # IXON takes the bytes 0x11 and 0x13 out of the input: this binary stream contains them
        # (pleth values, PR 145 and 147), so about 8 % of frames would arrive cut short.
        serial=SerialSettings(19200, 8, "O", 1, xonxoff=False),
        observation_types=(OBSERVATION_TYPES["spo2"], OBSERVATION_TYPES["pulse_rate"]),
        continuous=True,
    )

    def decoder(self, options: Mapping[str, object]) -> Cms50dStreamDecoder:
        no_options(DRIVER_ID, options)
        return Cms50dStreamDecoder()


DRIVER = Cms50dDriver()
