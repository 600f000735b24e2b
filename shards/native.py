"""The flow module inside a node: the executor's native ``bridge`` module.

A shard whose genesis has a topology runs :class:`BridgeModule` as the executor's native
module ``bridge`` (``contracts.executor.Executor(natives=...)``). Each transaction to
``bridge`` runs :class:`shards.flow.FlowModule` with the block time as ``now``, over

* :class:`HostStorage`: the module's ``Storage`` on the executor's layered state, values
  ``codec.encode(value)`` under ``state_key("bridge", name, parts)`` (DESIGN.md section 5);
* :class:`MarketEffects`: the module's ``Effects`` as calls of the market contracts'
  ``bridge_*`` functions (MARKET.md section 12), made *as the module*: the contracts
  check that the caller is ``bridge`` with the module's account as sender.

Transactions (arguments positional, as a transaction carries them; the sender is the
transaction's signer):

=========================================================================  ===================
``open_flow(destination, token, price, currency, energy_wh, first_period,  the consumer; returns
last_period, fee_budget, deadline, point=None)``                            the flow id (bytes)
``deliver(delivery)``: the encoded ``shards.packets.Delivery``             anyone; returns
                                                                            [processed, duplicates, frozen]
``settle(flow_id)``                                                        anyone
``redispatch(flow_id)``                                                    the grid operator
``register_bridge(child, capacity_wh, fee_per_kwh)``                       the grid operator
``submit_evidence(neighbour, evidence)``: ``Equivocation.encode()``        anyone
=========================================================================  ===================

A refusal (``FlowRefused``, ``PacketError``, ``LightClientError``, any ``BridgeError``)
becomes a failed receipt whose error is ``(code, message)``; the executor drops every
write and event of the transaction. Gas: the fixed cost per operation in :data:`GAS`
plus the executor's per-byte charge on the arguments, then every state access and
contract call at the runtime's rates.

Genesis: :func:`check_genesis_topology` checks the genesis ``topology`` section against
the topology document, :func:`bridge_natives` gives the executor's natives and
:func:`bridge_genesis_writes` the module's state at height 0 (light clients of the
neighbours, the genesis bridge registrations).
"""

from __future__ import annotations

from typing import Any

from contracts.executor import NativeHost
from contracts.runtime.errors import ContractError
from ledger import codec
from ledger.genesis import Genesis, GenesisError
from ledger.statekeys import state_key
from shards.errors import BridgeError, FlowRefused, TopologyError
from shards.flow import FlowModule, install_genesis, split_transfer
from shards.lightclient import Equivocation
from shards.packets import Delivery
from shards.records import FlowSpec
from shards.topology import Topology, bridge_address

__all__ = [
    "GAS",
    "MODULE",
    "BridgeModule",
    "HostStorage",
    "MarketEffects",
    "bridge_genesis_writes",
    "bridge_natives",
    "check_genesis_topology",
]

MODULE = "bridge"
# Fixed gas per operation, on top of the transaction's base cost and NATIVE_ARG_BYTE per
# argument byte; state accesses and contract calls are charged as they happen. Sized
# from the work the runtime does not meter: a delivery verifies up to 2f + 1 Ed25519
# signatures (~70 us each: ~3,000 units apiece at the runtime's calibration) or a BLS
# aggregate (~2 ms: 100,000 units) and decodes its light client; the others decode a
# few records.
GAS: dict[str, int] = {
    "open_flow": 20_000,
    "deliver": 150_000,
    "settle": 10_000,
    "redispatch": 10_000,
    "register_bridge": 5_000,
    "submit_evidence": 150_000,
}


# ---------------------------------------------------------------- storage and effects


