"""The relayer loop: carry packets between neighbouring shards over their public APIs.

Anyone may run a relayer (``gridledger relay --config relay.toml``); it holds no power.
Per round it reads, for every shard it serves, the channel counters (``send_seq`` of
each outgoing channel, ``recv_seq`` of each incoming one) with proofs; for each channel
``src -> dst`` with packets not yet handled it:

1. reads the destination's light client of the source (``client[src]``) and ``recv_seq``,
   verified against the destination's validator set;
2. reads at the source, under **one** certified header (``POST /v1/state/proofs``), the
   next packets of the outbox and the source's validator-set records the client lacks;
3. plans with :func:`shards.relay.plan_channel` and builds the delivery with
   :func:`shards.relay.build_delivery`; when the plan asks for a **hand-over** (the
   source's head is certified by a validator set the destination's client does not
   know), it fetches the source's bundle of that epoch (``GET
   /v1/shards/handover/{epoch}``, ``node/handover.py``; from each of the source's nodes
   in turn) and delivers it first as a schedule-only delivery, then plans again and
   carries the packets;
4. checks it exactly as the destination will: a copy of the light client accepts the
   header, certificate and schedule proofs, and every packet's proof verifies under the
   header (``verify_packet_proof``): a node serving a wrong value costs a round, never
   a submitted delivery;
5. submits ``bridge.deliver(delivery)`` signed with its own key, waits for the commit
   and logs the outcome.

**Idle bridges.** A BFT destination accepts headers of the source up to the *horizon* its
schedule proofs reach (``LightClient.horizon``), and beyond it only within the trusting
period of its last confirmation. Every delivery moves the horizon to its own header; a
channel without packets gets a **schedule-only delivery** (no packets, the proof that no
validator-set change is unknown) once the source's head comes within
``REFRESH_INTERVALS`` checkpoint intervals of the horizon, so an idle bridge never depends on the trusting
period while a relayer runs.

Several relayers on one channel are harmless: the destination handles each packet
once, in order, and refuses a delivery whose packets were all handled
(``already_delivered``); the loser of such a race counts a duplicate, not a failure.
A node that is down or restarting only fails the round (``unavailable``); the next
round starts again from what the shards' states say, so the relayer keeps no state
of its own worth losing.

Layering: ``ledger`` (the HTTP client, proofs) and ``shards``; no node code.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.runtime.gas import MAX_TX_GAS
from ledger import codec
from ledger.block import BlockError, BlockHeader
from ledger.certificate import CertificateError, CommitCertificate
from ledger.client import Account
from ledger.crypto import PrivateKey
from ledger.httpclient import ApiError, Client
from ledger.log import get_logger
from ledger.state import ProofError, verify_proof
from ledger.statekeys import state_key
from ledger.validators import ValidatorSet
from shards.errors import BridgeError
from shards.lightclient import (
    LightClient,
    ScheduleProof,
    decode_certificate,
    encode_certificate,
    validator_epoch_key,
)
from shards.packets import (
    MAX_DELIVERY_ITEMS,
    MAX_DELIVERY_SIZE,
    Delivery,
    Packet,
    outbox_key,
    verify_packet_proof,
)
from shards.relay import Handover, SourceEpoch, build_delivery, plan_channel
from shards.topology import parent_of

__all__ = [
    "Channel",
    "HANDOVER_VERSION",
    "ProvenState",
    "RelayError",
    "Relayer",
    "RelayerStats",
    "ShardEndpoint",
    "channels_between",
    "decode_handover",
    "encode_handover",
    "read_proven",
]

# Validator-set records read per look-up beyond the client's latest epoch: changes are
# rare governance events, and a longer schedule is read in further look-ups.
EPOCH_LOOKAHEAD = 4
# An idle BFT channel is refreshed once the source's head is this many checkpoint
# intervals from the horizon of the destination's client (which lies four to five
# intervals beyond its last confirmation): a refresh every two to three intervals.
REFRESH_INTERVALS = 2
# Packets read per delivery when the source's send_seq is not known yet.
DEFAULT_BATCH = 16
# Receipt error codes meaning another relayer was faster: nothing is wrong.
RACE_CODES = ("already_delivered", "out_of_order")
# The format of a hand-over bundle as nodes keep and serve it (``encode_handover``).
HANDOVER_VERSION = 1
# Hand-over deliveries made in one call of ``relay_channel`` before its packets (one per
# validator epoch the destination's client lacks; changes are rare governance events).
MAX_HANDOVERS_PER_ROUND = 8


class RelayError(Exception):
    """A round on a channel could not be completed; ``code`` says why (counted in metrics)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ShardEndpoint:
    """A shard the relayer serves: its nodes' APIs (the first that answers is used; the next
    when it stops answering) and the validator set that verifies what they serve."""

    shard: str
    urls: tuple[str, ...] | str
    validators: ValidatorSet
    protocol: str

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            object.__setattr__(self, "urls", (self.urls,))
        if not self.urls:
            raise RelayError("bad_config", f"shard {self.shard} needs at least one node URL")


