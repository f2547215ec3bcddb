"""The Record Access Control Point (0x2A52): the bytes of the requests and answers, for the
`StoredRecords` declarations of the Glucose and Pulse Oximeter drivers.

Pure bytes, no I/O, and not a driver: the BLE session runs the conversation a driver declares.
Layout: Op Code uint8, Operator uint8, Operand. The hub asks for stored records (op 1) with
operator 1 "all", 3 ">=" and filter type 1 "sequence number" (uint16, Glucose) or 5 "first"
(the oldest alone), deletes what it has stored (op 2, operator 1, Pulse Oximeter, whose records
carry no sequence number), asks how many records the device holds (op 4, operator 1), and
aborts a transfer (op 3). The oldest record and the count tell a counter that restarted. The
device answers with op 6 "response code" (operand: the request's op code and a response value;
4 bytes in all) or op 5 "number of stored records" (uint16).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sdk import Reading, uuid16

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
MAX_SEQUENCE = 0xFFFF


def report_all() -> bytes:
    return bytes((REPORT, 0x01))


def report_from(sequence: int) -> bytes:
    """Records with sequence number >= `sequence` (uint16)."""
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence number {sequence} does not fit 16 bits")
    return bytes((REPORT, 0x03, 0x01)) + sequence.to_bytes(2, "little")


def report_after(last: int | None) -> bytes:
    """The request for the records after sequence number `last`; all of them when None, or
    when the 16-bit counter is at its end (a device that wraps starts again at 0)."""
    if last is None or last >= MAX_SEQUENCE:
        return report_all()
    return report_from(max(last + 1, 0))


def report_first() -> bytes:
    """The oldest record alone (op 1, operator 5 "first record")."""
    return bytes((REPORT, 0x05))


def report_count() -> bytes:
    """How many records the device holds (op 4, operator "all")."""
    return bytes((REPORT_COUNT, 0x01))


def record_count(value: bytes) -> int | bool | None:
    """The answer to `report_count`: the number of records (op 5, uint16), False when the
    device refused (a response to op 4), None for any other value."""
    if len(value) == 4 and value[0] == COUNT_RESPONSE:
        return int.from_bytes(value[2:4], "little")
    response = parse_response(value)
    if response is not None and response.request == REPORT_COUNT:
        return False
    return None


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
    """The response in an RACP indication, or None for anything else (a count, junk, or a
    record: the hub also asks this of the values on a record characteristic, and a response is
    exactly 4 bytes while every record is longer)."""
    if len(data) == 4 and data[0] == RESPONSE:
        return Response(data[2], data[3])
    return None


def transfer_done(value: bytes) -> bool:
    """True for the answer that ends a transfer: the response to a report request."""
    response = parse_response(value)
    return response is not None and response.request == REPORT


def deleted(value: bytes) -> bool | None:
    """The answer to `delete_all`: True when the device deleted its records, False when it
    refused, None for any other value."""
    response = parse_response(value)
    if response is None or response.request != DELETE:
        return None
    return response.code == SUCCESS


def describe(value: bytes) -> str:
    """The answer that ended a transfer, in words for the log."""
    response = parse_response(value)
    return "an unexpected answer" if response is None else response.describe()


def sequence_number(reading: Reading) -> int | None:
    """A record's position: the sequence number its decoder put in the reading's status."""
    sequence = reading.status.get("sequence_number")
    return sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None


def no_position(reading: Reading) -> None:
    """For records without a number (their digests are their positions)."""
    return None
