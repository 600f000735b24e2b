"""The market contracts' operations for the bridge module (MARKET.md section 12).

The real contracts on a real executor; the native module is a test double that forwards
``bridge.call(contract, function, args)`` to the contract *as the module* (the executor's
native hook: ``ctx.sender == contract_address("bridge")``, ``ctx.caller_contract ==
"bridge"``), so these tests exercise exactly the authorisation the node's module relies on.
"""

from __future__ import annotations

import pytest
from market_harness import Chain, error_code

from contracts.executor import Executor, GenesisContract, apply_genesis
from contracts.runtime.engine import BlockContext, contract_address
from contracts.runtime.errors import ContractError

ESCROW = contract_address("bridge")
FLOW = b"\x07" * 32
OTHER_FLOW = b"\x08" * 32
FIRST, LAST = 10, 11
ENERGY = 5_000


class Forwarder:
    """A native ``bridge`` that calls one contract function per transaction, as the module."""

    def gas(self, function: str) -> int | None:
        return 1_000 if function == "call" else None

    def run(self, host, function: str, args: list):
        contract, name, call_args = args
        return host.call(contract, name, *call_args)


_EXECUTOR = Executor(natives={"bridge": Forwarder()})


class BridgeChain(Chain):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.executor = _EXECUTOR
        self.bridge_a = bytes([0xB1]) * 20  # bridge accounts (any address: the module names them)
        self.bridge_b = bytes([0xB2]) * 20

    def module(self, contract: str, function: str, *args, signer: str = "relayer"):
        """A call by the bridge module in a transaction signed by ``signer``."""
        return self.tx(signer, "bridge", "call", contract, function, list(args))

    def module_ok(self, contract: str, function: str, *args, signer: str = "relayer"):
        receipt = self.module(contract, function, *args, signer=signer)
        assert receipt.ok, receipt.error
        return receipt.result

    def module_fails(self, contract: str, function: str, *args, signer: str = "relayer") -> str:
        receipt = self.module(contract, function, *args, signer=signer)
        assert not receipt.ok
        return error_code(receipt)

    def supply_matches(self, names: list[str], extra: list[bytes] = ()) -> bool:
        accounts = [self.addr(n) for n in names] + [ESCROW, self.bridge_a, self.bridge_b, *extra]
        total = sum(self.view("fiat", "balance_of", "CHF", a) for a in accounts)
        return total == self.view("fiat", "supply_of", "CHF")


NAMES = ["grid_operator", "bank", "co2_authority", "consumer", "producer", "relayer"]


@pytest.fixture
def chain():
    c = BridgeChain()
    c.admit("consumer", ["consumer"])
    c.admit("producer", ["producer"])
    c.admit("relayer", ["trader"])
    c.mint("consumer", 10_000)
    return c


def offered(chain: BridgeChain, price: int = 300, face_value: int = 0) -> int:
    serial = chain.ok("producer", "energy_tokens", "emit", FIRST, LAST, ENERGY, "solar", 40, face_value, "CHF")
    chain.ok("producer", "energy_tokens", "offer_side", serial, "consumer", price, "CHF")
    return serial


# ====================================================================== who may call

# A contract that forwards any call (the language has no *args: one branch per count).
# A call with more arguments than it forwards fails with bad_args, so the test cannot pass unnoticed.
IMPOSTOR = "from gridledger import call, export, require\n\n\n@export\ndef go(contract: str, function: str, args: list):\n" + "".join(
    f"    if len(args) == {n}:\n        return call(contract, function{''.join(f', args[{i}]' for i in range(n))})\n"
    for n in range(1, 12)
) + "    require(False, 'bad_args: the impostor forwards at most 11 arguments')\n"


