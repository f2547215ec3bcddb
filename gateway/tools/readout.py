"""How an observation reads to a person on a terminal (the demo's live view): its type, value
and unit, with UCUM's dimensionless units put as people write them. The wire format keeps the
UCUM unit as it is; only what a person reads changes here.
"""

from __future__ import annotations

import re

_ANNOTATION = re.compile(r"\{([^{}]*)\}")


def unit_text(unit: str) -> str:
    """A UCUM unit as a person writes it after a number: "" for the dimensionless "1" (a level,
    a ratio), the word for an annotation alone ("{floors}" -> "floors"), else the unit."""
    if unit == "1":
        return ""
    annotation = _ANNOTATION.fullmatch(unit)
    return annotation.group(1) if annotation else unit


def observation_text(kind: str, value: object, unit: str) -> str:
    """`resistance_level 7`, `power 150 W`, `floors_climbed 3 floors`; "—" for no value."""
    shown = "—" if value is None else str(value)
    return " ".join(part for part in (kind, shown, unit_text(unit)) if part)
