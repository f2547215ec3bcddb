"""What the decode budget costs a vendor driver: one decode called directly, and the same decode
through `gateway.hub.plugin_budget.budgeted` (a hand-off to the driver's worker thread and back).

Prints numbers, asserts nothing. Run from the repository root:

    .venv/bin/python bench/plugin_budget_bench.py [--calls N]

The decoder is the built-in CMS50D+ decoder fed one 5-byte frame per call, which is about as
cheap as a real decode gets, so the difference is the budget's whole overhead per input.
"""

from __future__ import annotations

import argparse
import time

from gateway.drivers import contec_cms50d
from gateway.hub.plugin_budget import budgeted
from gateway.sdk import Driver
from gateway.sim.cms50d import encode_frame


def _per_call(feed: object, frame: bytes, calls: int) -> tuple[float, float]:
    assert callable(feed)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        feed(frame)
    return (
        (time.perf_counter() - wall) / calls * 1e6,
        (time.process_time() - cpu) / calls * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    frame = encode_frame(spo2=97, pulse_rate=70)
    driver = contec_cms50d.DRIVER
    direct = driver.decoder({})
    wrapped = budgeted(driver, 0.25)
    assert isinstance(wrapped, Driver)
    through = wrapped.decoder({})
    _per_call(through.feed, frame, 1000)  # the worker thread starts on the first call
    plain = _per_call(direct.feed, frame, args.calls)
    budget = _per_call(through.feed, frame, args.calls)
    print(f"{args.calls} decodes of one CMS50D+ frame")
    print(f"  direct:         {plain[0]:7.1f} us wall, {plain[1]:7.1f} us CPU per decode")
    print(f"  under a budget: {budget[0]:7.1f} us wall, {budget[1]:7.1f} us CPU per decode")
    wall, cpu = budget[0] - plain[0], budget[1] - plain[1]
    print(f"  overhead:       {wall:7.1f} us wall, {cpu:7.1f} us CPU")


if __name__ == "__main__":
    main()
