"""One gridledger node serving one shard: a validator or a regulator's observer.

    node = Node(NodeConfig.load("node.toml"))
    await node.start()      # store, consensus, peers, API
    ...
    await node.stop()

A **validator** runs the shard's consensus replica (BFT or Raft, from genesis), talks
to the other validators over the peer mesh, admits transactions into its mempool,
gossips them to its peers, and, while it leads, proposes blocks built from them.
An **observer** never votes or proposes: it follows the validators' public APIs,
verifies every block's certificate and re-executes the block before applying it,
serves the same read API with proofs, and forwards submitted transactions to a
validator.

Frames on the peer mesh carry a one-byte tag: consensus messages, or a batch of
gossiped transactions.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from consensus import protocols
from consensus.types import Commit, ConsensusConfig, FetchState, Propose
from contracts.executor import Executor, nonce_key
from contracts.system.admission import market_admission
from ledger import codec
from ledger.block import NULL_DIGEST, Block, BlockError
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.keystore import load_key
from ledger.log import configure, get_logger
from ledger.store import Store
from ledger.tx import Transaction
from node.api import ApiServer
from node.chain import Chain, ChainError
from node.config import ConfigError, NodeConfig
from node.driver import ConsensusDriver, NodeSigner, NodeVerifier
from node.events import EventHub, Waiters, decode_int
from node.mempool import Mempool, TxRejected
from node.metrics import NodeMetrics, Registry

__all__ = ["Node", "NodeError"]

TAG_CONSENSUS = b"\x00"
TAG_TXS = b"\x01"
# Gossip is flushed in batches: one frame per peer every few milliseconds instead of
# one per transaction.
GOSSIP_FLUSH_S = 0.005
GOSSIP_MAX_BATCH = 500
# Empty blocks keep block time moving (cross-shard timeouts and gate closure are
# measured in block time) without filling the chain when nothing happens.
EMPTY_BLOCK_INTERVAL_S = 1.0
RECENT_REJECTIONS = 10_000
MAX_NONCE_KEYS = 100_000  # senders whose nonce key is kept (Node.committed_nonce)


class NodeError(RuntimeError):
    """The node cannot start or must stop; the message says why."""


class Node:
    def __init__(self, config: NodeConfig, *, password: str | None = None, sync_threshold: int | None = None) -> None:
        self.config = config
        self.sync_threshold = _sync_threshold(config, sync_threshold)
        configure(config.log.mode, config.log.level)
        self.genesis = Genesis.load(config.genesis)
        self.chain_id = self.genesis.chain_id
        self.protocol = self.genesis.protocol
        self.role = config.role
        self.validators = self.genesis.validators
        self.genesis_hash = self.genesis.hash
        self.key, self.bls_secret = self._load_key(password)
        self.node_key = self.key.public_key.raw if self.key else b""
        self.name = config.name or (self._my_validator_name() if self.key else "observer")
        self.log = get_logger(shard=self.chain_id, node=self.name, role=self.role)
        self.registry = Registry()
        self.metrics = self.registry
        self.node_metrics = NodeMetrics.create(self.registry)
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        self.store = Store.open(
            os.path.join(config.data_dir, "store"), self.chain_id, genesis_hash=self.genesis_hash,
            map_size=config.store.map_size,
        )
        # The market's membership rules: the executor refuses what admission refuses,
        # so a proposer that let such a transaction through cannot change state with it.
        self.executor = Executor(admission=market_admission)
        self.chain = Chain(self.genesis, self.store, self.executor, logger=self.log)
        self.chain.ensure_genesis()
        # Neighbouring shards' light clients learn this shard's validator changes from
        # hand-over bundles built as their heights commit (shards/DESIGN.md section 2).
        from node.handover import HandoverKeeper

        self.handovers = HandoverKeeper.attach(self.chain, logger=self.log)
        self.chain.on_commit.append(self._committed)
        # The set in force for the next block; the chain's schedule (contracts/reconfig.py)
        # changes it at the heights consensus defines.
        self.validators = self.chain.validators
        self._peer_keys: frozenset[bytes] = frozenset()
        self.peer_tls = None
        self._nonce_keys: dict[bytes, bytes] = {}  # sender public key -> its nonce's state key
        self.mempool = Mempool(
            self.chain_id, max_txs=config.mempool.max_txs, max_backlog=config.mempool.max_backlog,
            max_bytes=config.mempool.max_bytes,
            max_per_sender=config.mempool.max_per_sender,
            nonce_window=config.mempool.nonce_window, max_gas=self.genesis.param("block_gas_limit"),
            next_nonce=self.committed_nonce, policy=self._admission,
        )
        self.waiters = Waiters()
        self.hub = EventHub(self.store)
        self._rejected: OrderedDict[bytes, tuple[str, str]] = OrderedDict()
        self._gossip: list[bytes] = []
        self._gossip_timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task] = []
        self._proposed: tuple[int, float] | None = None  # (height, when) of our proposal in flight
        self._proposal_committed = asyncio.Event()  # wakes the proposer (see _propose_loop)
        self._last_block_at = time.monotonic()
        self._last_nudge = 0.0
        self._stopping = asyncio.Event()
        self.fatal: str | None = None
        self.catching_up = False
        self._catchup_task: asyncio.Task | None = None
        self.driver: ConsensusDriver | None = None
        self.mesh = None
        self.api = ApiServer(self, max_request_bytes=config.api.max_request_bytes, logger=self.log)
        # Every node serves state snapshots to nodes that are far behind (node/api_sync.py).
        from node import api_sync

        self.snapshots = api_sync.register(self.api.app, self)
        from node import api_handover

        api_handover.register(self.api.app, self)
        self.syncing = False
        self.last_sync = None  # node.sync.SyncResult of the last snapshot installed
        self.node_metrics.height.set(self.chain.height)
        self.node_metrics.mempool_size.set_function(lambda: len(self.mempool))
        self.node_metrics.mempool_bytes.set_function(lambda: self.mempool.bytes)
        if self.role == "validator":
            self._setup_validator()

    # ------------------------------------------------------------------ set-up

    def _load_key(self, password: str | None) -> tuple[PrivateKey | None, bytes]:
        if self.config.role == "observer" and not self.config.key_file:
            return None, b""
        password = password if password is not None else os.environ.get(self.config.password_env)
        key_file = load_key(self.config.key_file, password, allow_plaintext=self.config.dev)
        if key_file.kind == "validator":
            return PrivateKey(key_file.secret[:32]), key_file.secret[32:]
        if self.config.role == "validator":
            raise NodeError(f"key file {self.config.key_file} holds an account key; a validator needs a validator key "
                            "(gridledger keys new --role validator)")
        return PrivateKey(key_file.secret[:32]), b""

    def _my_validator_name(self) -> str:
        index = self.validators.index_of(self.node_key)
        if index is None:
            if self.config.role == "validator":
                # Not a genesis validator: a validator-set change adds it (or added it). Its
                # membership is checked once the chain's schedule is loaded (_setup_validator).
                return f"validator-{self.node_key.hex()[:8]}"
            return "observer"
        return self.validators.validators[index].name or f"validator-{index}"

    def _setup_validator(self) -> None:
        from node.tls import PeerTls, make_node_certificate
        from node.transport import MeshLimits, PeerMesh

        spec = protocols.get(self.protocol)
        tick_ms = self.genesis.param("tick_ms")
        if self.node_key not in self.chain.members():
            self.log.warning("this node's key is in no validator set of the shard yet: it follows the validators "
                             "and votes once a validator-set change adds it", node_key=self.node_key.hex()[:16])
        consensus_config = ConsensusConfig(
            chain_id=self.chain_id,
            # Every replica starts from the genesis set; the changes since come from its
            # own records or from the blocks it commits (validator_set_change).
            validators=self.genesis.validators,
            timeout_ticks=max(4, self.genesis.param("view_timeout_ms") // tick_ms),
            heartbeat_ticks=max(1, self.genesis.param("view_timeout_ms") // tick_ms // 10),
            checkpoint_interval=self.genesis.param("checkpoint_interval"),
            window=max(64, self.genesis.param("checkpoint_interval")),
            seed=int.from_bytes(self.node_key[:8], "big"),
        )
        self.spec = spec
        replica = spec.make_replica(
            consensus_config, NodeSigner(self.chain_id, self.key, self.bls_secret), NodeVerifier(self.chain_id), self.chain
        )
        self.driver = ConsensusDriver(
            replica, consensus_config, store=self.store, send=self._send_consensus, broadcast=self._broadcast_consensus,
            commit=self._consensus_commit, fetch_state=self._fetch_state, tick_ms=tick_ms, logger=self.log,
        )
        known = self.chain.members()
        self._peer_urls: dict[bytes, str] = {}
        for key_hex, url in self.config.peer.peers.items():
            key = bytes.fromhex(key_hex)
            if key not in known:
                raise ConfigError(f"peer.peers names {key_hex[:16]}..., which is in no validator set of {self.chain_id}")
            self._peer_urls[key] = url
        self._peer_keys = self._allowed_peers()
        peers = {k: self._peer_urls.get(k) for k in self._peer_keys}
        tls = None
        if self.config.peer.tls:
            certs = self.chain.tls_certs()
            cert, _ = make_node_certificate(self.key, self.name)
            if self.node_key in certs and cert != certs[self.node_key]:
                raise NodeError("this validator's certificate does not match the one its shard pins "
                                "(was the key or name changed?)")
            if self.node_key not in certs and self.node_key in known:
                raise NodeError("peer.tls is on but the shard pins no TLS certificate for this validator")
            others = {k: c for k, c in certs.items() if k != self.node_key}
            # A shard of one validator has no peer to pin (and no peer connection to protect).
            tls = PeerTls.for_validator(self.key, cert, others) if others else None
        self.peer_tls = tls
        self.mesh = PeerMesh(
            self.key, self.chain_id, peers, tls=tls, on_message=self._on_peer_message,
            limits=MeshLimits(queue_frames=self.config.peer.queue_len), listen=(self.config.peer.host, self.config.peer.port),
            logger=self.log,
        )

    def _allowed_peers(self) -> frozenset[bytes]:
        """The validators this node talks to: the sets in force at the committed head and the
        next height, and every scheduled set. A removed validator thus stays until a block
        above its last height commits (the hand-over checkpoint is signed by then)."""
        chain = self.chain
        height = chain.height
        keys = {v.node_key for v in chain.validators_at(height)} | {v.node_key for v in chain.validators_at(height + 1)}
        for epoch in chain.scheduled():
            keys |= {v.node_key for v in epoch.validators}
        keys.discard(self.node_key)
        return frozenset(keys)

    def _update_membership(self) -> None:
        """After a commit: follow the validator set in force and the allowed peers."""
        current = self.chain.validators
        if current != self.validators:
            was = self.node_key in self.validators
            self.validators = current
            self.log.info("validator set in force changed", height=self.chain.height, validators=current.n,
                          set_hash=current.hash.hex()[:16])
            if self.role == "validator" and was != (self.node_key in current):
                self.log.warning("this node is now a voting validator" if not was else
                                 "this node was removed from the validator set: it no longer votes")
        if self.mesh is None:
            return
        allowed = self._allowed_peers()
        if allowed == self._peer_keys:
            return
        if self.peer_tls is not None:
            certs = self.chain.tls_certs()
            added = {k: certs[k] for k in allowed - self._peer_keys if k in certs}
            if added:
                self.peer_tls.trust(added)
        removed = self._peer_keys - allowed
        self._peer_keys = allowed
        self.mesh.set_peers({k: self._peer_urls.get(k) for k in allowed})
        self.log.info("peer set changed", peers=len(allowed), removed=[k.hex()[:16] for k in removed])

    # ------------------------------------------------------------------ lifecycle

    def _api_tls(self):
        """The HTTPS context of the public API, or None for plain HTTP."""
        if not self.config.api.tls:
            return None
        from node.tls import api_server_context, make_node_certificate

        if self.config.api.cert_file:
            cert = Path(self.config.api.cert_file).read_bytes()
            key = Path(self.config.api.key_file).read_bytes()
        else:
            cert, key = make_node_certificate(self.key, self.name)
        return api_server_context(cert, key)

    async def start(self) -> None:
        await self.api.start(self.config.api.host, self.config.api.port, ssl_context=self._api_tls())
        if self.role == "validator":
            assert self.driver is not None and self.mesh is not None
            await self.mesh.start()
            self.driver.start()
            self._tasks.append(asyncio.create_task(self._tick_loop(), name="consensus-ticks"))
            self._tasks.append(asyncio.create_task(self._propose_loop(), name="proposer"))
        else:
            from node.follow import Follower

            self.follower = Follower(self)
            self._tasks.append(asyncio.create_task(self.follower.run(), name="follower"))
        self.log.info("node started", height=self.chain.height, api_port=self.api.port,
                      peer_port=getattr(self.mesh, "listen_port", None))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self.mesh is not None:
            await self.mesh.stop()
        await self.api.stop()
        height = self.chain.height
        self.store.close()
        self.log.info("node stopped", height=height)

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    def _die(self, reason: str) -> None:
        self.fatal = reason
        self.log.critical("node must stop", reason=reason)
        self._stopping.set()

    # ------------------------------------------------------------------ consensus plumbing

    def _send_consensus(self, to: bytes, payload: bytes) -> bool:
        return self.mesh.send(to, TAG_CONSENSUS + payload)

    def _broadcast_consensus(self, payload: bytes) -> int:
        return self.mesh.broadcast(TAG_CONSENSUS + payload)

    async def _on_peer_message(self, sender: bytes, payload: bytes) -> None:
        if not payload:
            return
        tag, body = payload[:1], payload[1:]
        if tag == TAG_CONSENSUS:
            self._step_guarded(lambda: self.driver.receive(sender, body))
        elif tag == TAG_TXS:
            self._admit_gossip(sender, body)
        else:
            self.mesh.disconnect(sender, f"unknown frame tag {tag.hex()}")

    def _step_guarded(self, step) -> None:
        try:
            step()
        except ChainError as exc:
            self._die(str(exc))

    async def _tick_loop(self) -> None:
        interval = self.driver.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._step_guarded(self.driver.tick)
            self.node_metrics.peers.set(len(self.mesh.connected()))

    def _consensus_commit(self, c: Commit) -> tuple[int, bytes, bytes] | None:
        if self.syncing:
            # A snapshot is being installed; it lands at or above the height the replica
            # asked for, and the replica resumes from there (StateInstalled).
            return None
        height = self.chain.height
        if c.height <= height and not self.store.holds_block(c.height):
            return self._committed_below_snapshot(c)
        if c.height <= height:
            stored = self.store.block_hash(c.height)
            if c.digest != NULL_DIGEST and stored != c.digest:
                raise ChainError(f"consensus committed another block at height {c.height} than this store holds")
            header = self.chain.header(c.height)
            return c.height, c.digest, header.state_root
        if c.height > height + 1:
            self.log.warning("committed height ahead of the store", committed=c.height, store=height)
            return None
        started = time.perf_counter()
        executed = self.chain.commit(c.height, c.batch, c.certificate)
        self.node_metrics.apply_seconds.observe(time.perf_counter() - started)
        return c.height, c.digest, executed.prepared.root

    def _committed_below_snapshot(self, c: Commit) -> tuple[int, bytes, bytes] | None:
        """Consensus commits a height that the installed snapshot skipped.

        The store's state is past it (certified), so nothing is applied. The replica
        learns the root from the certified block's own header (consensus checked the
        batch against its commit certificate), for its checkpoint vote; a null batch in
        the skipped range gets no ``Executed`` (no vote: the parent's root is not held).
        """
        if not c.batch:
            return None
        try:
            block = Block.decode(c.batch)
        except BlockError:
            block = None
        if block is None or block.hash != c.digest or block.header.height != c.height:
            raise ChainError(f"consensus committed at height {c.height} a batch that is not the certified block")
        return c.height, c.digest, block.header.state_root

    def _fetch_state(self, action: FetchState) -> None:
        """The replica fell behind its peers' window: replay certified blocks up to the checkpoint.

        Blocks come from the other validators' public APIs (``follow.urls``), each
        verified against its commit certificate and re-executed; once the store reaches
        the checkpoint (whose block hash and state root must then match), the replica
        resumes with ``StateInstalled``.
        """
        if self._catchup_task is not None and not self._catchup_task.done():
            return
        self._catchup_task = asyncio.get_running_loop().create_task(self._catch_up(action.checkpoint))

    async def _catch_up(self, checkpoint) -> None:
        from consensus.types import StateInstalled
        from node.catchup import BlockSource, CatchUpError
        from node.sync import SyncError

        self.catching_up = True
        self.log.info("catching up from other validators", height=self.chain.height, target=checkpoint.height)
        if self.sync_threshold and checkpoint.height - self.chain.height > self.sync_threshold:
            try:
                await self.sync_state(checkpoint.height)
            except SyncError as exc:
                self.log.warning("state sync failed; replaying blocks instead", reason=str(exc))
        try:
            source = BlockSource(self.config.follow.urls, self.chain, self.log)
        except CatchUpError as exc:
            self.log.error("cannot catch up", reason=str(exc))
            self.catching_up = False
            return
        try:
            while self.chain.height < checkpoint.height:
                try:
                    applied = await source.apply_next()
                except ChainError as exc:
                    self._die(f"a certified block does not execute to its header here: {exc}")
                    return
                if not applied:
                    await asyncio.sleep(0.2)
            held = self.store.block_hash(checkpoint.height)
            # A snapshot installed above the checkpoint skipped its block: the state here
            # is certified by the snapshot's own commit certificate instead.
            if held is not None and (held != checkpoint.block_hash
                                     or self.chain.header(checkpoint.height).state_root != checkpoint.state_root):
                self._die(f"the checkpoint at height {checkpoint.height} does not match the certified blocks replayed here")
                return
            self.log.info("caught up", height=self.chain.height)
            # The replica skipped these heights: the sets it must know are the chain's.
            sets = self.chain.schedule_pairs(checkpoint.height)
            self._step_guarded(lambda: self.driver.step(StateInstalled(checkpoint, sets)))
        finally:
            self.catching_up = False
            await source.close()

    async def sync_state(self, min_height: int):
        """Install a certified state snapshot at a height ``>= min_height`` from ``follow.urls``.

        Returns the :class:`node.sync.SyncResult`; raises :class:`node.sync.SyncError`
        with the store unchanged when no source provides one. Consensus commits are
        ignored meanwhile (see :meth:`_consensus_commit`).
        """
        from node.sync import StateSync

        before = self.chain.height
        sync = StateSync(self.config.follow.urls, self.store, self.chain_id, self.chain.validators,
                         protocol=self.protocol, log=self.log, validators_at=self.chain.validators_at)
        self.syncing = True
        try:
            result = await sync.sync(min_height)
        finally:
            self.syncing = False
            await sync.close()
        # Cached committed reads describe the state before the snapshot; the validator
        # sets are the ones its records hold.
        self.chain.reads.clear()
        self.chain.load_schedule()
        self._update_membership()
        self.last_sync = result
        self._last_block_at = time.monotonic()
        self.node_metrics.height.set(self.chain.height)
        self.log.info("continuing from a state snapshot", before=before, height=result.height)
        return result

    def is_leader(self) -> bool:
        return self.driver is not None and bool(self.spec.is_leader(self.driver.replica))

    async def _propose_loop(self) -> None:
        interval = self.genesis.param("block_interval_ms") / 1000
        timeout = self.genesis.param("view_timeout_ms") / 1000
        max_txs = self.genesis.param("block_max_txs")
        max_bytes = self.genesis.param("block_max_bytes")
        wake = self._proposal_committed
        while True:
            # Wake every interval, or as soon as our proposal in flight commits: waiting
            # out the rest of a polling interval then only added to every block's latency.
            # Proposals stay at least an interval apart, so a lightly loaded shard does not
            # turn out more, smaller blocks than before.
            try:
                await asyncio.wait_for(wake.wait(), interval)
            except TimeoutError:
                pass
            wake.clear()
            if self._proposed is not None:
                gap = self._proposed[1] + interval - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
            if not self.is_leader():
                self._proposed = None
                self._nudge_leader(timeout)
                continue
            height = self.chain.height
            if self._proposed is not None:
                proposed_height, when = self._proposed
                if proposed_height > height and time.monotonic() - when < timeout:
                    continue  # our last proposal is still in flight
            if not len(self.mempool) and time.monotonic() - self._last_block_at < EMPTY_BLOCK_INTERVAL_S:
                continue
            entries = self.mempool.select(max_txs=max_txs, max_bytes=max_bytes, height=height + 1)
            try:
                batch, _ = self.chain.build([e.tx for e in entries], self.node_key)
            except ChainError as exc:
                self._die(str(exc))
                return
            self._forget_dropped()
            self._proposed = (height + 1, time.monotonic())
            self._step_guarded(lambda batch=batch: self.driver.step(Propose(batch)))

    def _nudge_leader(self, timeout: float) -> None:
        """BFT: transactions wait and nothing commits: offer a block, so every replica times the leader.

        The replica sends the batch to the leader and, if it is still not ordered,
        to everyone; a leader that is down or censoring is then replaced by a view
        change. Raft needs no nudge: its followers elect a new leader when
        heartbeats stop.
        """
        if self.protocol != "bft" or not len(self.mempool):
            return
        now = time.monotonic()
        if now - self._last_block_at < timeout or now - self._last_nudge < timeout:
            return
        self._last_nudge = now
        # One transaction is enough to start every replica's timer on the leader; a full
        # block would cost every validator an execution for a batch that is valid at
        # one height only (and under overload, nudges of full blocks starve the leader).
        entries = self.mempool.select(max_txs=1, max_bytes=self.genesis.param("block_max_bytes"),
                                      height=self.chain.height + 1)
        if not entries:
            return
        batch, _ = self.chain.build([e.tx for e in entries], self.node_key)
        self._forget_dropped()
        self.log.info("transactions wait and no block commits: offering a block to time the leader",
                      waiting=len(self.mempool), height=self.chain.height)
        self._step_guarded(lambda: self.driver.step(Propose(batch)))

    def _forget_dropped(self) -> None:
        """Validator-set changes the chain left out of a block can never be included: refuse them."""
        for tx_id, code, message in self.chain.dropped:
            if self.mempool.drop(tx_id):
                self._rejected[tx_id] = (code, message)
                while len(self._rejected) > RECENT_REJECTIONS:
                    self._rejected.popitem(last=False)
                self.waiters.resolve(tx_id, False)
        self.chain.dropped = []

    # ------------------------------------------------------------------ commits

    def _committed(self, block, receipts, state_root: bytes) -> None:
        self._last_block_at = time.monotonic()
        if self._proposed is not None and block.height >= self._proposed[0]:
            self._proposal_committed.set()
        self._update_membership()
        self.mempool.remove_committed(block.tx_ids, block.height)
        for tx_id in block.tx_ids:
            self.waiters.resolve(tx_id, True)
        self.hub.publish(block, receipts)
        m = self.node_metrics
        m.height.set(block.height)
        m.committed_blocks.inc()
        m.committed_txs.inc(len(block.txs))
        m.committed_tps.add(len(block.txs))
        self.log.debug("block committed", height=block.height, txs=len(block.txs))

    # ------------------------------------------------------------------ transactions

    def _admission(self, tx: Transaction) -> None:
        """The market's admission rules on committed state (non-members, roles, suspensions)."""
        refusal = market_admission(self.chain.reads, tx, tx.sender_address.raw)
        if refusal is not None:
            raise TxRejected(*refusal)
        if tx.contract == "system" and tx.function == "reconfigure":
            from contracts.reconfig import ReconfigError

            try:
                self.chain.check_reconfigure(self.chain.height + 1, tx)
            except ReconfigError as exc:
                raise TxRejected(exc.code, exc.message) from None

    def committed_nonce(self, sender_public_key: bytes) -> int:
        key = self._nonce_keys.get(sender_public_key)
        if key is None:
            from ledger.crypto import Address

            # The address is a hash of the key: the mempool asks for the same senders
            # over and over (admission, block selection, commits).
            if len(self._nonce_keys) >= MAX_NONCE_KEYS:
                self._nonce_keys.clear()
            key = self._nonce_keys[sender_public_key] = nonce_key(Address.from_public_key(sender_public_key).raw)
        return decode_int(self.chain.reads.get(key))

    def _admit(self, raw: bytes, height: int | None = None, *, client: bool = True) -> Transaction:
        if height is None:
            height = self.chain.height
        tx = self.mempool.check(raw, height, client=client)
        self.mempool.add(raw, height, verified=tx)
        self.chain.verified.add(tx.tx_id)
        return tx

    def _admit_gossip(self, sender: bytes, body: bytes) -> None:
        try:
            raws = codec.decode(body, max_size=self.config.peer.max_frame_bytes)
        except codec.CodecError as exc:
            self.mesh.disconnect(sender, f"malformed transaction gossip: {exc}")
            return
        if not isinstance(raws, list) or not all(isinstance(r, bytes) for r in raws):
            self.mesh.disconnect(sender, "transaction gossip is a list of encoded transactions")
            return
        height = self.chain.height
        for raw in raws:
            try:
                self._admit(raw, height, client=False)
            except TxRejected:
                pass  # duplicates are normal in gossip; the rest is counted by the mempool

    def _queue_gossip(self, raw: bytes) -> None:
        if self.mesh is None:
            return
        self._gossip.append(raw)
        if len(self._gossip) >= GOSSIP_MAX_BATCH:
            self._flush_gossip()
        elif self._gossip_timer is None:
            self._gossip_timer = asyncio.get_running_loop().call_later(GOSSIP_FLUSH_S, self._flush_gossip)

    def _flush_gossip(self) -> None:
        if self._gossip_timer is not None:
            self._gossip_timer.cancel()
            self._gossip_timer = None
        if self._gossip:
            self.mesh.broadcast(TAG_TXS + codec.encode(self._gossip))
            self._gossip = []

    # ------------------------------------------------------------------ NodeView

    async def submit(self, raw: bytes) -> bytes:
        if self.role == "observer":
            return await self.follower.forward(raw)
        tx = self._admit(raw)
        self._queue_gossip(raw)
        return tx.tx_id

    async def submit_many(self, raws: Sequence[bytes]) -> list[bytes | TxRejected]:
        if self.role == "observer":
            return await self.follower.forward_many(raws)
        results: list[bytes | TxRejected] = []
        height = self.chain.height  # one read for the batch: nothing commits while it is admitted
        for raw in raws:
            try:
                tx = self._admit(raw, height)
            except TxRejected as exc:
                results.append(exc)
                continue
            self._queue_gossip(raw)
            results.append(tx.tx_id)
        return results

    async def wait_for(self, tx_id: bytes, timeout_s: float) -> bool:
        if self.store.tx_location(tx_id) is not None:
            return True
        if tx_id in self._rejected:
            return False
        future = self.waiters.wait(tx_id)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return self.store.tx_location(tx_id) is not None
        finally:
            self.waiters.forget(tx_id, future)

    def tx_pending(self, tx_id: bytes) -> bool:
        if self.role == "observer":
            return self.follower.forwarded(tx_id)
        return tx_id in self.mempool

    def tx_rejected(self, tx_id: bytes) -> tuple[str, str] | None:
        return self._rejected.get(tx_id)

    def account(self, address: bytes) -> dict:
        nonce = decode_int(self.store.get(nonce_key(address)))
        return {"nonce": nonce, "pending_nonce": self.mempool.pending_nonce(address, nonce), "roles": []}

    def events(self, contract, name, from_height):
        return self.hub.stream(contract, name, from_height)

    def status(self) -> dict:
        status = {
            "shard": self.chain_id,
            "role": self.role,
            "name": self.name,
            "height": self.chain.height,
            "mempool": len(self.mempool),
            "catching_up": self.catching_up or self.syncing,
            "base_height": self.store.base_height,
        }
        if self.last_sync is not None:
            r = self.last_sync
            status["state_sync"] = {"height": r.height, "keys": r.keys, "pages": r.pages, "bytes": r.payload_bytes,
                                    "ms": int(r.seconds * 1000), "sources": list(r.sources)}
        if self.driver is not None:
            replica = self.driver.replica
            leader = self.driver.replica.leader() if callable(getattr(replica, "leader", None)) else getattr(replica, "leader", None)
            status.update({
                "peers": len(self.mesh.connected()),
                "leader": leader.hex() if isinstance(leader, bytes) else None,
                "is_leader": self.is_leader(),
            })
            if self.protocol == "bft":
                status["view"] = getattr(replica, "view", None)
            else:
                status["term"] = getattr(replica, "term", None)
            # What the replica counted (drops by reason, view changes, refusals): the
            # first thing an operator looks at when a shard stalls.
            counters = getattr(replica, "stats", None) or getattr(replica, "counters", None) or {}
            status["consensus"] = {
                "committed": getattr(replica, "committed", getattr(replica, "applied_height", None)),
                "counters": dict(counters),
                "last_refusal": getattr(replica, "last_refusal", "") or None,
            }
        else:
            status.update(self.follower.status() if hasattr(self, "follower") else {})
        if self.fatal:
            status["fatal"] = self.fatal
        return status

    def ready(self) -> bool:
        if self.fatal:
            return False
        if self.role == "validator":
            quorum = self.validators.bft_quorum if self.protocol == "bft" else self.validators.majority
            return len(self.mesh.connected()) + 1 >= quorum
        return hasattr(self, "follower") and self.follower.caught_up()

    def shards(self) -> list[dict]:
        return [{"shard": self.chain_id, "height": self.chain.height, "certified_height": self.chain.height,
                 "protocol": self.protocol, "validators": self.validators.n}]


def _sync_threshold(config: NodeConfig, given: int | None) -> int:
    """The state sync threshold: the argument, else ``follow.sync_threshold`` (which the
    environment overrides as GRIDLEDGER_FOLLOW_SYNC_THRESHOLD, like every config field)."""
    if given is None:
        given = config.follow.sync_threshold
    if given < 0:
        raise ConfigError(f"the state sync threshold is a number of blocks >= 0 (0: never sync state), not {given}")
    return given
