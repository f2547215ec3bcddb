"""The conformance kit's fuzz check: random bytes into every way bytes reach a driver (`feed`,
each characteristic's `value`, `flush`) must come back as results with `DecodeError`s, never as
an exception, each input within a bound of CPU time. Measured in the process's CPU time, not
wall-clock time, so a loaded machine does not fail a driver that is fast. No I/O.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from gateway.hub.registry import AnyDriver
from gateway.kit.report import Check
from gateway.sdk import DecodeError, Driver, Flushable, OptionError


def fuzz_options(driver: AnyDriver, cases: list[Path]) -> Mapping[str, object]:
    """Options to fuzz with: none, unless the driver needs some; then a fixture's."""
    candidates: list[Mapping[str, object]] = [{}]
    for path in cases:
        with contextlib.suppress(ValueError, OSError):
            case = json.loads(path.read_text(encoding="utf-8"))
            if "option_error" not in case and isinstance(case.get("options"), dict):
                candidates.append(case["options"])
    for options in candidates:
        try:
            (driver.decoder if isinstance(driver, Driver) else driver.gatt_decoder)(options)
        except OptionError:
            continue
        return options
    return {}


def _entry_points(
    driver: AnyDriver, options: Mapping[str, object]
) -> Iterator[tuple[str, Callable[[bytes], object]]]:
    """(name, a function of one input) for each way bytes reach the driver."""
    if isinstance(driver, Driver):
        decoder = driver.decoder(options)

        def feed(data: bytes) -> object:
            result = decoder.feed(data)
            if isinstance(decoder, Flushable) and data[:1] == b"\x00":
                return decoder.flush()  # now and then: finish whatever is open
            return result

        yield "feed", feed
        return
    decoder_g = driver.gatt_decoder(options)
    for char in driver.info.characteristics:
        yield f"value({char.name})", partial(_value, decoder_g, char.uuid)
    flush = getattr(decoder_g, "flush", None)
    if callable(flush):
        yield "flush", lambda _data: flush()


def _value(decoder: Any, uuid: str, data: bytes) -> object:
    return decoder.value(uuid, data)


def fuzz_check(
    driver: AnyDriver, options: Mapping[str, object], inputs: int, seed: int, time_limit: float
) -> Check:
    try:
        points = list(_entry_points(driver, options))
    except OptionError as exc:
        return Check(
            "fuzz",
            False,
            f"the driver refuses empty options ({exc}) and no fixture "
            "gives options it accepts: add a fixture with options",
        )
    rng = random.Random(seed)  # noqa: S311  # reproducible fuzz, not secrets
    problems: list[str] = []
    slowest = 0.0
    for name, call in points:
        for _ in range(inputs):
            size = rng.choice((0, 1, 2, 3, 4, 5, 8, 13, 20, 32, 64, 200))
            data = bytes(rng.getrandbits(8) for _ in range(size))
            started = time.process_time()
            try:
                result = call(data)
            except Exception as exc:  # exactly what the check is for
                problems.append(
                    f"{name} raised {type(exc).__name__}: {exc} on {data.hex() or '(no bytes)'}"
                )
                break
            took = time.process_time() - started
            slowest = max(slowest, took)
            if took > time_limit:
                problems.append(
                    f"{name} took {took * 1000:.0f} ms of CPU time on {len(data)} bytes "
                    f"({data.hex()[:60]}); the limit is {time_limit * 1000:.0f} ms"
                )
                break
            errors = getattr(result, "errors", None)
            if not isinstance(errors, list) or not all(isinstance(e, DecodeError) for e in errors):
                problems.append(
                    f"{name} returned {type(result).__name__} without a list of "
                    f"DecodeErrors on {data.hex()}"
                )
                break
    detail = (
        f"{inputs} random inputs into each of {', '.join(n for n, _ in points)}; "
        f"slowest {slowest * 1000:.2f} ms"
    )
    return Check("fuzz", not problems, detail, tuple(problems))
