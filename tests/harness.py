"""Helpers shared by the tests: `run` and `until` (a coroutine under a timeout; a condition
polled with a deadline), and for tests that run the real daemon as a process: configs,
processes, checking.

Signatures are checked here with joserfc, an independent JOSE library, never with our own
verifier; payloads are validated against the published JSON Schema.

Deadlines here bound how long a test waits for something that must happen; no test passes or
fails on how fast something happened by the wall clock (bounds on speed use
`time.process_time`, and generously).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from joserfc import jws
from joserfc.jwk import OKPKey
from jsonschema import Draft202012Validator

from gateway.sim.broker import Broker

if TYPE_CHECKING:  # conftest imports the BLE lab, which uses `until` from here
    from tests.conftest import Received

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "schema" / "payload.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
CLI = [sys.executable, "-m", "gateway.cli"]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run `coro` on a fresh event loop; a hang fails it with TimeoutError after `timeout` s
    (with a traceback of where it hung, unlike pytest-timeout's kill)."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def until(predicate: Callable[[], bool], timeout: float = 10.0, poll: float = 0.02) -> None:
    """Poll a condition without blocking the loop; TimeoutError after `timeout` s. For state
    with no event to await: SQLite, another thread's, several callbacks feeding one condition.
    """
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110  # see above: there is no event to await
            await asyncio.sleep(poll)


def write_config(
    tmp_path: Path,
    broker: Broker,
    devices: Sequence[str] = (),
    *,
    hub_id: str = "hub-test",
    state_dir: Path | None = None,
    extra: str = "",
    mqtt_extra: str = "",
) -> Path:
    """A config file for `broker`, with the [[devices]] TOML blocks given."""
    state = state_dir or tmp_path / "state"
    lines = [
        "[hub]",
        f'id = "{hub_id}"',
        f'state_dir = "{state}"',
        "",
        "[mqtt]",
        f'url = "{broker.url}"',
    ]
    if broker.ca_file:
        lines.append(f'ca_file = "{broker.ca_file}"')
    if broker.mode == "mtls":
        lines += [f'cert_file = "{broker.client_cert}"', f'key_file = "{broker.client_key}"']
    lines += [mqtt_extra, "", "[log]", 'level = "DEBUG"', "", extra, *devices]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cms50d_device(port: Path, *, interval: float = 0.1, device_id: str = "oximeter") -> str:
    return (
        f'[[devices]]\nid = "{device_id}"\ndriver = "contec.cms50d"\nport = "{port}"\n'
        f'patient = "pt-0001"\nsummary_interval = {interval}\n'
    )


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


_LIVE: list[Process] = []


def close_all() -> None:
    """Kill every process a test started and left running (called after each test)."""
    while _LIVE:
        _LIVE.pop().close()


class Process:
    """A child process with its output in a file, killed at `close()` if still running."""

    def __init__(self, args: Sequence[str], log_file: Path) -> None:
        _LIVE.append(self)
        self.log_file = log_file
        with log_file.open("ab") as log:
            self.popen = subprocess.Popen(
                [*CLI, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.running:
            self.popen.send_signal(signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill9()
            raise AssertionError(
                f"did not stop on SIGTERM within {timeout} s:\n{self.log()}"
            ) from exc

    def close(self) -> None:
        if self.running:
            self.kill9()


def start_daemon(config: Path, log_file: Path) -> Process:
    return Process(["run", "-c", str(config)], log_file)


def start_simulator(
    link: Path, log_file: Path, rate: float = 60.0, driver: str = "contec.cms50d"
) -> Process:
    process = Process(["simulate", driver, "--link", str(link), "--rate", str(rate)], log_file)
    wait_until(link.exists, 10, f"simulator link {link} ({log_file})")
    return process


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.05
) -> None:
    """`until` for synchronous code (a test thread watching a child process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def hub_jwk(config: Path) -> dict[str, Any]:
    result = run_cli("identity", "-c", str(config))
    assert result.returncode == 0, result.stderr
    jwk: dict[str, Any] = json.loads(result.stdout)
    return jwk


@dataclass(frozen=True)
class Checked:
    topic: str
    payload: dict[str, Any]
    jws: dict[str, Any]


def verify_messages(messages: Iterable[Received], jwk: dict[str, Any]) -> list[Checked]:
    """Every JWS in every readings/events message, verified with joserfc and the schema."""
    key = OKPKey.import_key({k: v for k, v in jwk.items() if k in ("kty", "crv", "x")})
    out: list[Checked] = []
    for message in messages:
        if not (message.topic.endswith("/readings") or message.topic.endswith("/events")):
            continue
        batch = json.loads(message.payload)
        assert isinstance(batch, list) and batch, f"not a JSON array: {message.payload[:80]!r}"
        for obj in batch:
            verified = jws.deserialize_json(obj, key, algorithms=["Ed25519"])
            assert isinstance(verified, jws.FlattenedJSONSignature)  # one signature per entry
            header = verified.headers()
            assert header["alg"] == "Ed25519" and header["kid"] == jwk["kid"]
            payload = json.loads(verified.payload)
            errors = sorted(VALIDATOR.iter_errors(payload), key=lambda e: list(e.path))
            assert not errors, f"schema: {errors[0].message} at {list(errors[0].path)}"
            expected_kind = "reading" if message.topic.endswith("/readings") else "event"
            assert payload["kind"] == expected_kind
            out.append(Checked(message.topic, payload, obj))
    return out


def seqs(entries: Iterable[Checked]) -> list[int]:
    return [entry.payload["seq"] for entry in entries]


def assert_chain(entries: Sequence[Checked]) -> None:
    """Each distinct seq's `prev` is the hash of the previous seq's signing input."""
    import base64
    import hashlib

    by_seq: dict[int, Checked] = {}
    for entry in entries:
        seen = by_seq.setdefault(entry.payload["seq"], entry)
        assert seen.jws == entry.jws, f"two different entries under seq {entry.payload['seq']}"
    for seq, entry in by_seq.items():
        before = by_seq.get(seq - 1)
        if before is None:
            continue
        signing_input = f"{before.jws['protected']}.{before.jws['payload']}".encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(signing_input).digest()).rstrip(b"=")
        assert entry.payload["prev"] == digest.decode(), f"chain broken at seq {seq}"


def env_without_notify() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return env
