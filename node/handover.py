"""Hand-over bundles: what a shard's nodes keep so that neighbours follow its validator-set changes.

A neighbour's light client (``shards.lightclient``) learns the validator set of epoch e
only from a state proof of its record under a header the *previous* set certifies.
The last such height is the epoch's ``effective_after`` (BFT: the checkpoint at or
above the change plus four intervals; Raft: the change's own height): above it the new
set certifies, and a client that does not know that set yet refuses those headers. A
node proves only its current state, so the proofs must be made while that height is
the head. :class:`HandoverKeeper` does it: called by the chain after every commit
(``Chain.on_commit``), when the committed height is the ``effective_after`` of an
epoch e it builds epoch e's bundle (``shards.relay.Handover``)::

    header      the block at that height (or, after a BFT null batch, the latest block
                below it with the same state root: a null batch changes no state and
                its certificate certifies no header)
    certificate that block's commit certificate
    schedule    ScheduleProof of the records of epochs e, e+1, ... under the header,
                ending with the proof that the next record is absent: exactly what a
                client that knows epoch e - 1 must be shown (``LightClient.accept``)

and keeps it durably. ``gridledger relay`` fetches it (``GET /v1/shards/handover/{e}``,
``node.api_handover``) and delivers it to a neighbour whose client lacks epoch e before
any packet proven under a later set.

**Storage (decision: one file per epoch beside the store).** Bundles live in
``<store directory>/handover/epoch-<e, 10 digits>.bundle``, each the canonical encoding
of ``shards.relayer.encode_handover``. A file is written to a temporary name, flushed,
fsynced, renamed over the final name and the directory fsynced, so after a crash a
bundle file is whole or absent. Files keep the LMDB environment's named-database slots
and the consensus records (``Store.records``, replayed at restart) free of anything
else, and an operator can copy a bundle to a node that missed it.

**Crash between the block and its bundle.** The block commits in its own LMDB
transaction before the bundle is written. The keeper is created at start, before
consensus commits anything, and builds the bundle of the head if the head is a
hand-over height and the file is missing (:meth:`HandoverKeeper.catch_up`); the state
at the head is still the one to prove.

**A certificate stored after the block.** Normally the block is stored with its commit
certificate. If the head's certificate does not commit its header yet (none stored, or
a null batch with no certified block below it with the same root), the header and
schedule proofs are kept as a *pending* file (same format, certificate nil) and the
certificate is attached at a later commit, when ``Store.certificate`` has it: the
proofs are made at the right head, the certificate can come later. A pending bundle is
not served.

**What a node cannot keep.** A node that was not at the hand-over height as its head
(it installed a state snapshot past it, or joined the shard later) has no bundle for
that epoch and answers ``not_found``; relayers ask the shard's other nodes.
"""

from __future__ import annotations

import os
from typing import Any

from contracts import reconfig
from ledger import codec
from ledger.block import NULL_DIGEST, Block, BlockHeader
from ledger.certificate import CertificateError, CommitCertificate
from ledger.log import get_logger
from ledger.state import ProofError, verify_proof
from ledger.store import Store
from shards.errors import BridgeError
from shards.lightclient import ScheduleProof, validator_epoch_key
from shards.relay import Handover
from shards.relayer import decode_handover, encode_handover

__all__ = ["HandoverError", "HandoverKeeper", "MAX_SCHEDULE_PROOFS", "NULL_LOOKBACK"]

# Records proven in one bundle: epoch e and the ones decided before its hand-over
# height (BFT allows one scheduled change at a time, Raft one per block), then the
# absence proof. Far more than any real schedule holds.
MAX_SCHEDULE_PROOFS = 64
# Null batches looked through for the certified block below a null head: a view change
# fills a few sequence gaps, not hundreds.
NULL_LOOKBACK = 64
_PENDING = ".pending"
_SUFFIX = ".bundle"