class HostStorage:
    """:class:`shards.records.Storage` over the executor's layered state."""

    __slots__ = ("_host",)

    def __init__(self, host: NativeHost) -> None:
        self._host = host

    def get(self, name: str, parts: list) -> Any | None:
        raw = self._host.get(state_key(MODULE, name, parts))
        return None if raw is None else codec.decode(raw, max_size=len(raw))

    def put(self, name: str, parts: list, value: Any) -> None:
        self._host.put(state_key(MODULE, name, parts), codec.encode(value))

    def delete(self, name: str, parts: list) -> None:
        self._host.put(state_key(MODULE, name, parts), None)


def _contract_code(exc: ContractError) -> str:
    """The market's code of a contract refusal (``"<code>: <text>"`` for reserved codes)."""
    if exc.code != "contract_error":
        return exc.code
    head, sep, _ = exc.message.partition(": ")
    if sep and head and all(c.islower() or c.isdigit() or c == "_" for c in head):
        return head
    return exc.code


class MarketEffects:
    """:class:`shards.records.Effects` as calls of the market contracts, made as the module."""

    def __init__(self, host: NativeHost, shard: str, topology: Topology) -> None:
        self.host = host
        self.shard = shard
        self._bridges = {bridge_address(shard, n): n for n in topology.neighbours(shard)}
        self._grid_operator: bytes | None = None

    def _account(self, neighbour: str) -> bytes:
        return bridge_address(self.shard, neighbour)

    def grid_operator(self) -> bytes:
        if self._grid_operator is None:
            self._grid_operator = self.host.call("market_config", "get", "grid_operator")
        return self._grid_operator

    def check_buyer(self, consumer: bytes, point: bytes, energy_wh: int, first_period: int, last_period: int) -> str | None:
        return self.host.call("energy_tokens", "bridge_check_buyer", consumer, point, energy_wh, first_period, last_period)

    def hold_buyer(self, flow_id: bytes, consumer: bytes, energy_wh: int, first_period: int, last_period: int) -> None:
        self.host.call("energy_tokens", "bridge_hold_buyer", flow_id, consumer, energy_wh, first_period, last_period)

    def release_buyer(self, flow_id: bytes) -> None:
        self.host.call("energy_tokens", "bridge_release_buyer", flow_id)

    def lock(self, flow_id: bytes, payer: bytes, currency: str, amount: int) -> None:
        try:
            self.host.call("fiat", "bridge_lock", currency, payer, amount, flow_id)
        except ContractError as exc:
            # The one effect that may refuse; the transaction fails with it, so the
            # host's refusal of further calls is never reached.
            raise FlowRefused(_contract_code(exc), exc.message) from None

    def pay(self, flow_id: bytes, payee: bytes, currency: str, amount: int, reason: str) -> None:
        self.host.call("fiat", "bridge_pay", currency, payee, amount, reason, flow_id)

    def send(self, flow_id: bytes, neighbour: str, currency: str, amount: int) -> tuple[int, int]:
        account = self._account(neighbour)
        minted = self.host.call("fiat", "bridge_minted_of", currency, account)
        release, mint = split_transfer(minted, amount)
        self.host.call("fiat", "bridge_send", currency, account, release, mint, flow_id)
        return release, mint

    def receive(self, flow_id: bytes, neighbour: str, currency: str, release: int, mint: int) -> None:
        self.host.call("fiat", "bridge_receive", currency, self._account(neighbour), release, mint, flow_id)

    def check_offer(self, spec: FlowSpec) -> str | None:
        return self.host.call(
            "energy_tokens", "bridge_check_offer", spec.token, spec.price, spec.currency, spec.energy_wh,
            spec.first_period, spec.last_period,
        )

    def buy_offer(self, flow_id: bytes, spec: FlowSpec, buyer: bytes) -> tuple[int, bytes, tuple[str, int]]:
        serial, seller, category, co2_mg = self.host.call("energy_tokens", "bridge_buy_offer", spec.token, buyer, flow_id)
        return serial, seller, (category, co2_mg)

    def revert_offer(self, flow_id: bytes, spec: FlowSpec, token: int, seller: bytes) -> None:
        self.host.call("energy_tokens", "bridge_revert_offer", token, seller, flow_id)

    def create_hop_token(
        self, flow_id: bytes, spec: FlowSpec, producer: bytes, consumer: bytes, point: bytes, energy: tuple[str, int]
    ) -> int:
        return self.host.call(
            "energy_tokens", "bridge_create_hop_token", flow_id, producer, consumer, point, consumer in self._bridges,
            spec.energy_wh, spec.first_period, spec.last_period, spec.currency, energy[0], energy[1],
        )

    def cancel_hop_token(self, flow_id: bytes, token: int) -> None:
        self.host.call("energy_tokens", "bridge_cancel_hop_token", token, flow_id)