@dataclass(frozen=True, order=True)
class Channel:
    src: str
    dst: str

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}"


def channels_between(shards: Sequence[str]) -> list[Channel]:
    """Both directions of every parent-child pair among ``shards``."""
    present = set(shards)
    found = []
    for shard in sorted(present):
        parent = parent_of(shard)
        if parent in present:
            found += [Channel(shard, parent), Channel(parent, shard)]
    return found


@dataclass(frozen=True)
class ProvenState:
    """Values of several keys proven under one header, with its certificate (proofs checked)."""

    header: BlockHeader
    certificate: CommitCertificate
    values: dict[bytes, tuple[bytes | None, bytes]]  # key -> (value or None, proof)

    def value(self, key: bytes) -> Any:
        raw = self.values[key][0]
        return None if raw is None else codec.decode(raw, max_size=len(raw), allow_maps=False)

    def int_value(self, key: bytes) -> int:
        value = self.value(key)
        if value is None:
            return 0
        if type(value) is not int or value < 0:
            raise RelayError("bad_state", f"the counter under {key.hex()[:24]}... is not a count: {value!r}")
        return value


async def read_proven(client: Client, shard: str, keys: Sequence[bytes],
                      validators: ValidatorSet | None = None, protocol: str = "bft") -> ProvenState:
    """Read ``keys`` under one header of ``shard``; every proof is checked against the
    header's state root, and with ``validators`` the certificate too (else the caller
    verifies the header, e.g. with a light client). Raises :class:`RelayError`."""
    try:
        _, body = await client.request("POST", "/v1/state/proofs", json_body={"keys": [k.hex() for k in keys]})
    except ApiError as exc:
        # No answer (or a node that cannot serve at all): try another node of the shard.
        # A node without certified state yet (height 0, catching up) is merely not ready.
        code = "not_ready" if exc.code in ("not_ready", "not_certified") else (
            "unavailable" if exc.status in (0, 503) else "api_error")
        raise RelayError(code, f"{shard}: {exc}") from None
    try:
        header = BlockHeader.decode(bytes.fromhex(body["header_hex"]))
        certificate = CommitCertificate.decode(bytes.fromhex(body["certificate_hex"]))
        items = body["values"]
        if not isinstance(items, list) or len(items) != len(keys):
            raise ValueError("not one value per key")
        values = {}
        for key, item in zip(keys, items, strict=True):
            if item["key_hex"] != key.hex():
                raise ValueError("the values are not in the order asked")
            value = None if item["value_hex"] is None else bytes.fromhex(item["value_hex"])
            values[key] = (value, bytes.fromhex(item["proof"]))
    except (KeyError, TypeError, ValueError, BlockError, CertificateError) as exc:
        raise RelayError("bad_answer", f"{shard} answered outside the API: {exc}") from None
    if header.chain_id != shard:
        raise RelayError("wrong_shard", f"the node at this URL serves {header.chain_id!r}, not {shard!r}")
    if validators is not None:
        if header.validator_set_hash != validators.hash:
            raise RelayError("bad_certificate", f"{shard} header {header.height} names another validator set")
        if certificate.protocol != protocol:
            raise RelayError("bad_certificate", f"{shard} runs {protocol}; the certificate is {certificate.protocol}")
        try:
            certificate.verify(shard, validators, height=header.height, digest=header.hash)
        except CertificateError as exc:
            raise RelayError("bad_certificate", f"{shard} header {header.height}: {exc}") from None
    for key, (value, proof) in values.items():
        try:
            ok = verify_proof(header.state_root, key, value, proof)
        except ProofError as exc:
            raise RelayError("bad_proof", f"{shard}: {exc}") from None
        if not ok:
            raise RelayError("bad_proof", f"{shard}: a served value does not match the certified state root")
    return ProvenState(header, certificate, values)