class HandoverError(RuntimeError):
    """A bundle cannot be built or read; ``code`` names the reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class HandoverKeeper:
    """Builds and keeps one shard's hand-over bundles; see the module docstring."""

    def __init__(self, store: Store, *, directory: str | None = None, logger: Any = None) -> None:
        self.store = store
        self.directory = directory or os.path.join(store.path, "handover")
        os.makedirs(self.directory, exist_ok=True)
        self.log = logger if logger is not None else get_logger(component="handover")
        # Pending bundles (waiting for a certificate), known from the directory once at
        # start: every commit looks at them, and they are rare.
        self._pending = {os.path.join(self.directory, name) for name in os.listdir(self.directory)
                         if name.endswith(_PENDING)}
        self.built = 0  # bundles built since start (metrics, tests)

    @classmethod
    def attach(cls, chain: Any, *, logger: Any = None) -> HandoverKeeper | None:
        """A keeper for ``chain`` (a ``node.chain.Chain``) registered on its commits, or None
        when the shard has no neighbours to hand over to (its genesis has no topology).

        Call once the chain's genesis is applied and before consensus commits anything.
        """
        if getattr(chain.genesis, "topology", None) is None:
            return None
        keeper = cls(chain.store, logger=logger if logger is not None else chain.log)
        keeper.catch_up()
        chain.on_commit.append(keeper.committed)
        return keeper

    # ------------------------------------------------------------------ building

    def committed(self, block: Block, receipts: list, state_root: bytes) -> None:
        """``Chain.on_commit``: keep the bundles due at this height, complete pending ones.

        Never raises: a bundle that cannot be built is logged, and the chain goes on.
        """
        try:
            self._complete_pending()
            self._build_due(block.header.height, state_root)
        except (HandoverError, OSError) as exc:
            self.log.error("hand-over bundle not kept", height=block.header.height,
                           reason=str(exc))

    def catch_up(self) -> None:
        """At start: build the head's bundles if the node stopped between a hand-over
        block and its bundle, and complete pending ones."""
        height, root = self.store.head()
        if height is None:
            return
        self._complete_pending()
        self._build_due(height, root)

    def due_epochs(self, height: int) -> list[int]:
        """The epochs whose hand-over height is ``height``, from the committed state."""
        due = []
        # Records are in increasing effective_after order: walk back from the latest.
        for epoch in range(self._latest_epoch(), 0, -1):
            record = self.store.get(reconfig.epoch_key(epoch))
            if record is None:
                raise HandoverError("bad_state", f"the record of validator epoch {epoch} is missing")
            after = codec.decode(record)[0]
            if after < height:
                break
            if after == height:
                due.append(epoch)
        return sorted(due)

    def _build_due(self, height: int, state_root: bytes) -> None:
        for epoch in self.due_epochs(height):
            if self.has(epoch) or self._path(epoch, _PENDING) in self._pending:
                continue
            self.build(epoch, height, state_root)

    def build(self, epoch: int, height: int, state_root: bytes) -> Handover | None:
        """Build and keep epoch ``epoch``'s bundle with the store's head at ``height``.

        Returns the bundle, or None when its certificate is not stored yet (kept pending).
        Raises :class:`HandoverError` when the head is not ``height`` / ``state_root``.
        """
        schedule = self._schedule(epoch, height, state_root)
        certified = self._certified(height, state_root)
        if certified is None:
            header = self._header(height)
            self._write(epoch, _PENDING, Handover(epoch, header, _NO_CERTIFICATE, schedule))
            self.log.warning("hand-over bundle waits for its certificate", epoch=epoch, height=height)
            return None
        header, certificate = certified
        bundle = Handover(epoch, header, certificate, schedule)
        self._keep(bundle)
        return bundle

    def _schedule(self, epoch: int, height: int, state_root: bytes) -> tuple[ScheduleProof, ...]:
        proofs = []
        for number in range(epoch, epoch + MAX_SCHEDULE_PROOFS):
            proven = self.store.prove(validator_epoch_key(number))
            if proven.height != height or proven.state_root != state_root:
                raise HandoverError("head_moved", f"the store is at height {proven.height}, not {height}: the bundle of "
                                                  f"epoch {epoch} must be built with that height as the head")
            proofs.append(ScheduleProof(number, proven.value, proven.proof))
            if proven.value is None:
                return tuple(proofs)
        raise HandoverError("bad_state", f"more than {MAX_SCHEDULE_PROOFS} validator epochs from {epoch} are recorded")

    def _header(self, height: int) -> BlockHeader:
        raw = self.store.block(height)
        if raw is None:
            raise HandoverError("no_block", f"no block at height {height} in this store")
        return BlockHeader.from_fields(codec.decode(raw, max_size=len(raw), max_depth=4)[0])

    def _certified(self, height: int, state_root: bytes) -> tuple[BlockHeader, CommitCertificate] | None:
        """The latest header at or below ``height`` with ``state_root`` that a stored commit
        certificate commits (a null head: a block below it), or None."""
        lowest = self.store.base_height or 0
        for h in range(height, max(lowest, height - NULL_LOOKBACK) - 1, -1):
            if h < 1:
                break
            header = self._header(h)
            if header.state_root != state_root:
                break
            raw = self.store.certificate(h)
            if raw is None:
                continue
            try:
                certificate = CommitCertificate.decode(raw)
            except CertificateError:
                continue
            if certificate.digest != NULL_DIGEST and certificate.digest == header.hash and certificate.height == h:
                return header, certificate
        return None

    def _complete_pending(self) -> None:
        for path in sorted(self._pending):
            pending = self._read(path)
            if pending is None:
                continue
            certified = self._certified(pending.header.height, pending.header.state_root)
            if certified is None:
                continue
            header, certificate = certified
            self._keep(Handover(pending.epoch, header, certificate, pending.schedule))
            os.remove(path)
            self._pending.discard(path)

    def _keep(self, bundle: Handover) -> None:
        # The node checks what it serves: proofs against the header, certificate on the header.
        for item in bundle.schedule:
            try:
                ok = verify_proof(bundle.header.state_root, validator_epoch_key(item.epoch), item.value, item.proof)
            except ProofError as exc:
                raise HandoverError("bad_bundle", f"epoch {bundle.epoch}: {exc}") from None
            if not ok:
                raise HandoverError("bad_bundle", f"epoch {bundle.epoch}: a schedule proof does not match the header")
        self._write(bundle.epoch, _SUFFIX, bundle)
        self.built += 1
        self.log.info("hand-over bundle kept", epoch=bundle.epoch, height=bundle.header.height,
                      proofs=len(bundle.schedule))

    def _latest_epoch(self) -> int:
        raw = self.store.get(reconfig.CURRENT_KEY)
        return 0 if raw is None else codec.decode(raw)

    # ------------------------------------------------------------------ files

    def _path(self, epoch: int, suffix: str = _SUFFIX) -> str:
        return os.path.join(self.directory, f"epoch-{epoch:010d}{suffix}")

    def _write(self, epoch: int, suffix: str, bundle: Handover) -> None:
        data = encode_handover(bundle, allow_pending=suffix == _PENDING)
        path = self._path(epoch, suffix)
        temporary = path + ".tmp"
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        _fsync_directory(self.directory)
        if suffix == _PENDING:
            self._pending.add(path)

    def _read(self, path: str) -> Handover | None:
        try:
            with open(path, "rb") as source:
                data = source.read()
        except FileNotFoundError:
            return None
        try:
            return decode_handover(data, allow_pending=path.endswith(_PENDING))
        except BridgeError as exc:
            self.log.error("a kept hand-over bundle does not decode; ignored", path=path, reason=str(exc))
            return None

    # ------------------------------------------------------------------ serving

    def has(self, epoch: int) -> bool:
        return os.path.exists(self._path(epoch))

    def encoded(self, epoch: int) -> bytes | None:
        """Epoch ``epoch``'s bundle as served (``encode_handover``), or None if not kept here."""
        bundle = self.get(epoch)
        return None if bundle is None else encode_handover(bundle)

    def get(self, epoch: int) -> Handover | None:
        if type(epoch) is not int or epoch < 1:
            return None
        return self._read(self._path(epoch))

    def epochs(self) -> list[int]:
        """The epochs whose bundles are kept here, ascending."""
        out = []
        for name in os.listdir(self.directory):
            if name.startswith("epoch-") and name.endswith(_SUFFIX):
                try:
                    out.append(int(name[len("epoch-"):-len(_SUFFIX)]))
                except ValueError:
                    continue
        return sorted(out)

    def why_missing(self, epoch: int) -> str:
        """Why this node has no bundle for ``epoch`` (the not_found message)."""
        height, _ = self.store.head()
        latest = self._latest_epoch()
        if epoch > latest:
            return f"no validator epoch {epoch} is recorded yet (the latest is {latest})"
        record = self.store.get(reconfig.epoch_key(epoch))
        after = None if record is None else codec.decode(record)[0]
        if self._path(epoch, _PENDING) in self._pending:
            return f"the bundle of epoch {epoch} waits for the commit certificate of height {after}"
        if after is not None and height is not None and after > height:
            return (f"validator epoch {epoch} takes effect after height {after}; its bundle is made when the shard "
                    f"commits that height (this node is at {height})")
        if after == height:
            return f"the bundle of epoch {epoch} could not be built at height {after} (the node's log says why)"
        return (f"this node did not keep the bundle of epoch {epoch}: height {after} was never its head (it installed "
                f"a state snapshot past it or joined later); ask another node of the shard")


# A pending bundle has no certificate yet; the codec writes nil in its place.
_NO_CERTIFICATE: Any = None


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

