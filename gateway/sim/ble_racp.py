"""Stored records served through a Record Access Control Point (RACP, 0x2A52): the part the
glucose meter and the pulse oximeter share (RACP as the GATT Specification Supplement lays it
out).

`RecordStoreDevice` keeps `stored` (oldest first) and answers RACP writes the way GLS and PLXS
servers do: ATT error 0xFD when the central has not enabled indications on the RACP, 0xFE for a
second procedure while one runs (abort excepted); otherwise the write is accepted and the
procedure runs after its reply: records (notifications or indications, `record_interval` apart)
and then one RACP indication with the response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, Generic, TypeVar

from gateway.sdk import uuid16
from gateway.sim.ble_base import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    ATT_PROCEDURE_IN_PROGRESS,
    SimulatedBleDevice,
    att_error,
    u16,
)

RACP = uuid16(0x2A52)

_R = TypeVar("_R")


class Op(IntEnum):
    REPORT = 1
    DELETE = 2
    ABORT = 3
    COUNT = 4
    COUNT_RESPONSE = 5
    RESPONSE = 6


class Operator(IntEnum):
    NULL = 0
    ALL = 1
    AT_MOST = 2
    AT_LEAST = 3
    WITHIN = 4
    FIRST = 5
    LAST = 6


class Response(IntEnum):
    SUCCESS = 1
    OP_CODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS_FOUND = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9


FILTER_SEQUENCE_NUMBER = 0x01
FILTER_USER_FACING_TIME = 0x02


class RecordStoreDevice(SimulatedBleDevice, Generic[_R]):
    """A device holding records in `stored` (oldest first), served through RACP 0x2A52 (write +
    indicate): report (op 1), delete (op 2, if `supports_delete`), abort (op 3) and count (op 4)
    with the operators in `operators`. Subclasses send a record in `send_record` and give its
    sequence number in `sequence` (needed by the <=, >= and range operators)."""

    def __init__(
        self,
        *,
        stored: Sequence[_R],
        record_interval: float,
        operators: frozenset[int],
        supports_delete: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if record_interval < 0:
            raise ValueError("record_interval must not be negative")
        self.stored: list[_R] = list(stored)
        self.record_interval = record_interval
        self.operators = operators
        self.supports_delete = supports_delete
        self.racp_requests: list[bytes] = []
        """Every value written to the RACP, refused ones too, oldest first."""
        self.racp_responses: list[bytes] = []
        """Every RACP indication the device sent (delivered or not), oldest first."""
        self.records_sent = 0
        """Stored records sent by report procedures."""
        self.transfers_interrupted = 0
        """Report procedures that ended because the link went down mid-transfer."""
        self._procedure: asyncio.Task[None] | None = None
        self._handlers[RACP] = self._racp_write

    @property
    def transferring(self) -> bool:
        """A RACP procedure is in progress."""
        return self._procedure is not None and not self._procedure.done()

    async def send_record(self, record: _R) -> None:
        raise NotImplementedError

    def sequence(self, record: _R) -> int:
        raise NotImplementedError

    def _racp_write(self, data: bytes) -> None:
        self.racp_requests.append(data)
        # What GLS/PLXS say a server does before looking at the value: indications off is
        # an ATT error, and so is a second procedure while one runs (abort excepted).
        if not self.listening(RACP):
            raise att_error(ATT_CCCD_IMPROPERLY_CONFIGURED)
        op = data[0] if data else 0
        if op == Op.ABORT:
            # Stop at once, so no record follows the write's reply; answer once it has ended.
            procedure = self._procedure
            if procedure is not None and len(data) == 2 and data[1] == Operator.NULL:
                procedure.cancel()
            self.spawn(self._abort(data, procedure))
            return
        if self.transferring:
            raise att_error(ATT_PROCEDURE_IN_PROGRESS)
        self._procedure = self.spawn(self._run_procedure(data))

    async def _respond(self, op: int, code: Response) -> None:
        value = bytes((Op.RESPONSE, Operator.NULL, op, code))
        self.racp_responses.append(value)
        await self.send(RACP, value)

    async def _abort(self, data: bytes, procedure: asyncio.Task[None] | None) -> None:
        if len(data) < 2 or data[1] != Operator.NULL:
            await self._respond(Op.ABORT, Response.INVALID_OPERATOR)
            return
        if len(data) > 2:
            await self._respond(Op.ABORT, Response.INVALID_OPERAND)
            return
        if procedure is not None:
            await asyncio.gather(procedure, return_exceptions=True)
        await self._respond(Op.ABORT, Response.SUCCESS)

    async def _run_procedure(self, data: bytes) -> None:
        op = data[0] if data else 0
        if op not in (Op.REPORT, Op.COUNT) and not (op == Op.DELETE and self.supports_delete):
            await self._respond(op, Response.OP_CODE_NOT_SUPPORTED)
            return
        selected = self.select(data[1] if len(data) > 1 else Operator.NULL, data[2:])
        if isinstance(selected, Response):
            await self._respond(op, selected)
        elif op == Op.COUNT:
            value = bytes((Op.COUNT_RESPONSE, Operator.NULL)) + u16(len(selected))
            self.racp_responses.append(value)
            await self.send(RACP, value)
        elif not selected:
            await self._respond(op, Response.NO_RECORDS_FOUND)
        elif op == Op.DELETE:
            gone = {id(r) for r in selected}
            self.stored = [r for r in self.stored if id(r) not in gone]
            await self._respond(op, Response.SUCCESS)
        else:
            for index, record in enumerate(selected):
                if not self.connected:  # link lost: the procedure dies with it, unanswered
                    self.transfers_interrupted += 1
                    return
                await self.send_record(record)
                self.records_sent += 1
                # Always yield, so a central's abort (or a test's kill) can land mid-transfer.
                await asyncio.sleep(self.record_interval if index < len(selected) - 1 else 0)
            await self._respond(op, Response.SUCCESS)

    def select(self, operator: int, operand: bytes) -> list[_R] | Response:
        """The stored records an operator and operand pick, or the response code refusing it."""
        if not Operator.ALL <= operator <= Operator.LAST:
            return Response.INVALID_OPERATOR
        if operator not in self.operators:
            return Response.OPERATOR_NOT_SUPPORTED
        if operator in (Operator.ALL, Operator.FIRST, Operator.LAST):
            if operand:
                return Response.INVALID_OPERAND
            records = list(self.stored)
            return {
                Operator.ALL: records,
                Operator.FIRST: records[:1],
                Operator.LAST: records[-1:],
            }[Operator(operator)]
        bounds = _sequence_bounds(Operator(operator), operand)
        if isinstance(bounds, Response):
            return bounds
        low, high = bounds
        return [r for r in self.stored if low <= self.sequence(r) <= high]


def _sequence_bounds(operator: Operator, operand: bytes) -> tuple[int, int] | Response:
    """(lowest, highest) sequence number a <=, >= or range operand asks for."""
    count = 2 if operator == Operator.WITHIN else 1
    if operand[:1] == bytes((FILTER_USER_FACING_TIME,)):
        return Response.OPERAND_NOT_SUPPORTED
    if operand[:1] != bytes((FILTER_SEQUENCE_NUMBER,)) or len(operand) != 1 + 2 * count:
        return Response.INVALID_OPERAND
    first = int.from_bytes(operand[1:3], "little")
    low, high = {Operator.AT_MOST: (0, first), Operator.AT_LEAST: (first, 0xFFFF)}.get(
        operator, (first, int.from_bytes(operand[3:5], "little"))
    )
    return Response.INVALID_OPERAND if low > high else (low, high)
