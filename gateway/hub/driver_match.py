"""How specifically a driver's BLE match rules claim an advertisement.

What lives here: `ble_rank` (0 for no match, else how many things a rule checked, so the most
specific claim wins) and `ble_claims` (whether any of a driver's rules matches). What may not:
the installed drivers or the choice among them (that is `Registry.match_ble` in
`gateway.hub.registry`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from gateway.sdk import BleMatch, Driver, GattDriver


def ble_rank(
    rule: BleMatch,
    uuids: set[str],
    data: Mapping[int, bytes],
    local_name: str | None,
    connectable: bool | None,
) -> int:
    """How specifically `rule` matches the advertisement: 0 for no match, else the number of
    things it checked."""
    rank = 0
    if rule.service_uuid is not None:
        if rule.service_uuid.lower() not in uuids:
            return 0
        rank += 1
    if rule.manufacturer_id is not None:
        payload = data.get(rule.manufacturer_id)
        if payload is None or not payload.startswith(rule.data_prefix):
            return 0
        rank += 2 if rule.data_prefix else 1
    if rule.local_name is not None:
        if local_name is None or not re.match(rule.local_name, local_name):
            return 0
        rank += 1
    if rule.connectable is not None:
        if connectable is not rule.connectable:
            return 0
        rank += 1
    return rank


def ble_claims(
    driver: Driver | GattDriver,
    *,
    service_uuids: Iterable[str] = (),
    manufacturer_data: Mapping[int, bytes] | None = None,
    local_name: str | None = None,
) -> bool:
    """Whether any of the driver's BLE match rules matches this advertisement."""
    uuids = {uuid.lower() for uuid in service_uuids}
    return any(
        ble_rank(rule, uuids, manufacturer_data or {}, local_name, None)
        for rule in driver.info.match
        if isinstance(rule, BleMatch)
    )