def encode_handover(bundle: Handover, *, allow_pending: bool = False) -> bytes:
    """A hand-over bundle as nodes keep and serve it (``GET /v1/shards/handover/{epoch}``):
    ``[version, epoch, header, certificate, [schedule proof...]]``, canonical encoding.
    ``allow_pending``: a node's own pending record, whose certificate is nil."""
    if bundle.certificate is None and not allow_pending:
        raise BridgeError("bad_bundle", f"the bundle of epoch {bundle.epoch} has no certificate")
    certificate = None if bundle.certificate is None else encode_certificate(bundle.certificate)
    return codec.encode([HANDOVER_VERSION, bundle.epoch, bundle.header.to_fields(), certificate,
                         [item.to_fields() for item in bundle.schedule]])


def decode_handover(data: bytes, *, allow_pending: bool = False) -> Handover:
    """The inverse of :func:`encode_handover`; raises ``BridgeError`` (``bad_bundle``) saying
    what is malformed. Decoding checks the shape only: the light client verifies."""
    try:
        fields = codec.decode(data, max_size=MAX_DELIVERY_SIZE, max_depth=8)
    except codec.CodecError as exc:
        raise BridgeError("bad_bundle", f"a hand-over bundle does not decode: {exc}") from None
    if (not isinstance(fields, list) or len(fields) != 5 or fields[0] != HANDOVER_VERSION
            or type(fields[1]) is not int or fields[1] < 1 or not isinstance(fields[4], list) or not fields[4]):
        raise BridgeError("bad_bundle", f"a hand-over bundle is [{HANDOVER_VERSION}, epoch >= 1, header, certificate, "
                                        "[schedule proof, ...]] with at least one proof")
    try:
        header = BlockHeader.from_fields(fields[2])
    except BlockError as exc:
        raise BridgeError("bad_bundle", f"hand-over header: {exc}") from None
    if fields[3] is None and allow_pending:
        certificate = None
    else:
        certificate = decode_certificate(fields[3])
    schedule = tuple(ScheduleProof.from_fields(item) for item in fields[4])
    if schedule[0].epoch != fields[1]:
        raise BridgeError("bad_bundle", f"the bundle of epoch {fields[1]} must prove that epoch's record first")
    return Handover(fields[1], header, certificate, schedule)


@dataclass
class RelayerStats:
    """What ``/metrics`` shows: counts since start."""

    rounds: int = 0
    deliveries: int = 0  # committed deliveries that handled packets
    packets: int = 0  # packets handled at their destination by our deliveries
    duplicates: int = 0  # deliveries another relayer had already made
    refreshes: int = 0  # schedule-only deliveries to idle BFT channels
    handovers: int = 0  # hand-over bundles delivered (validator-set changes taught)
    failures: Counter = field(default_factory=Counter)  # by code
    per_channel: Counter = field(default_factory=Counter)  # packets delivered, by "src -> dst"
    last_error: str = ""
    last_round_at: float = 0.0


