"""The files `rtm-gateway verify` reads and writes: the pinned hub -> key map and the state.

What lives here: `load_keys` (`--keys FILE`: a JSON object, hub id -> public JWK; one key may
be pinned for one hub only), `bind_jwk` (`--jwk FILE --hub H`: one key bound to one hub id),
`load_state` and `save_state` (`--state FILE`: per hub the last log id, seq and chain hash a
run verified, written atomically). Errors are `VerifyFileError` with the file and the reason.
What may not live here: the checks (`gateway.tools.verifier`), MQTT.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from gateway.hub.identity import IdentityError, PublicKey, load_public_jwk
from gateway.tools.verify_report import LogHead

STATE_VERSION: Final = 1
_HUB_ID: Final = re.compile(r"[^/+#\s]+")


class VerifyFileError(Exception):
    """A key map, key or state file that cannot be used; the message names it and says why."""


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VerifyFileError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise VerifyFileError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyFileError(f"{what} {path} is not JSON: {exc}") from exc


def _check_hub(hub: object, where: str) -> str:
    if not isinstance(hub, str) or not _HUB_ID.fullmatch(hub):
        raise VerifyFileError(f"{where}: {hub!r} is not a hub id (no '/', '+', '#' or spaces)")
    return hub


def load_keys(path: Path) -> dict[str, PublicKey]:
    """`{"hub-0001": {JWK}, ...}` -> hub id -> key. A key pinned for two hubs is refused: a
    copied identity must not pass as another hub."""
    data = _read_json(path, "key map")
    if not isinstance(data, Mapping) or not data:
        raise VerifyFileError(f"key map {path} must be a JSON object: hub id -> public JWK")
    if "kty" in data:
        raise VerifyFileError(
            f"key map {path} is one JWK, not a map: give it as --jwk FILE --hub H, or write "
            '{"<hub id>": <JWK>}'
        )
    keys: dict[str, PublicKey] = {}
    owners: dict[str, str] = {}
    for hub, jwk in data.items():
        _check_hub(hub, f"key map {path}")
        if not isinstance(jwk, Mapping):
            raise VerifyFileError(f"key map {path}: the key of hub {hub} is not a JWK object")
        try:
            key = PublicKey.from_jwk(jwk)
        except IdentityError as exc:
            raise VerifyFileError(f"key map {path}: the key of hub {hub}: {exc}") from exc
        if key.kid in owners:
            raise VerifyFileError(
                f"key map {path}: hubs {owners[key.kid]} and {hub} have the same key "
                f"{key.kid}; a key is pinned for one hub only"
            )
        owners[key.kid] = hub
        keys[hub] = key
    return keys


def bind_jwk(path: Path, hub: str) -> dict[str, PublicKey]:
    """`--jwk FILE --hub H`: the one key of hub H."""
    _check_hub(hub, "--hub")
    try:
        return {hub: load_public_jwk(path)}
    except IdentityError as exc:
        raise VerifyFileError(str(exc)) from exc


def load_state(path: Path) -> dict[str, LogHead]:
    """The heads an earlier run verified; an absent file is a first run (no heads)."""
    if not path.exists():
        return {}
    data = _read_json(path, "state file")
    hubs = data.get("hubs") if isinstance(data, Mapping) else None
    if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
        raise VerifyFileError(f"state file {path} is not a version {STATE_VERSION} verify state")
    if not isinstance(hubs, Mapping):
        raise VerifyFileError(f"state file {path}: 'hubs' is not an object")
    heads: dict[str, LogHead] = {}
    for hub, head in hubs.items():
        _check_hub(hub, f"state file {path}")
        seq = head.get("seq") if isinstance(head, Mapping) else None
        chain_hash = head.get("hash") if isinstance(head, Mapping) else None
        log = head.get("log") if isinstance(head, Mapping) else None
        if (
            not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq < 1
            or not isinstance(chain_hash, str)
            or not isinstance(log, str | None)
        ):
            raise VerifyFileError(
                f"state file {path}: hub {hub} needs {{'log': id or null, 'seq': n >= 1, "
                "'hash': chain hash}"
            )
        heads[hub] = LogHead(seq, chain_hash, log)
    return heads


def save_state(path: Path, heads: Mapping[str, LogHead]) -> None:
    """Write the heads atomically (a temporary file in the same directory, fsync, rename), so
    an interrupted run leaves the old state or the new one, never half a file."""
    document = {
        "version": STATE_VERSION,
        "hubs": {
            hub: {"log": head.log, "seq": head.seq, "hash": head.hash}
            for hub, head in sorted(heads.items())
        },
    }
    directory = path.parent if str(path.parent) else Path()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise VerifyFileError(f"cannot write state file {path}: {exc.strerror}") from exc
