"""The gas meter of one runtime: remaining gas, call depth and counted allocation.

One :class:`Meter` belongs to one :class:`~contracts.runtime.engine.Runtime` and is
reset at the start of every transaction. Instrumented contract code and the
runtime's helpers reach it through a few closures (:func:`meter_functions`), because
a closure over a slotted object is the cheapest charge CPython offers: about 40 ns,
against the 14-30x slowdown of per-line tracing.
"""

from __future__ import annotations

from contracts.runtime import gas as G
from contracts.runtime.errors import LimitExceeded, OutOfGas

__all__ = ["Meter", "MeterFunctions", "meter_functions"]


class Meter:
    """Gas left, gas limit, contract call depth and bytes counted as allocated."""

    __slots__ = ("gas", "limit", "depth", "alloc")

    def __init__(self) -> None:
        self.gas = 0
        self.limit = 0
        self.depth = 0
        self.alloc = 0

    def reset(self, gas_limit: int) -> None:
        self.gas = gas_limit
        self.limit = gas_limit
        self.depth = 0
        self.alloc = 0

    @property
    def used(self) -> int:
        """Gas used so far; the whole limit once gas ran out."""
        return self.limit if self.gas < 0 else self.limit - self.gas


class MeterFunctions:
    """The charging closures handed to instrumented code and helpers."""

    __slots__ = ("charge", "charge_true", "enter", "charge_bytes", "out_of_gas")

    def __init__(self, charge, charge_true, enter, charge_bytes, out_of_gas) -> None:
        self.charge = charge
        self.charge_true = charge_true
        self.enter = enter
        self.charge_bytes = charge_bytes
        self.out_of_gas = out_of_gas


def meter_functions(m: Meter) -> MeterFunctions:
    """Build the closures over ``m``: each raises before any work when gas runs out."""
    max_depth = G.MAX_CALL_DEPTH
    max_alloc = G.MAX_TX_ALLOC_BYTES
    per_gas = G.BYTES_PER_GAS

    def out_of_gas() -> None:
        m.gas = -1
        raise OutOfGas(f"out of gas: the transaction's limit of {m.limit} was used up")

    def charge(n: int) -> None:
        m.gas -= n
        if m.gas < 0:
            out_of_gas()

    def charge_true(n: int) -> bool:
        # Used as an extra `if` clause of comprehensions: charges one iteration.
        m.gas -= n
        if m.gas < 0:
            out_of_gas()
        return True

    def enter(n: int) -> None:
        m.gas -= n
        if m.gas < 0:
            out_of_gas()
        m.depth += 1
        if m.depth > max_depth:
            raise LimitExceeded(f"call depth limit: more than {max_depth} nested function calls")

    def charge_bytes(nbytes: int, base: int = 4) -> None:
        """Charge for creating ``nbytes`` bytes of data and count them as allocated."""
        m.gas -= base + nbytes // per_gas
        if m.gas < 0:
            out_of_gas()
        m.alloc += nbytes
        if m.alloc > max_alloc:
            raise LimitExceeded(f"allocation limit: the transaction allocated more than {max_alloc} bytes")

    return MeterFunctions(charge, charge_true, enter, charge_bytes, out_of_gas)
