"""Applying a block's transactions to state: nonces, gas accounting, calls, deployments.

    result = Executor().execute_block(state_reader, BlockContext(shard, height, time), txs)
    result.writes     # {key: value or None (delete)}, sorted by key, for the store
    result.receipts   # one ledger.tx.Receipt per transaction, in order

The state reader is anything with ``get(key: bytes) -> bytes | None`` (the store's
committed state). The executor never writes to it; the store applies ``writes`` and
computes the state root.

**Rules per transaction, in order.** Each refusal gets a failed receipt with
``gas_used`` 0 and changes *nothing* (not even the nonce), because every one of them
can be decided before execution and a proposer should not have included it:

1. ``wrong_chain``: the transaction is for another shard;
2. ``expired``: the block is past the transaction's expiry height;
3. ``bad_signature``: only with ``verify_signatures=True``. By default the node
   verifies signatures when it admits a transaction to its mempool and when it
   validates a proposed block, before executing it, and the executor does not
   repeat that (an Ed25519 check costs more than a transfer);
4. ``gas_limit``: the gas limit exceeds ``MAX_TX_GAS``; ``malformed``: the
   transaction cannot be encoded (possible only for one built in-process);
5. ``bad_nonce``: the nonce is not the sender's next nonce. Nonces are sequential
   per sender address from 0; the next nonce lives at
   ``state_key("accounts", "nonce", [address])`` (absent means 0);
6. the admission policy, when one is given, may refuse with its own code
   (membership and roles come with the membership contract; this is its hook).

Otherwise the transaction *executes*: its call (or deployment) runs against its own
layer of writes; success commits the layer, failure (``out_of_gas``,
``contract_error``, ``limit``, ``not_found``, ``bad_args``, ``not_allowed``,
``reentrancy``, ``name_taken``, ``rejected``...) drops every write and event of it.
Either way the sender's nonce advances and the gas used is added to the sender's
cumulative account at ``state_key("accounts", "gas_used", [address])``: gridledger
is permissioned, so gas is a metered quota per participant rather than a coin.

**Native modules.** ``Executor(natives={"bridge": handler})`` runs a transaction to
contract ``bridge`` by calling ``handler.run(host, function, args)`` (a
:class:`NativeModule`) instead of contract code, inside the same per-transaction
layer: a failure drops every write and event, exactly as for a contract call. The
handler reaches state only through its :class:`NativeHost`: reads anywhere, writes
under its own name's keys (``state_key(name, ...)``), calls of deployed contracts *as
the module* (``ctx.sender == contract_address(name)``, ``ctx.caller_contract ==
name``), and events. Gas: ``handler.gas(function)`` (a fixed cost per operation, which
the module documents) plus ``NATIVE_ARG_BYTE`` per byte of the encoded arguments, on
top of the transaction's base cost; every read, write, event and contract call is
then charged at the runtime's own rates. A native name shadows no contract: the
runtime reserves ``bridge`` and a native name must be a valid contract name that is
not ``system``. A handler signals a refusal by raising :class:`ContractError` with
its code; any other exception is reported like a contract's Python error.

**Deployment** is ``Transaction(contract="system", function="deploy", args=[name,
source])`` (optionally a third argument: the constructor's arguments as a list),
allowed to senders holding the deployer role (``state_key("system", "deployers",
[address])``, written from genesis for now); a taken name is refused. The receipt's
result is the code hash.

Execution runs with Python warnings ignored, so a node's ``-W`` settings can never
change an outcome; the interpreter must not run with ``-b`` (checked at start), and
the recursion limit is raised if needed so the runtime always has
``RECURSION_HEADROOM`` frames below the caller (its own bounds need far fewer).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from contracts.runtime import gas as G
from contracts.runtime.engine import (
    _NAME_RE,
    SYSTEM,
    BlockContext,
    Runtime,
    contract_address,
    deployer_key,
    describe_failure,
)
from contracts.runtime.errors import ContractError
from contracts.runtime.storage import BlockState, StateReader, decode_value, encode_key_prefix
from contracts.runtime.worker import ExecutorUnavailable, IsolatedExecutor
from ledger import codec
from ledger.statekeys import state_key
from ledger.tx import Event, Receipt, Transaction, TxError

__all__ = [
    "AdmissionPolicy",
    "NATIVE_ARG_BYTE",
    "NativeHost",
    "NativeModule",
    "BlockContext",
    "BlockResult",
    "Executor",
    "ExecutorUnavailable",
    "IsolatedExecutor",
    "GENESIS_ADDRESS",
    "GenesisContract",
    "StateView",
    "apply_genesis",
    "apply_genesis_document",
    "execute_block",
    "gas_used_key",
    "nonce_key",
]

# The deployer of genesis contracts that name no deployer.
GENESIS_ADDRESS = bytes(20)
# Python frames the runtime may need below the executor: 64 contract frames, each
# possibly through a builtin (sorted's key...), 8 contract calls, codec walks.
# Well under this, so no outcome can depend on how deep the node's stack already is.
RECURSION_HEADROOM = 1000
_ZERO_HASH = bytes(32)
# Gas per byte of a native call's encoded arguments, on top of TX_ARG_BYTE: a module
# verifies what it is given (signatures, Merkle proofs over the bytes of a relayer's
# delivery), so its work grows with the argument size; 8 units (~200 ns) per byte
# covers hashing a proof's bytes several times over.
NATIVE_ARG_BYTE = 8
# system.reconfigure: reading the epoch records, checking the set and the proofs of
# possession of added validators (~2 ms each), plus one Ed25519 check per approval.
RECONFIG_BASE = 100_000
RECONFIG_APPROVAL = 3_000


# Every transaction reads and writes its sender's nonce and gas account. An address is
# 20 bytes, which canonical msgpack always encodes as bin8 (0xc4 0x14) + the bytes, so
# the key is a fixed prefix + the address: the same bytes as ``state_key`` gives.
_ADDRESS_BYTES = 20
_NONCE_PREFIX = state_key("accounts", "nonce", [bytes(_ADDRESS_BYTES)])[:-_ADDRESS_BYTES]
_GAS_USED_PREFIX = state_key("accounts", "gas_used", [bytes(_ADDRESS_BYTES)])[:-_ADDRESS_BYTES]


def nonce_key(address: bytes) -> bytes:
    if type(address) is bytes and len(address) == _ADDRESS_BYTES:
        return _NONCE_PREFIX + address
    return state_key("accounts", "nonce", [address])


def gas_used_key(address: bytes) -> bytes:
    if type(address) is bytes and len(address) == _ADDRESS_BYTES:
        return _GAS_USED_PREFIX + address
    return state_key("accounts", "gas_used", [address])


class StateView:
    """Read-only state as of the current point of the block (for admission policies)."""

    __slots__ = ("_block",)

    def __init__(self, block: BlockState) -> None:
        self._block = block

    def get(self, key: bytes) -> bytes | None:
        return self._block.get(key)

    def value(self, contract: str, name: str, parts: Sequence = ()) -> Any:
        """The decoded value stored under ``state_key(contract, name, parts)``, or None."""
        raw = self._block.get(state_key(contract, name, list(parts)))
        return None if raw is None else decode_value(raw)


class NativeHost:
    """What a native module may do inside one transaction (see the module docstring).

    ``sender`` is the signer's address, ``address`` the module's own account
    (``contract_address(name)``); ``shard``, ``height`` and ``time`` are the block's.
    A contract call that fails ends the transaction: the host then refuses any further
    call, so a module can never act on the half-done state of a failed callee.
    """

    __slots__ = ("_runtime", "_prefix", "_failed", "name", "address", "sender", "shard", "height", "time", "tx_hash")

    def __init__(self, runtime: Runtime, name: str, sender: bytes, bc: BlockContext, tx_hash: bytes) -> None:
        self._runtime = runtime
        self._prefix = encode_key_prefix(name, "")[:-1]  # b"\x93" + packed name: every key of the module
        self._failed = False
        self.name = name
        self.address = contract_address(name)
        self.sender = sender
        self.shard = bc.shard
        self.height = bc.height
        self.time = bc.time
        self.tx_hash = tx_hash

    def charge(self, gas: int) -> None:
        self._runtime.charge(gas)

    def get(self, key: bytes) -> bytes | None:
        """The value of any state key as of this point of the transaction, charged as a contract read."""
        runtime = self._runtime
        runtime.charge(G.STORAGE_READ + len(key) * G.STORAGE_READ_BYTE)
        raw = runtime.tx.get(key)
        if raw is not None:
            runtime.charge(len(raw) * G.STORAGE_READ_BYTE)
        return raw

    def put(self, key: bytes, raw: bytes | None) -> None:
        """Write (``None``: delete) one of the module's own keys, charged as a contract write."""
        if type(key) is not bytes or not key.startswith(self._prefix):
            raise ContractError(f"module {self.name} writes only its own keys, state_key({self.name!r}, ...)", code="not_allowed")
        runtime = self._runtime
        if raw is None:
            runtime.charge(G.STORAGE_DELETE + len(key) * G.STORAGE_WRITE_BYTE)
        else:
            if type(raw) is not bytes or len(raw) > G.MAX_VALUE_BYTES:
                raise ContractError(f"a stored value is bytes of at most {G.MAX_VALUE_BYTES}", code="limit")
            runtime.charge(G.STORAGE_WRITE + (len(key) + len(raw)) * G.STORAGE_WRITE_BYTE)
        runtime.put(key, raw)

    def call(self, contract: str, function: str, *args: Any) -> Any:
        """Call ``contract.function(*args)`` as the module; returns a copy of the result."""
        if self._failed:
            raise ContractError(f"module {self.name} called a contract after a call failed", code="not_allowed")
        try:
            return self._runtime.call_as_module(self.name, contract, function, args)
        except BaseException:
            self._failed = True
            raise

    def emit(self, event: str, **fields: Any) -> None:
        """An event of the module in the receipt (fields in the order given)."""
        names = tuple(fields)
        self._runtime.emit(self.name, event, names, [fields[n] for n in names])


