"""The names of the contract language: what the runtime provides and what it refuses.

Kept apart from the checker so the lists are read in one place. Every list is
static: none depends on the running interpreter (``dir(builtins)`` differs between
Python versions, and a rejection message must not).
"""

from __future__ import annotations

from contracts.runtime.builtins import ALLOWED_BUILTINS, TYPE_NAMES

__all__ = [
    "ANNOTATION_NAMES",
    "CTX_ATTRIBUTES",
    "DECLARATIONS",
    "DECORATORS",
    "FORBIDDEN_HINTS",
    "PYTHON_BUILTINS",
    "RESERVED_NAMES",
    "RUNTIME_NAMES",
    "STATIC_ATTRIBUTES",
    "DECLARATION_ATTRIBUTES",
    "IMPORT_MODULE",
]

# What the runtime provides besides the allowed Python builtins.
RUNTIME_NAMES = frozenset(
    {
        "ctx", "Map", "Value", "Event", "Fixed", "Address", "require", "fail", "call",
        "contract_address", "sha256", "export", "view", "constructor",
    }
)
DECLARATIONS = frozenset({"Map", "Value", "Event"})
DECORATORS = frozenset({"export", "view", "constructor"})
# `from gridledger import Map, export, ...` is accepted (and does nothing) so that
# editors and linters know the names.
IMPORT_MODULE = "gridledger"

CTX_ATTRIBUTES = frozenset(
    {"sender", "signer", "caller_contract", "this", "contract", "height", "time", "shard", "tx_hash"}
)
# Attributes of runtime names, resolved statically: `bytes.fromhex(...)` etc.
STATIC_ATTRIBUTES: dict[str, dict[str, str]] = {
    "bytes": {"fromhex": "_bytes_fromhex"},
    "int": {"from_bytes": "_int_from_bytes"},
    "Fixed": {"from_units": "_fixed_from_units"},
}
# Methods of storage and event declarations (`total.get()`, `Transfer.emit(...)`).
DECLARATION_ATTRIBUTES: dict[str, frozenset[str]] = {
    "Map": frozenset(),
    "Value": frozenset({"get", "set"}),
    "Event": frozenset({"emit"}),
}

# Parameter annotations of exported functions (and the argument check each means).
ANNOTATION_NAMES = frozenset(TYPE_NAMES) | {"Address"}

# Every public name of builtins in CPython 3.11, 3.12 and 3.13.
PYTHON_BUILTINS = frozenset(
    """ArithmeticError AssertionError AttributeError BaseException BaseExceptionGroup
    BlockingIOError BrokenPipeError BufferError BytesWarning ChildProcessError
    ConnectionAbortedError ConnectionError ConnectionRefusedError ConnectionResetError
    DeprecationWarning EOFError Ellipsis EncodingWarning EnvironmentError Exception
    ExceptionGroup False FileExistsError FileNotFoundError FloatingPointError FutureWarning
    GeneratorExit IOError ImportError ImportWarning IndentationError IndexError
    InterruptedError IsADirectoryError KeyError KeyboardInterrupt LookupError MemoryError
    ModuleNotFoundError NameError None NotADirectoryError NotImplemented NotImplementedError
    OSError OverflowError PendingDeprecationWarning PermissionError ProcessLookupError
    PythonFinalizationError RecursionError ReferenceError ResourceWarning RuntimeError
    RuntimeWarning StopAsyncIteration StopIteration SyntaxError SyntaxWarning SystemError
    SystemExit TabError TimeoutError True TypeError UnboundLocalError UnicodeDecodeError
    UnicodeEncodeError UnicodeError UnicodeTranslateError UnicodeWarning UserWarning
    ValueError Warning ZeroDivisionError abs aiter all anext any ascii bin bool breakpoint
    bytearray bytes callable chr classmethod compile complex copyright credits delattr dict
    dir divmod enumerate eval exec exit filter float format frozenset getattr globals
    hasattr hash help hex id input int isinstance issubclass iter len license list locals
    map max memoryview min next object oct open ord pow print property quit range repr
    reversed round set setattr slice sorted staticmethod str sum super tuple type vars zip""".split()
)

# Names a contract can never bind: the runtime's, and every Python builtin.
RESERVED_NAMES = RUNTIME_NAMES | PYTHON_BUILTINS | ALLOWED_BUILTINS

_INTROSPECTION = "introspection is not available to contracts"
FORBIDDEN_HINTS: dict[str, str] = {
    "eval": "contracts cannot run code built from text",
    "exec": "contracts cannot run code built from text",
    "compile": "contracts cannot run code built from text",
    "getattr": _INTROSPECTION,
    "setattr": _INTROSPECTION,
    "delattr": _INTROSPECTION,
    "hasattr": _INTROSPECTION,
    "vars": _INTROSPECTION,
    "dir": _INTROSPECTION,
    "type": "use isinstance(x, int) and friends",
    "id": "object identity differs between validators",
    "hash": "hash values differ between validators",
    "globals": _INTROSPECTION,
    "locals": _INTROSPECTION,
    "object": _INTROSPECTION,
    "super": "there are no classes",
    "classmethod": "there are no classes",
    "staticmethod": "there are no classes",
    "property": "there are no classes",
    "issubclass": _INTROSPECTION,
    "callable": _INTROSPECTION,
    "open": "contracts have no files; keep data in storage declarations",
    "print": "contracts have no output; announce things with an Event",
    "input": "contracts have no input but their arguments",
    "breakpoint": "contracts cannot be debugged on validators",
    "help": "not available in contracts",
    "exit": "use fail(message) to stop with an error",
    "quit": "use fail(message) to stop with an error",
    "float": "no floats in gridledger: use int (Wh, minor currency units) or Fixed",
    "complex": "no floats in gridledger: use int or Fixed",
    "round": "use Fixed's rescale(scale, rounding) with an explicit rounding mode",
    "set": "sets iterate in hash order; use a dict or a sorted list",
    "frozenset": "sets iterate in hash order; use a dict or a sorted list",
    "iter": "use a for loop or a list comprehension",
    "next": "use a for loop or a list comprehension",
    "aiter": "use a for loop or a list comprehension",
    "anext": "use a for loop or a list comprehension",
    "map": "use a list comprehension",
    "filter": "use a list comprehension with an if",
    "format": "use an f-string without format specs, or str(x)",
    "repr": "use str(x)",
    "ascii": "use str(x)",
    "bin": "use hex(n) or int.to_bytes",
    "oct": "use hex(n) or int.to_bytes",
    "bytearray": "use bytes; build them with b''.join(parts)",
    "memoryview": "use bytes and slices",
    "slice": "write slices as a[i:j]",
    "copyright": "not available in contracts",
    "credits": "not available in contracts",
    "license": "not available in contracts",
}
_EXCEPTION_HINT = "contracts do not handle exceptions; use require(condition, message) or fail(message)"


def forbidden_hint(name: str) -> str:
    if name in FORBIDDEN_HINTS:
        return f"{name}() is not available: {FORBIDDEN_HINTS[name]}"
    if name[:1].isupper():
        return f"{name} is not available: {_EXCEPTION_HINT}"
    return f"{name} is not available in contracts"
