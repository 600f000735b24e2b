"""The runtime: loads contracts from state, runs their functions, deploys new ones.

One :class:`Runtime` executes one transaction at a time (it is not thread-safe):

    runtime.begin(block_state, block_context, signer, tx_hash, gas_limit)
    result = runtime.call_from_transaction("fiat", "transfer", args)   # or deploy(...)
    writes, events = runtime.finish()       # on success: hand the writes to the block

A failure raises :class:`ContractError` (or, for a Python error inside contract code,
any exception :func:`describe_failure` turns into a receipt error); the caller drops
the transaction's writes and events by not committing them.

**Contracts in state.** ``state_key("system", "contracts", [name])`` holds
``[code_hash, deployer, height]``; ``state_key("system", "code", [code_hash])`` holds
the source. Compiled code is cached by code hash and module instances by name and
record, so a cache never changes what a transaction sees or pays: loading is never
charged, and a contract's module-level constants are evaluated under their own
fixed budget.

**Calls.** ``ctx.sender`` is the immediate caller: the transaction's signer for a
call by transaction, the calling contract's address for ``call(...)`` between
contracts; ``ctx.signer`` is always the transaction's signer, ``ctx.caller_contract``
the calling contract's name (None from a transaction). A contract already running
in this transaction cannot be entered again unless the function called was exported
with ``@export(reentrant=True)``. Arguments and results crossing between contracts
are copied as canonical values (charged per byte), so no contract ever holds another
contract's objects. A contract address is the first 20 bytes of
``sha256("gridledger/contract" + name)``.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Any

from contracts.runtime import gas as G
from contracts.runtime.builtins import make_builtins
from contracts.runtime.checker import CheckedContract, FunctionInfo, check
from contracts.runtime.errors import ContractError, LimitExceeded
from contracts.runtime.fixed import Fixed
from contracts.runtime.instrument import instrument, statement_starts
from contracts.runtime.meter import Meter, meter_functions
from contracts.runtime.methods import make_methods
from contracts.runtime.ops import DeletionTracker, make_operator_helpers
from contracts.runtime.storage import (
    BlockState,
    EventDecl,
    MapDecl,
    TxState,
    ValueDecl,
    decode_value,
    encode_value,
    event_record,
)
from contracts.runtime.values import make_walkers, type_name
from ledger import codec
from ledger.crypto import tagged_hash
from ledger.statekeys import state_key
from ledger.tx import Event

__all__ = [
    "BlockContext",
    "Context",
    "Runtime",
    "SYSTEM",
    "code_key",
    "contract_address",
    "contract_record_key",
    "deployer_key",
    "describe_failure",
]

SYSTEM = "system"
# "bridge" is the node's native cross-shard module (shards/native.py): the market
# contracts trust calls from it by name, so no deployed contract may ever take it, on
# any shard, whether or not that shard runs the module.
RESERVED_CONTRACT_NAMES = frozenset({SYSTEM, "accounts", "bridge"})
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_ADDRESS_LEN = 20


def contract_address(name: str) -> bytes:
    """The 20-byte address of the contract called ``name``."""
    return tagged_hash(b"gridledger/contract", name.encode("utf-8"))[:_ADDRESS_LEN]


def contract_record_key(name: str) -> bytes:
    return state_key(SYSTEM, "contracts", [name])


def code_key(code_hash: bytes) -> bytes:
    return state_key(SYSTEM, "code", [code_hash])


def deployer_key(address: bytes) -> bytes:
    return state_key(SYSTEM, "deployers", [address])


@dataclass(frozen=True)
class BlockContext:
    """What a block tells its transactions: shard (chain id), height, agreed time, proposer."""

    shard: str
    height: int
    time: int
    proposer: bytes = b""


class Context:
    """``ctx`` inside a contract: who called, where, when."""

    __slots__ = ("sender", "signer", "caller_contract", "this", "contract", "height", "time", "shard", "tx_hash")

    def __init__(self, sender, signer, caller_contract, this, contract, height, time, shard, tx_hash) -> None:
        self.sender = sender
        self.signer = signer
        self.caller_contract = caller_contract
        self.this = this
        self.contract = contract
        self.height = height
        self.time = time
        self.shard = shard
        self.tx_hash = tx_hash


# ---------------------------------------------------------------- argument checks


def _arg_checker(annotation: str | None, optional: bool, param: str):
    def fail(value: object, wanted: str) -> ContractError:
        return ContractError(f"argument {param} must be {wanted}, not {type_name(value)}", code="bad_args")

    def check_int(v):
        if type(v) is not int:
            raise fail(v, "an int")
        if v.bit_length() > G.MAX_INT_BITS:
            raise ContractError(f"argument {param} exceeds {G.MAX_INT_BITS} bits", code="bad_args")
        return v

    def check_type(t: type, wanted: str):
        def checker(v):
            if type(v) is not t:
                raise fail(v, wanted)
            return v

        return checker

    def check_list(v):
        if type(v) is not list:
            raise fail(v, "a list")
        return v

    def check_tuple(v):
        if type(v) is tuple:
            return v
        if type(v) is not list:
            raise fail(v, "a list (received as a tuple)")
        return tuple(v)

    def check_fixed(v):
        if type(v) is Fixed:
            return v
        if type(v) is int or type(v) is str:
            try:
                return Fixed(v)
            except ContractError as exc:
                raise ContractError(f"argument {param}: {exc.message}", code="bad_args") from None
        raise fail(v, "a decimal string such as '12.34' or an int")

    def check_address(v):
        if type(v) is not bytes or len(v) != _ADDRESS_LEN:
            raise ContractError(f"argument {param} must be a {_ADDRESS_LEN}-byte address", code="bad_args")
        return v

    base = {
        None: lambda v: v,
        "int": check_int,
        "bool": check_type(bool, "a bool"),
        "str": check_type(str, "text"),
        "bytes": check_type(bytes, "bytes"),
        "list": check_list,
        "tuple": check_tuple,
        "dict": check_type(dict, "a dict"),
        "Fixed": check_fixed,
        "Address": check_address,
    }[annotation]
    if not optional:
        return base
    return lambda v: None if v is None else base(v)


@dataclass
class ExportSpec:
    """An exported function as the runtime calls it."""

    name: str
    fn: FunctionType
    view: bool
    reentrant: bool
    checkers: tuple
    required: int

    def convert(self, args: list | tuple) -> list:
        n = len(args)
        if not self.required <= n <= len(self.checkers):
            if self.required == len(self.checkers):
                want = f"{self.required}"
            else:
                want = f"{self.required} to {len(self.checkers)}"
            raise ContractError(f"{self.name} takes {want} arguments, got {n}", code="bad_args")
        checkers = self.checkers
        return [checkers[i](a) for i, a in enumerate(args)]


def _spec(fn: FunctionType, info: FunctionInfo) -> ExportSpec:
    positional = [p for p in info.params if not p.keyword_only]
    checkers = tuple(_arg_checker(p.annotation, p.optional, p.name) for p in positional)
    required = sum(1 for p in positional if not p.has_default)
    return ExportSpec(info.name, fn, info.kind == "view", info.reentrant, checkers, required)


@dataclass
class CompiledCode:
    """A checked, instrumented and compiled source, shared by every contract using it."""

    code_hash: bytes
    checked: CheckedContract
    code: CodeType
    statements: list[tuple[int, int]]
    functions: dict[str, tuple[int, int]]


@dataclass
class LoadedContract:
    name: str
    address: bytes
    code: CompiledCode
    globals: dict
    exports: dict[str, ExportSpec]
    constructor: ExportSpec | None
    init_gas: int  # gas its module-level constants use (charged once, at deployment)


class Runtime:
    """Loads and runs contracts for one executor; see the module docstring.

    ``metered=False`` omits gas accounting (charges and size helpers) and exists for
    benchmarks and reference runs only: without metering a contract can exhaust
    the node, so consensus always uses the default.
    """

    def __init__(self, *, metered: bool = True) -> None:
        self.metered = metered
        self.meter = meter = Meter()
        self.fns = fns = meter_functions(meter)
        self.charge = fns.charge
        self.walk, self.check_key = make_walkers(fns.charge)
        self.tracker = DeletionTracker(fns.charge)
        helpers = make_operator_helpers(meter, fns, self.walk, self.check_key, self.tracker)
        helpers.update(make_methods(fns, self.walk, self.check_key, self.tracker))
        builtins = make_builtins(fns, self.walk, self.check_key, helpers["_pow"])  # type: ignore[arg-type]
        builtins["call"] = self.cross_call
        builtins["contract_address"] = self._contract_address_builtin
        self.builtins = {k: v for k, v in builtins.items() if not k.startswith("_")}
        # static attribute forms (bytes.fromhex...) are reached as globals named _...
        helpers.update({k: v for k, v in builtins.items() if k.startswith("_")})
        self.helpers = helpers
        self.compiled: dict[bytes, CompiledCode] = {}
        self.by_filename: dict[str, CompiledCode] = {}
        self.loaded: dict[tuple[str, bytes], LoadedContract] = {}
        # per transaction
        self.tx: TxState = TxState(BlockState(_EmptyReader()))
        self.block_context = BlockContext("", 0, 0)
        self.signer = b""
        self.tx_hash = b""
        self.events: list = []
        self.event_bytes = 0
        self.stack: list[LoadedContract] = []
        self.active: dict[str, int] = {}
        self.read_only = False

    # ------------------------------------------------------------ transactions

    def begin(self, block: BlockState, block_context: BlockContext, signer: bytes, tx_hash: bytes, gas_limit: int) -> None:
        """Start a transaction: fresh writes, events and meter."""
        self.meter.reset(gas_limit if self.metered else 1 << 62)
        self.tracker.reset()
        self.tx = TxState(block)
        self.block_context = block_context
        self.signer = signer
        self.tx_hash = tx_hash
        self.events = []
        self.event_bytes = 0
        self.stack = []
        self.active = {}
        self.read_only = False

    def finish(self) -> tuple[dict[bytes, bytes | None], list]:
        """The transaction's writes and events (the caller commits them on success)."""
        writes, events = self.tx.writes, self.events
        self.tracker.reset()
        return writes, events

    @property
    def gas_used(self) -> int:
        return self.meter.used if self.metered else 0

    def call_from_transaction(self, contract: str, function: str, args: list | tuple) -> Any:
        loaded = self.contract(contract)
        spec = loaded.exports.get(function)
        if spec is None:
            raise ContractError(f"{contract} has no exported function {function}", code="not_found")
        values = spec.convert(_copy_args(args))
        result = self.invoke(loaded, spec, values, self.signer, None)
        return self.export_value(result, "return", G.MAX_RESULT_BYTES, allow_maps=False)

    def query(self, contract: str, function: str, args: list | tuple) -> Any:
        """Call a ``@view`` function (writes and events refused); maps allowed in the result."""
        loaded = self.contract(contract)
        spec = loaded.exports.get(function)
        if spec is None or not spec.view:
            raise ContractError(f"{contract} has no view {function}", code="not_found")
        values = spec.convert(_copy_args(args))
        result = self.invoke(loaded, spec, values, self.signer, None)
        return self.export_value(result, "return", G.MAX_RESULT_BYTES, allow_maps=True)

    # ------------------------------------------------------------ contracts

    def contract(self, name: object) -> LoadedContract:
        if type(name) is not str:
            raise ContractError("a contract name is text", code="not_found")
        raw = self.tx.get(contract_record_key(name))
        if raw is None:
            raise ContractError(f"no contract named {name[:64]}", code="not_found")
        loaded = self.loaded.get((name, raw))
        if loaded is None:
            code_hash = decode_value(raw)[0]
            compiled = self.compiled.get(code_hash)
            if compiled is None:
                source_raw = self.tx.get(code_key(code_hash))
                if source_raw is None:
                    raise ContractError(f"code of contract {name} is missing from state", code="not_found")
                compiled = self.compile(decode_value(source_raw))
            loaded = self.instantiate(name, compiled)
            self.loaded[(name, raw)] = loaded
        return loaded

    def compile(self, source: str) -> CompiledCode:
        """Check, instrument and compile ``source`` (cached by code hash)."""
        code_hash = hashlib.sha256(source.encode("utf-8")).digest()
        cached = self.compiled.get(code_hash)
        if cached is not None:
            return cached
        checked = check(source)
        statements = statement_starts(checked.tree)
        functions = {n: (f.line, f.end_line) for n, f in checked.functions.items()}
        module = instrument(checked, metered=self.metered)
        filename = f"<contract {code_hash.hex()}>"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compile(module, filename, "exec", dont_inherit=True)
        compiled = CompiledCode(code_hash, checked, code, statements, functions)
        self.compiled[code_hash] = compiled
        self.by_filename[filename] = compiled
        return compiled

    def instantiate(self, name: str, compiled: CompiledCode) -> LoadedContract:
        """A module instance for contract ``name``: declarations bound, constants evaluated.

        Module code runs under its own budget (``MODULE_INIT_GAS``) with the
        transaction's meter set aside, so loading costs a transaction nothing and
        whether a node had the contract cached can never change a receipt.
        """
        checked = compiled.checked
        g: dict[str, Any] = {"__builtins__": self.builtins, "ctx": None, "_contract": name}
        g.update(self.helpers)
        for decl in checked.storage.values():
            if decl.kind == "map":
                g[decl.name] = MapDecl(self, name, decl.name, decl.default, decl.key_parts)
            else:
                g[decl.name] = ValueDecl(self, name, decl.name, decl.default)
        for ev in checked.events.values():
            g[ev.name] = EventDecl(self, name, ev.name, ev.fields, ev.indexed)
        meter = self.meter
        saved = (meter.gas, meter.limit, meter.depth, meter.alloc)
        meter.reset(G.MODULE_INIT_GAS)
        try:
            exec(compiled.code, g)
            init_gas = meter.used
        finally:
            meter.gas, meter.limit, meter.depth, meter.alloc = saved
        exports: dict[str, ExportSpec] = {}
        constructor = None
        for fname, info in checked.functions.items():
            if info.kind in ("export", "view"):
                exports[fname] = _spec(g[fname], info)
            elif info.kind == "constructor":
                constructor = _spec(g[fname], info)
        return LoadedContract(name, contract_address(name), compiled, g, exports, constructor, init_gas)

    # ------------------------------------------------------------ deployment

    def deploy(self, name: object, source: object, args: list | tuple, deployer: bytes) -> bytes:
        """Deploy ``source`` as contract ``name`` and run its constructor; returns the code hash.

        The caller has checked the deployer role. Gas for checking and compiling is
        charged from the source size before any of that work.
        """
        if type(source) is not str:
            raise ContractError("deploy takes [name, source, constructor args]: source is text", code="bad_args")
        self.charge(G.DEPLOY_BASE + G.DEPLOY_SOURCE_BYTE * len(source.encode("utf-8", "surrogatepass")))
        if type(name) is not str or not _NAME_RE.fullmatch(name):
            raise ContractError("a contract name is 1-32 characters: a-z first, then a-z, 0-9 or _", code="bad_args")
        if name in RESERVED_CONTRACT_NAMES:
            raise ContractError(f"{name} is reserved", code="name_taken")
        record_key = contract_record_key(name)
        if self.tx.get(record_key) is not None:
            raise ContractError(f"a contract named {name} already exists", code="name_taken")
        compiled = self.compile(source)
        record = codec.encode([compiled.code_hash, deployer, self.block_context.height])
        self.put(code_key(compiled.code_hash), codec.encode(source))
        self.put(record_key, record)
        loaded = self.contract(name)
        self.charge(loaded.init_gas)
        self.events.append(Event(SYSTEM, "Deployed", (("name", name), ("code_hash", compiled.code_hash), ("deployer", deployer))))
        ctor = loaded.constructor
        if ctor is None:
            if args:
                raise ContractError(f"{name} has no constructor but arguments were given", code="bad_args")
        else:
            values = ctor.convert(_copy_args(args))
            self.invoke(loaded, ctor, values, deployer, None)
        return compiled.code_hash

    # ------------------------------------------------------------ calls

    def invoke(self, loaded: LoadedContract, spec: ExportSpec, values: list, sender: bytes, caller: str | None) -> Any:
        name = loaded.name
        active = self.active
        if name in active and not spec.reentrant:
            raise ContractError(f"{name} is already running in this transaction; {spec.name} does not allow re-entry", code="reentrancy")
        bc = self.block_context
        g = loaded.globals
        saved_ctx = g["ctx"]
        g["ctx"] = Context(sender, self.signer, caller, loaded.address, name, bc.height, bc.time, bc.shard, self.tx_hash)
        active[name] = active.get(name, 0) + 1
        self.stack.append(loaded)
        saved_read_only = self.read_only
        if spec.view:
            self.read_only = True
        result = spec.fn(*values)
        self.read_only = saved_read_only
        self.stack.pop()
        if active[name] == 1:
            del active[name]
        else:
            active[name] -= 1
        g["ctx"] = saved_ctx
        return result

    def cross_call(self, contract: object = None, function: object = None, *args: object) -> Any:
        """``call(contract, function, *args)`` inside a contract."""
        self.charge(G.CONTRACT_CALL)
        if type(contract) is not str or type(function) is not str:
            raise ContractError("call(contract, function, *args) takes the contract and function names as text")
        if len(self.stack) >= G.MAX_CONTRACT_DEPTH:
            raise LimitExceeded(f"contract call depth limit: more than {G.MAX_CONTRACT_DEPTH} nested contract calls")
        caller = self.stack[-1]
        copied = self.copy_value(list(args), "pass")
        loaded = self.contract(contract)
        spec = loaded.exports.get(function)
        if spec is None:
            raise ContractError(f"{contract} has no exported function {function}", code="not_found")
        values = spec.convert(copied)
        result = self.invoke(loaded, spec, values, caller.address, caller.name)
        return self.copy_value(result, "return")

    def call_as_module(self, module: str, contract: object, function: object, args: list | tuple) -> Any:
        """A native module's call of a deployed contract (``contracts.executor`` natives).

        The callee sees ``ctx.sender == contract_address(module)`` and
        ``ctx.caller_contract == module``, exactly as if a contract named ``module``
        had called it, so contracts authorise the module as they authorise each other
        (the name is reserved: no deployed contract can pose as it). Charged like
        ``call`` between contracts.
        """
        self.charge(G.CONTRACT_CALL)
        if type(contract) is not str or type(function) is not str:
            raise ContractError("a module calls a contract function by the names of both, as text")
        if len(self.stack) >= G.MAX_CONTRACT_DEPTH:
            raise LimitExceeded(f"contract call depth limit: more than {G.MAX_CONTRACT_DEPTH} nested contract calls")
        copied = self.copy_value(list(args), "pass")
        loaded = self.contract(contract)
        spec = loaded.exports.get(function)
        if spec is None:
            raise ContractError(f"{contract} has no exported function {function}", code="not_found")
        values = spec.convert(copied)
        result = self.invoke(loaded, spec, values, contract_address(module), module)
        return self.copy_value(result, "return")

    def copy_value(self, value: object, what: str) -> Any:
        t = type(value)
        if t is int or t is str or t is bytes or t is bool or value is None:
            if t is int and value.bit_length() > G.MAX_INT_BITS:  # type: ignore[union-attr]
                raise LimitExceeded(f"integer exceeds {G.MAX_INT_BITS} bits")
            if t is str or t is bytes:
                self.charge(len(value) * G.COPY_BYTE)  # type: ignore[arg-type]
            return value
        raw = encode_value(value, self.walk, allow_maps=True, what=what)
        self.charge(len(raw) * G.COPY_BYTE)
        return decode_value(raw)

    def _contract_address_builtin(self, name: object) -> bytes:
        if type(name) is not str:
            raise ContractError("contract_address(name) takes text")
        self.charge(G.HASH_BASE)
        return contract_address(name)

    # ------------------------------------------------------------ effects

    def put(self, key: bytes, raw: bytes | None) -> None:
        tx = self.tx
        tx.write_bytes += len(key) + (len(raw) if raw else 0)
        if tx.write_bytes > G.MAX_TX_WRITE_BYTES:
            raise LimitExceeded(f"write limit: a transaction writes at most {G.MAX_TX_WRITE_BYTES} bytes")
        tx.writes[key] = raw

    def write(self, key: bytes, value: object, default: object) -> None:
        """Store ``value`` (deleting the key when it equals the default), charged before writing."""
        if self.read_only:
            raise ContractError("a view cannot write storage", code="not_allowed")
        if type(value) is type(default) and value == default:
            self.charge(G.STORAGE_DELETE + len(key) * G.STORAGE_WRITE_BYTE)
            self.put(key, None)
            return
        raw = encode_value(value, self.walk, allow_maps=True, what="store")
        if len(raw) > G.MAX_VALUE_BYTES:
            raise LimitExceeded(f"a stored value is at most {G.MAX_VALUE_BYTES} bytes encoded; this one is {len(raw)}")
        self.charge(G.STORAGE_WRITE + (len(key) + len(raw)) * G.STORAGE_WRITE_BYTE)
        self.put(key, raw)

    def emit(self, contract: str, name: str, fields: tuple[str, ...], values: list) -> None:
        if self.read_only:
            raise ContractError("a view cannot emit events", code="not_allowed")
        if len(self.events) >= G.MAX_TX_EVENTS:
            raise LimitExceeded(f"event limit: a transaction emits at most {G.MAX_TX_EVENTS} events")
        raw = encode_value(values, self.walk, allow_maps=False, what="emit")
        self.event_bytes += len(raw)
        if self.event_bytes > G.MAX_TX_EVENT_BYTES:
            raise LimitExceeded(f"event limit: a transaction's events hold at most {G.MAX_TX_EVENT_BYTES} bytes")
        self.charge(G.EVENT + len(raw) * G.EVENT_BYTE)
        self.events.append(event_record(contract, name, fields, decode_value(raw)))

    def export_value(self, value: object, what: str, limit: int, *, allow_maps: bool) -> Any:
        if value is None or type(value) in (int, bool) and value.bit_length() <= 63:  # type: ignore[union-attr]
            return value
        raw = encode_value(value, self.walk, allow_maps=allow_maps, what=what)
        if len(raw) > limit:
            raise LimitExceeded(f"a result is at most {limit} bytes encoded; this one is {len(raw)}")
        self.charge(len(raw) * G.COPY_BYTE)
        return decode_value(raw)