@pytest.mark.parametrize(
    "contract, function, args",
    [
        ("fiat", "bridge_lock", ["CHF", None, 1, FLOW]),
        ("fiat", "bridge_pay", ["CHF", None, 1, "x", FLOW]),
        ("fiat", "bridge_send", ["CHF", None, 0, 1, FLOW]),
        ("fiat", "bridge_receive", ["CHF", None, 0, 1, FLOW]),
        ("energy_tokens", "bridge_buy_offer", [1, None, FLOW]),
        ("energy_tokens", "bridge_revert_offer", [1, None, FLOW]),
        ("energy_tokens", "bridge_create_hop_token", [FLOW, None, None, None, True, 1, FIRST, LAST, "CHF", "solar", 0]),
        ("energy_tokens", "bridge_cancel_hop_token", [1, FLOW]),
        ("energy_tokens", "bridge_check_buyer", [None, None, 1, FIRST, LAST]),
        ("energy_tokens", "bridge_hold_buyer", [FLOW, None, 1, FIRST, LAST]),
        ("energy_tokens", "bridge_release_buyer", [FLOW]),
        ("energy_tokens", "bridge_check_offer", [1, 1, "CHF", 1, FIRST, LAST]),
    ],
)
def test_bridge_operations_refuse_every_caller_but_the_bridge_module(chain, contract, function, args):
    args = [chain.addr("consumer") if a is None else a for a in args]
    assert chain.fails("consumer", contract, function, *args) == "not_allowed"  # a participant
    impostor = IMPOSTOR
    chain.state.update(apply_genesis(_Reader(chain.state), BlockContext(chain.shard, 0, chain.time),
                                     contracts=[GenesisContract("impostor", impostor)], executor=chain.executor).writes)
    assert chain.fails("consumer", "impostor", "go", contract, function, args) == "not_allowed"  # another contract


def test_no_contract_can_be_deployed_under_the_module_name(chain):
    with pytest.raises(ContractError) as refused:
        apply_genesis(_Reader(chain.state), BlockContext(chain.shard, 0, chain.time),
                      contracts=[GenesisContract("bridge", "x = 1\n")], executor=chain.executor)
    assert refused.value.code == "name_taken"


class _Reader:
    def __init__(self, data):
        self.data = data

    def get(self, key):
        return self.data.get(key)


# ====================================================================== money


def test_lock_takes_only_the_signers_money_into_the_module_escrow(chain):
    consumer = chain.addr("consumer")
    chain.module_ok("fiat", "bridge_lock", "CHF", consumer, 1_200, FLOW, signer="consumer")
    assert chain.balance("consumer") == 10_000 - 1_200  # no issuer fee on escrow movements
    assert chain.view("fiat", "balance_of", "CHF", ESCROW) == 1_200
    assert chain.module_fails("fiat", "bridge_lock", "CHF", consumer, 1, FLOW, signer="relayer") == "not_allowed"
    assert chain.module_fails("fiat", "bridge_lock", "CHF", consumer, 10_000, FLOW, signer="consumer") == "insufficient_funds"
    assert chain.module_fails("fiat", "bridge_lock", "XYZ", consumer, 1, FLOW, signer="consumer") == "unknown_currency"
    chain.ok("grid_operator", "membership", "suspend", consumer)
    receipt = chain.module("fiat", "bridge_lock", "CHF", consumer, 1, FLOW, signer="consumer")
    assert error_code(receipt) == "not_active"
    assert chain.supply_matches(NAMES)


def test_pay_out_of_escrow_needs_escrow_funds_and_pays_no_issuer_fee(chain):
    chain.module_ok("fiat", "bridge_lock", "CHF", chain.addr("consumer"), 1_000, FLOW, signer="consumer")
    chain.module_ok("fiat", "bridge_pay", "CHF", chain.addr("grid_operator"), 400, "grid_fee", FLOW)
    assert chain.balance("grid_operator") == 400 and chain.balance("bank") == 0
    assert chain.module_fails("fiat", "bridge_pay", "CHF", chain.addr("producer"), 601, "price", FLOW) == "insufficient_funds"
    assert chain.module_fails("fiat", "bridge_pay", "CHF", chain.addr("producer"), 0, "price", FLOW) == "bad_amount"
    assert chain.view("fiat", "balance_of", "CHF", ESCROW) == 600
    assert chain.supply_matches(NAMES)


