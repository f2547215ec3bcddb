"""`rtm-gateway verify`: its arguments and the command (parse, call `run_verify`, print).

What lives here: `add_verify_arguments` (the flags) and `run_verify_command` (the exit status:
0 when every hub passed, 1 when one failed or the broker could not be used, 2 for arguments,
key files and state files that cannot be used). `gateway.cli` hands the sub-command here, as
it does `driver` to the kit. What may not live here: the checks (`gateway.tools.verifier`),
the MQTT session (`gateway.tools.verify`). Imports stay light: `run_verify` (paho) is loaded
only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default="mqtt://127.0.0.1:1883", help="broker URL (mqtt:// or mqtts://)"
    )
    p.add_argument("--hub", help="hub id to follow (default: all hubs)")
    p.add_argument(
        "--keys",
        type=Path,
        help="the pinned keys: a JSON object, hub id -> public JWK (`rtm-gateway identity`)",
    )
    p.add_argument(
        "--jwk", type=Path, help="the public key of the one hub named by --hub (pinned to it)"
    )
    p.add_argument(
        "--trust-status-key",
        action="store_true",
        help="use the key in the unsigned status message of a hub with none pinned; "
        "the run then fails (for test set-ups only)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="also fail on unexplained gaps, a first seq other than the expected next one, "
        "and schema errors",
    )
    p.add_argument(
        "--expect-last-seq",
        action="append",
        default=[],
        metavar="HUB=SEQ",
        help="the last seq this hub must have sent; missing ones up to it are a gap "
        "(repeat for more hubs)",
    )
    p.add_argument(
        "--state",
        type=Path,
        help="file keeping each hub's last verified (log, seq, hash) between runs: a replay "
        "or rewound log fails, and --strict fails a first seq that does not follow on",
    )
    p.add_argument("--count", type=int, help="stop after this many entries")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--topic-prefix", default="rtm/v1")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    p.add_argument("--ca-file", type=Path)
    p.add_argument("--cert-file", type=Path)
    p.add_argument("--key-file", type=Path)
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--json", action="store_true")


def _fail(message: str, code: int) -> int:
    print(f"rtm-gateway: {message}", file=sys.stderr)
    return code


def _expected_last(items: list[str]) -> dict[str, int]:
    expected: dict[str, int] = {}
    for item in items:
        hub, _, seq = item.partition("=")
        if not hub or not seq.isdigit() or int(seq) < 1:
            raise ValueError(f"--expect-last-seq {item!r}: give HUB=SEQ, with SEQ >= 1")
        expected[hub] = int(seq)
    return expected


def run_verify_command(args: argparse.Namespace) -> int:
    from gateway.tools.verify import VerifyError, VerifyUsageError, run_verify

    if args.count is None and args.seconds is None:
        return _fail("give --count N or --seconds S so verify knows when to stop", EXIT_CONFIG)
    try:
        expected_last = _expected_last(args.expect_last_seq)
    except ValueError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    password = None
    if args.password_file:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return _fail(f"cannot read --password-file: {exc}", EXIT_CONFIG)
    try:
        report = run_verify(
            url=args.url,
            hub=args.hub,
            keys_path=args.keys,
            jwk_path=args.jwk,
            trust_status_keys=args.trust_status_key,
            strict=args.strict,
            expected_last=expected_last,
            state_path=args.state,
            count=args.count,
            seconds=args.seconds,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            username=args.username,
            password=password,
            protocol=args.protocol,
            topic_prefix=args.topic_prefix,
        )
    except VerifyUsageError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except VerifyError as exc:
        return _fail(str(exc), EXIT_FAILED)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return EXIT_OK if report.ok else EXIT_FAILED
