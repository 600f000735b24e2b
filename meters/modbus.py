"""Modbus connections of the gateway (pymodbus async clients).

A :class:`ModbusLink` is one connection: Modbus TCP, RTU framing over TCP (serial
device servers), or a serial line. Requests on one connection are strictly sequential
(a Modbus TCP device or an RS-485 bus answers one request at a time, and pymodbus
serialises them), so an :class:`EndpointPool` holds ``connections`` links per endpoint
and the gateway reads meters of one endpoint concurrently across them.

A serial line (``rtu://DEVICE``, opened through pyserial) is one bus shared by all its
meters, so its pool always holds exactly one link, whatever ``connections`` says:
the poller's concurrent reads of the meters on a bus queue for that link and go out
one request at a time. On a serial line the link also

- keeps the line silent for 3.5 character times (1.75 ms above 19200 baud) after
  every transaction before the next request, the RTU frame delimiter, so a meter
  never sees two frames run together;
- waits for an answer ``timeout_s`` plus the time a maximum-size RTU frame takes on
  the wire at the line's baud rate (0.29 s at 9600 8N1), so a slow line is not
  mistaken for a silent meter;
- refuses an answer whose function code or register count is not the request's: RTU
  has no transaction id, and a late answer to an earlier request of the same unit
  must never be decoded as this one's.

A frame damaged on the line fails its CRC and is dropped by pymodbus (by the meter,
for a damaged request), so the read times out and the poller retries: line noise
costs time, never a wrong value.

pymodbus retries and automatic reconnection are turned off: the gateway retries
itself, with back-off, and reconnects on the next request. Every failure becomes a
:class:`~meters.errors.DeviceError` whose ``kind`` is ``timeout`` (no answer),
``exception`` (a Modbus exception response, e.g. illegal address), ``connection`` (the
host or the serial device cannot be reached or opened) or ``protocol`` (a malformed or
mismatched answer).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from meters.config import Endpoint
from meters.errors import ConfigError, DeviceError

try:
    from termios import error as TermiosError
except ImportError:  # no termios, no POSIX serial lines
    TermiosError = OSError

__all__ = ["EndpointPool", "ModbusLink", "TermiosError", "char_time_s", "frame_gap_s", "quiet_pymodbus", "serial_problem"]

MAX_RTU_FRAME = 256  # bytes: unit id, function, at most 253 bytes of PDU, CRC


def quiet_pymodbus() -> None:
    """pymodbus logs every timeout as an error; the gateway reports failures itself."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def char_time_s(endpoint: Endpoint) -> float:
    """Seconds one character takes on a serial line: start bit, data bits, parity, stop bits."""
    bits = 1 + endpoint.bytesize + (endpoint.parity != "N") + endpoint.stopbits
    return bits / endpoint.baudrate


def frame_gap_s(endpoint: Endpoint) -> float:
    """The RTU inter-frame silence t3.5 (Modbus over serial line, 2.5.1.1)."""
    return 3.5 * char_time_s(endpoint) if endpoint.baudrate <= 19200 else 0.00175


def serial_problem(device: str) -> str:
    """Why a serial device cannot be opened, as far as the file system tells."""
    if not os.path.exists(device):
        return f"serial device {device} does not exist (adapter unplugged? /dev/serial/by-id/ paths stay stable)"
    if not os.access(device, os.R_OK | os.W_OK):
        return f"no permission to open {device} (give the gateway's user the device's group, often dialout)"
    return f"cannot open {device} (in use by another process, or not a serial device)"


def _release_half_open(exc: BaseException) -> None:
    """Close the port pymodbus opened before the line settings failed (it would stay locked)."""
    tb = exc.__traceback__
    while tb is not None:
        port = getattr(tb.tb_frame.f_locals.get("self"), "sync_serial", None)
        if port is not None and hasattr(port, "close"):
            port.close()
        tb = tb.tb_next


class ModbusLink:
    """One connection to an endpoint."""

    def __init__(self, endpoint: Endpoint, *, timeout_s: float, name: str = "meter") -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.gap_s = 0.0
        self._quiet_until = 0.0
        if endpoint.kind == "rtu":
            try:
                import serial  # noqa: F401  (pymodbus opens serial lines through pyserial)
                from pymodbus.client import AsyncModbusSerialClient
            except ImportError:
                raise ConfigError(f"{endpoint}: serial lines need pyserial, a gridledger dependency; "
                                  "reinstall gridledger (pip install pyserial)") from None
            self.gap_s = frame_gap_s(endpoint)
            wire_s = (8 + MAX_RTU_FRAME) * char_time_s(endpoint)  # the request, then the longest answer
            self.client = AsyncModbusSerialClient(
                endpoint.device, framer=FramerType.RTU, baudrate=endpoint.baudrate, bytesize=endpoint.bytesize,
                parity=endpoint.parity, stopbits=endpoint.stopbits, timeout=timeout_s + wire_s, retries=0,
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
        except TermiosError as exc:  # e.g. a pseudo-terminal refuses parity
            _release_half_open(exc)
            self.client.close()
            raise DeviceError("connection", f"{self.endpoint}: the serial device refuses these line settings: {exc}") from None
        if not ok:
            if self.endpoint.kind == "rtu":
                raise DeviceError("connection", f"{self.endpoint}: {serial_problem(self.endpoint.device)}")
            raise DeviceError("connection", f"{self.endpoint}: cannot connect")

    async def read(self, unit: int, function: int, address: int, count: int) -> list[int]:
        """Read ``count`` registers at ``address`` with function 3 or 4 from device ``unit``."""
        if function not in (3, 4):
            raise DeviceError("protocol", f"function {function} is not a register read (3 or 4)")
        await self._connect()
        if self.gap_s:
            wait = self._quiet_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        try:
            return await self._transact(unit, function, address, count)
        finally:
            if self.gap_s:
                self._quiet_until = time.monotonic() + self.gap_s

    async def _transact(self, unit: int, function: int, address: int, count: int) -> list[int]:
        try:
            if function == 3:
                answer = await self.client.read_holding_registers(address, count=count, device_id=unit)
            else:
                answer = await self.client.read_input_registers(address, count=count, device_id=unit)
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
        if answer.function_code != function or len(registers) != count:
            raise DeviceError("protocol", f"{self.endpoint} unit {unit}: asked function {function} for {count} registers "
                              f"at {address}, got function {answer.function_code} with {len(registers)}")
        return registers

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
