"""The deterministic, metered Python contract runtime.

Contracts are written in a restricted subset of Python 3.11, described for contract
authors in ``LANGUAGE.md`` beside this file (with a complete example). In short::

    balances = Map(default=0)
    Transfer = Event("sender", "to", "amount", indexed=["sender", "to"])

    @export
    def transfer(to: Address, amount: int) -> bool:
        require(amount > 0, "amount must be positive")
        balance = balances[ctx.sender]
        require(balance >= amount, "insufficient balance")
        balances[ctx.sender] = balance - amount
        balances[to] += amount
        Transfer.emit(sender=ctx.sender, to=to, amount=amount)
        return True

How it works, module by module:

* ``checker``: parses the source (identically on 3.11-3.13, ``portable``) and walks
  the AST against the allowlist (names in ``language``); anything else is refused
  with ``ContractError(line, column, rule, hint)``; what it learns is in ``model``.
  ``python -m contracts.runtime FILE...`` runs it from a terminal.
* ``instrument``: rewrites the checked AST so it charges gas per block, loop
  iteration and comprehension iteration, and routes size-dependent operations
  through helpers that charge by operand size before working (``ops``, ``methods``,
  ``builtins``). Gas is a function of the source and the values, never of CPython's
  bytecode, and no tracing hook runs.
* ``engine``: compiles once per code hash, binds storage declarations (``storage``)
  to the transaction's overlay, runs exported functions with a ``ctx``, handles
  calls between contracts, re-entrancy, deployment and failures.
* ``worker``: optional defence in depth, executing blocks in a child process under
  rlimits.
* ``contracts.executor`` (one level up) applies a block's transactions: nonces,
  gas accounting, receipts.
"""

from contracts.runtime.checker import CheckedContract, check
from contracts.runtime.engine import BlockContext, Runtime, contract_address
from contracts.runtime.errors import ContractError, LimitExceeded, OutOfGas
from contracts.runtime.fixed import Fixed

__all__ = [
    "BlockContext",
    "CheckedContract",
    "ContractError",
    "Fixed",
    "LimitExceeded",
    "OutOfGas",
    "Runtime",
    "check",
    "contract_address",
]