def test_money_across_a_bridge_keeps_supply_equal_to_the_sum_of_balances_bridge_accounts_included(chain):
    a = chain.bridge_a
    supply = chain.view("fiat", "supply_of", "CHF")
    # arriving from neighbour A: 700 minted here (the neighbour locked it in its bridge account)
    chain.module_ok("fiat", "bridge_receive", "CHF", a, 0, 700, FLOW)
    assert chain.view("fiat", "supply_of", "CHF") == supply + 700
    assert chain.view("fiat", "bridge_minted_of", "CHF", a) == 700
    # going back: 500 of what was minted is burned here (the neighbour releases it)
    chain.module_ok("fiat", "bridge_send", "CHF", a, 500, 0, FLOW)
    assert chain.view("fiat", "supply_of", "CHF") == supply + 200
    assert chain.view("fiat", "bridge_minted_of", "CHF", a) == 200
    # more than was minted cannot be released; the rest is locked in the bridge account
    assert chain.module_fails("fiat", "bridge_send", "CHF", a, 201, 0, FLOW) == "bad_amount"
    chain.module_ok("fiat", "bridge_send", "CHF", a, 200, 0, FLOW)
    chain.module_ok("fiat", "bridge_lock", "CHF", chain.addr("consumer"), 300, FLOW, signer="consumer")
    chain.module_ok("fiat", "bridge_send", "CHF", a, 0, 300, FLOW)
    assert chain.view("fiat", "balance_of", "CHF", a) == 300  # what the neighbour may mint against
    assert chain.view("fiat", "supply_of", "CHF") == supply  # locked, not burned
    # coming back from A: released out of the bridge account, never more than it holds
    assert chain.module_fails("fiat", "bridge_receive", "CHF", a, 301, 0, FLOW) == "insufficient_funds"
    chain.module_ok("fiat", "bridge_receive", "CHF", a, 300, 0, FLOW)
    assert chain.view("fiat", "balance_of", "CHF", a) == 0
    assert chain.module_fails("fiat", "bridge_send", "CHF", a, 0, 301, FLOW) == "insufficient_funds"  # escrow holds 300
    assert chain.module_fails("fiat", "bridge_receive", "CHF", a, -1, 0, FLOW) == "bad_amount"
    assert chain.supply_matches(NAMES)


def test_a_currency_not_issued_here_can_cross_but_not_be_locked(chain):
    chain.module_ok("fiat", "bridge_receive", "EUR2", chain.bridge_b, 0, 50, FLOW)
    assert chain.view("fiat", "supply_of", "EUR2") == 50
    assert chain.module_fails("fiat", "bridge_lock", "EUR2", chain.addr("consumer"), 1, FLOW, signer="consumer") == "unknown_currency"


# ====================================================================== the buyer and the offer


def test_check_buyer_returns_the_first_buy_side_rule_a_consumer_breaks(chain):
    def check(name, point=None, energy=ENERGY):
        address = chain.addr(name)
        return chain.module_ok("energy_tokens", "bridge_check_buyer", address, point or address, energy, FIRST, LAST)

    assert check("consumer") is None
    assert check("stranger") == "not_member"
    assert check("producer") == "role_missing"  # only consumers buy from outside their shard
    assert check("consumer", point=chain.addr("producer")) == "bad_point"
    chain.ok("grid_operator", "membership", "set_position_limit", chain.addr("consumer"), ENERGY - 1)
    assert check("consumer") == "position_limit_exceeded"
    chain.ok("grid_operator", "membership", "suspend", chain.addr("consumer"))
    assert check("consumer") == "not_active"


