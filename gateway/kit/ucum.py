"""Is this a valid UCUM unit? A checker for the case-sensitive ("c/s") UCUM syntax.

What lives here: `ucum_error(text)` (None when valid, else what is wrong) and the tables it
uses. It follows the grammar of the UCUM specification (unitsofmeasure.org, §§1-7): a term is
components joined by `.` and `/` (a leading `/` too); a component is an annotation `{...}`, a
parenthesised term, a factor (a positive integer) or a simple unit with an optional integer
exponent, optionally followed by an annotation; a simple unit is an atom, or a metric atom after
a prefix. The atom table holds the atoms health and fitness devices use, not all of UCUM's ~300:
a unit missing here is reported as unknown, which for a driver's output is the cautious side.
Stdlib only; used by the conformance kit (`rtm-gateway driver check`).
"""

from __future__ import annotations

import re

PREFIXES = (
    "da",
    "Y",
    "Z",
    "E",
    "P",
    "T",
    "G",
    "M",
    "k",
    "h",
    "d",
    "c",
    "m",
    "u",
    "n",
    "p",
    "f",
    "a",
    "z",
    "y",
    "Ki",
    "Mi",
    "Gi",
    "Ti",
)

# Atoms that take prefixes (UCUM "metric" atoms).
METRIC_ATOMS = frozenset(
    {
        "m",
        "s",
        "g",
        "rad",
        "K",
        "C",
        "cd",
        "mol",
        "sr",
        "Hz",
        "N",
        "Pa",
        "J",
        "W",
        "A",
        "V",
        "F",
        "Ohm",
        "S",
        "Wb",
        "Cel",
        "T",
        "H",
        "lm",
        "lx",
        "Bq",
        "Gy",
        "Sv",
        "l",
        "L",
        "ar",
        "t",
        "bar",
        "u",
        "eV",
        "pc",
        "cal",
        "dyn",
        "erg",
        "P",
        "St",
        "G",
        "Ci",
        "R",
        "kat",
        "U",
        "[iU]",
        "[IU]",
        "eq",
        "osm",
        "g%",
        "m[Hg]",
        "m[H2O]",
        "B",
        "B[SPL]",
        "B[V]",
        "B[mV]",
        "B[W]",
        "bit",
        "By",
        "Bd",
        "mho",
        "Np",
        "[pH]",
        "gf",
    }
)

# Atoms that take no prefix.
PLAIN_ATOMS = frozenset(
    {
        "10*",
        "10^",
        "[pi]",
        "%",
        "[ppth]",
        "[ppm]",
        "[ppb]",
        "[pptr]",
        "min",
        "h",
        "d",
        "wk",
        "mo",
        "mo_j",
        "mo_g",
        "a",
        "a_j",
        "a_g",
        "deg",
        "'",
        "''",
        "gon",
        "[degF]",
        "[degR]",
        "[in_i]",
        "[ft_i]",
        "[yd_i]",
        "[mi_i]",
        "[lb_av]",
        "[oz_av]",
        "[stone_av]",
        "[gr]",
        "[Cal]",
        "[cal_IT]",
        "[cal_th]",
        "[HP]",
        "[psi]",
        "atm",
        "[drp]",
        "[fth_i]",
        "[nmi_i]",
        "[kn_i]",
        "[sft_i]",
        "[cft_i]",
        "[gal_us]",
        "[qt_us]",
        "[pt_us]",
        "[foz_us]",
        "[cup_us]",
        "[tbs_us]",
        "[tsp_us]",
        "[mesh_i]",
        "[S]",
        "[HPF]",
        "[LPF]",
        "[CFU]",
        "[arb'U]",
        "[mi_us]",
        "[ft_us]",
        "[in_us]",
        "[yd_us]",
        "[lbf_av]",
        "[Btu]",
        "[car_m]",
        "[car_Au]",
        "[hnsf'U]",
        "[Ch]",
        "[diop]",
        "[p'diop]",
        "[g]",
        "[c]",
        "[h]",
        "[k]",
        "[e]",
    }
)

_ANNOTATION = re.compile(r"\{[!-z|~]*\}")  # printable ASCII but curly braces
_FACTOR = re.compile(r"[0-9]+")
_EXPONENT = re.compile(r"[+-]?[0-9]+")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{message} at position {self.pos + 1} of {self.text!r}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def term(self) -> None:
        if self.peek() == "/":  # "/min": a leading division
            self.pos += 1
        self.component()
        while self.peek() in (".", "/") and self.peek():
            self.pos += 1
            self.component()

    def component(self) -> None:
        char = self.peek()
        if not char:
            raise self.fail("a unit is missing")
        if char == "{":
            self.annotation()
            return
        if char == "(":
            self.pos += 1
            self.term()
            if self.peek() != ")":
                raise self.fail("')' expected")
            self.pos += 1
            return
        factor = _FACTOR.match(self.text, self.pos)
        end = factor.end() if factor else self.pos
        if factor and (end == len(self.text) or self.text[end] in "./)"):
            self.pos = end  # a plain number
            return
        self.simple_unit()
        exponent = _EXPONENT.match(self.text, self.pos)
        if exponent:
            self.pos = exponent.end()
        if self.peek() == "{":
            self.annotation()

    def annotation(self) -> None:
        match = _ANNOTATION.match(self.text, self.pos)
        if not match:
            raise self.fail("an annotation must be {printable ASCII without braces}")
        self.pos = match.end()

    def simple_unit(self) -> None:
        # The longest atom (with or without a prefix) that the text starts with; an exponent
        # or an operator must follow it.
        rest = self.text[self.pos :]
        best = 0
        for length in range(min(len(rest), 16), 0, -1):
            candidate = rest[:length]
            if _is_unit(candidate) and _ends_symbol(rest, length):
                best = length
                break
        if not best:
            raise self.fail("unknown unit symbol")
        self.pos += best


def _ends_symbol(rest: str, length: int) -> bool:
    return length == len(rest) or rest[length] in "./){+-0123456789"


def _is_unit(symbol: str) -> bool:
    if symbol in METRIC_ATOMS or symbol in PLAIN_ATOMS:
        return True
    for prefix in PREFIXES:
        if symbol.startswith(prefix) and symbol[len(prefix) :] in METRIC_ATOMS:
            return True
    return False


def ucum_error(text: str) -> str | None:
    """None when `text` is a valid UCUM (c/s) unit expression, else what is wrong with it."""
    if not isinstance(text, str) or not text:
        return 'the unit is empty (use "1" for a dimensionless number)'
    if text != text.strip() or " " in text:
        return f"{text!r} contains spaces"
    parser = _Parser(text)
    try:
        parser.term()
        if parser.pos != len(text):
            raise parser.fail("unexpected text")
    except ValueError as exc:
        return str(exc)
    return None
