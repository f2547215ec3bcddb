"""The `rtm-gateway` command line: parse, call, print. Nothing else lives here: the vendor
kit's `driver` subcommand is `gateway.kit.commands`, `verify` is `gateway.tools.verify_command`,
and longer output is laid out by its tool (`gateway.tools.decode`, `gateway.tools.drivers`,
...).

Each command imports what it needs when it runs, so `rtm-gateway --help` and the light
commands stay fast on a small hub.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.kit.commands import add_driver_command, run_driver_command
from gateway.tools.simulate_command import add_simulate_command, run_simulate_command
from gateway.tools.verify_command import add_verify_arguments, run_verify_command

if TYPE_CHECKING:
    from gateway.hub.config import Config, DeviceConfig
    from gateway.hub.registry import Registry

DEFAULT_CONFIG = Path("/etc/rtm-gateway/config.toml")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_CONFIG
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtm-gateway",
        description="Home hub for Remote Therapeutic Monitoring: device readings, signed, "
        "stored durably and forwarded over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"rtm-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"configuration file (default {DEFAULT_CONFIG})",
        )

    def with_load(p: argparse.ArgumentParser, why: str) -> None:
        p.add_argument(
            "--load",
            nargs="+",
            metavar="ID",
            default=[],
            help=f"also import these installed vendor drivers {why} (this runs their code)",
        )

    p = sub.add_parser("run", help="run the hub daemon")
    with_config(p)
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"],
        help="override [log] level (TRACE shows raw bytes and values)",
    )
    p.add_argument(
        "--moved",
        action="store_true",
        help="the state dir was moved to this machine deliberately: accept it (signs hub-moved)",
    )

    p = sub.add_parser("check-config", help="validate a configuration file without running")
    with_config(p)

    p = sub.add_parser(
        "drivers",
        help="list the drivers: built-in ones and the vendor drivers loaded (how each matches "
        "devices), and the vendor packages installed but not loaded (from their metadata)",
    )
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        help="load the vendor drivers this configuration allows, as the hub would",
    )
    with_load(p, "to describe them")
    p.add_argument("--json", action="store_true")

    add_driver_command(sub)

    p = sub.add_parser("decode", help="decode bytes (or a BLE characteristic value) with a driver")
    p.add_argument("driver", help="driver id, e.g. contec.cms50d")
    p.add_argument("hex", help="the bytes in hex (spaces and colons allowed)")
    p.add_argument(
        "--char",
        help="Bluetooth LE drivers: the characteristic the value came "
        "from (16-bit like 2A37, or a full UUID)",
    )
    p.add_argument(
        "--options",
        default="{}",
        help="driver options as JSON (e.g. for "
        'generic.kv-lines: \'{"keys": {"spo2": {"type": "spo2"}}}\')',
    )
    p.add_argument("--json", action="store_true")

    add_simulate_command(sub)

    p = sub.add_parser(
        "scan",
        help="list nearby Bluetooth LE devices, the driver for each, and "
        "whether this hub is configured for it",
    )
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help=f"configuration whose devices count as paired (default {DEFAULT_CONFIG} "
        "when it exists)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10)")
    with_load(p, "so that their match rules name devices")
    p.add_argument("--adapter", default=None, help="adapter (default: the config's, or hci0)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("identity", help="print the hub's public key as a JWK")
    with_config(p)

    p = sub.add_parser("status", help="outbox depth, last publish, devices (daemon running or not)")
    with_config(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "sbom",
        help="print a CycloneDX 1.5 bill of materials of this environment: the hub, its "
        "dependencies and every installed vendor driver package",
    )
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")

    p = sub.add_parser("verify", help="subscribe and verify signatures, sequence and chain")
    add_verify_arguments(p)

    p = sub.add_parser("demo", help="simulated devices, the hub, a broker and the verifier")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    p.add_argument("--url", help="use this broker instead of starting one")
    p.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "embedded"],
        default="auto",
        help="which local broker to start: the machine's mosquitto, the embedded "
        "amqtt (MQTT 3.1.1), or auto (mosquitto when installed)",
    )
    p.add_argument(
        "--protocol",
        choices=["5", "3.1.1"],
        default=None,
        help="MQTT protocol (default: 5, or 3.1.1 for the embedded broker)",
    )
    return parser


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"rtm-gateway: {message}", file=sys.stderr)
    return code


def _load(path: Path) -> Config:
    from gateway.hub.config import load_config

    config = load_config(path)
    _check_drivers(config)
    return config


def _check_drivers(config: Config, extra: Sequence[str] = ()) -> Registry:
    """Each device's driver exists, fits its transport and takes its options. Only the vendor
    drivers the config names (and `extra`, named on the command line) are imported; an allow
    entry that does not fit what is installed is a ConfigError (exit 2) naming its key."""
    from gateway.hub.config import check_driver_options
    from gateway.hub.registry import Registry

    registry = Registry.for_config(config, extra)

    def check(device: DeviceConfig) -> None:
        registry.get_for(device.driver, ble=device.is_ble)
        registry.check_options(device.driver, device.options)

    check_driver_options(config, check)
    return registry


# --- commands ------------------------------------------------------------------------------------


def _cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.hub.config_reader import ConfigError
    from gateway.tools.tls_check import check_tls

    try:
        config = _load(args.config)
        # The TLS files as the daemon will load them, without connecting.
        tls = check_tls(config.mqtt, config.file)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    for line in tls.lines:
        print(line)
    for warning in tls.warnings:
        print(f"rtm-gateway: {warning}", file=sys.stderr)
    print(
        f"{config.file}: ok (hub {config.hub.id}, {len(config.devices)} device(s), "
        f"broker {config.mqtt.url})"
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import StartupError, run_hub
    from gateway.hub.config import load_config
    from gateway.hub.config_reader import ConfigError
    from gateway.hub.logs import setup_logging

    try:
        config = load_config(args.config)
        # Logging first: a vendor driver that is skipped says so in the journal's format.
        setup_logging(args.log_level or config.log_level)
        registry = _check_drivers(config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    try:
        return run_hub(config, registry, moved=args.moved)
    except StartupError as exc:
        return _fail(str(exc), exc.exit_status)


def _cmd_drivers(args: argparse.Namespace) -> int:
    from gateway.hub.config import load_config
    from gateway.hub.config_reader import ConfigError
    from gateway.hub.registry import Registry
    from gateway.tools.drivers import installed_rows, render_drivers, render_installed

    asked = set(args.load)
    try:
        if args.config is not None:
            config = load_config(args.config, secrets=False)
            registry = _check_drivers(config, args.load)
            asked |= {d.driver for d in config.devices} | {a.id for a in config.drivers.allow}
        else:
            registry = Registry.with_plugins(args.load)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    descriptions = registry.describe()
    others = installed_rows(asked, configured=args.config is not None)
    if args.json:
        rows = [{**d.as_dict(), "status": "loaded"} for d in descriptions]
        print(json.dumps(rows + [row.as_dict() for row in others], indent=2))
    else:
        texts = (render_drivers(descriptions), render_installed(others))
        print("\n".join(text for text in texts if text))
    return EXIT_OK


def _cmd_decode(args: argparse.Namespace) -> int:
    from gateway.hub.registry import Registry
    from gateway.tools.decode import (
        DecodeRequestError,
        decode_recording,
        parse_options,
        print_decoded,
    )

    try:
        options = parse_options(args.options)
        # Only the driver asked for is imported, if it is a vendor's.
        registry = Registry.with_plugins([args.driver])
        result = decode_recording(registry, args.driver, args.hex, options, args.char)
    except DecodeRequestError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    return print_decoded(result, as_json=args.json)


def _cmd_scan(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.hub.config import load_config
    from gateway.hub.config_reader import ConfigError
    from gateway.hub.registry import Registry
    from gateway.tools.scan import ScanError, render, scan

    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    devices: tuple[DeviceConfig, ...] = ()
    adapter = args.adapter or "hci0"
    registry = None
    if path is not None:
        try:
            config = load_config(path, secrets=False)
            registry = _check_drivers(config, args.load)  # once, for the check and the scan
        except ConfigError as exc:
            return _fail(str(exc), EXIT_CONFIG)
        devices = config.devices
        adapter = args.adapter or config.ble.adapter
    if args.seconds <= 0:
        return _fail("--seconds must be positive", EXIT_CONFIG)
    if not args.json:
        print(f"listening on {adapter} for {args.seconds:g} s...", file=sys.stderr)
    try:
        rows = asyncio.run(
            scan(
                args.seconds,
                adapter=adapter,
                devices=devices,
                # Without a config only the vendor drivers named by --load are imported.
                registry=registry or Registry.with_plugins(args.load),
            )
        )
    except ScanError as exc:
        return _fail(str(exc))
    print(json.dumps([row.as_dict() for row in rows], indent=2) if args.json else render(rows))
    return EXIT_OK


def _cmd_identity(args: argparse.Namespace) -> int:
    from gateway.hub.config import load_config
    from gateway.hub.config_reader import ConfigError
    from gateway.hub.identity import HubIdentity, IdentityError

    try:
        config = load_config(args.config, secrets=False)
        identity = HubIdentity.load_or_create(config.hub.state_dir)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except (IdentityError, OSError) as exc:
        return _fail(str(exc))
    print(json.dumps(identity.public_jwk(), indent=2))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from gateway.hub.config import load_config
    from gateway.hub.config_reader import ConfigError
    from gateway.tools.status import StatusError, collect_status, render_status

    try:
        config = load_config(args.config, secrets=False)
        report = collect_status(config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except StatusError as exc:
        return _fail(str(exc))
    print(json.dumps(report, indent=2) if args.json else render_status(report))
    return EXIT_OK


def _cmd_sbom(args: argparse.Namespace) -> int:
    from gateway.tools.sbom import build_sbom

    text = json.dumps(build_sbom(), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc.strerror or exc}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.tools.demo import DemoError, run_demo

    try:
        return run_demo(
            seconds=args.seconds, url=args.url, protocol=args.protocol, broker=args.broker
        )
    except DemoError as exc:
        return _fail(str(exc))


_COMMANDS = {
    "run": _cmd_run,
    "check-config": _cmd_check_config,
    "drivers": _cmd_drivers,
    "decode": _cmd_decode,
    "simulate": run_simulate_command,
    "scan": _cmd_scan,
    "driver": run_driver_command,
    "identity": _cmd_identity,
    "status": _cmd_status,
    "verify": run_verify_command,
    "sbom": _cmd_sbom,
    "demo": _cmd_demo,
}

if __name__ == "__main__":
    sys.exit(main())