class NativeModule(Protocol):
    """A module of the node run by the executor under a contract name (e.g. ``bridge``)."""

    def gas(self, function: str) -> int | None:
        """The fixed gas of one operation, or None if the module has no such function."""
        ...

    def run(self, host: NativeHost, function: str, args: list) -> Any:
        """Execute ``function``; raise :class:`ContractError` (with its code) to refuse."""
        ...


# (state, transaction, sender address) -> None to admit, or (code, message) to refuse.
AdmissionPolicy = Callable[[StateView, Transaction, bytes], "tuple[str, str] | None"]


@dataclass(frozen=True)
class BlockResult:
    writes: dict[bytes, bytes | None]
    receipts: tuple[Receipt, ...]
    gas_used: int


@dataclass(frozen=True)
class GenesisContract:
    """A system contract deployed at height 0."""

    name: str
    source: str
    args: tuple = ()
    deployer: bytes = GENESIS_ADDRESS


def _refused(code: str, message: str) -> Receipt:
    return Receipt(False, 0, (), (code, message), None)


def _ensure_recursion_headroom() -> None:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    if sys.getrecursionlimit() < depth + RECURSION_HEADROOM:
        sys.setrecursionlimit(depth + RECURSION_HEADROOM)


def _read_int(block: BlockState, key: bytes) -> int:
    raw = block.get(key)
    return 0 if raw is None else decode_value(raw)