# ---------------------------------------------------------------- the native module


def _bad_args(message: str) -> ContractError:
    return ContractError(message, code="bad_args")


def _args(args: list, function: str, types: tuple, optional: int = 0) -> list:
    """Check positional arguments against ``types`` (the last ``optional`` may be absent or None)."""
    if not len(types) - optional <= len(args) <= len(types):
        raise _bad_args(f"bridge.{function} takes {len(types) - optional}..{len(types)} arguments, got {len(args)}")
    for i, (value, wanted) in enumerate(zip(args, types, strict=False)):
        if i >= len(types) - optional and value is None:
            continue
        if type(value) is not wanted:
            raise _bad_args(f"bridge.{function} argument {i + 1} must be {wanted.__name__}, not {type(value).__name__}")
    return list(args) + [None] * (len(types) - len(args))


class BridgeModule:
    """The native module ``bridge`` of ``shard``: see the module docstring. Holds no state."""

    def __init__(self, shard: str, topology: Topology) -> None:
        topology.shard(shard)
        self.shard = shard
        self.topology = topology

    def gas(self, function: str) -> int | None:
        return GAS.get(function)

    def run(self, host: NativeHost, function: str, args: list) -> Any:
        module = FlowModule(self.shard, self.topology, HostStorage(host), MarketEffects(host, self.shard, self.topology))
        try:
            return getattr(self, "_" + function)(module, host, args)
        except BridgeError as exc:
            # A code the runtime reserves (not_active, ...) is the flow's code here too: the
            # receipt carries what the protocol says, as DESIGN.md's tables name it.
            raise ContractError(exc.message, code=exc.code) from None
        except codec.CodecError as exc:
            raise _bad_args(f"bridge.{function}: {exc}") from None

    # The operations, each (module, host, args) -> result.

    def _open_flow(self, module: FlowModule, host: NativeHost, args: list) -> bytes:
        destination, token, price, currency, energy_wh, first, last, budget, deadline, point = _args(
            args, "open_flow", (str, int, int, str, int, int, int, int, int, bytes), optional=1
        )
        spec = module.open_flow(
            host.time, host.sender, destination=destination, token=token, price=price, currency=currency,
            energy_wh=energy_wh, first_period=first, last_period=last, fee_budget=budget, deadline=deadline, point=point,
        )
        host.emit("FlowOpened", flow_id=spec.flow_id, number=spec.number, consumer=spec.consumer, destination=destination)
        return spec.flow_id

    def _deliver(self, module: FlowModule, host: NativeHost, args: list) -> list:
        (data,) = _args(args, "deliver", (bytes,))
        report = module.deliver(host.time, Delivery.decode(data))
        return [report.processed, report.duplicates, report.frozen]

    def _settle(self, module: FlowModule, host: NativeHost, args: list) -> None:
        (flow_id,) = _args(args, "settle", (bytes,))
        module.settle(host.time, flow_id)

    def _redispatch(self, module: FlowModule, host: NativeHost, args: list) -> None:
        (flow_id,) = _args(args, "redispatch", (bytes,))
        module.redispatch(host.time, host.sender, flow_id)

    def _register_bridge(self, module: FlowModule, host: NativeHost, args: list) -> None:
        child, capacity_wh, fee_per_kwh = _args(args, "register_bridge", (str, int, int))
        module.register_bridge(host.sender, child, capacity_wh, fee_per_kwh)

    def _submit_evidence(self, module: FlowModule, host: NativeHost, args: list) -> None:
        neighbour, data = _args(args, "submit_evidence", (str, bytes))
        evidence = Equivocation.from_fields(codec.decode(data, max_size=len(data), max_depth=8))
        if evidence.shard != neighbour:
            raise FlowRefused("bad_evidence", f"the evidence is against {evidence.shard!r}, not {neighbour!r}")
        module.submit_evidence(neighbour, evidence)


