"""Modbus connections of the gateway (pymodbus async clients).

A :class:`ModbusLink` is one connection: Modbus TCP, RTU framing over TCP (serial
device servers), or a serial line. Requests on one connection are strictly sequential
(a Modbus TCP device or an RS-485 bus answers one request at a time, and pymodbus
serialises them), so an :class:`EndpointPool` holds ``connections`` links per endpoint
and the gateway reads meters of one endpoint concurrently across them.

pymodbus retries and automatic reconnection are turned off: the gateway retries
itself, with back-off, and reconnects on the next request. Every failure becomes a
:class:`~meters.errors.DeviceError` whose ``kind`` is ``timeout`` (no answer),
``exception`` (a Modbus exception response, e.g. illegal address), ``connection`` or
``protocol`` (a malformed or mismatched answer).
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from meters.config import Endpoint
from meters.errors import ConfigError, DeviceError

__all__ = ["EndpointPool", "ModbusLink", "quiet_pymodbus"]


def quiet_pymodbus() -> None:
    """pymodbus logs every timeout as an error; the gateway reports failures itself."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ModbusLink:
    """One connection to an endpoint."""

    def __init__(self, endpoint: Endpoint, *, timeout_s: float, name: str = "meter") -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        if endpoint.kind == "rtu":
            try:
                import serial  # noqa: F401  (pymodbus needs pyserial for serial lines)
                from pymodbus.client import AsyncModbusSerialClient
            except ImportError:
                raise ConfigError(f"{endpoint}: serial lines need pyserial (pip install pyserial)") from None
            self.client = AsyncModbusSerialClient(
                endpoint.device, framer=FramerType.RTU, baudrate=endpoint.baudrate, bytesize=endpoint.bytesize,
                parity=endpoint.parity, stopbits=endpoint.stopbits, timeout=timeout_s, retries=0,
                reconnect_delay=0, name=name,
            )
        else:
            framer = FramerType.RTU if endpoint.kind == "rtu+tcp" else FramerType.SOCKET
            self.client = AsyncModbusTcpClient(
                endpoint.host, port=endpoint.port, framer=framer, timeout=timeout_s, retries=0,
                reconnect_delay=0, name=name,
            )

    async def _connect(self) -> None:
        if self.client.connected:
            return
        try:
            ok = await asyncio.wait_for(self.client.connect(), self.timeout_s * 2)
        except (TimeoutError, OSError) as exc:
            raise DeviceError("connection", f"{self.endpoint}: cannot connect: {exc or 'timeout'}") from None
        if not ok:
            raise DeviceError("connection", f"{self.endpoint}: cannot connect")

    async def read(self, unit: int, function: int, address: int, count: int) -> list[int]:
        """Read ``count`` registers at ``address`` with function 3 or 4 from device ``unit``."""
        await self._connect()
        try:
            if function == 3:
                answer = await self.client.read_holding_registers(address, count=count, device_id=unit)
            elif function == 4:
                answer = await self.client.read_input_registers(address, count=count, device_id=unit)
            else:
                raise DeviceError("protocol", f"function {function} is not a register read (3 or 4)")
        except ModbusIOException as exc:
            kind = "timeout" if "No response" in str(exc) else "protocol"
            raise DeviceError(kind, f"{self.endpoint} unit {unit}: {'no answer' if kind == 'timeout' else exc}") from None
        except ConnectionException as exc:
            self.client.close()
            raise DeviceError("connection", f"{self.endpoint}: {exc}") from None
        except (TimeoutError, ModbusException, OSError) as exc:
            raise DeviceError("protocol", f"{self.endpoint} unit {unit}: {exc}") from None
        if answer.isError():
            code = getattr(answer, "exception_code", None)
            raise DeviceError("exception", f"{self.endpoint} unit {unit}: Modbus exception {code} reading {address}+{count}", code)
        registers = list(answer.registers)
        if len(registers) < count:
            raise DeviceError("protocol", f"{self.endpoint} unit {unit}: asked {count} registers, got {len(registers)}")
        return registers[:count]

    def close(self) -> None:
        self.client.close()


class EndpointPool:
    """``connections`` links to one endpoint; a read borrows whichever is free.

    When the endpoint cannot be reached at all, every read fails fast for a while
    (doubling from ``UNREACHABLE_START_S`` to ``UNREACHABLE_MAX_S``) instead of each of
    its meters waiting out its own connection timeout: 200 meters behind a dead
    gateway must not hold a poll cycle for minutes.
    """

    UNREACHABLE_START_S = 1.0
    UNREACHABLE_MAX_S = 60.0

    def __init__(self, endpoint: Endpoint, *, connections: int, timeout_s: float) -> None:
        self.endpoint = endpoint
        self._unreachable_until = 0.0
        self._unreachable_for = self.UNREACHABLE_START_S
        # A serial line is one bus: more than one client on it would garble frames.
        count = 1 if endpoint.kind == "rtu" else connections
        self.links = [ModbusLink(endpoint, timeout_s=timeout_s, name=f"{endpoint}#{i}") for i in range(count)]
        self._free: asyncio.Queue[ModbusLink] = asyncio.Queue()
        for link in self.links:
            self._free.put_nowait(link)

    async def read(self, unit: int, function: int, address: int, count: int) -> list[int]:
        now = time.monotonic()
        if now < self._unreachable_until:
            raise DeviceError("connection", f"{self.endpoint} is unreachable; next attempt in "
                              f"{self._unreachable_until - now:.1f} s")
        link = await self._free.get()
        try:
            words = await link.read(unit, function, address, count)
        except DeviceError as exc:
            if exc.kind == "connection":
                self._unreachable_until = time.monotonic() + self._unreachable_for
                self._unreachable_for = min(self.UNREACHABLE_MAX_S, self._unreachable_for * 2)
            raise
        finally:
            self._free.put_nowait(link)
        self._unreachable_for = self.UNREACHABLE_START_S
        return words

    def close(self) -> None:
        for link in self.links:
            link.close()
