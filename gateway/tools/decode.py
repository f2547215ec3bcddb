"""`rtm-gateway decode`: recorded bytes, or one Bluetooth LE characteristic value, through an
installed driver, as a technician or a vendor checks what a device sent.

What lives here: `decode_recording` (the one-shot decode: the input is all there is, so the
decoder hands over what it holds at its end), `DecodeRequestError` for arguments that cannot be
decoded at all (bad options, bad hex, no such driver or characteristic), and `print_decoded`,
the command's output and exit status.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from gateway.hub.registry import Registry, RegistryError, characteristic_uuid
from gateway.sdk import Driver, FeedResult, Flushable, GattDriver, parse_hex


class DecodeRequestError(Exception):
    """The request itself is wrong (not the bytes): the message says which argument."""


def parse_options(text: str) -> Mapping[str, object]:
    """`--options`: a JSON object."""
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise DecodeRequestError(f"--options is not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise DecodeRequestError("--options must be a JSON object")
    return options


def decode_recording(
    registry: Registry,
    driver_id: str,
    hex_text: str,
    options: Mapping[str, object],
    char: str | None = None,
) -> FeedResult:
    """Decode `hex_text` with driver `driver_id`: a serial driver's bytes, or one value of a
    Bluetooth LE driver's characteristic `char`. At the end of the input the decoder is flushed,
    so a record it holds open (FTMS's More Data, a frame without its end) comes out marked
    incomplete instead of vanishing."""
    try:
        data = parse_hex(hex_text)
        driver = registry.get(driver_id)
        uuid = characteristic_uuid(char) if char is not None else None
        used = {c.uuid for c in driver.info.characteristics}
        if isinstance(driver, Driver) or not isinstance(driver, GattDriver) or uuid not in used:
            # Serial drivers (fed, then flushed) and every refusal, worded by the registry.
            return registry.decode(driver_id, data, options, char=char)
        decoder = driver.gatt_decoder(options)
        result = decoder.value(uuid, data)
    except (ValueError, TypeError, RegistryError) as exc:  # bad hex, bad options, no driver
        raise DecodeRequestError(str(exc)) from exc
    if isinstance(decoder, Flushable):
        held = decoder.flush()
        result.readings.extend(held.readings)
        result.errors.extend(held.errors)
    return result


def print_decoded(result: FeedResult, *, as_json: bool) -> int:
    """Readings on stdout (one JSON object a line, or one JSON document), errors on stderr; exit
    0 only for a clean decode, so scripts can tell good bytes from bad."""
    readings = [r.as_dict() for r in result.readings]
    errors = [str(e) for e in result.errors]
    if as_json:
        print(json.dumps({"readings": readings, "errors": errors}, indent=2))
    else:
        for reading in readings:
            print(json.dumps(reading))
        for error in errors:
            print(f"decode error: {error}", file=sys.stderr)
        if not readings and not errors:
            print("no complete frame in the input", file=sys.stderr)
    return 0 if readings and not errors else 1