class Relayer:
    """Relay the ``channels`` among ``shards`` with ``key`` until ``stop`` is set."""

    def __init__(
        self,
        key: PrivateKey,
        shards: dict[str, ShardEndpoint],
        channels: Sequence[Channel],
        *,
        poll_s: float = 0.2,
        gas_limit: int = MAX_TX_GAS,
        commit_timeout_s: float = 15.0,
        logger: Any = None,
        client_factory: Callable[[str], Client] = Client,
    ) -> None:
        for channel in channels:
            for shard in (channel.src, channel.dst):
                if shard not in shards:
                    raise RelayError("bad_config", f"channel {channel} names {shard!r}, which has no endpoint")
        self.key = key
        self.shards = shards
        self.channels = list(channels)
        self.poll_s = poll_s
        self.gas_limit = gas_limit
        self.commit_timeout_s = commit_timeout_s
        self.log = logger if logger is not None else get_logger(component="relayer")
        self.stats = RelayerStats()
        self._clients = {s: [client_factory(u) for u in e.urls] for s, e in shards.items()}
        self._current = dict.fromkeys(shards, 0)
        self._accounts: dict[str, Account] = {}
        self._last_failure: dict[str, str] = {}
        self._horizons: dict[Channel, int | None] = {}  # the destination client's horizon, as last read
        self._horizon_after: dict[Channel, int | None] = {}  # ... once the delivery built last commits
        self._intervals: dict[Channel, int] = {}  # the source's checkpoint interval, from the client
        self._submit_locks = {s: asyncio.Lock() for s in shards}
        # Packets per delivery on a channel, once one ran out of gas: a delivery of many
        # heavy packets (flows over many periods) may not fit one transaction's gas.
        self._item_caps: dict[Channel, int] = {}

    async def close(self) -> None:
        for clients in self._clients.values():
            for client in clients:
                await client.close()

    def client(self, shard: str) -> Client:
        """The client of the node of ``shard`` in use."""
        return self._clients[shard][self._current[shard]]

    def _unreachable(self, shard: str) -> None:
        """Turn to the shard's next node (a restart or an outage of the one in use)."""
        clients = self._clients[shard]
        if len(clients) > 1:
            self._current[shard] = (self._current[shard] + 1) % len(clients)
            self.log.info("turning to another node", shard=shard, url=self.client(shard).base_url)

    async def _read(self, shard: str, keys: Sequence[bytes], *, verify: bool = True) -> ProvenState:
        endpoint = self.shards[shard]
        try:
            return await read_proven(self.client(shard), shard, keys, endpoint.validators if verify else None,
                                     endpoint.protocol)
        except RelayError as exc:
            if exc.code == "unavailable":
                self._unreachable(shard)
            raise

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            moved = await self.round()
            if not moved:
                try:
                    await asyncio.wait_for(stop.wait(), self.poll_s)
                except TimeoutError:
                    pass

    # ------------------------------------------------------------------ one round

    async def round(self) -> int:
        """Poll every shard once and serve every channel with packets waiting; returns the
        number of packets delivered (0: nothing moved)."""
        self.stats.rounds += 1
        self.stats.last_round_at = time.time()
        counters, heads = await self._poll()
        work, idle = [], []
        for channel in self.channels:
            sent = counters.get(channel.src, {}).get(("send", channel.dst))
            handled = counters.get(channel.dst, {}).get(("recv", channel.src))
            if sent is not None and handled is not None and handled < sent:
                work.append(channel)
            elif channel.src in heads and channel.dst in heads and self._due(channel, heads[channel.src]):
                idle.append(channel)
        results = await asyncio.gather(*(self._serve(c, counters[c.src][("send", c.dst)]) for c in work),
                                       *(self._serve_idle(c, heads[c.src]) for c in idle))
        return sum(results)

    def _due(self, channel: Channel, head: int) -> bool:
        """An idle BFT channel whose source head nears the destination client's horizon."""
        if self.shards[channel.src].protocol != "bft":
            return False  # a Raft source: the client follows the latest set at any height
        if channel not in self._horizons:
            return True  # not read yet
        horizon = self._horizons[channel]
        return horizon is not None and head >= horizon - self._margin(channel)

    def _margin(self, channel: Channel) -> int:
        return REFRESH_INTERVALS * self._intervals.get(channel, 16)

    async def _poll(self) -> tuple[dict[str, dict[tuple[str, str], int]], dict[str, int]]:
        """Each shard's channel counters, and its certified head height."""
        async def poll(shard: str) -> tuple[str, dict | None, int | None]:
            keys: dict[tuple[str, str], bytes] = {}
            for c in self.channels:
                if c.src == shard:
                    keys[("send", c.dst)] = state_key("bridge", "send_seq", [c.dst])
                if c.dst == shard:
                    keys[("recv", c.src)] = state_key("bridge", "recv_seq", [c.src])
            if not keys:
                return shard, None, None
            try:
                state = await self._read(shard, list(keys.values()))
            except RelayError as exc:
                self._failed(exc, f"poll {shard}")
                return shard, None, None
            self._recovered(f"poll {shard}")
            return shard, {name: state.int_value(key) for name, key in keys.items()}, state.header.height

        results = await asyncio.gather(*(poll(s) for s in self.shards))
        counters = {shard: c for shard, c, _ in results if c is not None}
        heads = {shard: h for shard, _, h in results if h is not None}
        return counters, heads

    def _recovered(self, where: str) -> None:
        if self._last_failure.pop(where, None) is not None:
            self.log.info("relay round succeeds again", where=where)

    async def _serve(self, channel: Channel, sent: int) -> int:
        try:
            moved = await self.relay_channel(channel, sent)
            self._recovered(str(channel))
            return moved
        except RelayError as exc:
            self._failed(exc, str(channel))
        except BridgeError as exc:
            self._failed(RelayError(exc.code, exc.message), str(channel))
        return 0

    async def _serve_idle(self, channel: Channel, head: int) -> int:
        try:
            await self.refresh_channel(channel, head)
            self._recovered(f"refresh {channel}")
        except RelayError as exc:
            self._failed(exc, f"refresh {channel}")
        except BridgeError as exc:
            self._failed(RelayError(exc.code, exc.message), f"refresh {channel}")
        return 0

    async def refresh_channel(self, channel: Channel, head: int | None = None) -> bool:
        """A schedule-only delivery on ``channel`` if the source's head (``head``: as polled;
        None: deliver anyway) is within ``REFRESH_INTERVALS`` checkpoint intervals of the
        destination client's horizon. Returns True if one was committed."""
        src, dst = channel.src, channel.dst
        recv_key, client_key = state_key("bridge", "recv_seq", [src]), state_key("bridge", "client", [src])
        at_dst = await self._read(dst, [recv_key, client_key])
        client = self._client_of(at_dst, client_key, channel)
        horizon = self._horizons[channel] = client.horizon()
        self._intervals[channel] = client.checkpoint_interval
        if horizon is None or (head is not None and head < horizon - self._margin(channel)):
            return False
        delivery = await self._build(channel, client, at_dst.int_value(recv_key), None, schedule_only=True)
        if delivery is None:
            return False
        await self.submit(channel, delivery, handover=any(item.value is not None for item in delivery.schedule))
        return True

    def _client_of(self, state: ProvenState, key: bytes, channel: Channel) -> LightClient:
        fields = state.value(key)
        if fields is None:
            raise RelayError("no_light_client",
                             f"{channel.dst} keeps no light client of {channel.src} (is it a neighbour in its topology?)")
        try:
            return LightClient.from_fields(fields)
        except BridgeError as exc:
            raise RelayError("bad_state", f"{channel.dst}'s light client of {channel.src}: {exc}") from None

    def _failed(self, exc: RelayError, where: str) -> None:
        self.stats.failures[exc.code] += 1
        self.stats.last_error = f"{where}: {exc}"
        # A node that is down fails every round the same way: say it once, and again
        # when the reason changes (the count is in the metrics).
        if self._last_failure.get(where) != exc.code:
            self._last_failure[where] = exc.code
            self.log.warning("relay round failed", where=where, code=exc.code, reason=exc.message)

    # ------------------------------------------------------------------ one channel

    async def relay_channel(self, channel: Channel, sent: int | None = None) -> int:
        """One delivery on ``channel`` if packets wait; returns the packets it delivered.
        ``sent``: the source's ``send_seq`` as last seen (bounds the packets read)."""
        for _ in range(MAX_HANDOVERS_PER_ROUND):
            delivery = await self.prepare(channel, sent)
            if delivery is None:
                return 0
            if delivery.items:
                return await self.submit(channel, delivery)
            # Without packets, prepare() gives only a hand-over: deliver it, then plan again
            # with the client that now knows the epoch (the next bundle, or the packets).
            await self.submit(channel, delivery, handover=True)
        return 0

    async def fetch_handover(self, channel: Channel, client: LightClient, epoch: int) -> Delivery:
        """The schedule-only delivery of the source's hand-over bundle of ``epoch``, fetched
        from the source's nodes (each in turn until one serves a bundle that ``client``, the
        destination's light client, accepts and learns the epoch from). Raises
        :class:`RelayError` (``handover_unavailable``) when none does."""
        src = channel.src
        clients = self._clients[src]
        start = self._current[src]
        reasons = []
        for i in range(len(clients)):
            node = clients[(start + i) % len(clients)]
            try:
                _, body = await node.request("GET", f"/v1/shards/handover/{epoch}")
                bundle = decode_handover(bytes.fromhex(body["bundle_hex"]))
                return self.check_handover(channel, client, epoch, bundle)
            except ApiError as exc:
                reasons.append(f"{node.base_url}: {exc.code}: {exc.message}")
            except (BridgeError, RelayError) as exc:  # a bundle that does not decode, or one dst would refuse
                reasons.append(f"{node.base_url}: {exc}")
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                reasons.append(f"{node.base_url}: answered outside the API ({type(exc).__name__}: {exc})")
        raise RelayError(
            "handover_unavailable",
            f"{channel.dst}'s client of {src} must learn validator epoch {epoch} from a hand-over bundle, and no node "
            f"of {src} serves one it accepts: " + "; ".join(reasons),
        )

    def check_handover(self, channel: Channel, client: LightClient, epoch: int, bundle: Handover) -> Delivery:
        """``bundle`` as a schedule-only delivery on ``channel``, checked exactly as the
        destination will check it (a copy of its light client ``client`` must accept it and
        learn ``epoch``). Raises :class:`RelayError` saying what is wrong."""
        src, dst = channel.src, channel.dst
        if bundle.epoch != epoch:
            raise RelayError("bad_bundle", f"asked for the bundle of epoch {epoch}, got epoch {bundle.epoch}'s")
        if bundle.header.chain_id != src:
            raise RelayError("wrong_shard", f"the bundle's header is of {bundle.header.chain_id!r}, not {src!r}")
        try:
            delivery = build_delivery(src, dst, bundle.header, bundle.certificate, bundle.schedule, ())
            trial = LightClient.from_fields(client.to_fields())
            trial.accept(delivery.header, delivery.certificate, delivery.schedule)
        except BridgeError as exc:
            raise RelayError(exc.code, f"{src}'s bundle of epoch {epoch} is one {dst} would refuse: {exc.message}") from None
        if trial.latest.number < epoch:
            raise RelayError("bad_bundle", f"{src}'s bundle of epoch {epoch} does not prove that epoch's record")
        self._horizon_after[channel] = trial.horizon()
        return delivery

    async def prepare(self, channel: Channel, sent: int | None = None) -> Delivery | None:
        """The next delivery on ``channel``, checked as its destination will check it (None:
        nothing waits). Raises :class:`RelayError` (or a ``BridgeError``) when it cannot."""
        src, dst = channel.src, channel.dst
        recv_key, client_key = state_key("bridge", "recv_seq", [src]), state_key("bridge", "client", [src])
        at_dst = await self._read(dst, [recv_key, client_key])
        client = self._client_of(at_dst, client_key, channel)
        return await self._build(channel, client, at_dst.int_value(recv_key), sent)

    async def _build(self, channel: Channel, client: LightClient, next_recv: int, sent: int | None, *,
                     schedule_only: bool = False) -> Delivery | None:
        src, dst = channel.src, channel.dst
        known = client.latest.number
        send_key = state_key("bridge", "send_seq", [dst])
        lookahead = EPOCH_LOOKAHEAD
        while True:
            epoch_numbers = list(range(known + 1, known + 1 + lookahead))
            # The packets the poll saw (or a guess); the plan below trims them to send_seq,
            # and what was sent since goes in the next delivery.
            wanted = DEFAULT_BATCH if sent is None else sent - next_recv
            cap = self._item_caps.get(channel, MAX_DELIVERY_ITEMS)
            seqs = range(next_recv, next_recv + (0 if schedule_only else max(1, min(cap, wanted))))
            keys = [send_key, *(validator_epoch_key(e) for e in epoch_numbers), *(outbox_key(dst, s) for s in seqs)]
            # Verified below as the destination will: by its light client of the source.
            state = await self._read(src, keys, verify=False)
            epochs = []
            for number in epoch_numbers:
                raw = state.values[validator_epoch_key(number)][0]
                if raw is None:
                    break
                after = codec.decode(raw, max_size=len(raw))[0]
                epochs.append(SourceEpoch(number, after))
            if len(epochs) < lookahead:
                break
            lookahead *= 2  # every record read was present: look further
        next_send = next_recv if schedule_only else state.int_value(send_key)
        # Within the packets read: send_seq may have moved on since the poll that set ``sent``.
        plan = plan_channel(client, epochs, state.header.height, next_recv, next_send, max_items=len(seqs))
        if plan.handover_epoch is not None:
            # The source's head is certified by a set the client does not know: teach it
            # the change first, with the bundle the source's nodes kept for that epoch.
            return await self.fetch_handover(channel, client, plan.handover_epoch)
        if not plan.seqs and not schedule_only:
            return None
        items = []
        for seq in plan.seqs:
            raw, proof = state.values[outbox_key(dst, seq)]
            if raw is None:
                break  # not yet written at this height (the poll ran ahead), or pruned
            try:
                packet = Packet.decode(raw)
            except BridgeError as exc:
                raise RelayError("bad_state", f"{src} outbox #{seq}: {exc}") from None
            items.append((packet, proof))
        if not items and not schedule_only:
            return None
        schedule = [ScheduleProof(e, *state.values[validator_epoch_key(e)]) for e in plan.schedule_epochs]
        delivery = build_delivery(src, dst, state.header, state.certificate, schedule, items)
        # The destination's own checks, on a copy of its client: nothing unverified is submitted.
        trial = LightClient.from_fields(client.to_fields())
        try:
            trial.accept(delivery.header, delivery.certificate, delivery.schedule)
            for packet, proof in delivery.items:
                verify_packet_proof(delivery.header, packet, proof)
        except BridgeError as exc:
            raise RelayError(exc.code, f"{src} served what {dst} would refuse: {exc.message}") from None
        self._horizon_after[channel] = trial.horizon()
        return delivery

    async def submit(self, channel: Channel, delivery: Delivery, *, handover: bool = False) -> int:
        """Submit ``delivery`` as ``bridge.deliver`` signed with the relayer's key and wait for
        its commit; returns the packets it handled (0: another relayer was faster).
        ``handover``: the delivery is a hand-over bundle (counted and logged as such)."""
        dst = channel.dst
        node = self.client(dst)
        data = delivery.encode()
        first, last = (delivery.items[0][0].seq, delivery.items[-1][0].seq) if delivery.items else (None, None)
        what = f"#{first}-{last}" if delivery.items else ("(hand-over)" if handover else "(schedule only)")
        async with self._submit_locks[dst]:
            account = await self._account(dst)
            tx = account.call("bridge", "deliver", [data], gas_limit=self.gas_limit)
            try:
                result = await node.submit(tx, wait=True, timeout_s=self.commit_timeout_s)
            except ApiError as exc:
                # Whether or not it was admitted, re-read the nonce next time.
                self._accounts.pop(dst, None)
                if exc.status == 0:
                    self._unreachable(dst)
                raise RelayError("unavailable" if exc.status in (0, 503) else exc.code,
                                 f"{dst} refused the delivery of {channel} {what}: {exc.message}") from None
        if not result.committed:
            self._accounts.pop(dst, None)
            raise RelayError("not_committed", f"the delivery of {channel} {what} is {result.status} "
                                              f"after {self.commit_timeout_s:g} s")
        receipt = result.receipt
        if receipt is not None and receipt.ok:
            if channel in self._horizon_after:
                self._horizons[channel] = self._horizon_after.pop(channel)
            count = len(delivery.items)
            if handover:
                self.stats.handovers += 1
                self.log.info("handed over a validator-set change", channel=str(channel), height=result.height,
                              source_height=delivery.header.height,
                              epochs=[item.epoch for item in delivery.schedule if item.value is not None])
                return 0
            if not count:
                self.stats.refreshes += 1
                self.log.info("refreshed an idle bridge", channel=str(channel), height=result.height,
                              source_height=delivery.header.height, horizon=self._horizons.get(channel))
                return 0
            self.stats.deliveries += 1
            self.stats.packets += count
            self.stats.per_channel[str(channel)] += count
            self.log.info("delivered", channel=str(channel), first=first, last=last, height=result.height,
                          source_height=delivery.header.height)
            return count
        code, message = receipt.error if receipt is not None and receipt.error is not None else ("failed", "")
        if code == "out_of_gas" and len(delivery.items) > 1:
            # Deliver fewer packets at a time on this channel from now on (down to one).
            self._item_caps[channel] = len(delivery.items) // 2
            self.log.warning("delivery ran out of gas: fewer packets per delivery", channel=str(channel),
                             packets=len(delivery.items), now=self._item_caps[channel], gas_limit=self.gas_limit)
        if code in RACE_CODES or (handover and code == "schedule_mismatch"):
            # (A hand-over another relayer delivered first: the client already knows the epoch.)
            self.stats.duplicates += 1
            self.log.info("delivery already made by another relayer", channel=str(channel), first=first, last=last, code=code)
            return 0
        raise RelayError(code, f"{dst} refused the delivery of {channel} {what}: {message}")

    async def _account(self, shard: str) -> Account:
        account = self._accounts.get(shard)
        if account is None:
            try:
                nonce = await self.client(shard).next_nonce(self.key.address)
            except ApiError as exc:
                self._unreachable(shard)
                raise RelayError("unavailable", f"{shard}: cannot read the relayer's nonce: {exc}") from None
            account = self._accounts[shard] = Account(self.key, chain_id=shard, next_nonce=nonce)
        return account
