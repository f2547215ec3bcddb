"""`Registry.decode`, the one-shot decode behind `rtm-gateway decode`: bytes in, readings out,
with a flush at the end where the driver supports one.

The built-in drivers' recorded fixtures (gateway/drivers/fixtures/<id>/*.json, in the format
docs/writing-a-driver.md describes) are run by the conformance kit's runner, the one
`rtm-gateway driver check ID` uses, once: tests/test_conformance.py's
test_every_builtin_driver_passes.
"""

from __future__ import annotations

from gateway.hub.registry import Registry

REGISTRY = Registry(entry_points=())


def test_decode_bytes_flushes_a_final_line() -> None:
    result = REGISTRY.decode(
        "generic.kv-lines", b"spo2=97\nspo2=0", {"keys": {"spo2": {"type": "spo2"}}}
    )
    assert [r.observations[0].value for r in result.readings] == [97, 0]
    assert not result.errors


def test_decode_bytes_without_flush_support() -> None:
    frame = bytes.fromhex("88 40 04 48 61")
    result = REGISTRY.decode("contec.cms50d", frame + frame[:3], {})
    assert len(result.readings) == 1
    assert not result.errors
