"""The Record Access Control Point (0x2A52): the requests the hub writes and the answers it reads.

Pure bytes, no I/O; the BLE session (ble_session.py) runs the conversation. Layout (domain.md
§3.2.9): Op Code uint8, Operator uint8, Operand. The hub asks for stored records (op 1) with
operator 1 "all" or 3 ">=" and filter type 1 "sequence number" (uint16, Glucose), deletes what it
has stored (op 2, operator 1, Pulse Oximeter, whose records carry no sequence number), and aborts
a transfer (op 3). The device answers with op 6 "response code" (operand: the request's op code
and a response value) or op 5 "number of stored records".
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sdk import uuid16

RACP = uuid16(0x2A52)

REPORT = 0x01
DELETE = 0x02
ABORT = 0x03
REPORT_COUNT = 0x04
COUNT_RESPONSE = 0x05
RESPONSE = 0x06

SUCCESS = 0x01
NO_RECORDS = 0x06
RESPONSE_NAMES = {
    0x01: "success",
    0x02: "op code not supported",
    0x03: "invalid operator",
    0x04: "operator not supported",
    0x05: "invalid operand",
    0x06: "no records found",
    0x07: "abort unsuccessful",
    0x08: "procedure not completed",
    0x09: "operand not supported",
}


def report_all() -> bytes:
    return bytes((REPORT, 0x01))


def report_from(sequence: int) -> bytes:
    """Records with sequence number >= `sequence` (uint16)."""
    if not 0 <= sequence <= 0xFFFF:
        raise ValueError(f"sequence number {sequence} does not fit 16 bits")
    return bytes((REPORT, 0x03, 0x01)) + sequence.to_bytes(2, "little")


def delete_all() -> bytes:
    return bytes((DELETE, 0x01))


def abort() -> bytes:
    return bytes((ABORT, 0x00))


@dataclass(frozen=True, slots=True)
class Response:
    """A device's answer: `request` is the op code it answers, `code` the response value."""

    request: int
    code: int

    @property
    def ok(self) -> bool:
        return self.code in (SUCCESS, NO_RECORDS)

    def describe(self) -> str:
        return RESPONSE_NAMES.get(self.code, f"response value {self.code:#04x}")


def parse_response(data: bytes) -> Response | None:
    """The response in an RACP indication, or None for anything else (a count, junk)."""
    if len(data) >= 4 and data[0] == RESPONSE:
        return Response(data[2], data[3])
    return None
