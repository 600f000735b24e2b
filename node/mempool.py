"""The mempool: transactions admitted, waiting for a block.

Admission checks every transaction before it costs the shard anything, in the order
of their cost, and refuses with a stable reason code (the HTTP API returns it):

    too_large     more bytes than a transaction may have
    malformed     not a canonical transaction
    wrong_chain   signed for another shard
    expired       its expiry height has passed
    gas_limit     asks for more gas than a block allows
    bad_nonce     nonce already used, or too far ahead of the account's next nonce
    duplicate     this transaction id is already waiting (or the nonce is taken)
    bad_signature the signature does not verify
    not_member    the sender is not an admitted participant of this shard
    not_allowed   the sender's roles may not call that function
    not_active    the sender is suspended or banned (it may still redeem fiat)
    sender_limit  the sender already has the maximum number of waiting transactions
    mempool_full  the mempool is full (``max_txs`` transactions or ``max_bytes`` bytes) and
                  none of what it holds is expired or stuck behind a nonce gap
    busy          a client's submission while the node already has a backlog of
                  ``max_backlog`` waiting transactions (several blocks' worth), or of
                  their share of ``max_bytes`` (``max_bytes * max_backlog / max_txs``): refused
                  before its signature is checked, so an overload costs the node little
                  and its blocks keep committing; retry shortly. Transactions relayed by
                  other validators are still admitted up to ``max_txs``, and so is one
                  that fills a gap in its sender's waiting nonces (refusing it would
                  keep the later ones, part of the backlog, waiting for ever).

The pool is bounded in bytes as well as in transactions: a transaction may be up to
128 KiB, so 100,000 of them could take 12.8 GB where typical ones (~200 bytes) take
20 MB. ``max_bytes`` (default 256 MiB) holds the memory whatever their size.

Nonces are sequential per sender: a transaction waits until every lower nonce of its
sender is in a block. The window bounds how far ahead a sender may queue, so one
account cannot fill the pool with transactions that can never run.

Blocks take transactions fairly: round-robin over senders, each sender's in nonce
order, so a meter gateway submitting thousands of readings does not starve a trader.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

from ledger.tx import MAX_TX_SIZE, Transaction, TxError

__all__ = ["Mempool", "MempoolEntry", "TxRejected", "REASONS"]

REASONS = (
    "too_large",
    "malformed",
    "wrong_chain",
    "expired",
    "gas_limit",
    "bad_nonce",
    "duplicate",
    "bad_signature",
    "not_member",
    "not_allowed",
    "not_active",
    "sender_limit",
    "mempool_full",
    "busy",
)


class TxRejected(TxError):
    """A transaction refused at admission; ``code`` is one of :data:`REASONS`."""


@dataclass(slots=True)
class MempoolEntry:
    tx: Transaction
    raw: bytes
    sender: bytes  # Ed25519 public key
    arrival: int  # admission sequence number, for fairness and eviction


class Mempool:
    """Bounded, per-sender ordered pool. Not thread-safe: the node drives it from its event loop."""

    def __init__(
        self,
        chain_id: str,
        *,
        max_txs: int = 100_000,
        max_backlog: int | None = None,
        max_bytes: int = 256 << 20,
        max_per_sender: int = 1000,
        nonce_window: int = 1000,
        max_gas: int = 1 << 34,
        next_nonce: Callable[[bytes], int],
        policy: Callable[[Transaction], None] | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.max_txs = max_txs
        self.max_backlog = max_txs if max_backlog is None else min(max_backlog, max_txs)
        self.max_bytes = max_bytes
        # The backlog's share of the bytes, in the proportion of its share of the count
        # (at least 1: an empty pool never answers busy).
        self.max_backlog_bytes = max(max_bytes * self.max_backlog // max_txs, 1)
        self.bytes = 0  # sum of the raw sizes of the waiting transactions
        # Changes with every admission and removal; while it and the height stand still,
        # a full pool's evictable count and bytes do too (see _make_room).
        self._version = 0
        self._no_room: tuple[int, int, int, int] | None = None
        self.max_per_sender = max_per_sender
        self.nonce_window = nonce_window
        self.max_gas = max_gas
        self._next_nonce = next_nonce  # the account's next nonce in committed state
        self._policy = policy  # raises TxRejected(not_member | not_allowed)
        self._by_id: dict[bytes, MempoolEntry] = {}
        self._by_sender: dict[bytes, dict[int, bytes]] = {}
        self._sender_of_address: dict[bytes, bytes] = {}  # address -> public key, for account queries
        self._arrivals: OrderedDict[bytes, None] = OrderedDict()  # tx ids, oldest first
        self._counter = 0
        self.rejected: dict[str, int] = {code: 0 for code in REASONS}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._by_id

    def get(self, tx_id: bytes) -> MempoolEntry | None:
        return self._by_id.get(tx_id)

    # ---------------------------------------------------------------- admission

    def refuse_if_busy(self, tx: Transaction | None = None) -> None:
        """Refuse a client's submission while ``max_backlog`` transactions wait (code ``busy``),
        unless ``tx`` fills a gap below transactions of its sender that wait."""
        if len(self._by_id) >= self.max_backlog or self.bytes >= self.max_backlog_bytes:
            pending = None if tx is None else self._by_sender.get(tx.sender)
            if pending and tx.nonce < max(pending):
                return
            raise self._reject(
                "busy", f"the node has {len(self._by_id)} transactions waiting for blocks ({self.bytes} bytes; "
                f"it takes new submissions below {self.max_backlog} and {self.max_backlog_bytes} bytes); "
                "retry shortly"
            )

    def check(self, raw: bytes, height: int, *, verify_signature: bool = True, client: bool = False) -> Transaction:
        """Everything admission checks except capacity; raises :class:`TxRejected`.

        ``client``: a client's submission, refused as ``busy`` under a backlog (see
        :meth:`refuse_if_busy`) once decoded, before the costlier checks."""
        if len(raw) > MAX_TX_SIZE:
            raise self._reject("too_large", f"transaction is {len(raw)} bytes; the limit is {MAX_TX_SIZE}")
        try:
            tx = Transaction.decode(raw)
        except TxError as exc:
            raise self._reject(exc.code if exc.code in REASONS else "malformed", exc.message) from None
        if tx.chain_id != self.chain_id:
            raise self._reject("wrong_chain", f"transaction is for shard {tx.chain_id!r}; this node serves {self.chain_id!r}")
        if client:
            self.refuse_if_busy(tx)
        if tx.expiry < height + 1:
            raise self._reject("expired", f"transaction expired at height {tx.expiry}; the next block is {height + 1}")
        if tx.gas_limit > self.max_gas:
            raise self._reject("gas_limit", f"gas limit {tx.gas_limit} exceeds the block gas limit {self.max_gas}")
        next_nonce = self._next_nonce(tx.sender)
        if tx.nonce < next_nonce:
            raise self._reject("bad_nonce", f"nonce {tx.nonce} is already used; the sender's next nonce is {next_nonce}")
        if tx.nonce >= next_nonce + self.nonce_window:
            raise self._reject(
                "bad_nonce", f"nonce {tx.nonce} is too far ahead: the next nonce is {next_nonce}, the window {self.nonce_window}"
            )
        if tx.tx_id in self._by_id:
            raise self._reject("duplicate", "this transaction is already waiting")
        pending = self._by_sender.get(tx.sender)
        if pending is not None and tx.nonce in pending:
            raise self._reject("duplicate", f"another transaction of this sender with nonce {tx.nonce} is already waiting")
        if verify_signature and not tx.signature_ok():
            raise self._reject("bad_signature", f"signature does not verify for sender {tx.sender.hex()}")
        if self._policy is not None:
            try:
                self._policy(tx)
            except TxRejected as exc:
                self.rejected[exc.code] = self.rejected.get(exc.code, 0) + 1
                raise
        return tx

    def add(self, raw: bytes, height: int, *, verified: Transaction | None = None) -> Transaction:
        """Admit a transaction; returns it, or raises :class:`TxRejected` saying why.

        ``verified`` skips the checks for a transaction already checked (for example
        by a signature-verification worker), but capacity is still enforced.
        """
        tx = verified if verified is not None else self.check(raw, height)
        if verified is not None and (tx.tx_id in self._by_id or tx.nonce in self._by_sender.get(tx.sender, {})):
            raise self._reject("duplicate", "this transaction is already waiting")
        if len(self._by_sender.get(tx.sender, ())) >= self.max_per_sender:
            raise self._reject("sender_limit", f"the sender already has {self.max_per_sender} transactions waiting")
        # Room first: an eviction may take this sender's last waiting transaction, and
        # with it the sender's entry, which is therefore looked up only afterwards.
        if not self._make_room(height, tx, len(raw)):
            if len(self._by_id) >= self.max_txs:
                raise self._reject("mempool_full", f"the mempool holds {self.max_txs} transactions")
            raise self._reject(
                "mempool_full", f"the mempool holds {self.bytes} bytes; this transaction's {len(raw)} "
                f"would pass its {self.max_bytes}"
            )
        pending = self._by_sender.setdefault(tx.sender, {})
        self._counter += 1
        if not pending:
            self._sender_of_address[tx.sender_address.raw] = tx.sender
        self._by_id[tx.tx_id] = MempoolEntry(tx, raw, tx.sender, self._counter)
        self.bytes += len(raw)
        self._version += 1
        pending[tx.nonce] = tx.tx_id
        self._arrivals[tx.tx_id] = None
        return tx

    def _reject(self, code: str, message: str) -> TxRejected:
        self.rejected[code] = self.rejected.get(code, 0) + 1
        return TxRejected(code, message)

    def _make_room(self, height: int, incoming: Transaction, size: int) -> bool:
        """Make room for ``incoming`` (``size`` bytes) under both bounds; False, with nothing
        evicted, when not enough can be freed.

        Evicted, oldest first: expired transactions, then ones that cannot run, i.e. that
        wait behind a nonce gap of their sender (the incoming transaction counts as
        present: what it unblocks stays). A sender's run of consecutive nonces from its
        next one will run, block after block, and is never evicted. The evictions are
        planned in one pass and made only if they free enough: a refused transaction
        costs no other one its place.
        """
        need_count = len(self._by_id) + 1 - self.max_txs
        need_bytes = self.bytes + size - self.max_bytes
        if need_count <= 0 and need_bytes <= 0:
            return True
        # A flood of admissions into a full pool of runnable transactions would scan the
        # pool for each: the first refusal records what any admission could free (an
        # upper bound), and later ones needing more are refused at once until the pool
        # or the height changes.
        known = self._no_room
        if known is not None and known[:2] == (self._version, height) and (
            need_count > known[2] or need_bytes > known[3]
        ):
            return False
        chosen: list[bytes] = []
        freed_count = freed_bytes = 0
        for tx_id in self._evictable(height, incoming):
            chosen.append(tx_id)
            freed_count += 1
            freed_bytes += len(self._by_id[tx_id].raw)
            if freed_count >= need_count and freed_bytes >= need_bytes:
                for victim in chosen:
                    self._remove(victim)
                return True
        everything = [len(self._by_id[t].raw) for t in self._evictable(height, None)]
        self._no_room = (self._version, height, len(everything), sum(everything))
        return False

    def _evictable(self, height: int, incoming: Transaction | None) -> Iterator[bytes]:
        """Ids of what may be evicted, in eviction order: expired, then stuck behind a gap."""
        runs: dict[bytes, int] = {}  # sender -> last nonce of its runnable run

        def runnable(entry: MempoolEntry) -> bool:
            last = runs.get(entry.sender)
            if last is None:
                pending = self._by_sender.get(entry.sender, {})
                extra = incoming.nonce if incoming is not None and entry.sender == incoming.sender else None
                last = self._next_nonce(entry.sender) - 1
                while last + 1 in pending or last + 1 == extra:
                    last += 1
                runs[entry.sender] = last
            return entry.tx.nonce <= last

        for expired_pass in (True, False):
            for tx_id in self._arrivals:
                entry = self._by_id[tx_id]
                expired = entry.tx.expiry <= height
                if expired == expired_pass and (expired or not runnable(entry)):
                    yield tx_id

    def drop(self, tx_id: bytes) -> bool:
        """Forget a pending transaction that can never be included (e.g. a validator-set
        change another change overtook); True if it was here."""
        return self._remove(tx_id) is not None

    def _remove(self, tx_id: bytes) -> MempoolEntry | None:
        entry = self._by_id.pop(tx_id, None)
        if entry is None:
            return None
        self.bytes -= len(entry.raw)
        self._version += 1
        self._arrivals.pop(tx_id, None)
        pending = self._by_sender.get(entry.sender)
        if pending is not None:
            pending.pop(entry.tx.nonce, None)
            if not pending:
                del self._by_sender[entry.sender]
                self._sender_of_address.pop(entry.tx.sender_address.raw, None)
        return entry

    # ---------------------------------------------------------------- blocks

    def select(
        self,
        *,
        max_txs: int,
        max_bytes: int,
        height: int,
        next_nonce: Callable[[bytes], int] | None = None,
    ) -> list[MempoolEntry]:
        """Transactions for the next block: round-robin over senders, each in nonce order.

        ``next_nonce`` gives each sender's next nonce on top of blocks proposed but not
        yet committed (default: committed state).
        """
        nonce_of = next_nonce or self._next_nonce
        cursors: list[tuple[bytes, int, dict[int, bytes]]] = []
        for sender, pending in self._by_sender.items():
            cursors.append((sender, nonce_of(sender), pending))
        chosen: list[MempoolEntry] = []
        size = 0
        while cursors and len(chosen) < max_txs:
            still = []
            for sender, nonce, pending in cursors:
                if len(chosen) >= max_txs:
                    break
                tx_id = pending.get(nonce)
                if tx_id is None:
                    continue
                entry = self._by_id[tx_id]
                if entry.tx.expiry <= height:
                    continue
                if size + len(entry.raw) > max_bytes:
                    continue
                chosen.append(entry)
                size += len(entry.raw)
                still.append((sender, nonce + 1, pending))
            cursors = still
        return chosen

    def remove_committed(self, tx_ids: list[bytes], height: int) -> None:
        """Drop transactions that made it into a committed block, and any now stale or expired."""
        senders = set()
        for tx_id in tx_ids:
            entry = self._remove(tx_id)
            if entry is not None:
                senders.add(entry.sender)
        for sender in senders:
            pending = self._by_sender.get(sender)
            if not pending:
                continue
            floor = self._next_nonce(sender)
            for nonce in [n for n in pending if n < floor]:
                self._remove(pending[nonce])
        if self._arrivals:
            # Expired transactions can never be included; the oldest are checked first.
            for tx_id in list(islice(self._arrivals, 256)):
                entry = self._by_id[tx_id]
                if entry.tx.expiry <= height:
                    self._remove(tx_id)

    def pending_nonce(self, address: bytes, committed: int) -> int:
        """The next nonce of ``address`` counting its waiting transactions (consecutive from ``committed``)."""
        sender = self._sender_of_address.get(address)
        pending = self._by_sender.get(sender, {}) if sender is not None else {}
        nonce = committed
        while nonce in pending:
            nonce += 1
        return nonce

    def pending_ids(self) -> list[bytes]:
        return list(self._arrivals)