class Executor:
    """Executes blocks; holds the runtime and its caches, so keep one per shard."""

    def __init__(
        self,
        *,
        metered: bool = True,
        verify_signatures: bool = False,
        admission: AdmissionPolicy | None = None,
        max_tx_gas: int = G.MAX_TX_GAS,
        natives: Mapping[str, NativeModule] | None = None,
    ) -> None:
        if sys.flags.bytes_warning:
            raise RuntimeError("run gridledger without python -b/-bb: it would make str/bytes comparisons in contracts fail on this node only")
        self.natives: dict[str, NativeModule] = {}
        for name, module in (natives or {}).items():
            self.add_native(name, module)
        self.runtime = Runtime(metered=metered)
        self.verify_signatures = verify_signatures
        self.admission = admission
        self.max_tx_gas = min(max_tx_gas, G.MAX_TX_GAS)
        self.reconfig_rules = None  # contracts.reconfig.ReconfigRules, set by the shard's chain

    def set_reconfig_rules(self, rules) -> None:
        """Enable ``system.reconfigure`` with the shard's rules (before any block executes)."""
        self.reconfig_rules = rules

    def add_native(self, name: str, module: NativeModule) -> None:
        """Run transactions to contract ``name`` with ``module`` (before any block executes:
        every validator of the shard must run the same natives)."""
        if type(name) is not str or not _NAME_RE.fullmatch(name) or name == SYSTEM:
            raise ValueError(f"a native module's name is a contract name other than {SYSTEM!r}, not {name!r}")
        self.natives[name] = module

    # ------------------------------------------------------------ blocks

    def execute_block(self, state_reader: StateReader, block_context: BlockContext, txs: Iterable[Transaction]) -> BlockResult:
        """Execute ``txs`` in order on top of ``state_reader``; see the module docstring."""
        block = BlockState(state_reader)
        receipts = []
        total = 0
        _ensure_recursion_headroom()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for tx in txs:
                receipt = self.execute_transaction(block, block_context, tx)
                receipts.append(receipt)
                total += receipt.gas_used
        writes = {k: block.writes[k] for k in sorted(block.writes)}
        return BlockResult(writes, tuple(receipts), total)

    def execute_transaction(self, block: BlockState, bc: BlockContext, tx: Transaction) -> Receipt:
        """Execute one transaction on top of ``block`` (whose writes it extends)."""
        if tx.chain_id != bc.shard:
            return _refused("wrong_chain", f"transaction is for shard {tx.chain_id}; this is {bc.shard}")
        if bc.height > tx.expiry:
            return _refused("expired", f"transaction expired at height {tx.expiry}")
        if self.verify_signatures and not tx.signature_ok():
            return _refused("bad_signature", "signature does not verify")
        if not 1 <= tx.gas_limit <= self.max_tx_gas:
            return _refused("gas_limit", f"gas limit must be from 1 to {self.max_tx_gas}")
        try:
            tx_hash = tx.tx_id
        except TxError as exc:  # only a transaction built in-process can fail here: decoded ones are canonical
            return _refused("malformed", exc.message)
        address = tx.sender_address.raw  # computed once per transaction object
        nkey = nonce_key(address)
        expected = _read_int(block, nkey)
        if tx.nonce != expected:
            return _refused("bad_nonce", f"nonce {tx.nonce} is not the sender's next nonce {expected}")
        if self.admission is not None:
            refusal = self.admission(StateView(block), tx, address)
            if refusal is not None:
                return _refused(refusal[0], refusal[1])
        runtime = self.runtime
        runtime.begin(block, bc, address, tx_hash, tx.gas_limit)
        ok, result, error, events = True, None, None, ()
        try:
            runtime.charge(G.TX_BASE + G.TX_ARG_BYTE * len(tx.body_bytes))
            native = self.natives.get(tx.contract)
            if tx.contract == SYSTEM:
                result = self._system_call(tx, address, bc)
            elif native is not None:
                result = self._native_call(native, tx, address, bc, tx_hash)
            else:
                result = runtime.call_from_transaction(tx.contract, tx.function, tx.args)
            writes, event_list = runtime.finish()
            events = tuple(event_list)
        except MemoryError:
            raise  # the node ran out of memory: no validator may record that as an outcome
        except Exception as exc:  # noqa: BLE001 - every contract failure becomes a receipt
            ok, result = False, None
            error = describe_failure(exc, runtime)
            runtime.finish()
        gas = runtime.gas_used
        if ok:
            block.writes.update(writes)
        block.writes[nkey] = codec.encode(expected + 1)
        gkey = gas_used_key(address)
        block.writes[gkey] = codec.encode(_read_int(block, gkey) + gas)
        return Receipt(ok, gas, events, error, result)

    def _native_call(self, native: NativeModule, tx: Transaction, address: bytes, bc: BlockContext, tx_hash: bytes) -> Any:
        base = native.gas(tx.function)
        if base is None:
            raise ContractError(f"{tx.contract} has no function {tx.function}", code="not_found")
        runtime = self.runtime
        runtime.charge(base + NATIVE_ARG_BYTE * len(codec.encode(list(tx.args))))
        result = native.run(NativeHost(runtime, tx.contract, address, bc, tx_hash), tx.function, list(tx.args))
        return runtime.export_value(result, "return", G.MAX_RESULT_BYTES, allow_maps=False)

    def _system_call(self, tx: Transaction, address: bytes, bc: BlockContext) -> Any:
        if tx.function == "reconfigure":
            return self._reconfigure(tx, bc)
        if tx.function != "deploy":
            raise ContractError(f"system has no function {tx.function}; it has deploy and reconfigure", code="not_found")
        args = tx.args
        if not 2 <= len(args) <= 3:
            raise ContractError("deploy takes [name, source] or [name, source, constructor args]", code="bad_args")
        if self.runtime.tx.get(deployer_key(address)) is None:
            raise ContractError("only accounts with the deployer role may deploy contracts", code="not_allowed")
        ctor_args = args[2] if len(args) == 3 else []
        if type(ctor_args) is not list:
            raise ContractError("constructor arguments are a list", code="bad_args")
        return self.runtime.deploy(args[0], args[1], ctor_args, address)

    def _reconfigure(self, tx: Transaction, bc: BlockContext) -> Any:
        """A validator-set change (contracts/reconfig.py); anyone may submit one, the approvals authorise it."""
        from contracts import reconfig

        rules = self.reconfig_rules
        if rules is None:
            raise ContractError("this shard's node runs no validator-set rules", code="not_allowed")
        runtime = self.runtime
        runtime.charge(RECONFIG_BASE + RECONFIG_APPROVAL * len(tx.args[3] if len(tx.args) == 5 and isinstance(tx.args[3], list) else ()))
        try:
            change, epoch = reconfig.check_reconfiguration(runtime.tx.get, rules, bc.height, tx.args)
        except reconfig.ReconfigError as exc:
            raise ContractError(exc.message, code=exc.code) from None
        for key, raw in reconfig.record_writes(change, epoch).items():
            runtime.charge(G.STORAGE_WRITE + (len(key) + len(raw)) * G.STORAGE_WRITE_BYTE)
            runtime.put(key, raw)
        runtime.emit(SYSTEM, "validators_changed", ("epoch", "effective_after", "set_hash"),
                     [epoch.number, epoch.after, epoch.validators.hash])
        return [epoch.number, epoch.after]

    # ------------------------------------------------------------ reads

    def query(
        self,
        state_reader: StateReader,
        block_context: BlockContext,
        contract: str,
        function: str,
        args: Sequence = (),
        *,
        caller: bytes = GENESIS_ADDRESS,
        gas_limit: int = 10_000_000,
    ) -> Any:
        """Call a ``@view`` function read-only; raises :class:`ContractError` on failure."""
        runtime = self.runtime
        _ensure_recursion_headroom()
        runtime.begin(BlockState(state_reader), block_context, caller, _ZERO_HASH, min(gas_limit, G.MAX_TX_GAS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return runtime.query(contract, function, list(args))
            except ContractError:
                raise
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001
                code, message = describe_failure(exc, runtime)
                raise ContractError(message, code=code) from None
            finally:
                runtime.finish()

    def contract_info(self, state_reader: StateReader, name: str) -> dict:
        """Address, code hash, exported functions and events (fields, indexed) of a contract."""
        runtime = self.runtime
        runtime.begin(BlockState(state_reader), BlockContext("", 0, 0), GENESIS_ADDRESS, _ZERO_HASH, 1)
        loaded = runtime.contract(name)
        checked = loaded.code.checked
        return {
            "name": name,
            "address": loaded.address,
            "code_hash": loaded.code.code_hash,
            "functions": {
                f.name: {"kind": f.kind, "reentrant": f.reentrant, "params": [(p.name, p.annotation, p.optional, p.has_default) for p in f.params]}
                for f in checked.functions.values()
                if f.kind in ("export", "view")
            },
            "events": {e.name: {"fields": list(e.fields), "indexed": list(e.indexed)} for e in checked.events.values()},
        }


def execute_block(state_reader: StateReader, block_context: BlockContext, txs: Iterable[Transaction]) -> BlockResult:
    """Execute a block with a fresh default :class:`Executor` (keep one instead, for its caches)."""
    return Executor().execute_block(state_reader, block_context, txs)


# ---------------------------------------------------------------- genesis


def apply_genesis(
    state_reader: StateReader | None,
    block_context: BlockContext,
    *,
    deployers: Iterable[bytes] = (),
    contracts: Iterable[GenesisContract] = (),
    state: Mapping[bytes, bytes] | None = None,
    executor: Executor | None = None,
) -> BlockResult:
    """The writes of height 0: deployer roles, system contracts (constructors run), raw state.

    Each contract is deployed as by a deploy transaction from its ``deployer``, with
    ``MAX_TX_GAS``; a failure raises :class:`ContractError`, since a genesis that does
    not apply must not start a chain.
    """
    executor = executor or Executor()
    block = BlockState(state_reader if state_reader is not None else _Empty())
    for key, value in (state or {}).items():
        block.writes[key] = value
    for address in deployers:
        if type(address) is not bytes or len(address) != 20:
            raise ContractError("a deployer is a 20-byte address", code="bad_args")
        block.writes[deployer_key(address)] = codec.encode(True)
    receipts = []
    runtime = executor.runtime
    _ensure_recursion_headroom()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in contracts:
            runtime.begin(block, block_context, spec.deployer, _ZERO_HASH, G.MAX_TX_GAS)
            try:
                code_hash = runtime.deploy(spec.name, spec.source, list(spec.args), spec.deployer)
            except ContractError as exc:
                raise ContractError(f"genesis contract {spec.name}: {exc.message}", code=exc.code, line=exc.line, column=exc.column, rule=exc.rule, hint=exc.hint) from None
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001
                code, message = describe_failure(exc, runtime)
                raise ContractError(f"genesis contract {spec.name}: {message}", code=code) from None
            writes, events = runtime.finish()
            block.writes.update(writes)
            receipts.append(Receipt(True, runtime.gas_used, tuple(events), None, code_hash))
    writes = {k: block.writes[k] for k in sorted(block.writes)}
    return BlockResult(writes, tuple(receipts), sum(r.gas_used for r in receipts))


def apply_genesis_document(genesis: Any, state_reader: StateReader | None = None, executor: Executor | None = None) -> BlockResult:
    """:func:`apply_genesis` for a ``ledger.genesis.Genesis``.

    Deployers are ``genesis.deployers`` plus every account with the ``deployer``
    role; ``genesis.app_state[name]``, when present, is the list of constructor
    arguments of contract ``name``.
    """
    deployers = [a.raw for a in genesis.deployers]
    deployers += [a.address.raw for a in genesis.accounts if "deployer" in a.roles and a.address.raw not in deployers]
    contracts = []
    for name, source in genesis.contracts:
        args = genesis.app_state.get(name, [])
        if not isinstance(args, list):
            raise ContractError(f"genesis app_state.{name} must be the list of constructor arguments", code="bad_args")
        contracts.append(GenesisContract(name, source, tuple(args)))
    return apply_genesis(
        state_reader,
        BlockContext(genesis.chain_id, 0, genesis.genesis_time),
        deployers=deployers,
        contracts=contracts,
        executor=executor,
    )


class _Empty:
    def get(self, key: bytes) -> bytes | None:
        return None


# re-exported for callers that build contexts and addresses
__all__ += ["contract_address", "Event"]