def test_a_held_flow_counts_toward_the_position_limit_until_it_is_released(chain):
    consumer = chain.addr("consumer")
    chain.ok("grid_operator", "membership", "set_position_limit", consumer, ENERGY * 3 // 2)

    def check(energy=ENERGY):
        return chain.module_ok("energy_tokens", "bridge_check_buyer", consumer, consumer, energy, FIRST, LAST)

    def held():
        return [chain.view("energy_tokens", "pending_flow_buys", consumer, p) for p in range(FIRST, LAST + 1)]

    assert check() is None and held() == [0, 0]
    chain.module_ok("energy_tokens", "bridge_hold_buyer", FLOW, consumer, ENERGY, FIRST, LAST)
    assert held() == [ENERGY, ENERGY]
    assert chain.view("energy_tokens", "net_position", consumer, FIRST) == 0  # not a position yet
    assert check() == "position_limit_exceeded"  # a second flow would take it to 2 x ENERGY
    assert check(ENERGY // 2) is None
    assert chain.module_fails("energy_tokens", "bridge_hold_buyer", FLOW, consumer, ENERGY, FIRST, LAST) == "already_held"
    chain.module_ok("energy_tokens", "bridge_release_buyer", FLOW)
    assert check() is None and held() == [0, 0]
    # a release never refuses: a flow that holds nothing (any more) releases nothing
    chain.module_ok("energy_tokens", "bridge_release_buyer", FLOW)
    chain.module_ok("energy_tokens", "bridge_hold_buyer", b"\x08" * 32, consumer, ENERGY, FIRST, FIRST)
    chain.module_ok("energy_tokens", "bridge_release_buyer", FLOW)
    assert held() == [ENERGY, 0]  # another flow's hold is untouched


def test_a_held_flow_does_not_widen_the_limit_for_a_change_that_lowers_the_position(chain):
    # The held flow may still be refunded: a change that lowers the position must keep
    # within the limit from the position without the flow's energy too.
    consumer = chain.addr("consumer")
    chain.ok("grid_operator", "membership", "set_position_limit", consumer, ENERGY)
    chain.module_ok("energy_tokens", "bridge_hold_buyer", FLOW, consumer, ENERGY, FIRST, LAST)
    serial = chain.ok("producer", "energy_tokens", "emit", FIRST, LAST, 2 * ENERGY, "solar", 40, 0, "CHF")
    chain.ok("producer", "energy_tokens", "offer_side", serial, "producer", 0, "CHF")
    # buying a producer side of 2 x ENERGY: -ENERGY if the flow commits, -2 x ENERGY if not
    assert chain.fails("consumer", "energy_tokens", "buy_side", serial, "producer", 0, "CHF") == "position_limit_exceeded"
    # the seller's check at a flow's destination counts the same way
    producer = chain.addr("producer")
    chain.ok("grid_operator", "membership", "set_position_limit", producer, ENERGY // 2)
    offered = chain.ok("producer", "energy_tokens", "emit", FIRST, LAST, ENERGY, "solar", 40, 0, "CHF")
    chain.ok("producer", "energy_tokens", "offer_side", offered, "consumer", 300, "CHF")

    def check_offer():
        return chain.module_ok("energy_tokens", "bridge_check_offer", offered, 300, "CHF", ENERGY, FIRST, LAST)

    assert check_offer() == "position_limit_exceeded"
    chain.module_ok("energy_tokens", "bridge_hold_buyer", b"\x09" * 32, producer, ENERGY, FIRST, LAST)
    assert check_offer() == "position_limit_exceeded"  # its own pending purchase does not make room


def test_check_buyer_requires_collateral_below_the_rating_threshold():
    chain = BridgeChain(params={"rating_threshold": 50, "min_collateral": 500})
    chain.admit("consumer", ["consumer"], rating=10)
    chain.admit("relayer", ["trader"], rating=90)
    consumer = chain.addr("consumer")
    assert chain.module_ok("energy_tokens", "bridge_check_buyer", consumer, consumer, ENERGY, FIRST, LAST) == "collateral_required"


def test_check_offer_accepts_only_the_side_exactly_as_the_flow_says(chain):
    serial = offered(chain)

    def check(s=serial, price=300, currency="CHF", energy=ENERGY, first=FIRST, last=LAST):
        return chain.module_ok("energy_tokens", "bridge_check_offer", s, price, currency, energy, first, last)

    assert check() is None
    assert check(s=999) == "unknown_token"
    assert check(price=301) == "price_changed"
    assert check(currency="EUR") == "price_changed"
    assert check(energy=ENERGY + 1) == "token_changed"
    assert check(last=LAST + 1) == "token_changed"
    with_face = offered(chain, face_value=12)
    assert check(s=with_face) == "face_value_not_zero"  # a bridge account cannot settle a face value
    unsold = chain.ok("producer", "energy_tokens", "emit", FIRST, LAST, ENERGY, "solar", 40, 0, "CHF")
    assert check(s=unsold) == "not_for_sale"
    chain.ok("grid_operator", "membership", "suspend", chain.addr("producer"))
    assert check() == "seller_not_active"
    chain.set_time(chain.gate_closure(FIRST))
    assert check() == "token_frozen"


# ====================================================================== sides and hop tokens


def test_a_side_sold_across_a_bridge_is_not_tradable_not_reconciled_and_reverts_to_its_seller(chain):
    serial = offered(chain)
    bridge = chain.bridge_a
    # the sale names the energy's category and CO2 (mg per period): the flow's hop tokens carry them
    sold = chain.module_ok("energy_tokens", "bridge_buy_offer", serial, bridge, FLOW)
    assert sold == [serial, chain.addr("producer"), "solar", ENERGY * 40]
    side = chain.token(serial)["consumer"]
    assert side == {"owner": bridge, "point": bridge, "price": None, "currency": None, "point_kind": "bridge"}
    assert chain.balance("producer") == 0  # the price waits in the module's escrow
    assert chain.view("energy_tokens", "point_position", FIRST, bridge) == 0  # not reconciled
    assert chain.view("energy_tokens", "net_position", bridge, FIRST) == 0  # no participant's position
    assert chain.view("energy_tokens", "net_position", chain.addr("producer"), FIRST) == -ENERGY
    # its face value is 0 (the price travels with the flow): it must not pull the VWAP to 0
    assert chain.view("energy_tokens", "vwap_acc", FIRST) in ([], [0, 0])
    assert chain.view("energy_tokens", "offers")["offers"] == []
    assert chain.fails("producer", "energy_tokens", "propose_withdrawal", serial) == "not_tradable"
    assert chain.fails("producer", "energy_tokens", "withdraw_unilateral", serial, "producer") == "not_tradable"
    assert chain.fails("grid_operator", "energy_tokens", "redispatch", serial, "consumer", 0) == "not_tradable"
    assert chain.module_fails("energy_tokens", "bridge_revert_offer", serial, chain.addr("producer"), OTHER_FLOW) == "not_allowed"
    chain.module_ok("energy_tokens", "bridge_revert_offer", serial, chain.addr("producer"), FLOW)
    side = chain.token(serial)["consumer"]
    assert side["owner"] == chain.addr("producer") and side["price"] is None and side["point_kind"] == "virtual"
    assert chain.view("energy_tokens", "net_position", chain.addr("producer"), FIRST) == 0
    assert chain.module_fails("energy_tokens", "bridge_revert_offer", serial, chain.addr("producer"), FLOW) == "not_allowed"


def test_hop_tokens_have_bridge_sides_are_not_tradable_and_cancel_only_for_their_flow(chain):
    consumer = chain.addr("consumer")
    serial = chain.module_ok("energy_tokens", "bridge_create_hop_token", FLOW, chain.bridge_a, consumer, consumer, False,
                             ENERGY, FIRST, LAST, "CHF", "wind", ENERGY * 12)
    token = chain.token(serial)
    assert token["purpose"] == "bridge" and token["face_value"] == 0
    # the energy the flow bought: its category and CO2 (the consumer's settlement charges the CO2 fee)
    assert token["category"] == "wind" and token["co2_mg"] == ENERGY * 12
    assert token["producer"]["point_kind"] == "bridge" and token["consumer"]["point_kind"] == "virtual"
    assert chain.view("energy_tokens", "bridge_flow_of", serial) == FLOW
    assert chain.view("energy_tokens", "net_position", consumer, FIRST) == ENERGY
    assert chain.view("energy_tokens", "point_position", FIRST, consumer) == -ENERGY  # the consumer's point is reconciled
    assert chain.fails("consumer", "energy_tokens", "offer_side", serial, "consumer", 1, "CHF") == "not_tradable"
    assert chain.fails("consumer", "energy_tokens", "propose_withdrawal", serial) == "not_tradable"
    # a hop token between two bridges adds no position anywhere
    between = chain.module_ok("energy_tokens", "bridge_create_hop_token", FLOW, chain.bridge_a, chain.bridge_b,
                              chain.bridge_b, True, ENERGY, FIRST, LAST, "CHF", "tidal", 0)
    assert chain.token(between)["category"] == "other"  # a category this shard does not know
    assert chain.token(between)["consumer"]["point_kind"] == "bridge"
    assert chain.module_fails("energy_tokens", "bridge_cancel_hop_token", serial, OTHER_FLOW) == "not_allowed"
    chain.module_ok("energy_tokens", "bridge_cancel_hop_token", serial, FLOW)
    assert chain.token(serial)["status"] == "cancelled"
    assert chain.view("energy_tokens", "net_position", consumer, FIRST) == 0
    assert chain.module_fails("energy_tokens", "bridge_cancel_hop_token", serial, FLOW) == "token_not_open"


def test_a_hop_token_falls_back_to_the_consumers_address_when_its_point_is_no_longer_valid(chain):
    consumer = chain.addr("consumer")
    serial = chain.module_ok("energy_tokens", "bridge_create_hop_token", FLOW, chain.bridge_a, consumer,
                             chain.addr("producer"), False, ENERGY, FIRST, LAST, "CHF", "solar", 0)
    assert chain.token(serial)["consumer"]["point"] == consumer


def test_a_hop_token_at_a_consumption_meter_owes_its_co2_fee_in_the_consumers_shard():
    # The consumer's shard settles the energy it bought across shards like a local purchase:
    # metered, reconciled, and its CO2 fee owed to this shard's CO2 authority.
    chain = BridgeChain(params={"co2_price_per_t": 12_000})
    chain.admit("consumer", ["consumer"])
    chain.mint("consumer", 10_000)
    chain.ok("consumer", "fiat", "approve", "CHF", chain.view("market_config", "get", "settlement_account"), 10**12)
    consumer, meter = chain.addr("consumer"), chain.addr("meter_c")
    capacity = 100_000 * 3600 // int(chain.params["period_s"])
    chain.ok("grid_operator", "meters", "register_meter", meter, consumer, "consumption", "other", "loc:c", capacity, 0)
    chain.ok("consumer", "meters", "attest_meter", meter)
    co2_mg = ENERGY * 100  # 100 g/kWh: 0.5 kg in the period
    serial = chain.module_ok("energy_tokens", "bridge_create_hop_token", FLOW, chain.bridge_a, consumer, meter, False,
                             ENERGY, FIRST, FIRST, "CHF", "solar", co2_mg)
    assert chain.token(serial)["consumer"]["point_kind"] == "consumption"
    chain.set_time(chain.period_end(FIRST))
    chain.ok("meter_c", "meters", "submit_reading", FIRST, ENERGY)  # took what it bought: no imbalance
    # each in one call (max_work 0: the whole step)
    chain.ok("grid_operator", "reconciliation", "reconcile_period", FIRST, 0)
    chain.ok("grid_operator", "grid_fees", "publish_transmission_cost", FIRST, 0, 0)
    chain.ok("grid_operator", "settlement", "run_settlement", 0)
    fees = []
    for oid in range(1, chain.view("settlement", "obligation_count") + 1):
        o = chain.view("settlement", "obligation_of", oid)
        fees.append((o[0], chain.name_of(o[1]), chain.name_of(o[2]), o[4], o[6], o[7]))
    # 0.5 kg at 12,000 per tonne = 6; no face value (0) and no grid fee (no cost published)
    assert fees == [("co2_fee", "consumer", "co2_authority", 6, serial, "paid")]
    assert chain.balance("co2_authority") == 6
