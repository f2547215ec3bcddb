"""What `rtm-gateway verify` is told to trust and remembers: the pinned key map, one hub's JWK,
the state file between runs, and the command's refusals (exit 2) before any broker is used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.hub.identity import HubIdentity
from gateway.tools.verify_files import (
    VerifyFileError,
    bind_jwk,
    load_keys,
    load_state,
    save_state,
)
from gateway.tools.verify_report import LogHead
from tests.harness import run_cli


def test_the_key_map_binds_each_key_to_one_hub(tmp_path: Path) -> None:
    a, b = HubIdentity.generate(), HubIdentity.generate()
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"hub-A": a.public_jwk(), "hub-B": b.public_jwk()}))
    assert load_keys(keys) == {"hub-A": a.public, "hub-B": b.public}

    keys.write_text(json.dumps({"hub-A": a.public_jwk(), "hub-B": a.public_jwk()}))
    with pytest.raises(VerifyFileError, match="hubs hub-A and hub-B have the same key"):
        load_keys(keys)
    keys.write_text(json.dumps({"rtm/v1/#": a.public_jwk()}))
    with pytest.raises(VerifyFileError, match="is not a hub id"):
        load_keys(keys)
    keys.write_text(json.dumps(a.public_jwk()))  # a bare JWK is not a map
    with pytest.raises(VerifyFileError, match="is one JWK, not a map"):
        load_keys(keys)
    keys.write_text("[]")
    with pytest.raises(VerifyFileError, match="must be a JSON object"):
        load_keys(keys)
    with pytest.raises(VerifyFileError, match="does not exist"):
        load_keys(tmp_path / "missing.json")

    jwk = tmp_path / "a.jwk"
    jwk.write_text(json.dumps(a.public_jwk()))
    assert bind_jwk(jwk, "hub-A") == {"hub-A": a.public}


def test_the_state_round_trips_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    assert load_state(state) == {}  # a first run
    heads = {"hub-A": LogHead(42, "hash-42"), "hub-B": LogHead(7, "hash-7", "log-1")}
    save_state(state, heads)
    assert load_state(state) == heads
    assert json.loads(state.read_text())["hubs"]["hub-A"] == {
        "log": None,
        "seq": 42,
        "hash": "hash-42",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left

    state.write_text(json.dumps({"version": 1, "hubs": {"hub-A": {"seq": 0, "hash": "h"}}}))
    with pytest.raises(VerifyFileError, match="hub hub-A needs"):
        load_state(state)
    state.write_text(json.dumps({"hubs": {}}))
    with pytest.raises(VerifyFileError, match="not a version 1 verify state"):
        load_state(state)


def test_the_command_refuses_to_trust_nothing_and_bad_arguments(tmp_path: Path) -> None:
    jwk = tmp_path / "a.jwk"
    jwk.write_text(json.dumps(HubIdentity.generate().public_jwk()))
    url = ("--url", "mqtt://127.0.0.1:1", "--seconds", "1")  # never reached
    cases = [
        ((), "no key to verify with"),
        (("--jwk", str(jwk)), "name that hub with --hub"),
        (("--keys", str(jwk), "--jwk", str(jwk), "--hub", "h"), "give either --keys"),
        (("--jwk", str(jwk), "--hub", "h", "--expect-last-seq", "h"), "give HUB=SEQ"),
        (("--jwk", str(jwk), "--hub", "h", "--state", str(jwk)), "not a version 1 verify state"),
    ]
    for flags, message in cases:
        result = run_cli("verify", *url, *flags)
        assert result.returncode == 2, (flags, result.stderr)
        assert message in result.stderr, (flags, result.stderr)
