"""The block pipeline of one shard: build, validate, execute, commit.

Consensus orders opaque batches; this module is the application behind it (the
``consensus.types.Application`` the replica calls). A batch is an encoded block.

* **Build** (the leader): take transactions from the mempool, execute them on top of
  the committed state, compute the state root and receipts root, and sign nothing: the
  block's authority comes from the commit certificate consensus attaches.
* **Validate** (every validator, before voting): the block must extend the committed
  head, carry the current validator set's hash, a time not earlier than its parent's
  and not further ahead of this validator's clock than ``max_clock_skew_s``, a correct
  transaction root, only correctly signed transactions for this shard, and, once
  executed here, exactly the state root and receipts root in its header. A block that
  fails any check is never voted for (the reason is logged).
* **Commit**: the prepared execution of a validated block is committed as is (one LMDB
  write transaction with its certificate, receipts and index entries), so no validator
  executes a block twice. A block committed without having been validated here (a Raft
  follower, a replica that catches up) is executed at commit and its roots checked:
  a mismatch stops the node rather than let it diverge silently.
* **Null batches**: a BFT view change may fill a sequence gap with the null batch
  ``b""``. Its block is derived, never proposed: same state as its parent, no
  transactions, the parent's time, no proposer. Every replica derives the same header.

Execution is deterministic (``contracts``), so the same block gives the same roots on
every validator and observer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from contracts import reconfig
from contracts.executor import BlockContext, apply_genesis_document
from ledger import codec
from ledger.block import (
    MAX_BLOCK_SIZE,
    MAX_BLOCK_TXS,
    NULL_DIGEST,
    ZERO_HASH,
    Block,
    BlockError,
    BlockHeader,
    null_block,
    receipts_root,
    tx_root,
)
from ledger.certificate import CommitCertificate
from ledger.crypto import tagged_hash
from ledger.genesis import Genesis
from ledger.log import get_logger
from ledger.merkle import EMPTY_ROOT
from ledger.store import PreparedState, Store
from ledger.tx import Receipt, Transaction
from ledger.validators import ValidatorSet
from shards.native import bridge_genesis_writes, bridge_natives

__all__ = ["Chain", "ChainError", "Executed"]


class ChainError(RuntimeError):
    """The node cannot continue safely (for example its execution diverged from a certified block)."""


@dataclass
class Executed:
    """A block executed here: its prepared state and receipts, ready to commit."""

    block: Block
    encoded: bytes
    prepared: PreparedState
    receipts: list[Receipt]
    encoded_receipts: list[bytes] = field(default_factory=list)


class Chain:
    def __init__(
        self,
        genesis: Genesis,
        store: Store,
        executor,
        *,
        clock: Callable[[], float] = time.time,
        verified_cache: set[bytes] | None = None,
        logger=None,
    ) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.store = store
        self.executor = executor
        self.clock = clock
        self.rules = reconfig_rules(genesis)
        if hasattr(executor, "set_reconfig_rules"):
            executor.set_reconfig_rules(self.rules)
        # Every validator set from genesis on (contracts/reconfig.py), loaded from state.
        self.epochs: list[reconfig.Epoch] = [reconfig.Epoch(0, 0, genesis.validators)]
        # Called with the new epoch when a committed block changes the validator set.
        self.on_reconfig: list[Callable[[reconfig.Epoch], None]] = []
        self.dropped: list[tuple[bytes, str, str]] = []  # (tx id, code, message) left out of the last build
        self.max_skew = genesis.param("max_clock_skew_s")
        self.log = logger or get_logger(shard=self.chain_id)
        # Transactions whose signatures this node already checked (mempool admission).
        self.verified = verified_cache if verified_cache is not None else set()
        self._executed: dict[bytes, Executed] = {}  # block hash -> execution, until committed
        self._decoded: dict[bytes, Block] = {}  # batch digest -> decoded block (bounded)
        self._head: BlockHeader | None = None  # the committed head's header
        self.reads = CommittedReads(store)
        self.on_commit: list[Callable[[Block, list[Receipt], bytes], None]] = []
        # A shard of a grid-level tree runs the cross-shard flow module as the executor's
        # native "bridge" (shards/native.py); the genesis topology is checked here.
        for name, module in bridge_natives(genesis).items():
            if not hasattr(executor, "add_native"):
                raise ChainError(f"this shard's genesis has a topology: its executor must run the native module {name!r}")
            executor.add_native(name, module)

    # ------------------------------------------------------------------ genesis and head

    def ensure_genesis(self) -> None:
        """Apply the genesis state as block 0 if the store is empty."""
        if self.store.height is not None:
            self.load_schedule()
            return
        writes = dict(apply_genesis_document(self.genesis, executor=self.executor).writes)
        writes.update(bridge_genesis_writes(self.genesis))  # light clients, bridge registrations
        prepared = self.store.prepare_state({k: writes[k] for k in sorted(writes)})
        header = BlockHeader(
            self.chain_id, 0, ZERO_HASH, EMPTY_ROOT, prepared.root, EMPTY_ROOT,
            self.genesis.genesis_time, b"", self.validators.hash,
        )
        block = Block(header, ())
        self.store.apply_block(0, block.hash, block.encode(), None, prepared, (),
                               {"genesis_hash": self.genesis.hash})
        self.log.info("genesis applied", state_root=prepared.root.hex())

    def load_schedule(self) -> None:
        """Read the validator sets from committed state (at start, and after a state snapshot)."""
        self.epochs = reconfig.load_epochs(self.store.get, self.rules)
        self.reads.clear()

    # ------------------------------------------------------------------ validator sets

    def validators_at(self, height: int) -> ValidatorSet:
        """The set that orders and certifies ``height`` (as far as this node's state knows)."""
        chosen = self.epochs[0].validators
        for epoch in self.epochs:
            if epoch.after < height:
                chosen = epoch.validators
        return chosen

    @property
    def validators(self) -> ValidatorSet:
        """The set in force for the next block."""
        return self.validators_at(self.height + 1)

    @property
    def latest_epoch(self) -> reconfig.Epoch:
        return self.epochs[-1]

    def scheduled(self) -> list[reconfig.Epoch]:
        """Changes decided but not yet in force at the next height."""
        next_height = self.height + 1
        return [e for e in self.epochs if e.after >= next_height]

    def schedule_pairs(self, height: int) -> tuple[tuple[int, ValidatorSet], ...]:
        """Consensus's view of the sets above ``height``: ``(height, set in force after it)``
        and every decided change that takes effect later (``StateInstalled.validator_sets``)."""
        pairs = [(height, self.validators_at(height + 1))]
        pairs += [(e.after, e.validators) for e in self.epochs if e.after > height]
        return tuple(pairs)

    def members(self) -> set[bytes]:
        """Every node key of every set this node knows (genesis, past, current, scheduled)."""
        return {v.node_key for e in self.epochs for v in e.validators}

    def tls_certs(self) -> dict[bytes, bytes]:
        """The peer certificates of every known validator: genesis's, and those changes added."""
        certs = {k: (c.encode() if isinstance(c, str) else c) for k, c in self.genesis.tls_certs.items()}
        for key in self.members():
            if key not in certs:
                raw = self.store.get(reconfig.tls_key(key))
                if raw is not None:
                    certs[key] = codec.decode(raw)
        return certs

    def check_reconfigure(self, height: int, tx: Transaction) -> reconfig.Epoch:
        """The static check of a ``system.reconfigure`` at ``height`` on committed state; raises ReconfigError."""
        return reconfig.check_reconfiguration(self.reads.get, self.rules, height, tx.args)[1]

    @property
    def height(self) -> int:
        h = self.store.height
        return -1 if h is None else h

    def header(self, height: int) -> BlockHeader | None:
        """The header of a committed block, without decoding its transactions."""
        raw = self.store.block(height)
        if raw is None:
            return None
        fields = codec.decode(raw, max_size=len(raw), max_depth=4)
        return BlockHeader.from_fields(fields[0])

    def head_header(self) -> BlockHeader:
        # Every proposal, forwarded request and commit checks against the head; committed
        # blocks never change, so the head's header is kept until the height moves.
        height = self.height
        cached = self._head
        if cached is None or cached.height != height:
            cached = self.header(height)
            assert cached is not None
            self._head = cached
        return cached

    # ------------------------------------------------------------------ consensus application

    def digest(self, batch: bytes) -> bytes:
        if not batch:
            return NULL_DIGEST
        block = self._decode(batch)
        return block.hash if block is not None else tagged_hash(b"gridledger/undecodable", batch)

    def _decode(self, batch: bytes) -> Block | None:
        key = tagged_hash(b"gridledger/batch", batch)
        block = self._decoded.get(key)
        if block is None:
            try:
                block = Block.decode(batch)
            except BlockError:
                return None
            self._remember_decoded(key, block)
        return block

    def _remember_decoded(self, key: bytes, block: Block) -> None:
        if len(self._decoded) > 64:
            self._decoded.pop(next(iter(self._decoded)))
        self._decoded[key] = block

    def validate(self, height: int, batch: bytes) -> bool | None:
        """Consensus asks before voting: is this batch an acceptable block at ``height``?

        None while the block's parent is not committed here: a block is checked by
        executing it on its parent's state (a BFT backup holds it until then).
        """
        if not batch:
            return True
        if height > self.height + 1:
            return None
        try:
            self.check_proposal(height, batch)
        except (BlockError, ChainError) as exc:
            self.log.warning("proposal refused", height=height, reason=str(exc))
            return False
        return True

    def check_proposal(self, height: int, batch: bytes, *, certified: bool = False) -> Executed:
        """Check and execute a block at ``height``; raises :class:`BlockError` saying what is wrong.

        ``certified`` blocks (already committed by a quorum) skip the clock check: a node
        catching up replays blocks whose time was checked by the validators of the day.
        """
        block = self._decode(batch)
        if block is None:
            raise BlockError("malformed", "the batch is not a block")
        header = block.header
        parent = self.head_header()
        if header.chain_id != self.chain_id:
            raise BlockError("wrong_chain", f"block is for shard {header.chain_id!r}")
        if header.height != height or height != parent.height + 1:
            raise BlockError("bad_height", f"block height {header.height} does not follow {parent.height}")
        if header.prev_hash != parent.hash:
            raise BlockError("bad_parent", "block does not extend the committed head")
        validators = self.validators_at(height)
        if header.validator_set_hash != validators.hash:
            raise BlockError("bad_validator_set", "block names another validator set than the one in force at its height")
        if header.proposer not in validators:
            raise BlockError("bad_proposer", "block proposer is not a validator")
        if header.time < parent.time:
            raise BlockError("bad_time", f"block time {header.time} is earlier than its parent's {parent.time}")
        if not certified and header.time > int(self.clock()) + self.max_skew:
            raise BlockError("bad_time", f"block time {header.time} is too far ahead of this validator's clock")
        # The cache answers only after every header check: consensus may offer one batch
        # at several sequence numbers (a forwarded proposal, a re-proposal after a view
        # change), and it is valid at one of them at most.
        cached = self._executed.get(block.hash)
        if cached is not None:
            return cached
        block.check_tx_root()
        change_at = None
        for i, tx in enumerate(block.txs):
            if tx.chain_id != self.chain_id:
                raise BlockError("bad_tx", f"transaction {i} is for another shard")
            if tx.expiry < height:
                raise BlockError("bad_tx", f"transaction {i} expired at height {tx.expiry}")
            if tx.tx_id not in self.verified and not tx.signature_ok():
                raise BlockError("bad_tx", f"transaction {i} has a bad signature")
            if reconfig.is_reconfigure(tx):
                # Consensus reads a change from the batch alone (validator_set_change), so
                # a block is accepted only if its change is certainly effective.
                if change_at is not None:
                    raise BlockError("bad_reconfig", "a block holds at most one validator-set change")
                change_at = i
                try:
                    self.check_reconfigure(height, tx)
                except reconfig.ReconfigError as exc:
                    raise BlockError("bad_reconfig", f"transaction {i}: {exc}") from None
        executed = self._execute(block, batch)
        if change_at is not None and not executed.receipts[change_at].ok:
            error = executed.receipts[change_at].error
            raise BlockError("bad_reconfig", f"the validator-set change (transaction {change_at}) fails: {error}")
        if executed.prepared.root != header.state_root:
            raise BlockError("bad_state_root", "executing the block gives another state root than its header's")
        if receipts_root(executed.encoded_receipts) != header.receipts_root:
            raise BlockError("bad_receipts_root", "executing the block gives other receipts than its header's")
        self._executed[block.hash] = executed
        return executed

    def _execute(self, block: Block, encoded: bytes) -> Executed:
        store = self.store
        # One LMDB snapshot for every read of the block (a snapshot per get costs twice),
        # behind the committed-read cache: blocks execute on the committed head, which is
        # exactly what the cache holds, and consecutive blocks read the same accounts.
        with store.reader() as reader:
            result = self.executor.execute_block(self.reads.over(reader), self._context(block.header), list(block.txs))
        prepared = store.prepare_state(result.writes)
        receipts = list(result.receipts)
        return Executed(block, encoded, prepared, receipts, [r.encode() for r in receipts])

    def _context(self, header: BlockHeader) -> BlockContext:
        return BlockContext(self.chain_id, header.height, header.time, header.proposer)

    def validator_set_change(self, height: int, batch: bytes) -> ValidatorSet | None:
        """The set a batch introduces: read from its ``system.reconfigure`` alone.

        Only accepted blocks are ever committed, and block acceptance (``check_proposal``)
        refuses a block whose change is not effective, so the batch bytes are enough:
        consensus may ask before this node executed the block (Raft appends, BFT commits,
        a catch-up proof of a change far above the head).
        """
        if not batch:
            return None
        block = self._decode(batch)
        if block is None:
            return None
        for tx in block.txs:
            if reconfig.is_reconfigure(tx):
                try:
                    return reconfig.parse_reconfiguration(tx.args).validators
                except reconfig.ReconfigError:
                    return None
        return None

    # ------------------------------------------------------------------ building (the leader)

    def build(self, txs: list[Transaction], proposer: bytes, *, _again: bool = False) -> tuple[bytes, Executed]:
        """Execute ``txs`` on the committed head and return the encoded block proposal.

        Validator-set changes that would make validators refuse the block are left out
        and listed in :attr:`dropped` (tx id, code, message) for the mempool to forget.
        """
        if not _again:
            self.dropped = []
        parent = self.head_header()
        height = parent.height + 1
        txs = self._admissible_changes(height, txs)
        now = max(parent.time, int(self.clock()))
        header = BlockHeader(
            self.chain_id, height, parent.hash, tx_root([t.encode() for t in txs]),
            ZERO_HASH, EMPTY_ROOT, now, proposer, self.validators_at(height).hash,
        )
        draft = Block(header, tuple(txs))
        executed = self._execute(draft, b"")
        for i, tx in enumerate(txs):
            if reconfig.is_reconfigure(tx) and not executed.receipts[i].ok:
                # A change that would not take effect must not be proposed (validators refuse
                # the block): leave it out and build again.
                code, message = executed.receipts[i].error or ("failed", "")
                self.dropped.append((tx.tx_id, code, message))
                return self.build([t for t in txs if t is not tx], proposer, _again=True)
        header = BlockHeader(
            header.chain_id, header.height, header.prev_hash, header.tx_root, executed.prepared.root,
            receipts_root(executed.encoded_receipts), header.time, header.proposer, header.validator_set_hash,
        )
        block = Block(header, tuple(txs))
        encoded = block.encode()
        executed = Executed(block, encoded, executed.prepared, executed.receipts, executed.encoded_receipts)
        self._executed[block.hash] = executed
        # Consensus asks for the proposal's digest and validity next: it is this block,
        # no need to decode the bytes just encoded (unless they break a limit of
        # Block.decode, which must then refuse them here as everywhere).
        if len(encoded) <= MAX_BLOCK_SIZE and len(txs) <= MAX_BLOCK_TXS:
            self._remember_decoded(tagged_hash(b"gridledger/batch", encoded), block)
        return encoded, executed

    def _admissible_changes(self, height: int, txs: list[Transaction]) -> list[Transaction]:
        """``txs`` with at most one validator-set change, and only one that passes its check."""
        kept, seen = [], False
        for tx in txs:
            if reconfig.is_reconfigure(tx):
                if seen:
                    continue  # stays in the mempool for a later block
                try:
                    self.check_reconfigure(height, tx)
                except reconfig.ReconfigError as exc:
                    self.dropped.append((tx.tx_id, exc.code, exc.message))
                    continue
                seen = True
            kept.append(tx)
        return kept

    # ------------------------------------------------------------------ committing

    def commit(self, height: int, batch: bytes, certificate: CommitCertificate) -> Executed:
        """Commit the block consensus finalised at ``height`` with its certificate."""
        if height != self.height + 1:
            raise ChainError(f"consensus committed height {height} but the store is at {self.height}")
        if not batch:
            block = null_block(self.head_header(), height, self.validators_at(height).hash)
            prepared = self.store.prepare_state({})
            executed = Executed(block, block.encode(), prepared, [], [])
        else:
            block = self._decode(batch)
            if block is None:
                raise ChainError(f"the committed batch at height {height} is not a block")
            executed = self._executed.get(block.hash)
            if executed is None or executed.prepared.parent_root != self.store.state_root:
                self._executed.pop(block.hash, None)
                try:
                    executed = self.check_proposal(height, batch, certified=True)
                except BlockError as exc:
                    raise ChainError(f"committed block {height} does not execute to its header here: {exc}") from None
        writes = executed.prepared.writes  # held here: the store releases them once applied
        tx_entries = [(tx.tx_id, r) for tx, r in zip(executed.block.txs, executed.encoded_receipts, strict=True)]
        self.store.apply_block(
            height, executed.block.hash, executed.encoded, certificate.encode(), executed.prepared, tx_entries
        )
        self._executed.clear()
        self.reads.applied(writes)
        for tx, receipt in zip(executed.block.txs, executed.receipts, strict=True):
            self.verified.discard(tx.tx_id)
            if receipt.ok and reconfig.is_reconfigure(tx):
                self._learn_epoch(height, tx, receipt)
        for callback in self.on_commit:
            callback(executed.block, executed.receipts, executed.prepared.root)
        return executed


    def _learn_epoch(self, height: int, tx: Transaction, receipt: Receipt) -> None:
        change = reconfig.parse_reconfiguration(tx.args)
        number, after = receipt.result
        epoch = reconfig.Epoch(number, after, change.validators)
        self.epochs.append(epoch)
        self.log.info("validator set changed", epoch=number, height=height, effective_after=after,
                      validators=change.validators.n, set_hash=change.validators.hash.hex()[:16])
        for callback in self.on_reconfig:
            callback(epoch)


def reconfig_rules(genesis: Genesis) -> reconfig.ReconfigRules:
    """The shard's validator-set change rules, fixed by its genesis."""
    from consensus.bft.schedule import effective_after

    if genesis.protocol == "bft":
        k = genesis.param("checkpoint_interval")

        def after(height: int) -> int:
            return effective_after(height, k)
    else:
        def after(height: int) -> int:
            return height
    check = None
    if genesis.tls_certs:
        from node.tls import check_node_certificate

        check = check_node_certificate
    return reconfig.ReconfigRules(genesis.chain_id, genesis.protocol, genesis.validators, after, check)


class CommittedReads:
    """A cache of committed state for admission checks and block execution.

    Admission reads the same few keys for every transaction a sender submits, and
    consecutive blocks read the same accounts (nonces, gas, balances); a store read
    (an LMDB lookup through the state tree) each time was a fifth of a busy
    validator's CPU. Every block this node commits passes its writes to
    :meth:`applied`, which gives the cached keys their committed values, so the cache
    always equals the committed state; anything else that changes the store (a state
    snapshot) must :meth:`clear` it. Bounded: it starts over when full.
    """

    MAX_ENTRIES = 200_000

    def __init__(self, store: Store) -> None:
        self._store = store
        self._values: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._values[key]
        except KeyError:
            return self._remember(key, self._store.get(key))

    def _remember(self, key: bytes, value) -> bytes | None:
        if value is not None and type(value) is not bytes:
            value = bytes(value)  # an LMDB buffer is valid only inside its transaction
        if len(self._values) >= self.MAX_ENTRIES:
            self._values.clear()
        self._values[key] = value
        return value

    def over(self, reader) -> CachedReader:
        """``reader`` (a snapshot of the committed state) behind this cache."""
        return CachedReader(self, reader)

    def applied(self, writes) -> None:
        """A block with ``writes`` ({key: value, or None for a delete}) is committed."""
        values = self._values
        if not values:
            return
        for key, value in writes.items():
            if key in values:
                values[key] = value

    def clear(self) -> None:
        self._values.clear()


class CachedReader:
    """A state reader for one block's execution: the committed-read cache, then the snapshot."""

    __slots__ = ("_values", "_reads", "_reader")

    def __init__(self, reads: CommittedReads, reader) -> None:
        self._values = reads._values
        self._reads = reads
        self._reader = reader

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._values[key]
        except KeyError:
            return self._reads._remember(key, self._reader.get(key))


def decode_value(raw: bytes | None):
    return None if raw is None else codec.decode(raw, allow_maps=True)