def _copy_args(args: list | tuple) -> list:
    # Transaction arguments are decoded canonical values; lists are copied so a
    # contract that mutates an argument cannot change the transaction object.
    return [list(_deep_copy(a)) if type(a) is list else a for a in args]


def _deep_copy(value: list) -> list:
    return [(_deep_copy(v) if type(v) is list else v) for v in value]


class _EmptyReader:
    def get(self, key: bytes) -> bytes | None:
        return None


# ---------------------------------------------------------------- failures

_KINDS = (
    (ZeroDivisionError, "ZeroDivisionError"),
    (KeyError, "KeyError"),
    (IndexError, "IndexError"),
    (TypeError, "TypeError"),
    (OverflowError, "OverflowError"),
    (ValueError, "ValueError"),
    (UnboundLocalError, "UnboundLocalError"),
    (NameError, "NameError"),
    (RuntimeError, "RuntimeError"),
    (AttributeError, "AttributeError"),
)


def describe_failure(exc: BaseException, runtime: Runtime | None = None) -> tuple[str, str]:
    """The receipt error ``(code, message)`` for an exception raised by contract execution.

    Contract errors keep their code and message. A Python error inside contract code
    is reported as its kind, contract, function and statement line, never with
    CPython's message text, which differs between versions.
    """
    if isinstance(exc, ContractError):
        return exc.code, exc.message
    if isinstance(exc, RecursionError):
        return "limit", "nesting limit: the value or call chain is too deep"
    kind = next((label for cls, label in _KINDS if isinstance(exc, cls)), "Error")
    where = ""
    tb = exc.__traceback__
    frame_info = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<contract "):
            frame_info = (tb.tb_frame.f_globals.get("_contract"), tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    if frame_info is not None and runtime is not None:
        contract, filename, line = frame_info
        compiled = runtime.by_filename.get(filename)
        if compiled is not None and line is not None:
            start = line
            best = None
            for first, last in compiled.statements:
                if first <= line <= last and (best is None or first >= best):
                    best = first
            if best is not None:
                start = best
            function = next((n for n, (a, b) in compiled.functions.items() if a <= start <= b), None)
            where = f" in {contract}.{function}" if function else f" in {contract}"
            where += f" at line {start}"
    return "contract_error", f"{kind}{where}"
