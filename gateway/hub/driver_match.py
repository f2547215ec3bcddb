"""How specifically a driver's BLE match rules claim an advertisement.

What lives here: `ble_rank` (0 for no match, else how many things a rule checked, so the most
specific claim wins), `ble_claims` (whether any of a driver's rules matches) and
`name_pattern_problem`, the bound on a rule's `local_name` pattern: it is matched against names
any nearby device chooses, so only fixed-width patterns are accepted (literal characters,
escapes, `[classes]`, `.` and exact repeats `{n}`). Such a pattern has no choice to backtrack
over: matching costs at most one step per pattern item. What may not:
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


_MAX_PATTERN = 128
_MAX_REPEAT = 64
_EXACT_REPEAT = re.compile(r"\{([0-9]+)\}")
_FIXED_WIDTH = (
    "a name rule must be fixed-width: literal characters, escapes, [classes], '.' and exact "
    f"repeats {{n}} (n <= {_MAX_REPEAT}), matched at the start of the name"
)


def name_pattern_problem(pattern: str) -> str | None:
    """None when `pattern` is a `local_name` rule the hub accepts, else what is wrong.

    A nearby device chooses its name, so a pattern with nested or optional repeats
    (`(a+)+$`, `.?.?.?x`) would let it stall the event loop in backtracking. Patterns made
    only of fixed-width items match in linear time."""
    if len(pattern) > _MAX_PATTERN:
        return f"its name pattern is longer than {_MAX_PATTERN} characters"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"its name pattern is not a regular expression ({exc})"
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            escaped = pattern[index + 1 : index + 2]
            if escaped.isdigit():
                return f"its name pattern uses a back reference; {_FIXED_WIDTH}"
            index += 2
        elif char == "[":
            index = _class_end(pattern, index) + 1
        elif char == "{":
            repeat = _EXACT_REPEAT.match(pattern, index)
            if repeat is None or int(repeat[1]) > _MAX_REPEAT:
                return f"its name pattern has a repeat other than {{n}}; {_FIXED_WIDTH}"
            index = repeat.end()
        elif char in "*+?|()" or (char == "^" and index) or (char == "$" and pattern[index + 1 :]):
            return f"its name pattern uses {char!r}; {_FIXED_WIDTH}"
        else:
            index += 1
    return None


def _class_end(pattern: str, start: int) -> int:
    """The index of the `]` closing the character class that opens at `start` (the pattern
    compiled, so there is one)."""
    index = start + 1
    if pattern[index : index + 1] == "^":
        index += 1
    if pattern[index : index + 1] == "]":  # a leading ] is a literal
        index += 1
    while pattern[index] != "]":
        index += 2 if pattern[index] == "\\" else 1
    return index
