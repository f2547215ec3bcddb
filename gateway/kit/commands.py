"""`rtm-gateway driver check|new`: the vendor kit's commands, their arguments and what they
print. `gateway.cli` hands the `driver` subcommand here; the work is `conformance.check_driver`
and `scaffold.new_driver_package`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def add_driver_command(sub: Any) -> None:
    """The `driver` subcommand and its own subcommands, on the command line's subparsers."""
    p = sub.add_parser("driver", help="for driver authors: check a driver, or start a new one")
    driver_sub = p.add_subparsers(dest="driver_command", metavar="SUBCOMMAND", required=True)
    d = driver_sub.add_parser(
        "check",
        help="the conformance kit: fixtures, fuzz, units and "
        "codes, match rules; exit 0 only when everything passes",
    )
    d.add_argument(
        "target",
        help="an installed driver id (acme.spirometer) or a module "
        "(acme_rtm.driver, or acme_rtm.driver:DRIVER)",
    )
    d.add_argument(
        "--inputs",
        type=int,
        default=3000,
        help="random inputs per decode entry point (default 3000)",
    )
    d.add_argument("--json", action="store_true")
    d = driver_sub.add_parser(
        "new", help="scaffold a vendor driver package that passes `driver check` as generated"
    )
    d.add_argument("name", help="the driver id, vendor.model (e.g. acme.spirometer)")
    d.add_argument(
        "--dir",
        type=Path,
        default=Path("."),
        help="where to create the package folder (default: here)",
    )
    d.add_argument("--transport", choices=["ble", "serial"], default="ble")


def run_driver_command(args: argparse.Namespace) -> int:
    """Run `driver check` or `driver new`; the exit status."""
    if args.driver_command == "new":
        return _new(args)
    return _check(args)


def _fail(message: str, code: int) -> int:
    print(f"rtm-gateway: {message}", file=sys.stderr)
    return code


def _new(args: argparse.Namespace) -> int:
    from gateway.kit.scaffold import ScaffoldError, new_driver_package

    try:
        path = new_driver_package(args.name, args.dir, transport=args.transport)
    except ScaffoldError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    print(
        f"created {path}\nnext: pip install -e {path} && rtm-gateway driver check "
        f"{args.name}  (see {path / 'README.md'})"
    )
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from gateway.hub.registry import Registry
    from gateway.kit.conformance import ConformanceError, check_driver

    if args.inputs < 1:
        return _fail("--inputs must be at least 1", EXIT_CONFIG)
    # A package being written here is importable by module name; appended, so a module in the
    # working directory never shadows an installed one.
    sys.path.append(str(Path.cwd()))
    if not args.json:
        print(f"checking {args.target} ...", file=sys.stderr)
    try:
        # Of the installed vendor drivers, only the one asked for is imported.
        registry = Registry.with_plugins([args.target])
        report = check_driver(args.target, registry=registry, fuzz_inputs=args.inputs)
    except ConformanceError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return EXIT_OK if report.ok else EXIT_FAILED