assert set(GAS) == {n[1:] for n in vars(BridgeModule) if n.startswith("_") and not n.startswith("__")}


# ---------------------------------------------------------------- genesis


def check_genesis_topology(genesis: Genesis) -> Topology | None:
    """The topology of a genesis with a ``topology`` section, checked against it (None
    without one). Raises :class:`GenesisError` naming what disagrees: the document is
    not a valid topology, the shard is not in it, the genesis time, period, protocol or
    checkpoint interval differ from the topology's, or ``neighbours`` does not list
    exactly the shard's parent and children."""
    if genesis.topology is None:
        return None
    try:
        topology = Topology.from_toml(genesis.topology)
    except TopologyError as exc:
        raise GenesisError(f"genesis.topology.document: {exc.message}") from None
    shard = genesis.chain_id
    if shard not in topology:
        raise GenesisError(f"genesis.chain_id {shard!r} is not a shard of the topology; it has {list(topology.ids)}")
    spec = topology.shard(shard)
    checks = (
        ("genesis_time", genesis.genesis_time, topology.genesis_time, "genesis_time"),
        ("params.period_seconds", genesis.param("period_seconds"), topology.period_s, "period_s"),
        ("protocol", genesis.protocol, spec.protocol, f"shards.{shard!r}.protocol"),
        ("params.checkpoint_interval", genesis.param("checkpoint_interval"), spec.checkpoint_interval,
         f"shards.{shard!r}.checkpoint_interval"),
    )
    for field_name, mine, theirs, where in checks:
        if mine != theirs:
            raise GenesisError(f"genesis.{field_name} is {mine!r} but the topology's {where} is {theirs!r}; they must be equal")
    wanted = sorted(topology.neighbours(shard))
    given = sorted(genesis.neighbour_sets)
    if given != wanted:
        raise GenesisError(f"genesis.topology.neighbours lists {given}; the neighbours of {shard!r} are {wanted}")
    return topology


def bridge_natives(genesis: Genesis) -> dict[str, BridgeModule]:
    """The executor's natives for this genesis: ``{"bridge": module}`` with a topology, else {}."""
    topology = check_genesis_topology(genesis)
    return {} if topology is None else {MODULE: BridgeModule(genesis.chain_id, topology)}


class _DictStorage:
    def __init__(self) -> None:
        self.writes: dict[bytes, bytes] = {}

    def get(self, name: str, parts: list) -> Any | None:
        raw = self.writes.get(state_key(MODULE, name, parts))
        return None if raw is None else codec.decode(raw, max_size=len(raw))

    def put(self, name: str, parts: list, value: Any) -> None:
        self.writes[state_key(MODULE, name, parts)] = codec.encode(value)

    def delete(self, name: str, parts: list) -> None:
        self.writes.pop(state_key(MODULE, name, parts), None)


def bridge_genesis_writes(genesis: Genesis) -> dict[bytes, bytes]:
    """The module's state at height 0 (``install_genesis``): a light client per neighbour
    from its genesis validator set, and the topology's registrations of this shard's
    child bridges. Empty without a topology."""
    topology = check_genesis_topology(genesis)
    if topology is None:
        return {}
    storage = _DictStorage()
    install_genesis(storage, topology, genesis.chain_id, dict(genesis.neighbour_sets))
    return storage.writes
