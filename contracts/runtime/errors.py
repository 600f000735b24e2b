"""The runtime's one error type, :class:`ContractError`, and its stable codes.

Everything that goes wrong with a contract, at deployment or while it runs, is a
``ContractError`` whose ``code`` is the stable snake_case word a receipt carries
(``receipt.error == (code, message)``):

========================  ==================================================================
``rejected``              the deploy-time checker refused the source (``line``, ``column``,
                          ``rule`` and ``hint`` say where and why)
``contract_error``        the contract failed: ``require``/``fail``, or a Python error such
                          as a ``KeyError`` (reported as its kind, function and line)
``out_of_gas``            the transaction's gas limit was reached
``limit``                 a runtime limit was hit: call depth, value or collection size,
                          integer size, bytes allocated, writes, events, nesting
``not_found``             no such contract, or no such exported function
``bad_args``              arguments do not match the function's declared parameters
``not_allowed``           the caller may not do this (deploy without the deployer role,
                          writing from a view, ...)
``reentrancy``            a call would re-enter a contract that is already running
``name_taken``            a contract with this name already exists
========================  ==================================================================

A contract names its own refusal by starting the message of ``require``/``fail`` with a
snake_case code and a colon: ``require(balance >= amount, "insufficient_balance: ...")``
gives the receipt error ``("insufficient_balance", "insufficient_balance: ...")``, so
clients and gateways act on codes, never on message text. The runtime's own codes
above (and the executor's admission codes) are reserved: a message that starts with
one of them stays a ``contract_error``, so a contract cannot pass itself off as the
runtime.

Messages are built by the runtime from the contract's own text and the AST, never
from CPython's exception texts, so every validator (CPython 3.11, 3.12, 3.13, any
PYTHONHASHSEED) writes the same receipt. Contracts cannot catch any of these: the
language has no ``try``, so an error always ends the transaction and reverts it.
"""

from __future__ import annotations

__all__ = [
    "ContractError",
    "RESERVED_CODES",
    "contract_failure",
    "LimitExceeded",
    "OutOfGas",
    "MAX_MESSAGE_LEN",
]

# A receipt's message is for people; a contract must not be able to bloat every
# validator's receipt store through it.
MAX_MESSAGE_LEN = 256


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_LEN else message[: MAX_MESSAGE_LEN - 3] + "..."


class ContractError(Exception):
    """A contract was refused or failed. ``code`` is stable; ``message`` says what and why.

    Deploy-time rejections also carry ``line``, ``column`` (1-based line, 0-based
    column as in Python's ``ast``), ``rule`` (the checker rule's name) and ``hint``
    (what to write instead). ``detail`` may hold host-specific text (for instance
    CPython's own syntax error message) for a developer's terminal: it never goes
    into a receipt, because it differs between Python versions.
    """

    code: str = "contract_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        line: int | None = None,
        column: int | None = None,
        rule: str | None = None,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        message = _clip(message)
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.line = line
        self.column = column
        self.rule = rule
        self.hint = hint
        self.detail = detail

    @classmethod
    def at(cls, line: int | None, column: int | None, rule: str, hint: str, *, detail: str | None = None) -> ContractError:
        """A deploy-time rejection: ``ContractError(line, column, rule, hint)``."""
        where = "" if line is None else f"line {line}, column {column}: "
        return cls(f"{where}[{rule}] {hint}", code="rejected", line=line, column=column, rule=rule, hint=hint, detail=detail)

    @property
    def receipt_error(self) -> tuple[str, str]:
        return (self.code, self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class OutOfGas(ContractError):
    """The transaction used all the gas it was given."""

    code = "out_of_gas"


class LimitExceeded(ContractError):
    """A size, depth or count limit of the runtime was reached."""

    code = "limit"


# Codes only the runtime and the executor give; a contract's own code never takes one.
RESERVED_CODES = frozenset({
    "rejected", "contract_error", "out_of_gas", "limit", "not_found", "bad_args", "not_allowed", "reentrancy",
    "name_taken", "bad_nonce", "bad_signature", "wrong_chain", "expired", "gas_limit", "malformed", "not_member",
    "not_active",
})
_MAX_CODE_LEN = 40


def contract_failure(message: str) -> ContractError:
    """The error of ``require``/``fail``: its code is the message's ``code:`` prefix when it has one."""
    head, sep, _ = message.partition(": ")
    if (
        sep
        and 0 < len(head) <= _MAX_CODE_LEN
        and head[0].isascii() and head[0].islower()
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in head)
        and head not in RESERVED_CODES
    ):
        return ContractError(message, code=head)
    return ContractError(message)
