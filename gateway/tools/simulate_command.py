"""`rtm-gateway simulate`: a simulated device on a pseudo-terminal or a virtual BlueZ, for
trying the hub (and drivers) without hardware. The simulators themselves live in gateway.sim,
imported only when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_simulate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`simulate`: a device on a pseudo-terminal or a virtual BlueZ, for trying the hub."""
    p = sub.add_parser(
        "simulate",
        help="run a simulated device: serial on a pseudo-terminal, "
        "or Bluetooth LE on a virtual BlueZ (--ble)",
    )
    p.add_argument(
        "driver",
        nargs="+",
        help="driver id of the device to simulate, e.g. "
        "contec.cms50d; with --ble, one or more of gatt.plx gatt.gls gatt.ftms "
        "gatt.hrs",
    )
    p.add_argument("--link", type=Path, help="serial: path of the pseudo-terminal link to create")
    p.add_argument(
        "--ble",
        action="store_true",
        help="start a virtual Bluetooth lab (a private "
        "D-Bus bus with a virtual BlueZ) and print its address",
    )
    p.add_argument("--address", help="--ble: the device's Bluetooth address")
    p.add_argument("--serial", help="--ble: the device's Device Information serial number")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="frames (or lines) per second (default: the device's own rate)",
    )
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")


def run_simulate_command(args: argparse.Namespace) -> int:
    from gateway.sim import SimulatorError, run_simulator

    try:
        if args.ble:
            from gateway.sim.ble_lab import run_ble_lab

            run_ble_lab(
                args.driver,
                rate_hz=args.rate,
                seconds=args.seconds,
                address=args.address,
                serial=args.serial,
            )
            return 0
        if args.link is None or len(args.driver) != 1:
            print(
                "rtm-gateway: a serial simulator needs one driver and --link PATH (or use --ble)",
                file=sys.stderr,
            )
            return 2
        run_simulator(args.driver[0], args.link, rate_hz=args.rate, seconds=args.seconds)
    except SimulatorError as exc:
        print(f"rtm-gateway: {exc}", file=sys.stderr)
        return 2
    return 0
